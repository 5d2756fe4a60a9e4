//! Every case of every `fixtures/text/chat/*.json`, rendered with the model's own template
//! (from models/tokenizers/<name>/tokenizer_config.json, or the SmolLM2 GGUF) and compared byte
//! for byte with Python transformers 5.24 + Jinja2 3.1.6; the rendered prompt's ids are
//! compared too. Error cases must fail with the same kind of error.
//!
//! Cases with a `none_kept` outcome (a message had a null value) pass if we produce either
//! the default outcome (null keys removed, transformers' `apply_chat_template`) or the
//! none-kept one; both modes are also checked separately.

mod common;

use common::{first_diff, fixture_files, ids_of, load_tokenizer, tokenizer_dir};
use gorae_text::{ChatTemplate, TextError, Tokenizer};
use serde_json::{Map, Value};

/// What the fixture expects from one rendering.
enum Expected<'a> {
    Rendered { text: &'a str, ids: &'a Value },
    Error { ty: &'a str, message: &'a str },
}

fn expected(v: &Value) -> Expected<'_> {
    if let Some(text) = v.get("rendered").and_then(Value::as_str) {
        Expected::Rendered {
            text,
            ids: &v["ids"],
        }
    } else {
        let e = &v["error"];
        Expected::Error {
            ty: e["type"].as_str().expect("error type"),
            message: e["message"].as_str().expect("error message"),
        }
    }
}

/// Does our error correspond to the Python exception type?
/// Jinja2's UndefinedError is our `undefined` kind; Python TypeErrors (str + dict,
/// `in` on None) surface as MiniJinja invalid operations.
fn error_matches(err: &TextError, ty: &str) -> bool {
    match (err, ty) {
        (TextError::TemplateRender { kind, .. }, "UndefinedError") => kind == "undefined",
        (TextError::TemplateRender { kind, .. }, "TypeError") => kind == "invalid_operation",
        (TextError::TemplateRaised(_), "TemplateError") => true,
        _ => false,
    }
}

/// Checks one outcome; returns a description of the mismatch, if any.
fn check(
    tok: &Tokenizer,
    got: &Result<String, TextError>,
    want: &Expected<'_>,
) -> Result<(), String> {
    match (got, want) {
        (Ok(text), Expected::Rendered { text: want, ids }) => {
            if text != want {
                let at = first_diff(text.as_bytes(), want.as_bytes());
                let lo = text.floor_char_boundary(at.saturating_sub(40));
                let lo2 = want.floor_char_boundary(at.saturating_sub(40));
                return Err(format!(
                    "rendered differs at byte {at}:\n   got  {:?}\n   want {:?}",
                    &text[lo..text.floor_char_boundary((at + 80).min(text.len()))],
                    &want[lo2..want.floor_char_boundary((at + 80).min(want.len()))]
                ));
            }
            let got_ids = tok.encode(text, false).map_err(|e| e.to_string())?;
            let want_ids = ids_of(ids);
            if got_ids != want_ids {
                let at = first_diff(&got_ids, &want_ids);
                return Err(format!("ids differ at {at}"));
            }
            Ok(())
        }
        (Err(e), Expected::Error { ty, message }) => {
            if error_matches(e, ty) {
                Ok(())
            } else {
                Err(format!("error {e} does not match {ty}: {message}"))
            }
        }
        (Ok(text), Expected::Error { ty, message }) => Err(format!(
            "rendered {:?}.. but Python raised {ty}: {message}",
            &text[..text.floor_char_boundary(text.len().min(120))]
        )),
        (Err(e), Expected::Rendered { .. }) => Err(format!("error {e}")),
    }
}

fn own_template(name: &str) -> (String, Map<String, Value>) {
    let tok = if name == "smollm2" {
        common::load_smollm2()
    } else {
        Tokenizer::from_dir(&tokenizer_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let template = tok
        .chat_template()
        .unwrap_or_else(|| panic!("{name} has no chat template"))
        .to_string();
    (template, tok.special_tokens_map())
}

#[test]
fn chat_fixtures() {
    let mut total = 0usize;
    let mut failures: Vec<String> = Vec::new();
    for (file, fixture) in fixture_files("chat") {
        let name = fixture["template"].as_str().expect("template name");
        let (source, specials) = own_template(name);
        assert_eq!(
            source,
            fixture["chat_template"].as_str().expect("chat_template"),
            "{name}: the model's template differs from the fixture's"
        );
        let fixture_specials = fixture["special_tokens_map"]
            .as_object()
            .expect("special_tokens_map");
        assert_eq!(&specials, fixture_specials, "{name}: special_tokens_map");
        let tok = load_tokenizer(fixture["tokenizer"].as_str().expect("tokenizer"));

        let mut template =
            ChatTemplate::new(&source, specials.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut keep_none = ChatTemplate::new(&source, specials).expect("compiles");
        keep_none.set_keep_none(true);
        template.set_fixed_time(Some(1_767_225_600));

        let cases = fixture["cases"].as_array().expect("cases");
        let (mut passed, mut via_none_kept, mut none_kept_checked) = (0usize, 0usize, 0usize);
        for case in cases {
            let id = case["id"].as_str().expect("id");
            let tools = case.get("tools").filter(|t| !t.is_null());
            let agp = case["add_generation_prompt"].as_bool().expect("agp");
            let kwargs = case["kwargs"].as_object().expect("kwargs");
            let got = template.render(&case["messages"], tools, agp, kwargs);
            let main = check(&tok, &got, &expected(case));
            let alt = case
                .get("none_kept")
                .map(|nk| check(&tok, &got, &expected(nk)));
            match (main, alt) {
                (Ok(()), _) => passed += 1,
                (Err(_), Some(Ok(()))) => {
                    passed += 1;
                    via_none_kept += 1;
                }
                (Err(e), _) => failures.push(format!("{file}/{id}: {e}")),
            }
            // The none-kept renderer on its own must match the none_kept outcome.
            if let Some(nk) = case.get("none_kept") {
                let got = keep_none.render(&case["messages"], tools, agp, kwargs);
                if let Err(e) = check(&tok, &got, &expected(nk)) {
                    failures.push(format!("{file}/{id} (none kept): {e}"));
                }
                none_kept_checked += 1;
            }
        }
        println!(
            "chat/{file}.json: {passed}/{} cases pass ({via_none_kept} only via their none_kept \
             outcome; {none_kept_checked} none_kept outcomes also checked on their own)",
            cases.len()
        );
        total += cases.len();
    }
    println!("chat fixtures: {total} cases in total");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
