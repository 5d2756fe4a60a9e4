//! Mutation fuzzing of the safetensors loader: valid seed files (several dtypes, shapes, scalar
//! and empty tensors, metadata) are mutated both as bytes and as JSON text (numbers set to
//! boundary values, dtypes swapped, entries duplicated or dropped, with the header length fixed up
//! so the mutant reaches the deeper checks) and fed to `fuzz_safetensors`, which must never panic.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::mutate::{Field, Mutator, run, variant_name};
use gorae_formats::fuzz_safetensors;
use gorae_formats::safetensors::{SafetensorsModel, StDtype, StTensorView, serialize};
use rand::Rng;

const MUTANTS_PER_SEED: usize = 40_000;

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "8",
    "-1",
    "1.5",
    "1e3",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "100000000",
];

const DTYPE_NAMES: &[&str] = &[
    "F32", "F16", "BF16", "F4", "F6_E2M3", "U8", "BOOL", "I64", "C64", "F8_E4M3", "X", "", "f32",
];

fn seeds() -> Vec<Vec<u8>> {
    let a: Vec<u8> = (0..48).collect();
    let b: Vec<u8> = (0..10).collect();
    let c = [0u8, 1, 1, 0, 1];
    let d = [9u8; 8];
    let e = [0x55u8; 3];
    let meta = vec![
        ("format".to_owned(), "pt".to_owned()),
        ("k".to_owned(), "v".to_owned()),
    ];
    let v = |name, dtype, shape, data| StTensorView {
        name,
        dtype,
        shape,
        data,
    };
    vec![
        serialize(
            &meta,
            &[
                v("model.embed_tokens.weight", StDtype::F32, &[3, 4], &a),
                v("model.norm.weight", StDtype::BF16, &[5], &b),
                v("mask", StDtype::BOOL, &[5], &c),
                v("step", StDtype::I64, &[], &d),
                v("empty", StDtype::F16, &[0, 3], &[]),
                v("packed", StDtype::F4, &[2, 3], &e),
            ],
        )
        .unwrap(),
        serialize(
            &[],
            &[
                v("w", StDtype::F16, &[2, 2, 2, 3], &a),
                v("x", StDtype::U8, &[10], &b),
            ],
        )
        .unwrap(),
        serialize(&meta, &[]).unwrap(),
        serialize(&[], &[v("only", StDtype::F8_E4M3, &[1, 1, 5], &c)]).unwrap(),
    ]
}

type Spans = Vec<(usize, usize)>;

/// Byte ranges of number and string tokens in a JSON header.
fn tokens(text: &str) -> (Spans, Spans) {
    let b = text.as_bytes();
    let (mut nums, mut strs) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += 1;
            }
            strs.push((start, i + 1));
        } else if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            nums.push((start, i));
            continue;
        }
        i += 1;
    }
    (nums, strs)
}

/// The first top-level `"key":{...}` entry of a compact JSON object.
fn first_entry(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut depth = 0;
    for (i, &c) in b.iter().enumerate().skip(1) {
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return text.get(1..=i);
                }
            }
            _ => {}
        }
    }
    None
}

fn json_mutant(m: &mut Mutator, seed: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let mut text = String::from_utf8(seed[8..8 + n].to_vec()).unwrap();
    let data = &seed[8 + n..];
    let (nums, strs) = tokens(&text);
    match m.rng.random_range(0..5) {
        0 | 1 if !nums.is_empty() => {
            let (s, e) = nums[m.rng.random_range(0..nums.len())];
            text.replace_range(s..e, NUMBERS[m.rng.random_range(0..NUMBERS.len())]);
        }
        2 if !strs.is_empty() => {
            let (s, e) = strs[m.rng.random_range(0..strs.len())];
            let d = DTYPE_NAMES[m.rng.random_range(0..DTYPE_NAMES.len())];
            text.replace_range(s..e, &format!("\"{d}\""));
        }
        3 => {
            // Duplicate the first entry (same key twice, or a twin under the same offsets).
            if let Some(entry) = first_entry(&text).map(str::to_owned) {
                text.insert_str(1, &format!("{entry},"));
            }
        }
        _ => {
            // Drop the first entry.
            if let Some(entry) = first_entry(&text).map(str::to_owned) {
                text = text.replacen(&format!("{entry},"), "", 1);
            }
        }
    }
    let mut out = Vec::new();
    let len = if m.rng.random_bool(0.9) {
        text.len() as u64
    } else {
        n as u64
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    if m.rng.random_bool(0.2) {
        let extra = m.rng.random_range(0..3);
        out.resize(out.len() + extra, 0);
    }
    out
}

#[test]
fn mutated_safetensors_files_never_panic() {
    let seeds = seeds();
    // Seeds a cargo-fuzz corpus: GORAE_FUZZ_SEED_DIR=fuzz/corpus/safetensors cargo test --test fuzz_safetensors
    if let Some(dir) = std::env::var_os("GORAE_FUZZ_SEED_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed{i}.safetensors")),
                s,
            )
            .unwrap();
        }
    }
    for s in &seeds {
        SafetensorsModel::from_bytes(s.clone()).unwrap();
        fuzz_safetensors(s);
    }
    let fields = [Field {
        offset: 0,
        width: 8,
    }];
    let mut m = Mutator::new(0x7361_6665);
    let n_seeds = seeds.len();
    let mutants = (0..MUTANTS_PER_SEED * n_seeds).map(|i| {
        let k = i % n_seeds;
        if m.rng.random_bool(0.5) {
            json_mutant(&mut m, &seeds[k])
        } else {
            let donor = &seeds[(i / n_seeds) % n_seeds];
            m.mutate(&seeds[k], &fields, donor)
        }
    });
    let start = std::time::Instant::now();
    let reasons = RefCell::new(BTreeMap::<String, usize>::new());
    let (fed, rejected, panicked, first) = run(
        mutants,
        |b| match SafetensorsModel::from_bytes(b.to_vec()) {
            Ok(_) => true,
            Err(e) => {
                *reasons.borrow_mut().entry(variant_name(&e)).or_default() += 1;
                false
            }
        },
        fuzz_safetensors,
    );
    println!(
        "safetensors fuzz: fed {fed} mutants, rejected {rejected}, accepted {}, panicked {panicked} ({:.2?})",
        fed - rejected - panicked,
        start.elapsed()
    );
    println!(
        "safetensors fuzz: rejections by error: {:?}",
        reasons.borrow()
    );
    if let Some(bad) = first {
        let path = std::env::temp_dir().join("gorae-fuzz-safetensors-panic.bin");
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
    assert!(reasons.borrow().len() >= 10, "{:?}", reasons.borrow());
}

#[test]
fn random_headers_never_panic() {
    use proptest::prelude::*;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300));
    runner
        .run(&strategy, |(len, tail)| {
            let mut b = (len % 320).to_le_bytes().to_vec();
            b.push(b'{');
            b.extend_from_slice(&tail);
            fuzz_safetensors(&b);
            Ok(())
        })
        .unwrap();
}
