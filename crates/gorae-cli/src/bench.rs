//! `gorae bench`: prompt-processing and generation throughput as llama-bench measures them
//! (pp = one batch of `-p` tokens; tg = `-n` single-token decode steps; both from an empty cache,
//! or after `-d` tokens already in it, as llama-bench's `-d`), the bytes of weights each decoded token reads, this machine's DRAM read
//! bandwidth from a STREAM-like probe, and the fraction of that roofline reached.
//!
//! Weights are copied into process memory at load (the model owns them), the same condition as
//! llama-bench's `-lm none`.
//!
//! `--korean` feeds the model's own tokens of a Korean passage instead of arbitrary ids and also
//! reports Hangul syllables per second: the syllables in the text those tokens decode to, over
//! the same time. It is the speed a Korean reader sees and, unlike tokens per second, comparable
//! across tokenizers (one syllable costs 0.9 to 2.9 tokens depending on the vocabulary).

use crate::load;
use anyhow::{Context, Result, bail};
use gorae_models::{Logits, Model, SeqInput};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

pub struct BenchArgs {
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Tokens in the cache before each timed run (not timed).
    pub depth: usize,
    pub reps: usize,
    pub json: bool,
    /// Feed a Korean passage's tokens and report Hangul syllables per second.
    pub korean: bool,
    /// Sequences decoding side by side in each tg pass (1: plain tg).
    pub parallel: usize,
}

/// Korean prose for `--korean` (written for gorae): everyday, news-like sentences with numbers and
/// a Latin acronym, so the token mix resembles real Korean output.
const KOREAN_PASSAGE: &str = "오늘 아침 서울의 기온은 영하 3도까지 내려갔지만, 오후에는 햇살이 \
    비치면서 포근한 날씨가 이어졌습니다. 시민들은 두꺼운 외투를 입고 출근길에 나섰고, 지하철역 \
    주변에는 따뜻한 커피를 사려는 사람들로 붐볐습니다. 기상청은 이번 주말부터 다시 기온이 \
    떨어질 것으로 내다보며 건강 관리에 유의해 달라고 당부했습니다. 한편 부산에서는 KTX 개통 \
    20주년을 기념하는 행사가 열려 많은 관광객이 찾았습니다. 우리 동네 도서관은 다음 달부터 \
    평일 밤 9시까지 문을 열기로 했고, 어린이를 위한 그림책 읽기 모임도 새로 시작합니다.";

/// `n` token ids of the Korean passage, repeated as needed, and the Hangul syllables in the text
/// they decode to.
fn korean_tokens(tok: &gorae_text::Tokenizer, n: usize) -> Result<(Vec<u32>, usize)> {
    let passage = tok.encode(KOREAN_PASSAGE, false)?;
    if passage.is_empty() {
        bail!("the tokenizer produced no tokens for the Korean passage");
    }
    let ids: Vec<u32> = passage.iter().copied().cycle().take(n).collect();
    let text = tok.decode(&ids, true)?;
    Ok((ids, gorae_text::hangul_syllables(&text)))
}

/// `pp512`, or `tg128 @ d2048` after a context of 2048 tokens (llama-bench's names).
fn test_name(kind: &str, n: usize, depth: usize) -> String {
    if depth == 0 {
        format!("{kind}{n}")
    } else {
        format!("{kind}{n} @ d{depth}")
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Tokens for the benchmark: arbitrary valid ids (throughput does not depend on them).
fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13) % n_vocab.max(1)) as u32)
        .collect()
}

/// A state holding `depth` tokens of context (one untimed batch), with room for `n_more`.
fn state_at_depth(
    model: &Model,
    depth: usize,
    n_more: usize,
    n_batch: usize,
) -> Result<gorae_models::State> {
    let mut state = model.new_state(depth + n_more + 1, n_batch.max(depth).max(1));
    if depth > 0 {
        let ctx = tokens(depth, model.n_vocab());
        model.forward(&ctx, &mut state, Logits::Last)?;
    }
    Ok(state)
}

/// Seconds for one pp run (`toks` as one batch) and one tg run (`toks` one at a time), each after
/// `depth` tokens of context.
fn run_pp(model: &Model, toks: &[u32], depth: usize) -> Result<f64> {
    let mut state = state_at_depth(model, depth, toks.len(), toks.len())?;
    let t = Instant::now();
    model.forward(toks, &mut state, Logits::Last)?;
    Ok(t.elapsed().as_secs_f64())
}

