//! The GGUF "llama" (SentencePiece) vocabulary path on a small hand-made vocabulary: merges
//! derived from scores, `▁` for spaces with a leading `▁` per text segment (llama.cpp prefixes a
//! space at the start and after every special token, as HF's legacy Llama normalizer does),
//! byte fallback for characters not in the vocabulary, BOS by default.

use gorae_text::{GgufVocab, StreamDecoder, Tokenizer, token_type};

fn toy() -> (Tokenizer, Vec<String>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(token_type::BYTE);
    }
    // Every piece can be built by merging two shorter ones, as in a real SentencePiece BPE.
    for p in [
        "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁hello", "or", "wor",
        "worl", "world", "▁world",
    ] {
        tokens.push(p.to_string());
        types.push(token_type::NORMAL);
    }
    let scores = tokens.iter().map(|t| t.chars().count() as f32).collect();
    let vocab = GgufVocab {
        model: "llama".into(),
        tokens: tokens.clone(),
        scores: Some(scores),
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..GgufVocab::default()
    };
    (
        Tokenizer::from_gguf_vocab(&vocab).expect("toy vocabulary"),
        tokens,
    )
}

#[test]
fn sentencepiece_encode_decode() {
    let (tok, tokens) = toy();
    let id = |s: &str| tokens.iter().position(|t| t == s).expect(s) as u32;
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.stop_ids(), &[2]);

    assert_eq!(
        tok.encode("hello world", false).expect("encode"),
        vec![id("▁hello"), id("▁world")]
    );
    // BOS by default for SentencePiece vocabularies.
    assert_eq!(
        tok.encode("hello", true).expect("encode"),
        vec![1, id("▁hello")]
    );
    // A space is prefixed to the text after a special token too.
    assert_eq!(
        tok.encode("hello</s>world", false).expect("encode"),
        vec![id("▁hello"), 2, id("▁world")]
    );
    // Byte fallback: 'é' is not a piece.
    let ids = tok.encode("hé", false).expect("encode");
    assert_eq!(ids, vec![id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(tok.decode(&ids, false).expect("decode"), "hé");

    // Decoding strips the one leading space the encoder added, keeps special tokens unless
    // asked to skip them.
    let ids = tok.encode("hello world", true).expect("encode");
    assert_eq!(tok.decode(&ids, false).expect("decode"), "<s> hello world");
    assert_eq!(tok.decode(&ids, true).expect("decode"), "hello world");
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2));

    // Streaming gives the same text.
    let ids = tok.encode("hello wörld hé", false).expect("encode");
    let mut dec = StreamDecoder::new(&tok, false);
    let mut out = String::new();
    for &i in &ids {
        out.extend(dec.push(i).expect("push"));
    }
    out.extend(dec.flush().expect("flush"));
    assert_eq!(out, tok.decode(&ids, false).expect("decode"));
    assert_eq!(out, "hello wörld hé");
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<gorae_text::ChatTemplate>();
    assert_send_sync::<gorae_text::TextError>();
}

/// Token bytes (OpenAI's logprob `bytes`) keep a token's leading space and give byte-fallback
/// tokens their one byte, so the bytes of the tokens join into the text's UTF-8.
#[test]
fn sentencepiece_token_bytes_join_into_the_text() {
    let (tok, tokens) = toy();
    let id = |s: &str| tokens.iter().position(|t| t == s).expect(s) as u32;
    assert_eq!(tok.token_bytes(id("▁hello")), b" hello");
    assert_eq!(tok.token_bytes(id("<0xEA>")), [0xea]);
    // "한" is not in the vocabulary: three byte-fallback tokens.
    let ids = tok.encode("hello 한", false).expect("encode");
    let joined: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i)).collect();
    assert_eq!(joined, " hello 한".as_bytes());
}
