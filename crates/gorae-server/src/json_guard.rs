//! `response_format: {"type": "json_object"}` by constrained decoding: an incremental JSON
//! syntax checker that accepts exactly the prefixes of one JSON object, so the sampler can be
//! limited, token by token, to tokens that keep the output a valid prefix. Generation ends
//! when the object closes, so a response that finishes with `stop` always parses.
//!
//! Runs of whitespace outside strings are capped: without a cap a small model can "stall" in
//! valid but endless whitespace, a known failure of grammar-constrained decoding.

/// Longest run of whitespace allowed between JSON tokens.
const MAX_WS_RUN: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// A value must come next (array element, object member value, or the top level).
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// Inside a string; `key` says whether it is an object key.
    Str {
        key: bool,
    },
    /// After a backslash in a string.
    Escape {
        key: bool,
    },
    /// Inside `\uXXXX`, with this many hex digits still to come.
    Unicode {
        key: bool,
        left: u8,
    },
    Number(Num),
    /// Inside `true`/`false`/`null`: the word and how much of it is written.
    Literal {
        word: &'static str,
        at: u8,
    },
    /// After a value: `,`, a closing bracket, or (at the top level) the end.
    After,
    /// The top-level object is complete.
    Done,
}

/// See the module docs. `Clone` is cheap enough to test every vocabulary entry per step.
#[derive(Debug, Clone)]
pub struct JsonPrefix {
    stack: Vec<Container>,
    st: St,
    ws_run: u32,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        JsonPrefix::new()
    }
}

impl JsonPrefix {
    /// Expects one JSON object (OpenAI's `json_object` mode requires an object).
    pub fn new() -> Self {
        JsonPrefix {
            stack: Vec::new(),
            st: St::Value,
            ws_run: 0,
        }
    }

    /// The object is complete.
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Feeds `s`; false if it makes the text something no JSON object starts with (the state
    /// is then meaningless: check on a clone).
    pub fn push_str(&mut self, s: &str) -> bool {
        s.chars().all(|c| self.push(c))
    }

    fn ws(&mut self, c: char) -> Option<bool> {
        if matches!(c, ' ' | '\n' | '\r' | '\t') {
            self.ws_run += 1;
            return Some(self.ws_run <= MAX_WS_RUN);
        }
        self.ws_run = 0;
        None
    }

    fn end_value(&mut self) {
        self.st = if self.stack.is_empty() {
            St::Done
        } else {
            St::After
        };
    }

    fn start_value(&mut self, c: char) -> bool {
        // The top level must be an object.
        if self.stack.is_empty() && c != '{' {
            return false;
        }
        self.st = match c {
            '{' => {
                self.stack.push(Container::Object);
                St::KeyOrEnd
            }
            '[' => {
                self.stack.push(Container::Array);
                St::ValueOrEnd
            }
            '"' => St::Str { key: false },
            '-' => St::Number(Num::Minus),
            '0' => St::Number(Num::Zero),
            '1'..='9' => St::Number(Num::Int),
            't' => St::Literal {
                word: "true",
                at: 1,
            },
            'f' => St::Literal {
                word: "false",
                at: 1,
            },
            'n' => St::Literal {
                word: "null",
                at: 1,
            },
            _ => return false,
        };
        true
    }

    fn close(&mut self, c: char) -> bool {
        let want = match c {
            '}' => Container::Object,
            ']' => Container::Array,
            _ => return false,
        };
        if self.stack.last() != Some(&want) {
            return false;
        }
        self.stack.pop();
        self.end_value();
        true
    }

    /// After a value inside a container.
    fn after(&mut self, c: char) -> bool {
        match (c, self.stack.last()) {
            (',', Some(Container::Object)) => {
                self.st = St::Key;
                true
            }
            (',', Some(Container::Array)) => {
                self.st = St::Value;
                true
            }
            ('}' | ']', _) => self.close(c),
            _ => false,
        }
    }

    pub fn push(&mut self, c: char) -> bool {
        match self.st {
            St::Str { key } => {
                match c {
                    '"' => {
                        if key {
                            self.st = St::Colon;
                        } else {
                            self.end_value();
                        }
                    }
                    '\\' => self.st = St::Escape { key },
                    c if (c as u32) < 0x20 => return false,
                    _ => {}
                }
                true
            }
            St::Escape { key } => {
                self.st = match c {
                    '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => St::Str { key },
                    'u' => St::Unicode { key, left: 4 },
                    _ => return false,
                };
                true
            }
            St::Unicode { key, left } => {
                if !c.is_ascii_hexdigit() {
                    return false;
                }
                self.st = if left > 1 {
                    St::Unicode {
                        key,
                        left: left - 1,
                    }
                } else {
                    St::Str { key }
                };
                true
            }
            St::Literal { word, at } => {
                if word.as_bytes().get(at as usize) != Some(&(c as u8)) || !c.is_ascii() {
                    return false;
                }
                if at as usize + 1 == word.len() {
                    self.end_value();
                } else {
                    self.st = St::Literal { word, at: at + 1 };
                }
                true
            }
            St::Number(n) => {
                let next = match (n, c) {
                    (Num::Minus, '0') => Some(Num::Zero),
                    (Num::Minus, '1'..='9') => Some(Num::Int),
                    (Num::Int, '0'..='9') => Some(Num::Int),
                    (Num::Zero | Num::Int, '.') => Some(Num::Dot),
                    (Num::Dot | Num::Frac, '0'..='9') => Some(Num::Frac),
                    (Num::Zero | Num::Int | Num::Frac, 'e' | 'E') => Some(Num::Exp),
                    (Num::Exp, '+' | '-') => Some(Num::ExpSign),
                    (Num::Exp | Num::ExpSign | Num::ExpDigits, '0'..='9') => Some(Num::ExpDigits),
                    _ => None,
                };
                if let Some(n) = next {
                    self.st = St::Number(n);
                    return true;
                }
                // The number ends here if it is complete; `c` then follows a value.
                if !matches!(n, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits) {
                    return false;
                }
                self.end_value();
                self.push(c)
            }
            St::Done => self.ws(c) == Some(true),
            St::Value => self.ws(c).unwrap_or_else(|| self.start_value(c)),
            St::ValueOrEnd => self
                .ws(c)
                .unwrap_or_else(|| c == ']' && self.close(c) || c != ']' && self.start_value(c)),
            St::KeyOrEnd | St::Key => {
                let may_end = self.st == St::KeyOrEnd;
                self.ws(c).unwrap_or_else(|| match c {
                    '"' => {
                        self.st = St::Str { key: true };
                        true
                    }
                    '}' if may_end => self.close(c),
                    _ => false,
                })
            }
            St::Colon => self.ws(c).unwrap_or_else(|| {
                if c == ':' {
                    self.st = St::Value;
                    true
                } else {
                    false
                }
            }),
            St::After => self.ws(c).unwrap_or_else(|| self.after(c)),
        }
    }
}

/// Per-token texts for masking: `None` for tokens never allowed (special tokens).
pub struct JsonVocab {
    texts: Vec<Option<String>>,
}

impl JsonVocab {
    pub fn new(tok: &gorae_text::Tokenizer, n_vocab: usize) -> JsonVocab {
        let texts = (0..n_vocab as u32)
            .map(|id| {
                if tok.is_special(id) {
                    return None;
                }
                tok.decode(&[id], false).ok().filter(|t| !t.is_empty())
            })
            .collect();
        JsonVocab { texts }
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).and_then(|t| t.as_deref())
    }

