//! Prometheus text exposition from atomics; no registry crate, since the set of series is
//! small and fixed. Gauges are exported under our names and under vLLM's, which Kubernetes
//! inference routers (llm-d, Gateway API Inference Extension) read.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts, one per bound plus +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cum = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

pub struct Metrics {
    pub running: AtomicU64,
    /// Requests queued for a slot.
    pub waiting: AtomicU64,
    /// Requests waiting for their template render and tokenization; reported as waiting too.
    pub preparing: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens taken from the cache instead of recomputed.
    pub cached_prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_rejected: AtomicU64,
    /// KV positions held by running sequences, and the capacity, for the 0–1 usage gauge.
    pub kv_used: AtomicU64,
    pub kv_capacity: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Metrics {
    pub fn new(kv_capacity: usize) -> Metrics {
        Metrics {
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            preparing: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            kv_used: AtomicU64::new(0),
            kv_capacity: AtomicU64::new(kv_capacity as u64),
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
        }
    }

    pub fn kv_usage(&self) -> f64 {
        let cap = self.kv_capacity.load(Ordering::Relaxed);
        if cap == 0 {
            return 0.0;
        }
        (self.kv_used.load(Ordering::Relaxed) as f64 / cap as f64).clamp(0.0, 1.0)
    }

    pub fn render(&self, model: &str) -> String {
        // A label value escapes backslash, double quote and line feed (Prometheus text format).
        let model = model
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{model_name=\"{model}\"}} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{model_name=\"{model}\"}} {v}");
        };
        let running = load(&self.running) as f64;
        let waiting = (load(&self.waiting) + load(&self.preparing)) as f64;
        let kv = self.kv_usage();
        gauge(
            &mut out,
            "gorae_requests_running",
            "Requests generating now.",
            running,
        );
        gauge(
            &mut out,
            "gorae_requests_waiting",
            "Requests accepted and waiting: for tokenization or for a slot.",
            waiting,
        );
        gauge(
            &mut out,
            "gorae_kv_cache_usage_perc",
            "KV-cache positions in use by running requests, 0-1.",
            kv,
        );
        counter(
            &mut out,
            "gorae_prompt_tokens_total",
            "Prompt tokens processed (cached ones included).",
            load(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "gorae_prompt_tokens_cached_total",
            "Prompt tokens reused from the cache.",
            load(&self.cached_prompt_tokens),
        );
        counter(
            &mut out,
            "gorae_generation_tokens_total",
            "Tokens generated.",
            load(&self.generation_tokens),
        );
        counter(
            &mut out,
            "gorae_requests_finished_total",
            "Generations that ran to a finish reason.",
            load(&self.requests_finished),
        );
        counter(
            &mut out,
            "gorae_requests_cancelled_total",
            "Generations cancelled by a client disconnect.",
            load(&self.requests_cancelled),
        );
        counter(
            &mut out,
            "gorae_requests_rejected_total",
            "Requests refused with 503 (queue full, loading or shutting down).",
            load(&self.requests_rejected),
        );
        self.ttft.render(
            &mut out,
            "gorae_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
        );
        self.itl.render(
            &mut out,
            "gorae_inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
        );
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Requests generating now.",
            running,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Requests waiting for a slot.",
            waiting,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage, 0-1.",
            kv,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new(100);
        m.ttft.observe(Duration::from_millis(20));
        m.ttft.observe(Duration::from_secs(500));
        m.kv_used.store(25, Ordering::Relaxed);
        let text = m.render("m");
        assert!(text.contains("gorae_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("gorae_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("gorae_time_to_first_token_seconds_count 2"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25"));
        let text = m.render("a\"b\\c\nd");
        assert!(
            text.contains("vllm:kv_cache_usage_perc{model_name=\"a\\\"b\\\\c\\nd\"} 0.25"),
            "{text}"
        );
    }
}