fn run_tg(model: &Model, toks: &[u32], depth: usize) -> Result<f64> {
    let mut state = state_at_depth(model, depth, toks.len(), 1)?;
    let t = Instant::now();
    for &id in toks {
        model.forward(&[id], &mut state, Logits::Last)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds for `toks.len()` batched passes over `n_seq` sequences, each pass decoding one token
/// of every sequence (what the server's continuous batching runs with `n_seq` streams).
fn run_tg_parallel(model: &Model, toks: &[u32], depth: usize, n_seq: usize) -> Result<f64> {
    let n_ctx = depth + toks.len() + 1;
    let mut work = model.new_workspace(n_seq.max(depth).max(1), n_ctx);
    let mut caches: Vec<_> = (0..n_seq).map(|_| model.new_cache(n_ctx)).collect();
    if depth > 0 {
        let ctx = tokens(depth, model.n_vocab());
        for cache in &mut caches {
            let mut seqs = [SeqInput {
                tokens: &ctx,
                cache,
            }];
            model.forward_batch(&mut seqs, &mut work, Logits::Last)?;
        }
    }
    let t = Instant::now();
    for id in toks {
        let mut seqs: Vec<SeqInput<'_>> = caches
            .iter_mut()
            .map(|cache| SeqInput {
                tokens: std::slice::from_ref(id),
                cache,
            })
            .collect();
        model.forward_batch(&mut seqs, &mut work, Logits::Last)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// DRAM read bandwidth in GB/s: every pool thread sums its part of a 1 GiB buffer (far larger
/// than any cache here) with the SIMD read loop of `gorae_kernels::stream`; the best of five.
pub fn membw() -> f64 {
    let pool = gorae_kernels::pool::global();
    let n = (1usize << 30) / 8;
    let data: Vec<u64> = (0..n as u64).collect();
    let mut runs = Vec::new();
    for _ in 0..6 {
        let sink = std::sync::atomic::AtomicU64::new(0);
        let t = Instant::now();
        pool.run(&|ith, nth| {
            let r = gorae_kernels::pool::split(n, ith, nth, 64);
            let sum = gorae_kernels::stream::read_sum(&data[r]);
            sink.fetch_add(sum, std::sync::atomic::Ordering::Relaxed);
        });
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
        runs.push((n * 8) as f64 / s / 1e9);
    }
    runs.remove(0); // first touch of the pages
    // The best run, as STREAM reports: on a shared machine the slower runs measure neighbours.
    runs.into_iter().fold(0.0, f64::max)
}

pub fn bench(model_path: &Path, args: &BenchArgs, only_membw: bool) -> Result<()> {
    let n_threads = gorae_kernels::pool::global().n_threads();
    if only_membw {
        let bw = membw();
        if args.json {
            outln!(
                "{}",
                json!([{ "test": "membw", "n_threads": n_threads, "read_gbs": bw }])
            );
        } else {
            outln!("DRAM read bandwidth ({n_threads} threads): {bw:.1} GB/s");
        }
        return Ok(());
    }
    if args.reps == 0 {
        bail!("-r must be at least 1");
    }
    let loaded = load::load_model(model_path, args.korean)?;
    let model = &loaded.model;
    let info = model.info();
    let bytes_per_token = info.active_weight_bytes as f64;
    let mut results = Vec::new();
    let mut tests = Vec::new();
    if args.n_prompt > 0 {
        tests.push(("pp", args.n_prompt, 0));
    }
    if args.n_gen > 0 {
        tests.push(("tg", 0, args.n_gen));
    }
    let bw = membw();
    for (kind, n_prompt, n_gen) in tests {
        let n_tokens = n_prompt + n_gen;
        // Sequences side by side: only tg runs several.
        let n_seq = if kind == "tg" {
            args.parallel.max(1)
        } else {
            1
        };
        // Each run allocates its sequences' caches of `depth + n_tokens + 1` positions.
        let n_ctx = args.depth.saturating_add(n_tokens).saturating_add(1);
        gorae_runtime::memory::kv_caches_fit(model.info().kv_bytes_per_token, n_ctx, n_seq)
            .map_err(anyhow::Error::msg)?;
        let name = match n_seq {
            1 => test_name(kind, n_tokens, args.depth),
            _ => format!("{} x{n_seq}", test_name(kind, n_tokens, args.depth)),
        };
        let (toks, syllables) = if args.korean {
            let (ids, syl) = korean_tokens(loaded.tokenizer()?, n_tokens)?;
            (ids, Some(syl))
        } else {
            (tokens(n_tokens, model.n_vocab()), None)
        };
        // One warm-up run, as llama-bench does.
        let run = |m: &Model| {
            if kind == "pp" {
                run_pp(m, &toks, args.depth)
            } else if n_seq > 1 {
                run_tg_parallel(m, &toks, args.depth, n_seq)
            } else {
                run_tg(m, &toks, args.depth)
            }
        };
        run(model).context("benchmark warm-up failed")?;
        let mut secs = Vec::new();
        for _ in 0..args.reps {
            secs.push(run(model)?);
        }
        // Aggregate tokens over every sequence.
        let n = (n_tokens * n_seq) as f64;
        let ts: Vec<f64> = secs.iter().map(|s| n / s).collect();
        let ns: Vec<f64> = secs.iter().map(|s| s * 1e9).collect();
        let (avg_ts, sd_ts) = mean_sd(&ts);
        let (avg_ns, sd_ns) = mean_sd(&ns);
        let syl_s: Option<Vec<f64>> =
            syllables.map(|syl| secs.iter().map(|s| syl as f64 / s).collect());
        let syl_stats = syl_s.as_deref().map(mean_sd);
        // Keys and values each decoded token reads: every cached position once, the context
        // growing from `depth` to `depth + n_gen` over a run (at depth 2048, SmolLM2's f32
        // cache reads about as many bytes as its weights).
        let kv_read =
            info.kv_bytes_per_token as f64 * (args.depth as f64 + (n_gen as f64 + 1.0) / 2.0);
        // The roofline counts one token per weight read: it applies to a single sequence only.
        let roofline = if kind == "tg" && n_seq == 1 {
            Some(avg_ts * (bytes_per_token + kv_read) / (bw * 1e9))
        } else {
            None
        };
        results.push(json!({
            "model_filename": model_path.display().to_string(),
            "model_type": info.architecture,
            "model_size": info.weight_bytes,
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "n_depth": args.depth,
            "n_threads": n_threads,
            "n_batch": n_prompt.max(1),
            "isa": gorae_kernels::detected_isa().name(),
            "n_parallel": n_seq,
            "test": name,
            "avg_ns": avg_ns as u64,
            "stddev_ns": sd_ns as u64,
            "avg_ts": avg_ts,
            "stddev_ts": sd_ts,
            "samples_ts": ts,
            "weight_bytes_per_token": info.active_weight_bytes,
            "kv_bytes_read_per_token": (kind == "tg").then_some(kv_read as u64),
            "dram_read_gbs": bw,
            "roofline_fraction": roofline,
            "hangul_syllables": syllables,
            "avg_syllables_per_s": syl_stats.map(|s| s.0),
            "stddev_syllables_per_s": syl_stats.map(|s| s.1),
        }));
        if !args.json {
            let extra = roofline.map_or(String::new(), |r| {
                format!(
                    "  ({:.1} MB/token: {:.1} weights + {:.1} KV, {:.0} % of {bw:.1} GB/s)",
                    (bytes_per_token + kv_read) / 1e6,
                    bytes_per_token / 1e6,
                    kv_read / 1e6,
                    r * 100.0
                )
            });
            let korean = syl_stats.map_or(String::new(), |(m, sd)| {
                format!(" {m:>9.2} ± {sd:>6.2} syl/s")
            });
            outln!(
                "{:<8} {:>9.2} ± {:>6.2} t/s{korean}{extra}",
                name,
                avg_ts,
                sd_ts
            );
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        outln!(
            "model {} ({}), {:.1} MiB of weights, {n_threads} threads, ISA {}, KV cache {} B/token",
            model_path.display(),
            info.architecture,
            info.weight_bytes as f64 / (1 << 20) as f64,
            gorae_kernels::detected_isa().name(),
            info.kv_bytes_per_token
        );
    }
    Ok(())
}
