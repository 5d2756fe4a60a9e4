//! The GGUF vocabulary path beyond SmolLM2: for several tokenizer.json checkpoints, write the
//! GGUF vocabulary llama.cpp's converter (`convert_hf_to_gguf.py`, `get_vocab_base` +
//! `SpecialVocab`) would write (`gorae_text::gguf_export`, which `gorae convert` uses), read it
//! back through `gorae_formats::gguf`, build the tokenizer with `Tokenizer::from_gguf`, and check
//! the tokenize fixtures' ids through it.
//!
//! The GGUF path follows llama.cpp, not tokenizer.json, so a few cases legitimately differ from
//! Hugging Face; they are listed in `KNOWN_DIFFERENCES` with the reason, and the test fails if
//! an unlisted case differs *or* a listed one stops differing (so the list stays true).

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{fixture_files, ids_of, load_json, tokenizer_dir};
use gorae_formats::gguf::{GgufFile, GgufWriter, MetaValue};
use gorae_text::{Tokenizer, gguf_export};
use serde_json::Value;

/// (tokenizer, tokenizer.ggml.pre)
const CHECKED: &[(&str, &str)] = &[
    ("qwen-2.5", "qwen2"),
    ("deepseek-v3", "deepseek-v3"),
    ("deepseek-r1-distill-llama-8b", "llama-bpe"),
    ("deepseek-r1-distill-qwen-7b", "deepseek-r1-qwen"),
    ("deepseek-v2", "deepseek-llm"),
];

/// Cases where the GGUF path differs from Hugging Face, and why. Every entry here is the same
/// reason: Qwen's tokenizer.json has an NFC normalizer and llama.cpp has none, so text with
/// decomposed characters (NFD Hangul jamo, `e` + U+0301) is tokenized as written. The test
/// proves it: for each listed case, encoding the NFC form through the GGUF path must give the
/// fixture's ids exactly.
const NFC_DIFFERENCES: &[(&str, &str)] = &[
    ("qwen-2.5", "v13_ko_jamo"),
    ("qwen-2.5", "v14_ko_jamo"),
    ("qwen-2.5", "v20_en"),
    ("deepseek-r1-distill-qwen-7b", "v13_ko_jamo"),
    ("deepseek-r1-distill-qwen-7b", "v14_ko_jamo"),
    ("deepseek-r1-distill-qwen-7b", "v20_en"),
];

fn nfc(text: &str) -> String {
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::{NormalizedString, Normalizer};
    let mut n = NormalizedString::from(text);
    NFC.normalize(&mut n).expect("NFC");
    n.get().to_string()
}

/// Writes the GGUF vocabulary llama.cpp's converter would write for `name` (through
/// `gguf_export`, with the pre-tokenizer it detects, which must be `pre`), and reads it back.
fn convert(name: &str, pre: &str) -> GgufFile {
    let dir = tokenizer_dir(name);
    let tj = load_json(&dir.join("tokenizer.json"));
    let config = load_json(&dir.join("tokenizer_config.json"));
    assert_eq!(
        gguf_export::detect_pre(&tj, &config),
        Some(pre),
        "{name}: detected tokenizer.ggml.pre"
    );
    let kv = gguf_export::gguf_tokenizer_metadata(&dir, None, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::from("llama"));
    for (k, v) in kv {
        w.add_kv(k, v);
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).expect("write GGUF");
    GgufFile::from_bytes(bytes).expect("read GGUF back")
}

