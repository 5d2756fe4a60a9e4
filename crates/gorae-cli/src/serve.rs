//! `gorae serve`: the OpenAI-compatible server (crate `gorae-server`) on a loaded model.

use anyhow::{Context, Result};
use gorae_server::{ReasoningField, ServerConfig};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ReasoningFormat {
    /// `reasoning_content`, as DeepSeek's API and llama.cpp.
    ReasoningContent,
    /// `reasoning`, as vLLM and OpenRouter.
    Reasoning,
    /// Both fields.
    Both,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A `.gguf` file or a HF model directory.
    pub model: PathBuf,
    /// Address to listen on (0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: $GORAE_API_KEY when set).
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from the first line of this file (keeps it out of the process list).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Context size in tokens (default: the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx", alias = "ctx-size")]
    pub ctx: Option<usize>,
    /// The model id clients use (default: the file or directory name).
    #[arg(long)]
    pub alias: Option<String>,
    /// Sequences served at once, each with its own KV cache of --ctx tokens. They share every
    /// forward pass (continuous batching): each pass carries one token of every decoding
    /// sequence plus prompt chunks, up to --batch rows.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Requests allowed to wait for the engine; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Rows (tokens, all sequences together) per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Take the tokenizer (and its chat template) from this GGUF file or directory instead of
    /// the model's (vLLM's `--tokenizer`), for checkpoints that ship without one.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A Jinja chat template file that replaces the model's.
    #[arg(long)]
    pub chat_template_file: Option<PathBuf>,
    /// Field(s) that carry text split out of `<think>…</think>`.
    #[arg(long, value_enum, default_value = "reasoning-content")]
    pub reasoning_format: ReasoningFormat,
    /// Seconds that running and queued requests get to finish after SIGTERM or Ctrl-C; then
    /// they end with a 503 error (0: no deadline). A second signal ends them at once.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let chat_template = match &args.chat_template_file {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read `{}`", p.display()))?,
        ),
        None => None,
    };
    let loaded = crate::load::load_model(&args.model, args.tokenizer.is_none())?;
    let tokenizer = match &args.tokenizer {
        Some(p) => {
            let path = crate::load::ModelPath::resolve(p)?;
            let tok = crate::load::tokenizer(&path, None)?;
            let n_vocab = loaded.model.n_vocab();
            if tok.n_vocab() > n_vocab {
                anyhow::bail!(
                    "the tokenizer in `{}` has {} tokens but the model only {n_vocab}",
                    p.display(),
                    tok.n_vocab()
                );
            }
            tok
        }
        None => loaded.tokenizer()?.clone(),
    };
    let alias = args.alias.clone().unwrap_or_else(|| {
        let p = args.model.as_path();
        let name = if p.is_dir() {
            p.file_name()
        } else {
            p.file_stem()
        };
        name.map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "gorae".into())
    });
    let mut config = ServerConfig::new(alias);
    config.host = args.host.clone();
    config.port = args.port;
    let key_from_file = match &args.api_key_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read `{}`", p.display()))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                anyhow::bail!("`{}` holds no API key", p.display());
            }
            Some(key)
        }
        None => None,
    };
    config.api_key = args
        .api_key
        .clone()
        .or(key_from_file)
        .or_else(|| std::env::var("GORAE_API_KEY").ok())
        .filter(|k| !k.is_empty());
    config.n_ctx = args.ctx;
    config.parallel = args.parallel;
    config.queue_size = args.queue.max(1);
    config.n_batch = args.batch.max(1);
    config.chat_template = chat_template;
    config.drain_timeout =
        (args.drain_timeout > 0).then(|| std::time::Duration::from_secs(args.drain_timeout));
    config.reasoning_field = match args.reasoning_format {
        ReasoningFormat::ReasoningContent => ReasoningField::ReasoningContent,
        ReasoningFormat::Reasoning => ReasoningField::Reasoning,
        ReasoningFormat::Both => ReasoningField::Both,
    };
    gorae_server::serve_blocking(config, loaded.model, tokenizer)?;
    eprintln!("gorae: stopped");
    Ok(())
}
