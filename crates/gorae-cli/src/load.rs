//! Resolving a MODEL argument (a `.gguf` file, a HF model directory, or a directory holding only
//! tokenizer files) and loading it with a progress bar.

use anyhow::{Context, Result, bail};
use gorae_formats::gguf::GgufFile;
use gorae_formats::safetensors::SafetensorsModel;
use gorae_models::Model;
use gorae_models::names::TensorKey;
use gorae_models::weights::{RawTensor, WeightSource};
use gorae_text::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use std::cell::Cell;
use std::path::{Path, PathBuf};

pub enum ModelPath {
    Gguf(PathBuf),
    /// A directory with tokenizer files, and `config.json` + safetensors when it is a full model.
    Dir(PathBuf),
}

impl ModelPath {
    pub fn resolve(path: &Path) -> Result<ModelPath> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot open model `{}`", path.display()))?;
        if meta.is_dir() {
            return Ok(ModelPath::Dir(path.to_path_buf()));
        }
        let mut magic = [0u8; 4];
        use std::io::Read;
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        if n == 4 && &magic == b"GGUF" {
            return Ok(ModelPath::Gguf(path.to_path_buf()));
        }
        bail!(
            "`{}` is neither a GGUF file nor a model directory",
            path.display()
        )
    }
}

pub fn open_gguf(path: &Path) -> Result<GgufFile> {
    GgufFile::open(path).with_context(|| format!("cannot load `{}`", path.display()))
}

/// The tokenizer of a model path (for `tokenize`/`render`, a tokenizer-only directory suffices).
pub fn tokenizer(path: &ModelPath, gguf: Option<&GgufFile>) -> Result<Tokenizer> {
    match (path, gguf) {
        (_, Some(f)) => {
            Tokenizer::from_gguf(f).context("cannot build the tokenizer from the GGUF vocabulary")
        }
        (ModelPath::Dir(d), None) => Tokenizer::from_dir(d)
            .with_context(|| format!("cannot load the tokenizer in `{}`", d.display())),
        (ModelPath::Gguf(p), None) => {
            Tokenizer::from_gguf(&open_gguf(p)?).context("cannot build the tokenizer")
        }
    }
}

/// Counts the bytes the loader takes from a source and shows them on a progress bar.
struct Progress<'a> {
    inner: &'a dyn WeightSource,
    bar: ProgressBar,
    done: Cell<u64>,
}

impl WeightSource for Progress<'_> {
    fn raw(&self, key: TensorKey) -> gorae_models::Result<Option<RawTensor<'_>>> {
        let t = self.inner.raw(key)?;
        if let Some(t) = &t {
            self.done.set(self.done.get() + t.data.len() as u64);
            self.bar.set_position(self.done.get());
        }
        Ok(t)
    }
}

fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} {elapsed}")
    {
        bar.set_style(style);
    }
    bar
}

pub struct Loaded {
    pub model: Model,
    /// Absent only when the caller said it needs none and the directory has no tokenizer files.
    tokenizer: Option<Tokenizer>,
}

impl Loaded {
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .context("the model directory has no tokenizer.json")
    }
}

/// The key/value cache type the command line chose, for every model loaded.
static KV_TYPE: std::sync::OnceLock<gorae_kernels::kv::KvType> = std::sync::OnceLock::new();

pub fn set_kv_type(ty: gorae_kernels::kv::KvType) {
    let _ = KV_TYPE.set(ty);
}

/// Loads a model; `need_tokenizer: false` lets a model without a tokenizer (a HF directory without
/// tokenizer files, a GGUF without `tokenizer.*` keys) load, for `logits --ids` and `bench`.
pub fn load_model(path: &Path, need_tokenizer: bool) -> Result<Loaded> {
    let mut loaded = load_model_as_stored(path, need_tokenizer)?;
    loaded
        .model
        .set_kv_type(KV_TYPE.get().copied().unwrap_or_default());
    Ok(loaded)
}

fn load_model_as_stored(path: &Path, need_tokenizer: bool) -> Result<Loaded> {
    match ModelPath::resolve(path)? {
        ModelPath::Gguf(p) => {
            let file = open_gguf(&p)?;
            let total: u64 = file.tensors().iter().map(|t| t.n_bytes as u64).sum();
            let progress = Progress {
                inner: &file,
                bar: bar(total),
                done: Cell::new(0),
            };
            let model = Model::from_gguf_source(&file, &progress)
                .with_context(|| format!("cannot load the model in `{}`", p.display()))?;
            progress.bar.finish_and_clear();
            let tokenizer = if need_tokenizer || file.get("tokenizer.ggml.model").is_some() {
                Some(tokenizer(&ModelPath::Gguf(p.clone()), Some(&file))?)
            } else {
                None
            };
            Ok(Loaded { model, tokenizer })
        }
        ModelPath::Dir(d) => {
            let configs = gorae_formats::hf::load_hf_configs(&d)
                .with_context(|| format!("`{}` is not a HF model directory", d.display()))?;
            let weights = SafetensorsModel::open(&d)
                .with_context(|| format!("cannot open the weights in `{}`", d.display()))?;
            let total: u64 = weights
                .names()
                .iter()
                .filter_map(|n| weights.tensor(n))
                .map(|t| t.data.len() as u64)
                .sum();
            let progress = Progress {
                inner: &weights,
                bar: bar(total),
                done: Cell::new(0),
            };
            let model = Model::from_hf_source(&configs.config, &progress)
                .with_context(|| format!("cannot load the model in `{}`", d.display()))?;
            progress.bar.finish_and_clear();
            let tokenizer = if need_tokenizer || d.join("tokenizer.json").exists() {
                Some(tokenizer(&ModelPath::Dir(d.clone()), None)?)
            } else {
                None
            };
            Ok(Loaded { model, tokenizer })
        }
    }
}
