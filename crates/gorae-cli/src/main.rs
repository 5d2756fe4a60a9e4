//! `gorae`: run, chat with, inspect and check LLMs from GGUF files or HF model directories.
//!
//! Errors reach the user as one line (`error: ...` with its causes) and a non-zero exit; nothing
//! here panics on bad input.

/// `println!` that returns the write's error instead of panicking: a reader that goes away
/// (`gorae inspect M | head`) ends the command quietly, as it does other Unix tools.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod bench;
mod commands;
mod convert;
mod generate;
mod load;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gorae",
    version,
    about = "Run DeepSeek and other open LLMs at the memory-bandwidth limit of the CPU you have"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Element type of the key/value cache (llama.cpp's `--cache-type-k/-v`): f16 holds half
    /// the bytes, so a context takes half the memory. f32 (the default) decodes faster here:
    /// f16 rows are widened a block at a time before the f32 attention kernels read them
    /// (SmolLM2 Q4_1 at depth 2048, alternated: 126-143 t/s against 146-162). DeepSeek's MLA latent cache
    /// stays f32.
    #[arg(long, global = true, value_parser = parse_kv_type, default_value = "f32")]
    cache_type: gorae_kernels::kv::KvType,
}

fn parse_kv_type(s: &str) -> Result<gorae_kernels::kv::KvType, String> {
    gorae_kernels::kv::KvType::parse(s)
        .ok_or_else(|| format!("unknown cache type '{s}' (f16 or f32)"))
}

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize recently generated tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties consider.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the output contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Context size in tokens (default: the model's, capped at 4096).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speculative {
    /// The model's own multi-token-prediction block (DeepSeek-V3 family).
    Mtp,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    ///
    /// Timings go to stderr at the end: prompt and generated tokens per second and, when the
    /// generated text is Korean, its Hangul syllables (가..힣) per second.
    Run {
        model: PathBuf,
        #[arg(short = 'p', long = "prompt")]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
        n_predict: usize,
        /// Wrap the prompt in the model's chat template as a user turn (default when it has one).
        #[arg(long, conflicts_with = "raw")]
        chat: bool,
        /// Feed the prompt as it is.
        #[arg(long)]
        raw: bool,
        /// A system message for --chat.
        #[arg(long)]
        system: Option<String>,
        /// Self-speculative decoding: `mtp` drafts with DeepSeek-V3's multi-token-prediction
        /// block (greedy only; output identical to plain greedy decoding).
        #[arg(long, value_enum)]
        speculative: Option<Speculative>,
        /// A statistics block at the end instead of the one-line summary: prompt and generation
        /// tokens, times and tokens/s, and for Korean output Hangul syllables/s beside them.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Talk with the model, one line per turn (`/exit` or end of input quits).
    Chat {
        model: PathBuf,
        #[arg(long)]
        system: Option<String>,
        #[arg(short = 'n', long = "n-predict", default_value_t = 1024)]
        n_predict: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Describe a model file: architecture, hyperparameters, tensors, template.
    Inspect {
        model: PathBuf,
        /// List every tensor.
        #[arg(long)]
        tensors: bool,
    },
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming).
    Serve(serve::ServeArgs),
    /// Print token ids as JSON.
    Tokenize {
        model: PathBuf,
        #[arg(long, conflicts_with = "jsonl", required_unless_present = "jsonl")]
        text: Option<String>,
        /// One JSON string per line in, one JSON array of ids per line out.
        #[arg(long)]
        jsonl: Option<PathBuf>,
        /// Add BOS/EOS as the tokenizer config says.
        #[arg(long)]
        special: bool,
    },
    /// Render a chat case ({messages, tools, add_generation_prompt, kwargs}) with the model's template.
    Render {
        model: PathBuf,
        #[arg(long)]
        case: PathBuf,
    },
    /// Measure prompt processing (pp) and generation (tg) speed, as llama-bench does.
    Bench {
        /// Not needed with --membw.
        #[arg(required_unless_present = "membw")]
        model: Option<PathBuf>,
        /// Prompt tokens for the pp test (0 skips it).
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Generated tokens for the tg test (0 skips it).
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        /// Tokens already in the cache before each timed run (llama-bench's `-d`): measures
        /// prompt processing and decoding deep into a context, where attention costs most.
        #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
        depth: usize,
        /// Threads (default: all cores).
        #[arg(short = 't', long = "threads")]
        threads: Option<usize>,
        /// Repetitions per test.
        #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
        reps: usize,
        /// Print a JSON array (llama-bench's field names).
        #[arg(long)]
        json: bool,
        /// Only measure this machine's DRAM read bandwidth.
        #[arg(long)]
        membw: bool,
        /// Feed the model's tokens of a built-in Korean passage instead of arbitrary ids, and
        /// report Hangul syllables per second (syllables in the decoded tokens over the same
        /// time) beside tokens per second. Needs the model's tokenizer.
        #[arg(long)]
        korean: bool,
        /// Sequences decoding side by side in the tg test, all sharing each forward pass as the
        /// server's continuous batching does (llama-batched-bench's `-npl`); t/s is their
        /// aggregate.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
    },
    /// Write the model's f32 logits for a prompt as .npy.
    Logits {
        model: PathBuf,
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        prompt: Option<String>,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        #[arg(long)]
        out: PathBuf,
        /// Logits of every position ([n_tokens, n_vocab]) instead of the last ([n_vocab]).
        #[arg(long)]
        all_positions: bool,
        /// Feed the prompt one token at a time instead of as one batch.
        #[arg(long)]
        decode: bool,
    },
    /// Convert a Hugging Face model directory (safetensors, DeepSeek FP8 included) to GGUF in
    /// llama.cpp's layout (llama, qwen2, qwen3, deepseek2).
    Convert {
        hf_dir: PathBuf,
        out: PathBuf,
        /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q4_k_s, q4_k_m,
        /// q5_k_s, q5_k_m, q6_k (q3_k/q4_k/q5_k: the _m mixtures, as in llama-quantize).
        #[arg(long = "type", default_value = "f16")]
        out_type: String,
        /// DeepSeek: write the legacy MLA layout (attn_kv_b) instead of attn_k_b/attn_v_b.
        #[arg(long)]
        legacy_mla: bool,
    },
    /// Rewrite a GGUF with its matrices in another type (llama-quantize's per-tensor choices).
    Quantize {
        input: PathBuf,
        out: PathBuf,
        /// Same names as for convert.
        #[arg(long = "type")]
        out_type: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("GORAE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    load::set_kv_type(cli.cache_type);
    let result = match cli.command {
        Command::Run {
            model,
            prompt,
            n_predict,
            chat,
            raw,
            system,
            speculative,
            stats,
            sampling,
        } => {
            let opts = commands::RunOptions {
                prompt: &prompt,
                n_predict,
                chat,
                raw,
                system: system.as_deref(),
                speculative,
                stats,
            };
            commands::run(&model, &opts, &sampling)
        }
        Command::Chat {
            model,
            system,
            n_predict,
            sampling,
        } => commands::chat(&model, system.as_deref(), n_predict, &sampling),
        Command::Serve(args) => serve::run(&args),
        Command::Inspect { model, tensors } => commands::inspect(&model, tensors),
        Command::Bench {
            model,
            n_prompt,
            n_gen,
            depth,
            threads,
            reps,
            json,
            membw,
            korean,
            parallel,
        } => {
            if let Some(t) = threads {
                gorae_kernels::pool::init_global(t);
            }
            let args = bench::BenchArgs {
                n_prompt,
                n_gen,
                depth,
                reps,
                json,
                korean,
                parallel,
            };
            bench::bench(
                model.as_deref().unwrap_or(std::path::Path::new("")),
                &args,
                membw,
            )
        }
        Command::Tokenize {
            model,
            text,
            jsonl,
            special,
        } => commands::tokenize(&model, text.as_deref(), jsonl.as_deref(), special),
        Command::Render { model, case } => commands::render(&model, &case),
        Command::Logits {
            model,
            prompt,
            ids,
            out,
            all_positions,
            decode,
        } => commands::logits(
            &model,
            prompt.as_deref(),
            ids.as_deref(),
            &out,
            all_positions,
            decode,
        ),
        Command::Convert {
            hf_dir,
            out,
            out_type,
            legacy_mla,
        } => convert::convert(&hf_dir, &out, &out_type, legacy_mla),
        Command::Quantize {
            input,
            out,
            out_type,
        } => convert::quantize(&input, &out, &out_type),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): nothing left to say to anyone.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
