//! Shared helpers for the fixture tests: where the fixtures and model files live.
//!
//! Missing files are a hard failure with instructions, never a silent skip: a test that
//! passes because it found nothing to check hides exactly the regressions it exists for.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `$GORAE_SHARED_DIR` or `<crate>/../../../shared`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("GORAE_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// `$GORAE_MODELS_DIR` or `<crate>/../../models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("GORAE_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

pub fn fixtures_dir() -> PathBuf {
    let dir = shared_dir().join("fixtures/text");
    assert!(
        dir.join("manifest.json").exists(),
        "text fixtures not found at {} (set GORAE_SHARED_DIR to the shared reference directory)",
        dir.display()
    );
    dir
}

/// Directory holding tokenizer.json/tokenizer_config.json for a fixture tokenizer name.
pub fn tokenizer_dir(name: &str) -> PathBuf {
    let dir = models_dir().join("tokenizers").join(name);
    assert!(
        dir.join("tokenizer.json").exists(),
        "{}/tokenizer.json is missing: run `python3 scripts/fetch_models.py` from the workspace \
         root (or set GORAE_MODELS_DIR)",
        dir.display()
    );
    dir
}

pub fn smollm2_gguf() -> PathBuf {
    let path = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `python3 scripts/fetch_models.py` from the workspace root \
         (or set GORAE_MODELS_DIR)",
        path.display()
    );
    path
}

pub fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// All `*.json` files in `fixtures/text/<sub>`, sorted, as (stem, parsed JSON).
pub fn fixture_files(sub: &str) -> Vec<(String, Value)> {
    let dir = fixtures_dir().join(sub);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let stem = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (stem, load_json(&p))
        })
        .collect()
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

/// Loads the tokenizer a fixture names: tokenizer.json for all but smollm2, which only
/// exists as a GGUF.
pub fn load_tokenizer(name: &str) -> gorae_text::Tokenizer {
    if name == "smollm2" {
        load_smollm2()
    } else {
        gorae_text::Tokenizer::from_dir(&tokenizer_dir(name))
            .unwrap_or_else(|e| panic!("loading tokenizer {name}: {e}"))
    }
}

pub fn load_smollm2() -> gorae_text::Tokenizer {
    let path = smollm2_gguf();
    let file = gorae_formats::gguf::GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    gorae_text::Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("smollm2 from GGUF: {e}"))
}

/// First differing position, for readable failure messages on long id lists.
pub fn first_diff<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
