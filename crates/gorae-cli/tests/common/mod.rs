//! Paths of the real model files the tests use (fetched by `scripts/fetch_models.py`) and of the
//! shared fixtures. A missing file fails the test with instructions; nothing is skipped silently.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace
#![allow(dead_code)]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("GORAE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"))
}

pub fn shared_dir() -> PathBuf {
    std::env::var_os("GORAE_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"))
}

pub fn smollm2() -> PathBuf {
    let p = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run `python3 scripts/fetch_models.py` first",
        p.display()
    );
    p
}
