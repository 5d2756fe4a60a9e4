//! Every case of every `fixtures/text/tokenize/*.json` (made with Python transformers 5.24 /
//! tokenizers 0.23.3): ids without and with special tokens, and both decodes. smollm2 is
//! built from its GGUF, the others from tokenizer.json.

mod common;

use common::{first_diff, fixture_files, ids_of, load_tokenizer};
use serde_json::Value;

#[test]
fn tokenize_fixtures() {
    let mut total = 0usize;
    let mut failures: Vec<String> = Vec::new();
    for (file, fixture) in fixture_files("tokenize") {
        let name = fixture["tokenizer"]
            .as_str()
            .expect("tokenizer name")
            .to_string();
        assert_eq!(name, file, "file name and tokenizer name differ");
        let tok = load_tokenizer(&name);

        let special = &fixture["special"];
        let want_bos = special["bos_id"].as_u64().map(|x| x as u32);
        let want_eos = special["eos_id"].as_u64().map(|x| x as u32);
        if tok.bos_id() != want_bos || tok.eos_id() != want_eos {
            failures.push(format!(
                "{name}: bos/eos {:?}/{:?}, fixture {want_bos:?}/{want_eos:?}",
                tok.bos_id(),
                tok.eos_id()
            ));
        }
        let want_n = special["vocab_size_with_added"]
            .as_u64()
            .expect("vocab size") as usize;
        if tok.n_vocab() != want_n {
            failures.push(format!("{name}: n_vocab {} != {want_n}", tok.n_vocab()));
        }

        let cases = fixture["cases"].as_array().expect("cases");
        let mut passed = 0usize;
        for case in cases {
            let id = case["id"].as_str().expect("case id");
            let text = case["text"].as_str().expect("text");
            let mut ok = true;
            let mut check_ids = |what: &str, got: Vec<u32>, want: &Value| {
                let want = ids_of(want);
                if got != want {
                    let at = first_diff(&got, &want);
                    failures.push(format!(
                        "{name}/{id}: {what} differ at {at}: got {:?}.. want {:?}..",
                        &got[at..got.len().min(at + 8)],
                        &want[at..want.len().min(at + 8)]
                    ));
                    ok = false;
                }
            };
            check_ids(
                "ids",
                tok.encode(text, false).expect("encode"),
                &case["ids"],
            );
            check_ids(
                "ids_with_special",
                tok.encode(text, true).expect("encode"),
                &case["ids_with_special"],
            );
            let decoded = tok.decode(&ids_of(&case["ids"]), false).expect("decode");
            if decoded != case["decoded"].as_str().expect("decoded") {
                failures.push(format!("{name}/{id}: decoded {decoded:?}"));
                ok = false;
            }
            let skip = tok
                .decode(&ids_of(&case["ids_with_special"]), true)
                .expect("decode");
            if skip
                != case["decoded_skip_special"]
                    .as_str()
                    .expect("decoded_skip_special")
            {
                failures.push(format!("{name}/{id}: decoded_skip_special {skip:?}"));
                ok = false;
            }
            if ok {
                passed += 1;
            }
        }
        println!("tokenize/{file}.json: {passed}/{} cases pass", cases.len());
        total += cases.len();
    }
    println!("tokenize fixtures: {total} cases in total");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
