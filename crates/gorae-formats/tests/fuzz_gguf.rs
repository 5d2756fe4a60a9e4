//! Mutation fuzzing of the GGUF reader on the stable toolchain: valid seed files built with the
//! crate's writer (several shapes, tensor types, every value type, three alignments) are mutated
//! and fed to `fuzz_gguf`, which must never panic. Each run is seeded and deterministic.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::mutate::{Field, Mutator, run, variant_name};
use gorae_formats::fuzz_gguf;
use gorae_formats::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue};
use gorae_kernels::GgmlType;

const MUTANTS_PER_SEED: usize = 40_000;

/// The integer fields of a valid GGUF file (versions, counts, lengths, type ids, dims, offsets,
/// scalar values), found by walking it.
fn gguf_fields(b: &[u8]) -> Vec<Field> {
    let rd = |at: usize, w: usize| -> u64 {
        let mut x = [0u8; 8];
        x[..w].copy_from_slice(&b[at..at + w]);
        u64::from_le_bytes(x)
    };
    let mut f = vec![
        Field {
            offset: 4,
            width: 4,
        },
        Field {
            offset: 8,
            width: 8,
        },
        Field {
            offset: 16,
            width: 8,
        },
    ];
    let (n_tensors, n_kv) = (rd(8, 8), rd(16, 8));
    let mut p = 24;
    let string = |p: &mut usize, f: &mut Vec<Field>| {
        f.push(Field {
            offset: *p,
            width: 8,
        });
        *p += 8 + rd(*p, 8) as usize;
    };
    for _ in 0..n_kv {
        string(&mut p, &mut f);
        f.push(Field {
            offset: p,
            width: 4,
        });
        let ty = rd(p, 4);
        p += 4;
        let scalar = |ty: u64| [1usize, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8][ty as usize];
        match ty {
            8 => string(&mut p, &mut f),
            9 => {
                f.push(Field {
                    offset: p,
                    width: 4,
                });
                f.push(Field {
                    offset: p + 4,
                    width: 8,
                });
                let (ety, n) = (rd(p, 4), rd(p + 4, 8));
                p += 12;
                for _ in 0..n {
                    if ety == 8 {
                        string(&mut p, &mut f);
                    } else {
                        let w = scalar(ety);
                        f.push(Field {
                            offset: p,
                            width: w,
                        });
                        p += w;
                    }
                }
            }
            t => {
                let w = scalar(t);
                f.push(Field {
                    offset: p,
                    width: w,
                });
                p += w;
            }
        }
    }
    for _ in 0..n_tensors {
        string(&mut p, &mut f);
        f.push(Field {
            offset: p,
            width: 4,
        });
        let n_dims = rd(p, 4) as usize;
        p += 4;
        for _ in 0..n_dims {
            f.push(Field {
                offset: p,
                width: 8,
            });
            p += 8;
        }
        f.push(Field {
            offset: p,
            width: 4,
        });
        f.push(Field {
            offset: p + 4,
            width: 8,
        });
        p += 12;
    }
    f
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![
        common::write_to_vec(&common::seed_writer(None)),
        common::write_to_vec(&common::seed_writer(Some(64))),
    ];
    // A vocab-like file: long string arrays, scores, token types, bools, and quantised tensors.
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::from("llama"));
    w.set_alignment(8);
    let tokens: Vec<String> = (0..40).map(|i| format!("tok{i}")).collect();
    w.add_kv("tokenizer.ggml.tokens", MetaArray::String(tokens).into());
    w.add_kv(
        "tokenizer.ggml.scores",
        MetaArray::F32((0..40).map(|i| i as f32).collect()).into(),
    );
    w.add_kv(
        "tokenizer.ggml.token_type",
        MetaArray::I32(vec![1; 40]).into(),
    );
    w.add_kv("flags", MetaArray::Bool(vec![true, false]).into());
    w.add_kv("llama.context_length", MetaValue::U64(4096));
    for (i, (name, ty, shape)) in [
        ("q6", GgmlType::Q6_K, vec![2, 256]),
        ("q5", GgmlType::Q5_1, vec![64]),
        ("i8", GgmlType::I8, vec![3, 1, 5]),
        ("f64", GgmlType::F64, vec![2, 2]),
    ]
    .into_iter()
    .enumerate()
    {
        let n: usize = shape.iter().product();
        w.add_tensor(
            name,
            ty,
            &shape,
            common::filler(n / ty.block_size() * ty.type_size(), i as u8),
        );
    }
    out.push(common::write_to_vec(&w));
    // Metadata only, and the smallest possible file.
    let mut w = GgufWriter::new();
    w.add_kv("general.name", MetaValue::from("x"));
    out.push(common::write_to_vec(&w));
    out.push(common::write_to_vec(&GgufWriter::new()));
    out
}

#[test]
fn mutated_gguf_files_never_panic() {
    let seeds = seeds();
    // Seeds a cargo-fuzz corpus: GORAE_FUZZ_SEED_DIR=fuzz/corpus/gguf cargo test --test fuzz_gguf
    if let Some(dir) = std::env::var_os("GORAE_FUZZ_SEED_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("seed{i}.gguf")), s).unwrap();
        }
    }
    for s in &seeds {
        GgufFile::from_bytes(s.clone()).unwrap();
        fuzz_gguf(s);
    }
    let fields: Vec<Vec<Field>> = seeds.iter().map(|s| gguf_fields(s)).collect();
    let mut m = Mutator::new(0x6775_6666);
    let n_seeds = seeds.len();
    let mutants = (0..MUTANTS_PER_SEED * n_seeds).map(|i| {
        let k = i % n_seeds;
        let donor = &seeds[(i / n_seeds) % n_seeds];
        m.mutate(&seeds[k], &fields[k], donor)
    });
    let start = std::time::Instant::now();
    let reasons = RefCell::new(BTreeMap::<String, usize>::new());
    let (fed, rejected, panicked, first) = run(
        mutants,
        |b| match GgufFile::from_bytes(b.to_vec()) {
            Ok(_) => true,
            Err(e) => {
                *reasons.borrow_mut().entry(variant_name(&e)).or_default() += 1;
                false
            }
        },
        fuzz_gguf,
    );
    println!(
        "gguf fuzz: fed {fed} mutants, rejected {rejected}, accepted {}, panicked {panicked} ({:.2?})",
        fed - rejected - panicked,
        start.elapsed()
    );
    println!("gguf fuzz: rejections by error: {:?}", reasons.borrow());
    if let Some(bad) = first {
        let path = std::env::temp_dir().join("gorae-fuzz-gguf-panic.bin");
        std::fs::write(&path, &bad).unwrap();
        panic!(
            "{panicked} mutants panicked; first saved to {}",
            path.display()
        );
    }
    assert!(fed >= 10_000);
    assert!(
        rejected > fed / 4,
        "mutations too weak: only {rejected} rejected"
    );
    // The mutations reach deep checks, not just the magic and the version.
    assert!(reasons.borrow().len() >= 15, "{:?}", reasons.borrow());
}

#[test]
fn random_bytes_after_a_valid_prefix_never_panic() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..400),
    );
    runner
        .run(&strategy, |(n_tensors, n_kv, tail)| {
            let mut b = b"GGUF".to_vec();
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(&(n_tensors % 4).to_le_bytes());
            b.extend_from_slice(&(n_kv % 4).to_le_bytes());
            b.extend_from_slice(&tail);
            fuzz_gguf(&b);
            Ok(())
        })
        .unwrap();
}
