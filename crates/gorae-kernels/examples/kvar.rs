#![allow(clippy::unwrap_used)] // a dev tool: a failed unwrap is a clear failure
//! Quick variant timer: best-of-N single-thread matmul time per type x ISA (robust to a noisy,
//! shared machine, unlike means). `cargo run --release -p gorae-kernels --example kvar --
//! [q4_0,q8_0] [n_rows] [n_cols] [n_tokens] [stream]`
use gorae_kernels::matmul::{WeightRef, matmul_with};
use gorae_kernels::packed::{self, Layout};
use gorae_kernels::{GgmlType, Isa, available_isas, quantize_row};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let types = args.get(1).cloned().unwrap_or("q4_0,q4_1,q8_0".into());
    let n_rows: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(2048);
    let n_cols: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(2048);
    let n_tok: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1);
    let stream = args.get(5).is_some();
    let all = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];
    for ty in all {
        if !types
            .split(',')
            .any(|t| t.eq_ignore_ascii_case(&ty.to_string()))
        {
            continue;
        }
        let src: Vec<f32> = (0..16 * n_cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let row = ty.bytes_for(n_cols as u64).unwrap() as usize;
        let mut q16 = vec![0u8; 16 * row];
        for (x, q) in src.chunks_exact(n_cols).zip(q16.chunks_exact_mut(row)) {
            quantize_row(ty, x, q).unwrap();
        }
        let one: Vec<u8> = q16.iter().copied().cycle().take(n_rows * row).collect();
        let mib: usize = std::env::var("GORAE_BENCH_STREAM_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
        let copies = if stream {
            (mib << 20).div_ceil(one.len())
        } else {
            1
        };
        let big: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(copies * one.len())
            .collect();
        let x: Vec<f32> = (0..n_tok * n_cols)
            .map(|i| ((i * 31) % 97) as f32 / 50.0 - 1.0)
            .collect();
        let mut y = vec![0.0f32; n_tok * n_rows];
        let mut scratch = Vec::new();
        let mut line = format!(
            "{ty:>5} {n_rows}x{n_cols} t{n_tok}{}:",
            if stream { " stream" } else { "" }
        );
        // The same matrices repacked into 16-row panels, packed once, timed on every ISA with
        // panel kernels for the type.
        let one_p = packed::pack(ty, n_rows, n_cols, &one).unwrap_or_default();
        let big_p: Vec<u8> = one_p
            .iter()
            .copied()
            .cycle()
            .take(copies * one_p.len())
            .collect();
        let mut runs: Vec<(Isa, Layout)> = available_isas()
            .into_iter()
            .map(|i| (i, Layout::Rows))
            .collect();
        runs.extend(
            available_isas()
                .into_iter()
                .filter(|&i| packed::layout_for(i, ty) == Layout::Panels)
                .map(|i| (i, Layout::Panels)),
        );
        for (isa, layout) in runs {
            let (unit, data) = match layout {
                Layout::Rows => (one.len(), &big),
                Layout::Panels => (one_p.len(), &big_p),
            };
            let mut best = f64::MAX;
            let reps = if stream { copies.min(400) } else { 200 };
            for rep in 0..reps.max(20) {
                let k = rep % copies;
                let w = WeightRef {
                    layout,
                    ty,
                    data: &data[k * unit..(k + 1) * unit],
                    n_rows,
                    n_cols,
                };
                let t = Instant::now();
                matmul_with(isa, &w, &x, n_tok, &mut y, &mut scratch).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            let name = match layout {
                Layout::Rows => isa.to_string(),
                Layout::Panels => format!("{isa}+panels"),
            };
            if n_tok == 1 {
                line += &format!("  {name} {:.1} GB/s", one.len() as f64 / best / 1e9);
            } else {
                line += &format!(
                    "  {name} {:.1} GFLOP/s",
                    (2 * n_rows * n_cols * n_tok) as f64 / best / 1e9
                );
            }
        }
        println!("{line}");
    }
}
