//! Python's `json.dumps` and `repr` for JSON-shaped values, byte for byte.
//!
//! Chat templates put tool schemas and arguments into the prompt with `tojson`; the model was
//! trained on what Python printed, so spacing (`", "`, `": "`), escapes, float spelling
//! (`1e-05`, `1.0`) and key order have to match `json.dumps` exactly. serde_json's output
//! differs in all of these, so we write our own.

use serde_json::{Map, Value};

/// The `json.dumps` arguments transformers' `tojson` passes through.
#[derive(Clone, Debug, Default)]
pub(crate) struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: single line. `Some(s)`: newline and `s` per level (an int indent is spaces).
    pub indent: Option<String>,
    /// `(item_separator, key_separator)`; default `(", ", ": ")`, or `(",", ": ")` with indent.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// `json.dumps(value, ...)`.
pub(crate) fn dumps(value: &Value, opts: &DumpOptions) -> String {
    let (item_sep, key_sep) = match &opts.separators {
        Some((i, k)) => (i.as_str(), k.as_str()),
        None if opts.indent.is_some() => (",", ": "),
        None => (", ", ": "),
    };
    let mut out = String::new();
    let mut d = Dumper {
        opts,
        item_sep,
        key_sep,
        out: &mut out,
    };
    d.value(value, 0);
    out
}

struct Dumper<'a> {
    opts: &'a DumpOptions,
    item_sep: &'a str,
    key_sep: &'a str,
    out: &'a mut String,
}

impl Dumper<'_> {
    fn newline(&mut self, level: usize) {
        if let Some(indent) = &self.opts.indent {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str(indent);
            }
        }
    }

    fn value(&mut self, v: &Value, level: usize) {
        match v {
            Value::Null => self.out.push_str("null"),
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            Value::Number(n) => self.out.push_str(&number(n)),
            Value::String(s) => json_string(s, self.opts.ensure_ascii, self.out),
            Value::Array(items) => {
                if items.is_empty() {
                    self.out.push_str("[]");
                    return;
                }
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(self.item_sep);
                    }
                    self.newline(level + 1);
                    self.value(item, level + 1);
                }
                self.newline(level);
                self.out.push(']');
            }
            Value::Object(map) => self.object(map, level),
        }
    }

    fn object(&mut self, map: &Map<String, Value>, level: usize) {
        if map.is_empty() {
            self.out.push_str("{}");
            return;
        }
        let mut entries: Vec<(&String, &Value)> = map.iter().collect();
        if self.opts.sort_keys {
            entries.sort_by(|a, b| a.0.cmp(b.0));
        }
        self.out.push('{');
        for (i, (k, v)) in entries.into_iter().enumerate() {
            if i > 0 {
                self.out.push_str(self.item_sep);
            }
            self.newline(level + 1);
            json_string(k, self.opts.ensure_ascii, self.out);
            self.out.push_str(self.key_sep);
            self.value(v, level + 1);
        }
        self.newline(level);
        self.out.push('}');
    }
}

fn number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        // serde_json only holds finite floats.
        float_repr(n.as_f64().unwrap_or(0.0))
    }
}

/// Python `json.dumps` string escaping (`ensure_ascii` also escapes non-ASCII as `\uXXXX`,
/// astral characters as surrogate pairs).
fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python `repr(float)`: shortest round-trip digits; positional notation for exponents in
/// -5 < exp < 16 (with `.0` for integral values), else `d.ddde±XX`.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits as "d.ddde[-]x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-5 < exp) && (exp < 16) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                let (a, b) = digits.split_at(int_len as usize);
                format!("{a}.{b}")
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{s}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Python `repr` of a JSON-shaped value (`{'a': [1, None, True]}`), for printing containers.
pub(crate) fn python_repr(v: &Value) -> String {
    let mut out = String::new();
    repr_into(v, &mut out);
    out
}

fn repr_into(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&number(n)),
        Value::String(s) => repr_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_str(k, out);
                out.push_str(": ");
                repr_into(v, out);
            }
            out.push('}');
        }
    }
}

/// Python `repr(str)`: single quotes unless the text has `'` and no `"`.
fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_like_python() {
        for (f, s) in [
            (0.41, "0.41"),
            (1.0, "1.0"),
            (1e-9, "1e-09"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (6.02e23, "6.02e+23"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn dumps_like_python() {
        let v = json!({"b": "부산 <&> '", "a": [1, 2.0, null, true], "c": {}, "d": "\u{1}\n"});
        let opts = DumpOptions::default();
        assert_eq!(
            dumps(&v, &opts),
            r#"{"b": "부산 <&> '", "a": [1, 2.0, null, true], "c": {}, "d": "\u0001\n"}"#
        );
        let opts = DumpOptions {
            indent: Some("  ".into()),
            sort_keys: true,
            ..Default::default()
        };
        assert_eq!(
            dumps(&json!({"b": [1], "a": []}), &opts),
            "{\n  \"a\": [],\n  \"b\": [\n    1\n  ]\n}"
        );
        let opts = DumpOptions {
            ensure_ascii: true,
            separators: Some((",".into(), ":".into())),
            ..Default::default()
        };
        assert_eq!(
            dumps(&json!({"k": "é😀"}), &opts),
            r#"{"k":"\u00e9\ud83d\ude00"}"#
        );
    }

    #[test]
    fn repr_like_python() {
        assert_eq!(
            python_repr(&json!({"a": ["x", "it's", null, false, 1.5]})),
            r#"{'a': ['x', "it's", None, False, 1.5]}"#
        );
    }
}