#[test]
fn gguf_vocab_matches_fixture_ids() {
    let fixtures: BTreeMap<String, Value> = fixture_files("tokenize").into_iter().collect();
    let known: HashSet<(&str, &str)> = NFC_DIFFERENCES.iter().copied().collect();
    let mut seen_known = HashSet::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for &(name, pre) in CHECKED {
        let file = convert(name, pre);
        let tok = Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let hf = Tokenizer::from_dir(&tokenizer_dir(name)).expect("tokenizer.json");
        assert_eq!(tok.n_vocab(), hf.n_vocab(), "{name}: n_vocab");
        assert_eq!(tok.bos_id(), hf.bos_id(), "{name}: bos");
        assert_eq!(tok.eos_id(), hf.eos_id(), "{name}: eos");
        assert_eq!(
            tok.chat_template(),
            hf.chat_template(),
            "{name}: chat template"
        );

        let fixture = &fixtures[name];
        let cases = fixture["cases"].as_array().expect("cases");
        let mut passed = 0;
        for case in cases {
            let id = case["id"].as_str().expect("id");
            let text = case["text"].as_str().expect("text");
            let mut ok = true;
            let listed = known.contains(&(name, id));
            for (field, add_special) in [("ids", false), ("ids_with_special", true)] {
                let want = ids_of(&case[field]);
                let got = tok.encode(text, add_special).expect("encode");
                match (got != want, listed) {
                    (true, false) => {
                        failures.push(format!("{name}/{id}: {field} differ via GGUF"));
                        ok = false;
                    }
                    (false, true) => failures.push(format!(
                        "{name}/{id}: {field} listed as an NFC difference but matches"
                    )),
                    (true, true) => {
                        ok = false;
                        seen_known.insert((name, id));
                        let normalized = tok.encode(&nfc(text), add_special).expect("encode");
                        if normalized != want {
                            failures.push(format!(
                                "{name}/{id}: {field} differ via GGUF even after NFC"
                            ));
                        }
                    }
                    (false, false) => {}
                }
            }
            // Decoding the fixture's ids must give the same text as tokenizer.json does.
            let ids = ids_of(&case["ids"]);
            if tok.decode(&ids, false).expect("decode") != hf.decode(&ids, false).expect("decode") {
                failures.push(format!("{name}/{id}: decode differs via GGUF"));
                ok = false;
            }
            if ok {
                passed += 1;
            }
        }
        println!(
            "gguf({pre}) {name}: {passed}/{} cases identical to the HF fixture ids",
            cases.len()
        );
        total += cases.len();
    }
    println!("gguf vocab: {total} cases checked");
    for (t, c) in NFC_DIFFERENCES {
        if seen_known.contains(&(*t, *c)) {
            println!(
                "known difference {t}/{c}: tokenizer.json NFC-normalizes, llama.cpp does not \
                 (GGUF ids of the NFC text match the fixture)"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `tokenizer.ggml.pre` as llama.cpp's converter picks it (by the hash of a probe text's ids) for
/// every tokenizer gorae ships a fixture of, recognized from tokenizer.json instead.
#[test]
fn pre_tokenizer_is_detected_as_llama_cpp_names_it() {
    let expected = [
        ("deepseek-v3", "deepseek-v3"),
        ("deepseek-v3.1", "deepseek-v3"),
        ("deepseek-r1", "deepseek-v3"),
        ("deepseek-v4", "deepseek-v3"),
        ("deepseek-v2", "deepseek-llm"),
        ("deepseek-v2.5", "deepseek-llm"),
        ("qwen-2.5", "qwen2"),
        ("qwen-3", "qwen2"),
        ("deepseek-r1-0528-qwen3-8b", "qwen2"),
        ("deepseek-r1-distill-qwen-7b", "deepseek-r1-qwen"),
        ("deepseek-r1-distill-llama-8b", "llama-bpe"),
    ];
    for (name, pre) in expected {
        let dir = tokenizer_dir(name);
        let tj = load_json(&dir.join("tokenizer.json"));
        let config = load_json(&dir.join("tokenizer_config.json"));
        assert_eq!(gguf_export::detect_pre(&tj, &config), Some(pre), "{name}");
    }
    // Padding to the model's vocab_size, as the converter does with config.json's: DeepSeek-V3's
    // 129280 embedding rows hold 128815 tokens.
    let kv =
        gguf_export::gguf_tokenizer_metadata(&tokenizer_dir("deepseek-v3"), Some(129280), None)
            .expect("metadata");
    let tokens = kv
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .and_then(|a| a.as_strings())
        .expect("tokens");
    assert_eq!(tokens.len(), 129280);
    assert_eq!(tokens[129279], "[PAD129279]");
    assert!(
        gguf_export::gguf_tokenizer_metadata(&tokenizer_dir("deepseek-v3"), Some(1000), None)
            .is_err(),
        "a vocab_size smaller than the tokenizer is an error"
    );
}
