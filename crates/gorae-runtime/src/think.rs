//! Splitting generated text into reasoning (inside `<think>…</think>`) and the answer.
//!
//! R1-style templates end the prompt with `<think>\n`, so generation can start inside the
//! reasoning with no opening tag in the output; the caller says so with `starts_inside`. The
//! splitter works on text pieces as they are decided, holding back a possible partial tag, so
//! streamed and whole outputs split identically. The CLI and the server both use it.
//!
//! The split is one-way, as vLLM's R1 parser reads it: reasoning is an opening `<think>` at
//! the very start of the output (blank space before it allowed) up to the first `</think>`;
//! everything after that, and everything when the output starts otherwise, is the answer, so
//! a tag quoted in an answer (inside a JSON string, say) stays answer text.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A decided run of text: reasoning or answer (never empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Reasoning(&'a str),
    Answer(&'a str),
}

#[derive(Debug)]
pub struct ThinkSplitter {
    in_think: bool,
    /// No answer text yet and no reasoning ended: an opening tag may still come.
    may_open: bool,
    /// Drop the blank lines an answer usually starts with after `</think>`, so the answer
    /// reads as DeepSeek's API returns its `content` (the server asks for this).
    trim_answer_start: bool,
    /// Still at the start of an answer that follows `</think>`.
    trimming: bool,
    pending: String,
}

impl ThinkSplitter {
    /// `starts_inside`: the prompt already opened `<think>`. Pieces come out as generated.
    pub fn new(starts_inside: bool) -> Self {
        ThinkSplitter {
            in_think: starts_inside,
            may_open: !starts_inside,
            trim_answer_start: false,
            trimming: false,
            pending: String::new(),
        }
    }

    /// As [`Self::new`], and the answer after `</think>` loses its leading line breaks.
    pub fn trimming_answer_start(starts_inside: bool) -> Self {
        ThinkSplitter {
            trim_answer_start: true,
            ..Self::new(starts_inside)
        }
    }

    pub fn in_think(&self) -> bool {
        self.in_think
    }

