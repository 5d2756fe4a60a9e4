//! The `Tokenizer` API around encode/decode: BOS/EOS, stop ids, special tokens, vocabulary
//! lookups, the special-token strings templates see, and where the chat template comes from.

mod common;

use common::{load_tokenizer, tokenizer_dir};
use gorae_text::Tokenizer;
use serde_json::json;

#[test]
fn stop_ids_and_specials() {
    let qwen = load_tokenizer("qwen-2.5");
    assert_eq!(qwen.eos_id(), Some(151645));
    assert_eq!(qwen.bos_id(), None);
    assert_eq!(qwen.stop_ids(), &[151645, 151643]); // <|im_end|>, <|endoftext|>
    assert!(qwen.is_special(151644));
    assert!(!qwen.is_special(151657)); // <tool_call> is an added but not special token
    assert_eq!(qwen.token_to_id("<|im_start|>"), Some(151644));
    assert_eq!(qwen.id_to_token(151644).as_deref(), Some("<|im_start|>"));
    assert_eq!(qwen.token_to_id("Ġthe"), Some(279));
    assert_eq!(qwen.id_to_token(279).as_deref(), Some("Ġthe"));
    assert_eq!(qwen.id_to_token(10_000_000), None);
    assert_eq!(
        serde_json::Value::Object(qwen.special_tokens_map()),
        json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    );
    assert!(
        qwen.chat_template()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );

    let v3 = load_tokenizer("deepseek-v3");
    assert_eq!(v3.stop_ids(), &[1]);
    assert_eq!(v3.encode("hi", true).expect("encode")[0], 0);
    assert!(v3.is_special(0) && v3.is_special(1));

    let distill = load_tokenizer("deepseek-r1-distill-qwen-7b");
    assert_eq!(distill.eos_id(), Some(151643));
    assert_eq!(distill.stop_ids()[0], 151643);
    assert!(!distill.is_special(151644)); // <｜User｜> is not special in this tokenizer.json

    let smol = load_tokenizer("smollm2");
    assert_eq!(smol.eos_id(), Some(2));
    assert_eq!(smol.bos_id(), Some(1));
    assert_eq!(smol.stop_ids(), &[2, 0]); // <|im_end|>, <|endoftext|>
    assert_eq!(smol.n_vocab(), 49152);
    assert_eq!(
        serde_json::Value::Object(smol.special_tokens_map()),
        json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"})
    );
    // SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token = false).
    assert_eq!(
        smol.encode("hi", true).expect("encode"),
        smol.encode("hi", false).expect("encode")
    );
}

/// A scratch copy of a tokenizer directory whose tokenizer_config.json / chat_template.jinja
/// the test rewrites.
fn scratch_copy(name: &str, tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gorae-text-api-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    std::fs::copy(
        tokenizer_dir(name).join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("copy");
    std::fs::copy(
        tokenizer_dir(name).join("tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .expect("copy");
    dir
}

#[test]
fn chat_template_jinja_wins_over_config() {
    let dir = scratch_copy("qwen-2.5", "jinja");
    let from_config = Tokenizer::from_dir(&dir).expect("load");
    assert!(
        from_config
            .chat_template()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages[0].content }}").expect("write");
    let tok = Tokenizer::from_dir(&dir).expect("load");
    assert_eq!(tok.chat_template(), Some("{{ messages[0].content }}"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn add_special_follows_config_then_post_processor() {
    let dir = scratch_copy("deepseek-v3", "addspecial");
    let text = "안녕하세요";
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");

    // add_bos_token + add_eos_token.
    cfg["add_eos_token"] = json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let tok = Tokenizer::from_dir(&dir).expect("load");
    let plain = tok.encode(text, false).expect("encode");
    let with = tok.encode(text, true).expect("encode");
    assert_eq!(with.first(), Some(&0));
    assert_eq!(with.last(), Some(&1));
    assert_eq!(&with[1..with.len() - 1], &plain[..]);

    // Neither flag: the tokenizer.json post-processor decides (ByteLevel adds nothing).
    let obj = cfg.as_object_mut().expect("object");
    obj.remove("add_bos_token");
    obj.remove("add_eos_token");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let tok = Tokenizer::from_dir(&dir).expect("load");
    assert_eq!(tok.encode(text, true).expect("encode"), plain);

    // No tokenizer_config.json at all still loads (no template, no BOS/EOS strings).
    std::fs::remove_file(&cfg_path).expect("rm");
    let tok = Tokenizer::from_dir(&dir).expect("load");
    assert_eq!(tok.chat_template(), None);
    assert_eq!(tok.eos_id(), None);
    assert_eq!(tok.encode(text, false).expect("encode"), plain);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn special_tokens_in_text_are_matched_lookalikes_are_not() {
    let v3 = load_tokenizer("deepseek-v3");
    let user = v3.token_to_id("<｜User｜>").expect("User token");
    let ids = v3.encode("a<｜User｜>b", false).expect("encode");
    assert!(ids.contains(&user));
    let ids = v3.encode("a<|User|>b", false).expect("encode");
    assert!(!ids.contains(&user));
    // Decoding with skip_special drops BOS/EOS but keeps non-special added tokens' text.
    let ids = v3.encode("x", true).expect("encode");
    assert_eq!(v3.decode(&ids, true).expect("decode"), "x");
    assert_eq!(
        v3.decode(&ids, false).expect("decode"),
        "<｜begin▁of▁sentence｜>x"
    );
}

/// Byte-level BPE (SmolLM2): the bytes of each token of a text join into its UTF-8, also
/// where a token holds part of a Hangul syllable, which decodes alone to U+FFFD.
#[test]
fn byte_level_token_bytes_join_into_the_text() {
    let smol = load_tokenizer("smollm2");
    for text in [
        "Hello, world!\n\tTabs  and  spaces",
        "한국어 모델은 고래입니다",
        "naïve café ½",
    ] {
        let ids = smol.encode(text, false).expect("encode");
        let joined: Vec<u8> = ids.iter().flat_map(|&i| smol.token_bytes(i)).collect();
        assert_eq!(String::from_utf8_lossy(&joined), text);
        assert_eq!(joined, text.as_bytes());
    }
    let eos = smol.eos_id().expect("eos");
    assert_eq!(
        smol.token_bytes(eos),
        smol.decode(&[eos], false).expect("decode").as_bytes()
    );
}
