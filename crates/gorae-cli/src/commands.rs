//! The subcommands. Machine-readable commands (`tokenize`, `render`, `logits`) print exactly their
//! result on stdout; everything else (progress, timings) goes to stderr.

use crate::SamplingArgs;
use crate::generate::{self, GenParams};
use crate::load::{self, ModelPath};
use anyhow::{Context, Result, bail};
use gorae_models::{Logits, Model};
use gorae_runtime::{Engine, Piece, Sampler, ThinkSplitter};
use gorae_text::{ChatTemplate, Tokenizer};
use serde_json::{Map, Value, json};
use std::io::{BufRead, Write};
use std::path::Path;

const DEFAULT_CTX_CAP: usize = 4096;
const N_BATCH: usize = 64;

/// The context to run with, once its KV cache is known to fit in memory.
fn n_ctx(model: &Model, args: &SamplingArgs) -> Result<usize> {
    let n_ctx = args
        .ctx_size
        .unwrap_or_else(|| model.info().n_ctx_train.min(DEFAULT_CTX_CAP))
        .max(8);
    gorae_runtime::memory::kv_caches_fit(model.info().kv_bytes_per_token, n_ctx, 1)
        .map_err(anyhow::Error::msg)?;
    Ok(n_ctx)
}

fn template(tok: &Tokenizer) -> Result<ChatTemplate> {
    let src = tok
        .chat_template()
        .context("the model has no chat template")?;
    ChatTemplate::new(src, tok.special_tokens_map())
        .context("the model's chat template does not compile")
}

fn render_messages(tok: &Tokenizer, messages: &Value) -> Result<String> {
    template(tok)?
        .render(messages, None, true, &Map::new())
        .context("rendering the chat template failed")
}

/// `n` per second over `d` (0 when no time passed).
fn per_second(n: usize, d: std::time::Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

fn print_timings(g: &generate::Generation) {
    // Korean output also in syllables per second: what a reader sees, whatever the tokenizer.
    let korean = g
        .syllables
        .per_second(g.gen_time.as_secs_f64())
        .map_or(String::new(), |r| {
            format!(", {} Hangul syllables, {r:.1} syl/s", g.syllables.syllables)
        });
    eprintln!(
        "\n[prompt {} tokens, {:.1} t/s | generated {} tokens, {:.1} t/s{korean} | stop: {:?}]",
        g.n_prompt,
        per_second(g.n_prompt, g.prompt_time),
        g.n_generated,
        per_second(g.n_generated, g.gen_time),
        g.reason
    );
}

/// `run --stats`: one figure per line, Hangul syllables/s beside tokens/s for Korean output.
fn stats_block(g: &generate::Generation) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let korean = g
        .syllables
        .per_second(g.gen_time.as_secs_f64())
        .map_or(String::new(), |r| {
            format!(
                ", {r:.1} syl/s ({} Hangul syllables)",
                g.syllables.syllables
            )
        });
    format!(
        "stats:\n  prompt      {:>6} tokens {:>9.1} ms {:>9.1} t/s\n  generation  {:>6} tokens {:>9.1} ms {:>9.1} t/s{korean}\n  stop        {:?}",
        g.n_prompt,
        ms(g.prompt_time),
        per_second(g.n_prompt, g.prompt_time),
        g.n_generated,
        ms(g.gen_time),
        per_second(g.n_generated, g.gen_time),
        g.reason
    )
}

/// What `gorae run` was asked to do, besides the model and sampling.
pub struct RunOptions<'a> {
    pub prompt: &'a str,
    pub n_predict: usize,
    pub chat: bool,
    pub raw: bool,
    pub system: Option<&'a str>,
    pub speculative: Option<crate::Speculative>,
    pub stats: bool,
}

