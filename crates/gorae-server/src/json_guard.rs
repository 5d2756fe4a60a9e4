//! `response_format: {"type": "json_object"}` by constrained decoding: an incremental JSON
//! syntax checker that accepts exactly the prefixes of one JSON object, so the sampler can be
//! limited, token by token, to tokens that keep the output a valid prefix. Generation ends
//! when the object closes, so a response that finishes with `stop` always parses.
//!
//! Runs of whitespace outside strings are capped: without a cap a small model can "stall" in
//! valid but endless whitespace, a known failure of grammar-constrained decoding.

use crate::json_schema::{Schema, Track};
use std::sync::Arc;

/// Longest run of whitespace allowed between JSON tokens.
const MAX_WS_RUN: u32 = 16;

/// Most digits before a number's fraction, and in its exponent: 10^(200 + 99) stays inside
/// f64's range, so every number written parses in strict parsers too (serde_json refuses
/// `1e999`, which the JSON grammar allows).
const MAX_INT_DIGITS: u32 = 200;
const MAX_EXP_DIGITS: u32 = 2;

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
#[derive(Debug)]
pub struct JsonPrefix {
    stack: Vec<Container>,
    st: St,
    ws_run: u32,
    /// Digits of the number being written, in its integer part or its exponent.
    digits: u32,
    /// `json_schema` mode: the schema's checks on top of the syntax.
    schema: Option<Track>,
}

impl Clone for JsonPrefix {
    fn clone(&self) -> Self {
        JsonPrefix {
            stack: self.stack.clone(),
            st: self.st,
            ws_run: self.ws_run,
            digits: self.digits,
            schema: self.schema.clone(),
        }
    }

    /// Reuses `self`'s buffers: the masking loop copies a state once per vocabulary entry.
    fn clone_from(&mut self, src: &Self) {
        self.stack.clone_from(&src.stack);
        self.st = src.st;
        self.ws_run = src.ws_run;
        self.digits = src.digits;
        match (&mut self.schema, &src.schema) {
            (Some(a), Some(b)) => a.clone_from(b),
            (a, b) => a.clone_from(b),
        }
    }
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
            digits: 0,
            schema: None,
        }
    }

    /// Expects one JSON object that conforms to `schema` (`json_schema` mode), or any object.
    pub fn with_schema(schema: Option<Arc<Schema>>) -> Self {
        JsonPrefix {
            schema: schema.map(Track::new),
            ..JsonPrefix::new()
        }
    }

    /// Runs a schema check, if there is a schema; true without one.
    fn check(&mut self, f: impl FnOnce(&mut Track) -> bool) -> bool {
        self.schema.as_mut().is_none_or(f)
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
        if !matches!(c, '{' | '[' | '"' | '-' | '0'..='9' | 't' | 'f' | 'n') {
            return false;
        }
        if !self.check(|t| t.value_start(c)) {
            return false;
        }
        self.digits = u32::from(c.is_ascii_digit());
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
        if self.stack.last() != Some(&want) || !self.check(Track::close) {
            return false;
        }
        self.stack.pop();
        self.end_value();
        true
    }

    /// After a value inside a container.
    fn after(&mut self, c: char) -> bool {
        if c == ',' && !self.check(Track::comma) {
            return false;
        }
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

    /// A character inside a string (after its opening quote, before its closing one).
    fn content(&mut self, c: char, key: bool) -> bool {
        if key {
            self.check(|t| t.key_char(c))
        } else {
            self.check(|t| t.scalar_char(c))
        }
    }

    pub fn push(&mut self, c: char) -> bool {
        match self.st {
            St::Str { key } => {
                if (c as u32) < 0x20 {
                    return false;
                }
                match (c, key) {
                    ('"', true) => {
                        if !self.check(Track::key_end) {
                            return false;
                        }
                        self.st = St::Colon;
                    }
                    ('"', false) => {
                        if !self.check(|t| t.scalar_char(c) && t.scalar_end()) {
                            return false;
                        }
                        self.end_value();
                    }
                    _ => {
                        if !self.content(c, key) {
                            return false;
                        }
                        if c == '\\' {
                            self.st = St::Escape { key };
                        }
                    }
                }
                true
            }
            St::Escape { key } => {
                if !self.content(c, key) {
                    return false;
                }
                self.st = match c {
                    '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => St::Str { key },
                    'u' => St::Unicode { key, left: 4 },
                    _ => return false,
                };
                true
            }
            St::Unicode { key, left } => {
                if !c.is_ascii_hexdigit() || !self.content(c, key) {
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
                if !self.check(|t| t.scalar_char(c)) {
                    return false;
                }
                if at as usize + 1 == word.len() {
                    if !self.check(Track::scalar_end) {
                        return false;
                    }
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
                if let Some(next) = next {
                    self.digits = match next {
                        Num::Int | Num::ExpDigits | Num::Zero => self.digits + 1,
                        Num::Exp => 0,
                        _ => self.digits,
                    };
                    let cap = if next == Num::ExpDigits {
                        MAX_EXP_DIGITS
                    } else {
                        MAX_INT_DIGITS
                    };
                    if self.digits > cap || !self.check(|t| t.scalar_char(c)) {
                        return false;
                    }
                    self.st = St::Number(next);
                    return true;
                }
                // The number ends here if it is complete; `c` then follows a value.
                if !matches!(n, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits) {
                    return false;
                }
                if !self.check(Track::scalar_end) {
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
                        self.check(Track::key_start)
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
    fn numbers_stay_in_f64_range() {
        assert!(complete("{\"a\": -1.5e99}"));
        assert!(!accepts("{\"a\": 1e100"));
        assert!(!accepts("{\"a\": 1E+100"));
        let int = |n: usize| format!("{{\"a\": {}", "9".repeat(n));
        assert!(accepts(&int(200)));
        assert!(!accepts(&int(201)));
        // Fraction digits do not count against the cap.
        assert!(accepts(&format!("{{\"a\": 0.{}e-99", "1".repeat(300))));
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
