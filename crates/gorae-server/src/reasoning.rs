//! Splitting generated text into reasoning (inside `<think>…</think>`) and the answer.
//!
//! R1-style templates end the prompt with `<think>\n`, so generation can start inside the
//! reasoning with no opening tag in the output; the caller says so with `starts_inside`. The
//! splitter works on text pieces as they are decided, holding back a possible partial tag, so
//! streamed and whole responses split identically.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug)]
pub struct ThinkSplitter {
    in_think: bool,
    /// After `</think>` the answer usually starts with blank lines; drop them so the
    /// `content` reads as DeepSeek's API returns it.
    strip_newlines: bool,
    pending: String,
}

impl ThinkSplitter {
    pub fn new(starts_inside: bool) -> Self {
        ThinkSplitter {
            in_think: starts_inside,
            strip_newlines: false,
            pending: String::new(),
        }
    }

    pub fn in_think(&self) -> bool {
        self.in_think
    }

    /// Adds `text`; appends what is decided to `content` and `reasoning`.
    pub fn push(&mut self, text: &str, content: &mut String, reasoning: &mut String) {
        self.pending.push_str(text);
        loop {
            let tag = if self.in_think { CLOSE } else { OPEN };
            if let Some(at) = self.pending.find(tag) {
                let before: String = self.pending[..at].to_string();
                self.emit(&before, content, reasoning);
                self.pending.drain(..at + tag.len());
                self.in_think = !self.in_think;
                self.strip_newlines = !self.in_think;
                continue;
            }
            // Hold back the longest suffix that could begin the tag.
            let mut hold = 0;
            for (i, _) in tag.char_indices().skip(1) {
                if self.pending.ends_with(&tag[..i]) {
                    hold = i;
                }
            }
            let cut = self.pending.len() - hold;
            let ready: String = self.pending[..cut].to_string();
            self.emit(&ready, content, reasoning);
            self.pending.drain(..cut);
            return;
        }
    }

    /// End of generation: whatever is held back is text after all.
    pub fn finish(&mut self, content: &mut String, reasoning: &mut String) {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest, content, reasoning);
    }

    fn emit(&mut self, s: &str, content: &mut String, reasoning: &mut String) {
        if self.in_think {
            reasoning.push_str(s);
            return;
        }
        let s = if self.strip_newlines {
            let t = s.trim_start_matches(['\n', '\r']);
            if !t.is_empty() {
                self.strip_newlines = false;
            }
            t
        } else {
            s
        };
        content.push_str(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(starts_inside: bool, chunks: &[&str]) -> (String, String) {
        let mut sp = ThinkSplitter::new(starts_inside);
        let (mut c, mut r) = (String::new(), String::new());
        for chunk in chunks {
            sp.push(chunk, &mut c, &mut r);
        }
        sp.finish(&mut c, &mut r);
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
    fn plain_text_passes_through() {
        let (c, r) = split(false, &["a < b", " and <t", "hat"]);
        assert_eq!((c.as_str(), r.as_str()), ("a < b and <that", ""));
    }
}