pub fn run(model_path: &Path, opts: &RunOptions<'_>, sampling: &SamplingArgs) -> Result<()> {
    let RunOptions {
        prompt,
        n_predict,
        chat,
        raw,
        system,
        speculative,
        stats,
    } = *opts;
    let loaded = load::load_model(model_path, true)?;
    let tok = loaded.tokenizer()?;
    let use_chat = chat || (!raw && tok.chat_template().is_some());
    let (ids, starts_in_think) = if use_chat {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let text = render_messages(tok, &Value::Array(messages))?;
        (
            tok.encode(&text, false)?,
            text.trim_end().ends_with("<think>"),
        )
    } else {
        (tok.encode(prompt, true)?, false)
    };
    if let Some(crate::Speculative::Mtp) = speculative {
        return run_mtp(
            &loaded.model,
            tok,
            &ids,
            n_predict,
            sampling,
            starts_in_think,
        );
    }
    let mut engine = Engine::new(&loaded.model, n_ctx(&loaded.model, sampling)?, N_BATCH);
    let mut sampler = Sampler::new(generate::sampler_config(sampling)?);
    let params = GenParams {
        n_predict,
        stops: &sampling.stop,
        ignore_eos: sampling.ignore_eos,
    };
    let stdout = std::io::stdout();
    let mut splitter = ThinkSplitter::new(starts_in_think);
    let g = generate::generate(&mut engine, tok, &ids, &mut sampler, &params, |s| {
        let mut out = stdout.lock();
        splitter.push(s, |p| show(&mut out, p))?;
        out.flush()?;
        Ok(())
    })?;
    splitter.finish(|p| show(&mut stdout.lock(), p))?;
    outln!();
    if stats {
        eprintln!("\n{}", stats_block(&g));
    } else {
        print_timings(&g);
    }
    Ok(())
}

/// `run --speculative mtp`: greedy self-speculative decoding with the model's MTP block; the
/// output is plain greedy decoding's, the acceptance rate and speed go to stderr.
fn run_mtp(
    model: &Model,
    tok: &Tokenizer,
    ids: &[u32],
    n_predict: usize,
    sampling: &SamplingArgs,
    starts_in_think: bool,
) -> Result<()> {
    if sampling.temperature != 0.0 {
        bail!("--speculative mtp verifies drafts greedily: use it with --temp 0");
    }
    if !model.has_mtp() {
        bail!(
            "the model has no multi-token-prediction block (num_nextn_predict_layers is 0 or its tensors are missing)"
        );
    }
    let n_ctx = n_ctx(model, sampling)?;
    if ids.len() + 2 >= n_ctx {
        bail!(
            "the prompt ({} tokens) does not fit the context of {n_ctx} tokens",
            ids.len()
        );
    }
    let mut state = model.new_state(n_ctx, N_BATCH);
    let stops: &[u32] = if sampling.ignore_eos {
        &[]
    } else {
        tok.stop_ids()
    };
    let mut decoder = gorae_text::StreamDecoder::new(tok, true);
    let mut stop = gorae_runtime::StopMatcher::new(sampling.stop.clone());
    let mut splitter = ThinkSplitter::new(starts_in_think);
    let mut syllables = gorae_text::SyllableCounter::default();
    let stdout = std::io::stdout();
    let mut failed: Option<anyhow::Error> = None;
    let t0 = std::time::Instant::now();
    let (tokens, stats) =
        gorae_runtime::speculative::generate_mtp(model, &mut state, ids, n_predict, stops, |id| {
            if stops.contains(&id) {
                return true;
            }
            let mut step = || -> Result<bool> {
                let Some(piece) = decoder.push(id)? else {
                    return Ok(false);
                };
                let (text, done) = match stop.push(&piece) {
                    gorae_runtime::StopOutcome::Continue(t) => (t, false),
                    gorae_runtime::StopOutcome::Stop(t) => (t, true),
                };
                syllables.push(&text);
                let mut out = stdout.lock();
                splitter.push(&text, |p| show(&mut out, p))?;
                out.flush()?;
                Ok(done)
            };
            match step() {
                Ok(done) => done,
                Err(e) => {
                    failed = Some(e);
                    true
                }
            }
        })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut rest = decoder.flush()?.unwrap_or_default();
    rest.push_str(&stop.flush());
    syllables.push(&rest);
    splitter.push(&rest, |p| show(&mut stdout.lock(), p))?;
    splitter.finish(|p| show(&mut stdout.lock(), p))?;
    outln!();
    let secs = t0.elapsed().as_secs_f64();
    let korean = syllables.per_second(secs).map_or(String::new(), |r| {
        format!(", {} Hangul syllables, {r:.1} syl/s", syllables.syllables)
    });
    eprintln!(
        "\n[mtp: {} tokens, {:.1} t/s (prompt included){korean} | {} trunk passes | draft acceptance {}/{} = {:.1} %]",
        tokens.len(),
        if secs > 0.0 {
            tokens.len() as f64 / secs
        } else {
            0.0
        },
        stats.trunk_passes,
        stats.accepted,
        stats.drafted,
        stats.acceptance_rate() * 100.0
    );
    Ok(())
}

