//! Hugging Face model-directory JSON files (`config.json`, `generation_config.json`).
//!
//! Only reading and JSON well-formedness live here; interpreting the numbers (and checking them
//! against the weights) is the model crate's job, which gets the raw `serde_json::Value` so each
//! family can read the keys it knows. Errors name the file and, for bad JSON, the line and column.

use std::path::Path;

use serde_json::Value;

use crate::FormatError;

/// Config files larger than this are refused before reading (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The JSON configs of a Hugging Face model directory.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfigs {
    /// `config.json`: architecture and hyperparameters.
    pub config: Value,
    /// `generation_config.json` when present: default sampling settings and EOS ids.
    pub generation_config: Option<Value>,
}

/// Reads and parses `dir/name` as a JSON object.
pub fn read_json(dir: &Path, name: &str) -> Result<Value, FormatError> {
    let path = dir.join(name);
    let meta = std::fs::metadata(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FormatError::MissingFile { path: path.clone() }
        } else {
            FormatError::io(&path, e)
        }
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(FormatError::io(
            &path,
            std::io::Error::other(format!(
                "{} bytes, over the {MAX_CONFIG_BYTES}-byte cap for a JSON config",
                meta.len()
            )),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| FormatError::io(&path, e))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| FormatError::Json {
        path: path.clone(),
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
    })?;
    if !value.is_object() {
        return Err(FormatError::JsonNotObject { path });
    }
    Ok(value)
}

/// Reads `config.json` (required) and `generation_config.json` (optional) from `dir`.
pub fn load_hf_configs(dir: &Path) -> Result<HfConfigs, FormatError> {
    let config = read_json(dir, "config.json")?;
    let generation_config = match read_json(dir, "generation_config.json") {
        Ok(v) => Some(v),
        Err(FormatError::MissingFile { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(HfConfigs {
        config,
        generation_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        for (name, text) in files {
            if let Err(e) = std::fs::write(dir.path().join(name), text) {
                panic!("{e}");
            }
        }
        dir
    }

    #[test]
    fn loads_config_and_optional_generation_config() {
        let d = dir_with(&[("config.json", r#"{"model_type": "llama", "a": 1, "b": 2}"#)]);
        let Ok(c) = load_hf_configs(d.path()) else {
            panic!("load")
        };
        assert_eq!(c.config["model_type"], "llama");
        // preserve_order: keys stay in file order.
        let keys: Vec<_> = c
            .config
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .collect();
        assert_eq!(keys, ["model_type", "a", "b"]);
        assert!(c.generation_config.is_none());

        let d = dir_with(&[
            ("config.json", "{}"),
            ("generation_config.json", r#"{"eos_token_id": [1, 2]}"#),
        ]);
        let Ok(c) = load_hf_configs(d.path()) else {
            panic!("load")
        };
        assert_eq!(
            c.generation_config.map(|g| g["eos_token_id"][1].clone()),
            Some(2.into())
        );
    }

    #[test]
    fn missing_config_is_named() {
        let d = dir_with(&[]);
        match load_hf_configs(d.path()) {
            Err(FormatError::MissingFile { path }) => assert!(path.ends_with("config.json")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_json_reports_line_and_column() {
        let d = dir_with(&[("config.json", "{\n  \"a\": 1,\n  \"b\": ]\n}")]);
        match read_json(d.path(), "config.json") {
            Err(FormatError::Json { line, column, .. }) => {
                assert_eq!(line, 3);
                assert_eq!(column, 8);
            }
            other => panic!("{other:?}"),
        }
        // A broken optional file is an error, not silently ignored.
        let d = dir_with(&[("config.json", "{}"), ("generation_config.json", "{")]);
        assert!(matches!(
            load_hf_configs(d.path()),
            Err(FormatError::Json { .. })
        ));
    }

    #[test]
    fn top_level_must_be_an_object() {
        let d = dir_with(&[("config.json", "[1, 2]")]);
        assert!(matches!(
            read_json(d.path(), "config.json"),
            Err(FormatError::JsonNotObject { .. })
        ));
    }
}