    /// Sets the logit of every token that would break the JSON prefix to -inf; returns how
    /// many remain allowed. `scratch` is reused to avoid allocating per token.
    pub fn mask(&self, state: &JsonPrefix, logits: &mut [f32], scratch: &mut JsonPrefix) -> usize {
        let mut allowed = 0;
        for (id, l) in logits.iter_mut().enumerate() {
            let ok = match self.texts.get(id).and_then(|t| t.as_deref()) {
                Some(text) => {
                    scratch.clone_from(state);
                    scratch.push_str(text)
                }
                None => false,
            };
            if ok {
                allowed += 1;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(s: &str) -> bool {
        JsonPrefix::new().push_str(s)
    }

    fn complete(s: &str) -> bool {
        let mut j = JsonPrefix::new();
        j.push_str(s) && j.is_done()
    }

    #[test]
    fn complete_objects() {
        for s in [
            "{}",
            " { } ",
            r#"{"a": 1}"#,
            r#"{"a": -0.5e+3, "b": [true, false, null, "x\n\u00e9"], "c": {"d": []}}"#,
            r#"{"k":"v","n":[1,2,[3]]}"#,
            "{\"s\": \"caf\u{e9} \u{1F600}\"}",
        ] {
            assert!(complete(s), "{s}");
            assert!(serde_json::from_str::<serde_json::Value>(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn prefixes_are_accepted_and_not_done() {
        let full = r#"{"a": [1.5, {"b": "c\"d"}], "e": true}"#;
        for (i, _) in full.char_indices().skip(1) {
            let mut j = JsonPrefix::new();
            assert!(j.push_str(&full[..i]), "{}", &full[..i]);
            assert!(!j.is_done(), "{}", &full[..i]);
        }
    }

    #[test]
    fn invalid_text_is_refused() {
        for s in [
            "[1]",
            "\"x\"",
            "1",
            "{a",
            "{\"a\" 1",
            "{\"a\": 01",
            "{\"a\": 1.}",
            "{\"a\": -}",
            "{\"a\": tru}",
            "{\"a\": [1,]",
            "{\"a\": 1,}",
            "{\"a\": 1]",
            "{\"a\": \"\n\"}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12g4\"}",
            "{} x",
            "{}{}",
        ] {
            assert!(!accepts(s), "{s:?} accepted");
        }
        // Numbers end at a delimiter, which then counts.
        assert!(complete("{\"a\": 10}"));
        assert!(complete("{\"a\": [0, 1e5 ]}"));
    }

    #[test]
    fn whitespace_runs_are_capped() {
        assert!(accepts(&format!("{{{}", " ".repeat(16))));
        assert!(!accepts(&format!("{{{}", " ".repeat(17))));
        assert!(accepts(&format!(
            "{{\"a\":{} 1,{}",
            " ".repeat(15),
            "\n".repeat(16)
        )));
        // Inside strings whitespace is content, not capped.
        assert!(accepts(&format!("{{\"a\": \"{}", " ".repeat(100))));
    }
}
