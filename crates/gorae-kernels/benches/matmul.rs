//! Matrix-product benches per weight type x ISA, single-threaded.
//!
//! - `decode/<shape>/<type>/<isa>`: n_tokens = 1 on one weight matrix, throughput in bytes of
//!   weights per second. The matrix stays in the (large, shared) L3 between iterations, so this
//!   is the kernel's speed with weights cache-resident.
//! - `decode_stream/2048x2048/<type>/<isa>`: the same product, but each iteration uses the next
//!   of as many copies of the matrix as fill `GORAE_BENCH_STREAM_MIB` (default 512) MiB, so the
//!   weights come from DRAM as in a real decode of a large model (about 13 GB/s per core here).
//! - `batch64/<shape>/<type>/<isa>`: n_tokens = 64; throughput is counted in "elements" that are
//!   floating-point operations (2 * n_rows * n_cols * n_tokens), so criterion's `Gelem/s` reads
//!   as GFLOP/s.
//! - `<isa>+panels` in `decode` and `batch64`: the same matrix repacked into 16-row panels
//!   (`gorae_kernels::packed`), on each ISA with panel kernels for the type.
//!
//! Each timing includes quantizing the activations (as `matmul` does). Samples are few and
//! short so the default run stays in minutes; `GORAE_BENCH_TYPES=q4_0,q8_0` narrows the types.
//!
//! `cargo bench -p gorae-kernels --bench matmul [-- FILTER]`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gorae_kernels::matmul::{WeightRef, matmul_with};
use gorae_kernels::packed::{self, Layout};
use gorae_kernels::{GgmlType, Isa, available_isas, quantize_row};
use std::hint::black_box;
use std::time::Duration;

const TYPES: &[GgmlType] = &[
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q5_K,
    GgmlType::Q3_K,
    GgmlType::Q2_K,
];

/// (n_rows, n_cols): a 2048-wide projection and SmolLM2-135M's 576 -> 1536 FFN up/gate.
const SHAPES: &[(usize, usize)] = &[(2048, 2048), (1536, 576)];

fn types() -> Vec<GgmlType> {
    match std::env::var("GORAE_BENCH_TYPES") {
        Ok(v) => TYPES
            .iter()
            .copied()
            .filter(|t| {
                v.split(',')
                    .any(|s| s.trim().eq_ignore_ascii_case(&t.to_string()))
            })
            .collect(),
        Err(_) => TYPES.to_vec(),
    }
}

/// Deterministic pseudo-random values in about -1..1 (no rand dependency in the hot setup).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[n_rows, n_cols]` matrix of type `ty`: 16 quantized rows repeated (quantizing millions
/// of K-quant weights would dominate the bench's run time; the values do not matter to speed).
fn weights(ty: GgmlType, n_rows: usize, n_cols: usize) -> Vec<u8> {
    let src = values(16 * n_cols, 7);
    let row = ty.bytes_for(n_cols as u64).unwrap_or(0) as usize;
    let mut q16 = vec![0u8; 16 * row];
    for (x, q) in src.chunks_exact(n_cols).zip(q16.chunks_exact_mut(row)) {
        if quantize_row(ty, x, q).is_err() {
            return Vec::new();
        }
    }
    q16.iter().copied().cycle().take(n_rows * row).collect()
}

fn bench(c: &mut Criterion) {
    let isas = available_isas();
    for ty in types() {
        for &(n_rows, n_cols) in SHAPES {
            // 576 is not whole K-quant super-blocks (ggml stores such tensors in a 32-block
            // type instead).
            if !n_cols.is_multiple_of(ty.block_size()) {
                continue;
            }
            let data = weights(ty, n_rows, n_cols);
            let w = WeightRef {
                layout: Default::default(),
                ty,
                data: &data,
                n_rows,
                n_cols,
            };
            let shape = format!("{n_rows}x{n_cols}");
            let mut scratch = Vec::new();
            // The same matrix in 16-row panels, for every ISA with panel kernels for the type.
            let paneled = packed::pack(ty, n_rows, n_cols, &data).unwrap_or_default();
            let wp = WeightRef {
                layout: Layout::Panels,
                data: &paneled,
                ..w
            };
            // Every (ISA, layout) to time: ggml's rows on each ISA, panels where they have kernels.
            let mut variants: Vec<(String, Isa, &WeightRef)> =
                isas.iter().map(|&isa| (isa.to_string(), isa, &w)).collect();
            variants.extend(
                isas.iter()
                    .filter(|&&isa| packed::layout_for(isa, ty) == Layout::Panels)
                    .map(|&isa| (format!("{isa}+panels"), isa, &wp)),
            );

            let x1 = values(n_cols, 1);
            let mut y1 = vec![0.0f32; n_rows];
            let mut g = c.benchmark_group(format!("decode/{shape}"));
            g.throughput(Throughput::Bytes(data.len() as u64));
            for (id, isa, wv) in &variants {
                g.bench_function(BenchmarkId::new(ty.to_string(), id), |b| {
                    b.iter(|| {
                        matmul_with(*isa, wv, black_box(&x1), 1, &mut y1, &mut scratch)
                            .unwrap_or(())
                    })
                });
            }
            g.finish();

            let n_tok = 64;
            let x64 = values(n_tok * n_cols, 2);
            let mut y64 = vec![0.0f32; n_tok * n_rows];
            let mut g = c.benchmark_group(format!("batch64/{shape}"));
            g.throughput(Throughput::Elements((2 * n_rows * n_cols * n_tok) as u64));
            for (id, isa, wv) in &variants {
                g.bench_function(BenchmarkId::new(ty.to_string(), id), |b| {
                    b.iter(|| {
                        matmul_with(*isa, wv, black_box(&x64), n_tok, &mut y64, &mut scratch)
                            .unwrap_or(())
                    })
                });
            }
            g.finish();
        }

        // DRAM streaming: rotate through copies of one 2048 x 2048 matrix.
        let (n_rows, n_cols) = (2048, 2048);
        let one = weights(ty, n_rows, n_cols);
        let mib: usize = std::env::var("GORAE_BENCH_STREAM_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
        let copies = (mib << 20).div_ceil(one.len().max(1)).max(2);
        let big: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(copies * one.len())
            .collect();
        let x1 = values(n_cols, 1);
        let mut y1 = vec![0.0f32; n_rows];
        let mut scratch = Vec::new();
        let mut g = c.benchmark_group("decode_stream/2048x2048");
        g.throughput(Throughput::Bytes(one.len() as u64));
        for &isa in &isas {
            let mut k = 0;
            g.bench_function(BenchmarkId::new(ty.to_string(), isa), |b| {
                b.iter(|| {
                    k = (k + 1) % copies;
                    let w = WeightRef {
                        layout: Default::default(),
                        ty,
                        data: &big[k * one.len()..(k + 1) * one.len()],
                        n_rows,
                        n_cols,
                    };
                    matmul_with(isa, &w, black_box(&x1), 1, &mut y1, &mut scratch).unwrap_or(())
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600));
    targets = bench
}
criterion_main!(benches);
