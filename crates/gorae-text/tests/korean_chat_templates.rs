//! The EXAONE 3.5, EXAONE 4.0 and HyperCLOVA X SEED Think chat templates rendered by gorae's
//! `ChatTemplate` must equal, byte for byte, what transformers 5.24's `apply_chat_template` rendered
//! from the same template text (`tests/fixtures/chat_korean/*.json`, made by `make_korean_chat.py`
//! there). The goldens have no ids: none of these tokenizers is available to this project, so the
//! text is what is compared. Cases where the template raised must fail here with the matching kind
//! of error.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

use gorae_text::{ChatTemplate, TextError};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_korean")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Renders every case; returns (cases, failures).
fn check(name: &str) -> (usize, Vec<String>) {
    let f = fixture(name);
    let source = f["chat_template"].as_str().unwrap();
    let template_file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat_korean")
        .join(format!("{name}.jinja"));
    assert_eq!(
        std::fs::read_to_string(template_file).unwrap(),
        source,
        "{name}: the .jinja file and the golden's template differ; rerun make_korean_chat.py"
    );
    let specials = f["special_tokens_map"].as_object().unwrap().clone();
    let mut template = ChatTemplate::new(source, specials).unwrap();
    template.set_fixed_time(Some(1_767_225_600));
    let mut failures = Vec::new();
    let cases = f["cases"].as_array().unwrap();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let tools = case.get("tools").filter(|t| !t.is_null());
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let kwargs = case["kwargs"].as_object().unwrap();
        let got = template.render(&case["messages"], tools, agp, kwargs);
        match (got, case.get("rendered").and_then(Value::as_str)) {
            (Ok(text), Some(want)) if text == want => {}
            (Ok(text), Some(want)) => failures.push(format!(
                "{name}/{id}: rendered differs\n   got  {text:?}\n   want {want:?}"
            )),
            (Err(e), Some(_)) => failures.push(format!("{name}/{id}: error {e}")),
            (Err(TextError::TemplateRaised(_)), None)
                if case["error"]["type"] == "TemplateError" => {}
            // Jinja2's UndefinedError (an attribute of a missing value used) is the `undefined`
            // kind of render error here.
            (Err(TextError::TemplateRender { kind, .. }), None)
                if kind == "undefined" && case["error"]["type"] == "UndefinedError" => {}
            (got, None) => failures.push(format!(
                "{name}/{id}: expected {} but got {got:?}",
                case["error"]
            )),
        }
    }
    (cases.len(), failures)
}

#[test]
fn exaone_templates_render_as_transformers_does() {
    let mut failures = Vec::new();
    let mut total = 0;
    for name in ["exaone3.5", "exaone4"] {
        let (n, f) = check(name);
        println!("{name}: {}/{n} cases match", n - f.len());
        total += n;
        failures.extend(f);
    }
    assert!(
        total >= 20,
        "only {total} cases: the goldens are incomplete"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn hyperclovax_seed_think_template_renders_as_transformers_does() {
    let (n, failures) = check("hyperclovax_seed_think");
    println!(
        "hyperclovax_seed_think: {}/{n} cases match",
        n - failures.len()
    );
    assert!(n >= 20, "only {n} cases: the goldens are incomplete");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
