//! Helpers shared by the integration tests: seed files built with the crate's own writer, and a
//! raw byte builder for GGUF files no valid writer would produce.

#![allow(dead_code)] // each test binary uses a different subset

pub mod mutate;

use gorae_formats::gguf::{GgufWriter, MetaArray, MetaValue};
use gorae_kernels::GgmlType;

/// One metadata value of every type, and an array of every element type (plus an empty one).
pub fn all_value_kinds() -> Vec<(String, MetaValue)> {
    let v = vec![
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60000)),
        ("t.i16", MetaValue::I16(-30000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.f32", MetaValue::F32(1.5e-3)),
        ("t.bool", MetaValue::Bool(true)),
        ("t.string", MetaValue::String("héllo ✓".into())),
        ("t.u64", MetaValue::U64(u64::MAX - 7)),
        ("t.i64", MetaValue::I64(i64::MIN + 3)),
        ("t.f64", MetaValue::F64(-2.25e100)),
        ("a.u8", MetaArray::U8(vec![0, 1, 255]).into()),
        ("a.i8", MetaArray::I8(vec![-128, 0, 127]).into()),
        ("a.u16", MetaArray::U16(vec![1, 65535]).into()),
        ("a.i16", MetaArray::I16(vec![-1, 2]).into()),
        ("a.u32", MetaArray::U32(vec![7, 8, 9]).into()),
        ("a.i32", MetaArray::I32(vec![-7, 8]).into()),
        ("a.f32", MetaArray::F32(vec![0.5, -1.25, 3.0e8]).into()),
        ("a.bool", MetaArray::Bool(vec![true, false, true]).into()),
        (
            "a.string",
            MetaArray::String(vec!["a".into(), "".into(), "<0x0A>".into()]).into(),
        ),
        ("a.u64", MetaArray::U64(vec![u64::MAX, 0]).into()),
        ("a.i64", MetaArray::I64(vec![i64::MIN, i64::MAX]).into()),
        ("a.f64", MetaArray::F64(vec![1.0e-300, 2.0]).into()),
        ("a.empty", MetaArray::F32(vec![]).into()),
    ];
    v.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Deterministic filler bytes for a tensor.
pub fn filler(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Tensors of several types and ranks: (name, type, row-major shape).
pub fn seed_tensors() -> Vec<(&'static str, GgmlType, Vec<usize>)> {
    vec![
        ("token_embd.weight", GgmlType::Q8_0, vec![8, 64]),
        ("blk.0.attn_norm.weight", GgmlType::F32, vec![64]),
        ("blk.0.ffn_up.weight", GgmlType::Q4_K, vec![3, 256]),
        ("blk.0.attn_q.weight", GgmlType::F16, vec![2, 3, 5]),
        ("blk.0.odd.weight", GgmlType::BF16, vec![1, 2, 3, 7]),
        ("output.weight", GgmlType::Q4_0, vec![5, 32]),
    ]
}

/// A writer holding every value kind and the seed tensors.
pub fn seed_writer(alignment: Option<u32>) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("llama".into()));
    if let Some(a) = alignment {
        w.set_alignment(a);
    }
    for (k, v) in all_value_kinds() {
        w.add_kv(k, v);
    }
    for (i, (name, ty, shape)) in seed_tensors().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let bytes = n / ty.block_size() * ty.type_size();
        w.add_tensor(name, ty, &shape, filler(bytes, i as u8));
    }
    w
}

pub fn write_to_vec(w: &GgufWriter) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    out
}

/// Builds raw GGUF bytes field by field, for files the writer refuses to produce.
#[derive(Default)]
pub struct Raw {
    pub b: Vec<u8>,
}

impl Raw {
    /// Magic, version, counts.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.b.extend_from_slice(b"GGUF");
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.b.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.b.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A key with a u32 value.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    /// A tensor info; `ne` in GGUF order (innermost first).
    pub fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to `alignment` and appends `n` data bytes.
    pub fn data(&mut self, alignment: usize, n: usize) -> &mut Self {
        while !self.b.len().is_multiple_of(alignment) {
            self.b.push(0);
        }
        self.b.resize(self.b.len() + n, 0xAB);
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.b)
    }
}
