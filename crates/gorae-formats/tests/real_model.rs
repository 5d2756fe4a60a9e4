//! Opens the real SmolLM2-135M GGUF that `scripts/fetch_models.py` downloads. Never skipped: a
//! missing file fails with instructions, so CI cannot pass without exercising a real file.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

use std::path::PathBuf;

use gorae_formats::gguf::{GgufFile, GgufWriter};
use gorae_kernels::GgmlType;

fn models_dir() -> PathBuf {
    match std::env::var_os("GORAE_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

#[test]
fn smollm2_q4_1_opens_and_matches_known_layout() {
    let path = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `python3 scripts/fetch_models.py` from the repository root \
         (or set GORAE_MODELS_DIR to a directory holding smollm2/)",
        path.display()
    );
    let f = GgufFile::open(&path).unwrap();
    assert!(matches!(f.version(), 2 | 3), "version {}", f.version());
    assert_eq!(f.architecture(), Some("llama"));
    let n = f.tensors().len();
    assert!((250..=300).contains(&n), "{n} tensors");

    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.shape, &[49152, 576]);
    assert_eq!(embd.ty, GgmlType::Q8_0);
    assert_eq!(embd.data.len(), 49152 * 576 / 32 * 34);

    let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens.as_strings().unwrap().len(), 49152);
    assert_eq!(
        f.get("llama.embedding_length").and_then(|v| v.as_u32()),
        Some(576)
    );
    // Every tensor view is reachable and sized as its info says.
    for t in f.tensors() {
        let v = f.tensor(&t.name).unwrap();
        assert_eq!(v.data.len(), t.n_bytes);
        assert_eq!(v.shape, t.shape.as_slice());
    }
    // llama.cpp's writer and ours lay files out the same way: rewriting reproduces every byte.
    let mut rewritten = Vec::new();
    GgufWriter::from_gguf(&f).write_to(&mut rewritten).unwrap();
    assert_eq!(rewritten.len(), f.as_bytes().len());
    assert!(rewritten == f.as_bytes(), "rewritten file differs");
    println!(
        "version {} alignment {} tensors {} kv {}",
        f.version(),
        f.alignment(),
        n,
        f.metadata().len()
    );
}