/// Answer text to stdout; reasoning to stderr, dimmed, so it stays apart from the answer.
fn show(out: &mut impl Write, p: Piece<'_>) -> Result<()> {
    match p {
        Piece::Answer(s) => out.write_all(s.as_bytes())?,
        Piece::Reasoning(s) => {
            let mut err = std::io::stderr().lock();
            write!(err, "\x1b[2m{s}\x1b[0m")?;
            err.flush()?;
        }
    }
    Ok(())
}

pub fn chat(
    model_path: &Path,
    system: Option<&str>,
    n_predict: usize,
    sampling: &SamplingArgs,
) -> Result<()> {
    let loaded = load::load_model(model_path, true)?;
    let tok = loaded.tokenizer()?;
    let tmpl = template(tok)?;
    let mut engine = Engine::new(&loaded.model, n_ctx(&loaded.model, sampling)?, N_BATCH);
    let mut sampler = Sampler::new(generate::sampler_config(sampling)?);
    let params = GenParams {
        n_predict,
        stops: &sampling.stop,
        ignore_eos: sampling.ignore_eos,
    };
    let mut messages: Vec<Value> = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    eprintln!("gorae chat: type a message, /exit to quit");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" || line == "/quit" {
            break;
        }
        messages.push(json!({"role": "user", "content": line}));
        let text = tmpl.render(&Value::Array(messages.clone()), None, true, &Map::new())?;
        let ids = tok.encode(&text, false)?;
        // Reuse the cached prefix the new prompt shares with what the engine holds.
        let common = engine
            .tokens
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        let common = common.min(ids.len().saturating_sub(1));
        engine.truncate(common);
        // What the cache could keep (a sliding-window cache may have had to drop everything).
        let common = engine.tokens.len();
        let starts_in_think = text.trim_end().ends_with("<think>");
        let mut splitter = ThinkSplitter::new(starts_in_think);
        let mut answer = String::new();
        let stdout = std::io::stdout();
        let g = generate::generate(
            &mut engine,
            tok,
            &ids[common..],
            &mut sampler,
            &params,
            |s| {
                let mut out = stdout.lock();
                splitter.push(s, |p| {
                    if let Piece::Answer(a) = &p {
                        answer.push_str(a);
                    }
                    show(&mut out, p)
                })?;
                out.flush()?;
                Ok(())
            },
        )?;
        splitter.finish(|p| {
            if let Piece::Answer(a) = &p {
                answer.push_str(a);
            }
            show(&mut stdout.lock(), p)
        })?;
        outln!();
        print_timings(&g);
        messages.push(json!({"role": "assistant", "content": answer.trim()}));
    }
    Ok(())
}