    /// Adds `text`; hands every decided piece to `out`.
    pub fn push<E>(
        &mut self,
        text: &str,
        mut out: impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.pending.push_str(text);
        if self.may_open {
            let start = self.pending.trim_start();
            if start.starts_with(OPEN) {
                let at = self.pending.len() - start.len();
                self.pending.drain(..at + OPEN.len());
                self.may_open = false;
                self.in_think = true;
            } else if OPEN.starts_with(start) {
                // Blank space, or a partial opening tag: undecided yet.
                return Ok(());
            } else {
                self.may_open = false;
            }
        }
        if self.in_think {
            if let Some(at) = self.pending.find(CLOSE) {
                let before: String = self.pending[..at].to_string();
                self.emit(&before, &mut out)?;
                self.pending.drain(..at + CLOSE.len());
                self.in_think = false;
                self.trimming = self.trim_answer_start;
            } else {
                // Hold back the longest suffix that could begin the closing tag.
                let hold = CLOSE
                    .char_indices()
                    .skip(1)
                    .map(|(i, _)| i)
                    .filter(|&i| self.pending.ends_with(&CLOSE[..i]))
                    .max()
                    .unwrap_or(0);
                let cut = self.pending.len() - hold;
                let ready: String = self.pending[..cut].to_string();
                self.emit(&ready, &mut out)?;
                self.pending.drain(..cut);
                return Ok(());
            }
        }
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest, &mut out)
    }

    /// End of generation: whatever is held back is text after all.
    pub fn finish<E>(&mut self, mut out: impl FnMut(Piece<'_>) -> Result<(), E>) -> Result<(), E> {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest, &mut out)
    }

    /// [`Self::push`] appending the pieces to `content` and `reasoning`.
    pub fn push_into(&mut self, text: &str, content: &mut String, reasoning: &mut String) {
        let _ = self.push::<std::convert::Infallible>(text, |p| {
            append(p, content, reasoning);
            Ok(())
        });
    }

    /// [`Self::finish`] appending to `content` and `reasoning`.
    pub fn finish_into(&mut self, content: &mut String, reasoning: &mut String) {
        let _ = self.finish::<std::convert::Infallible>(|p| {
            append(p, content, reasoning);
            Ok(())
        });
    }

    fn emit<E>(
        &mut self,
        s: &str,
        out: &mut impl FnMut(Piece<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.in_think {
            return if s.is_empty() {
                Ok(())
            } else {
                out(Piece::Reasoning(s))
            };
        }
        let s = if self.trimming {
            let t = s.trim_start_matches(['\n', '\r']);
            if !t.is_empty() {
                self.trimming = false;
            }
            t
        } else {
            s
        };
        if s.is_empty() {
            Ok(())
        } else {
            out(Piece::Answer(s))
        }
    }
}

fn append(p: Piece<'_>, content: &mut String, reasoning: &mut String) {
    match p {
        Piece::Reasoning(s) => reasoning.push_str(s),
        Piece::Answer(s) => content.push_str(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(starts_inside: bool, chunks: &[&str]) -> (String, String) {
        let mut sp = ThinkSplitter::trimming_answer_start(starts_inside);
        let (mut c, mut r) = (String::new(), String::new());
        for chunk in chunks {
            sp.push_into(chunk, &mut c, &mut r);
        }
        sp.finish_into(&mut c, &mut r);
        (c, r)
    }

    #[test]
    fn tags_split_across_pieces() {
        let (c, r) = split(
            false,
            &["<thi", "nk>plan", " it</th", "ink>\n\nThe answer", "."],
        );
        assert_eq!(r, "plan it");
        assert_eq!(c, "The answer.");
    }

    #[test]
    fn starts_inside_thinking() {
        let (c, r) = split(true, &["hmm", "</think>", "\n", "\nok"]);
        assert_eq!((c.as_str(), r.as_str()), ("ok", "hmm"));
        // Never closed: everything is reasoning.
        let (c, r) = split(true, &["a", "b<"]);
        assert_eq!((c.as_str(), r.as_str()), ("", "ab<"));
    }

    #[test]
    fn tags_after_the_start_are_answer_text() {
        // Reasoning ended: a later tag is quoted text.
        let (c, r) = split(
            false,
            &["<think>a</think>", "{\"k\": \"<think>x</think>\"}"],
        );
        assert_eq!(r, "a");
        assert_eq!(c, "{\"k\": \"<think>x</think>\"}");
        // The output did not open with a tag: no reasoning at all.
        let (c, r) = split(false, &["Use <th", "ink> tags</think> here"]);
        assert_eq!(
            (c.as_str(), r.as_str()),
            ("Use <think> tags</think> here", "")
        );
        // Started inside: after the first close, tags are text.
        let (c, r) = split(true, &["r</think>", "<think>no</think>"]);
        assert_eq!((c.as_str(), r.as_str()), ("<think>no</think>", "r"));
        // Blank space before the opening tag is allowed (and dropped).
        let (c, r) = split(false, &["\n ", "<think>r</think>ok"]);
        assert_eq!((c.as_str(), r.as_str()), ("ok", "r"));
        // Only blank space, never decided: it is the answer.
        let (c, r) = split(false, &[" <th"]);
        assert_eq!((c.as_str(), r.as_str()), (" <th", ""));
    }

    #[test]
    fn plain_text_passes_through() {
        let (c, r) = split(false, &["a < b", " and <t", "hat"]);
        assert_eq!((c.as_str(), r.as_str()), ("a < b and <that", ""));
    }

    /// Without trimming (the CLI), pieces come out as generated, in order, never empty.
    #[test]
    fn pieces_in_order_without_trimming() {
        let mut parts = Vec::new();
        let mut sp = ThinkSplitter::new(false);
        for chunk in ["<thi", "nk>plan", " it</th", "ink>The answer", "."] {
            sp.push::<()>(chunk, |p| {
                parts.push(match p {
                    Piece::Reasoning(s) => format!("R:{s}"),
                    Piece::Answer(s) => format!("A:{s}"),
                });
                Ok(())
            })
            .unwrap_or(());
        }
        assert_eq!(parts.concat(), "R:planR: itA:The answerA:.");
        let mut sp = ThinkSplitter::new(true);
        let mut got = String::new();
        sp.push::<()>("hmm</think>\nok", |p| {
            got.push_str(match p {
                Piece::Reasoning(_) => "R",
                Piece::Answer(a) => a,
            });
            Ok(())
        })
        .unwrap_or(());
        assert_eq!(got, "R\nok");
    }
}
