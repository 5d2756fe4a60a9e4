//! `StreamDecoder` over every corpus text and several tokenizers (byte-level BPE from
//! tokenizer.json and from GGUF, and a SentencePiece vocabulary with byte fallback): the
//! pushed pieces concatenate to exactly `decode()`, and no piece carries U+FFFD unless
//! `decode()` itself does (i.e. characters split over tokens are never emitted half-done).

mod common;

use common::{fixtures_dir, load_json, load_tokenizer};
use gorae_text::{GgufVocab, StreamDecoder, Tokenizer, token_type};

fn corpus() -> Vec<String> {
    let corpus = load_json(&fixtures_dir().join("corpus.json"));
    corpus["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["text"].as_str().expect("text").to_string())
        .collect()
}

/// Streams `ids` and checks the two properties; returns the number of pieces.
fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool, label: &str) -> usize {
    let full = tok.decode(ids, skip_special).expect("decode");
    let mut dec = StreamDecoder::new(tok, skip_special);
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(p) = dec.push(id).unwrap_or_else(|e| panic!("{label}: {e}")) {
            pieces.push(p);
        }
    }
    if let Some(p) = dec.flush().expect("flush") {
        pieces.push(p);
    }
    let joined: String = pieces.concat();
    assert_eq!(joined, full, "{label}: concatenated stream != decode()");
    if !full.contains('\u{FFFD}') {
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "{label}: piece {p:?} has U+FFFD");
        }
    }
    pieces.len()
}

/// A small SentencePiece-style vocabulary: byte pieces for every byte, a few word pieces.
pub fn toy_spm() -> Tokenizer {
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
    let pieces = [
        "▁",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "▁h",
        "he",
        "ll",
        "llo",
        "hello",
        "▁hello",
        "▁w",
        "or",
        "orld",
        "▁world",
        "안",
        "녕",
        "▁안",
        "▁안녕",
    ];
    for p in pieces {
        tokens.push(p.to_string());
        types.push(token_type::NORMAL);
    }
    // Longer pieces score higher, so merges build whole words.
    let scores = tokens
        .iter()
        .map(|t| t.chars().count() as f32)
        .collect::<Vec<_>>();
    let vocab = GgufVocab {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        ..GgufVocab::default()
    };
    Tokenizer::from_gguf_vocab(&vocab).expect("toy SPM vocabulary")
}

#[test]
fn stream_pieces_concatenate_to_decode() {
    let texts = corpus();
    let names = [
        "deepseek-v3",
        "deepseek-v2",
        "qwen-2.5",
        "deepseek-r1-distill-llama-8b",
        "smollm2",
    ];
    let mut tokenizers: Vec<(String, Tokenizer)> = names
        .iter()
        .map(|n| (n.to_string(), load_tokenizer(n)))
        .collect();
    tokenizers.push(("toy-spm".into(), toy_spm()));

    let mut streams = 0;
    for (name, tok) in &tokenizers {
        for (i, text) in texts.iter().enumerate() {
            // With special tokens around and inside the text (inside: at the first token
            // boundary past the middle that is also a character boundary), both skip modes.
            let mut ids = tok.encode(text, true).expect("encode");
            if let Some(eos) = tok.eos_id() {
                let at = (ids.len() / 2..ids.len())
                    .find(|&k| {
                        !tok.decode(&ids[..k], false)
                            .expect("decode")
                            .ends_with('\u{FFFD}')
                    })
                    .unwrap_or(ids.len());
                ids.insert(at, eos);
                ids.push(eos);
            }
            for skip in [false, true] {
                check_stream(tok, &ids, skip, &format!("{name}/line {i}/skip={skip}"));
                streams += 1;
            }
        }
    }
    println!(
        "stream decoder: {streams} streams over {} texts",
        texts.len()
    );
}

#[test]
fn stream_holds_back_split_characters() {
    // One Hangul syllable and an emoji spelled as raw bytes in the toy SentencePiece
    // vocabulary: nothing may come out until the last byte of each character arrives.
    let tok = toy_spm();
    let byte = |b: u8| {
        tok.token_to_id(&format!("<0x{b:02X}>"))
            .expect("byte piece")
    };
    let mut dec = StreamDecoder::new(&tok, false);
    let text = "한😀";
    let mut out = Vec::new();
    for &b in text.as_bytes() {
        out.push(dec.push(byte(b)).expect("push"));
    }
    assert_eq!(out[..2], [None, None]);
    assert_eq!(out[2].as_deref(), Some("한"));
    assert_eq!(out[3..6], [None, None, None]);
    assert_eq!(out[6].as_deref(), Some("😀"));

    // A stream that ends inside a character: flush gives what decode() gives.
    let ids = [byte(0xED), byte(0x95)];
    let mut dec = StreamDecoder::new(&tok, false);
    assert_eq!(dec.push(ids[0]).expect("push"), None);
    assert_eq!(dec.push(ids[1]).expect("push"), None);
    let rest = dec.flush().expect("flush").expect("something");
    assert_eq!(rest, tok.decode(&ids, false).expect("decode"));
}

#[test]
fn stream_survives_invalid_bytes() {
    // A special token in the middle of a character's bytes: HF's ByteFallback turns the whole
    // byte run into U+FFFD, including the complete character before it, which the stream had
    // already emitted. The stream must keep going and agree with decode() from there on.
    let tok = toy_spm();
    let byte = |b: u8| {
        tok.token_to_id(&format!("<0x{b:02X}>"))
            .expect("byte piece")
    };
    let mut ids: Vec<u32> = "대".bytes().map(byte).collect();
    ids.extend([byte(0xEC), byte(0xA0), 2]);
    ids.extend("안".bytes().map(byte));
    let mut dec = StreamDecoder::new(&tok, false);
    let mut out = String::new();
    for &id in &ids {
        if let Some(p) = dec.push(id).expect("push never fails on odd bytes") {
            out.push_str(&p);
        }
    }
    out.extend(dec.flush().expect("flush"));
    let full = tok.decode(&ids, false).expect("decode");
    assert_eq!(full, "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}</s>안");
    assert_eq!(out, "대\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}</s>안");
}

#[test]
fn stream_of_byte_level_emoji_sequence() {
    // ZWJ emoji and flags are several byte-level tokens each in DeepSeek-V3.
    let tok = load_tokenizer("deepseek-v3");
    let text = "👨‍👩‍👧‍👦 🇰🇷 🏴󠁧󠁢󠁳󠁣󠁴󠁿 👍🏽";
    let ids = tok.encode(text, false).expect("encode");
    assert!(ids.len() > 8, "expected multi-token emoji");
    let n = check_stream(&tok, &ids, false, "emoji");
    assert!(n < ids.len(), "some tokens must have been held back");
}