pub fn inspect(model_path: &Path, list_tensors: bool) -> Result<()> {
    match ModelPath::resolve(model_path)? {
        ModelPath::Gguf(p) => {
            let file = load::open_gguf(&p)?;
            outln!("file:          {}", p.display());
            outln!("format:        GGUF v{}", file.version());
            outln!("architecture:  {}", file.architecture().unwrap_or("(none)"));
            if let Some(name) = file.get("general.name").and_then(|v| v.as_str()) {
                outln!("name:          {name}");
            }
            let arch = file.architecture().unwrap_or("");
            for (k, v) in file.metadata() {
                if k.starts_with(&format!("{arch}.")) {
                    outln!("  {k} = {}", short_value(v));
                }
            }
            let mut by_type: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
            for t in file.tensors() {
                let e = by_type.entry(t.ty.to_string()).or_default();
                e.0 += 1;
                e.1 += t.n_bytes as u64;
            }
            let total: u64 = by_type.values().map(|v| v.1).sum();
            outln!(
                "tensors:       {} ({:.1} MiB)",
                file.tensors().len(),
                total as f64 / (1 << 20) as f64
            );
            for (ty, (n, bytes)) in &by_type {
                outln!(
                    "  {ty:<8} {n:>5} tensors {:>10.1} MiB",
                    *bytes as f64 / (1 << 20) as f64
                );
            }
            let tmpl = file.get("tokenizer.chat_template").and_then(|v| v.as_str());
            outln!(
                "chat template: {}",
                if tmpl.is_some() { "present" } else { "absent" }
            );
            if let Some(m) = file.get("tokenizer.ggml.model").and_then(|v| v.as_str()) {
                let pre = file
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let n = file
                    .get("tokenizer.ggml.tokens")
                    .and_then(|v| v.as_array())
                    .map_or(0, |a| a.len());
                outln!("tokenizer:     {m} (pre: {pre}), {n} tokens");
            }
            match Model::from_gguf(&file) {
                Ok(m) => print_model_info(&m)?,
                Err(e) => outln!("loadable:      no ({e})"),
            }
            if list_tensors {
                for t in file.tensors() {
                    outln!("  {:<40} {:<6} {:?}", t.name, t.ty.to_string(), t.shape);
                }
            }
        }
        ModelPath::Dir(d) => {
            outln!("directory:     {}", d.display());
            if d.join("config.json").exists() {
                let loaded = load::load_model(&d, false)?;
                print_model_info(&loaded.model)?;
                let template = loaded
                    .tokenizer()
                    .ok()
                    .and_then(|t| t.chat_template())
                    .is_some();
                outln!(
                    "chat template: {}",
                    if template { "present" } else { "absent" }
                );
            } else {
                let tok = load::tokenizer(&ModelPath::Dir(d.clone()), None)?;
                outln!("tokenizer:     {} tokens", tok.n_vocab());
                outln!(
                    "chat template: {}",
                    if tok.chat_template().is_some() {
                        "present"
                    } else {
                        "absent"
                    }
                );
            }
        }
    }
    Ok(())
}

fn print_model_info(m: &Model) -> std::io::Result<()> {
    let i = m.info();
    outln!("family:        {:?} ({})", i.family, i.architecture);
    let details: String = i.details.iter().map(|(k, v)| format!(" {k} {v}")).collect();
    let tied = if i.tie_embeddings {
        " (tied embeddings)"
    } else {
        ""
    };
    outln!(
        "hparams:       n_vocab {} n_embd {} n_layer {} n_head {}{details} n_ctx_train {} rope_theta {}{tied}",
        i.n_vocab,
        i.n_embd,
        i.n_layer,
        i.n_head,
        i.n_ctx_train,
        i.rope_theta,
    );
    outln!(
        "weights:       {:.1} MiB in memory, {:.1} MiB read per decoded token",
        i.weight_bytes as f64 / (1 << 20) as f64,
        i.active_weight_bytes as f64 / (1 << 20) as f64
    );
    outln!(
        "kv cache:      {} bytes per token (f32)",
        i.kv_bytes_per_token
    );
    Ok(())
}

fn short_value(v: &gorae_formats::gguf::MetaValue) -> String {
    use gorae_formats::gguf::MetaValue;
    match v {
        MetaValue::Array(a) => format!("[array of {}]", a.len()),
        MetaValue::String(s) if s.len() > 80 => {
            format!("{:?}…", &s.chars().take(80).collect::<String>())
        }
        MetaValue::String(s) => format!("{s:?}"),
        other => format!("{other:?}")
            .split('(')
            .nth(1)
            .map(|s| s.trim_end_matches(')').to_string())
            .unwrap_or_default(),
    }
}

