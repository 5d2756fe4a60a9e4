//! The GGUF vocabulary path beyond SmolLM2: for several tokenizer.json checkpoints, write the
//! GGUF vocabulary llama.cpp's converter (`convert_hf_to_gguf.py`, `get_vocab_base` +
//! `SpecialVocab`) would write, read it back through `gorae_formats::gguf`, build the
//! tokenizer with `Tokenizer::from_gguf`, and check the tokenize fixtures' ids through it.
//!
//! The GGUF path follows llama.cpp, not tokenizer.json, so a few cases legitimately differ from
//! Hugging Face; they are listed in `KNOWN_DIFFERENCES` with the reason, and the test fails if
//! an unlisted case differs *or* a listed one stops differing (so the list stays true).

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{fixture_files, ids_of, load_json, tokenizer_dir};
use gorae_formats::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue};
use gorae_text::{Tokenizer, token_type};
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

/// `convert_hf_to_gguf.py` `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Writes the GGUF vocabulary the llama.cpp converter would write for `name`, and reads it
/// back.
fn convert(name: &str, pre: &str) -> GgufFile {
    let dir = tokenizer_dir(name);
    let tj = load_json(&dir.join("tokenizer.json"));
    let config = load_json(&dir.join("tokenizer_config.json"));

    let mut by_id: BTreeMap<u64, (String, i32)> = BTreeMap::new();
    for (tok, id) in tj["model"]["vocab"].as_object().expect("vocab") {
        by_id.insert(id.as_u64().expect("id"), (tok.clone(), token_type::NORMAL));
    }
    for added in tj["added_tokens"].as_array().expect("added_tokens") {
        let id = added["id"].as_u64().expect("id");
        let content = added["content"].as_str().expect("content").to_string();
        let special = added["special"].as_bool().expect("special");
        let entry = if special || looks_special(&content) {
            (content, token_type::CONTROL)
        } else {
            (content.replace('▁', " "), token_type::USER_DEFINED)
        };
        by_id.insert(id, entry);
    }
    let n = by_id.keys().max().expect("non-empty") + 1;
    let mut tokens = Vec::with_capacity(n as usize);
    let mut types = Vec::with_capacity(n as usize);
    for i in 0..n {
        match by_id.remove(&i) {
            Some((t, ty)) => {
                tokens.push(t);
                types.push(ty);
            }
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(token_type::UNUSED);
            }
        }
    }
    let merges: Vec<String> = tj["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().expect("left"),
                pair[1].as_str().expect("right")
            ),
            other => panic!("odd merge {other}"),
        })
        .collect();

    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::from("llama"));
    w.add_kv("tokenizer.ggml.model", MetaValue::from("gpt2"));
    w.add_kv("tokenizer.ggml.pre", MetaValue::from(pre));
    w.add_kv(
        "tokenizer.ggml.tokens",
        MetaArray::String(tokens.clone()).into(),
    );
    w.add_kv("tokenizer.ggml.token_type", MetaArray::I32(types).into());
    w.add_kv("tokenizer.ggml.merges", MetaArray::String(merges).into());
    // SpecialVocab: ids of the config's special token strings, and the add_* flags.
    let token_id = |key: &str| -> Option<u32> {
        let v = &config[key];
        let s = v.as_str().or_else(|| v["content"].as_str())?;
        tokens.iter().position(|t| t == s).map(|i| i as u32)
    };
    for (key, gguf_key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = token_id(key) {
            w.add_kv(gguf_key, MetaValue::from(id));
        }
    }
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = config[key].as_bool() {
            w.add_kv(format!("tokenizer.ggml.{key}"), MetaValue::from(b));
        }
    }
    if let Some(t) = config["chat_template"].as_str() {
        w.add_kv("tokenizer.chat_template", MetaValue::from(t));
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