pub fn tokenize(
    model_path: &Path,
    text: Option<&str>,
    jsonl: Option<&Path>,
    special: bool,
) -> Result<()> {
    let path = ModelPath::resolve(model_path)?;
    let tok = load::tokenizer(&path, None)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Some(t) = text {
        writeln!(out, "{}", serde_json::to_string(&tok.encode(t, special)?)?)?;
    } else if let Some(file) = jsonl {
        let f = std::fs::File::open(file)
            .with_context(|| format!("cannot open `{}`", file.display()))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            let s: String = serde_json::from_str(&line).with_context(|| {
                format!(
                    "line {} of `{}` is not a JSON string",
                    i + 1,
                    file.display()
                )
            })?;
            writeln!(out, "{}", serde_json::to_string(&tok.encode(&s, special)?)?)?;
        }
    }
    out.flush()?;
    Ok(())
}

pub fn render(model_path: &Path, case_path: &Path) -> Result<()> {
    let path = ModelPath::resolve(model_path)?;
    let tok = load::tokenizer(&path, None)?;
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(case_path)
            .with_context(|| format!("cannot read `{}`", case_path.display()))?,
    )
    .with_context(|| format!("`{}` is not JSON", case_path.display()))?;
    let messages = case.get("messages").context("the case has no `messages`")?;
    let tools = case.get("tools").filter(|t| !t.is_null());
    let agp = case
        .get("add_generation_prompt")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let empty = Map::new();
    let kwargs = case
        .get("kwargs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let text = template(&tok)?.render(messages, tools, agp, kwargs)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn logits(
    model_path: &Path,
    prompt: Option<&str>,
    ids: Option<&[u32]>,
    out_path: &Path,
    all_positions: bool,
    decode: bool,
) -> Result<()> {
    let loaded = load::load_model(model_path, prompt.is_some())?;
    let ids = match (prompt, ids) {
        (Some(p), _) => loaded.tokenizer()?.encode(p, true)?,
        (None, Some(ids)) => ids.to_vec(),
        (None, None) => bail!("give --prompt or --ids"),
    };
    if ids.is_empty() {
        bail!("no tokens to run");
    }
    let model = &loaded.model;
    let n_vocab = model.n_vocab();
    let n_batch = if decode { 1 } else { ids.len() };
    let mut state = model.new_state(ids.len(), n_batch);
    let mut values = Vec::new();
    let want = if all_positions {
        Logits::All
    } else {
        Logits::Last
    };
    if decode {
        for (i, id) in ids.iter().enumerate() {
            let l = model.forward(&[*id], &mut state, Logits::Last)?;
            if all_positions || i + 1 == ids.len() {
                values.extend_from_slice(l);
            }
        }
    } else {
        values.extend_from_slice(model.forward(&ids, &mut state, want)?);
    }
    let shape = if all_positions {
        vec![ids.len(), n_vocab]
    } else {
        vec![n_vocab]
    };
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out_path)
            .with_context(|| format!("cannot create `{}`", out_path.display()))?,
    );
    gorae_runtime::npy::write_f32(&mut f, &shape, &values)?;
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod stats_tests {
    use super::*;
    use std::time::Duration;

    fn generation(korean: usize) -> generate::Generation {
        let mut syllables = gorae_text::SyllableCounter::default();
        syllables.push(&"한".repeat(korean));
        generate::Generation {
            n_prompt: 10,
            n_generated: 40,
            reason: generate::StopReason::EndOfTurn,
            prompt_time: Duration::from_millis(100),
            gen_time: Duration::from_secs(2),
            syllables,
        }
    }

    #[test]
    fn stats_put_syllables_beside_tokens_only_for_korean() {
        let ko = stats_block(&generation(30));
        assert!(ko.contains("100.0 t/s"), "{ko}");
        assert!(
            ko.contains("20.0 t/s, 15.0 syl/s (30 Hangul syllables)"),
            "{ko}"
        );
        let en = stats_block(&generation(0));
        assert!(en.contains("20.0 t/s") && !en.contains("syl/s"), "{en}");
    }
}
