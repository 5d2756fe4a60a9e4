//! A small Llama with one quantized type per matrix, written as GGUF in memory, shared by tests.
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace
#![allow(dead_code)] // each test binary uses part of this module

use gorae_formats::gguf::{GgufFile, GgufWriter, MetaValue};
use gorae_kernels::GgmlType;
use gorae_kernels::quant::quantize_row;
use gorae_models::Model;
use gorae_models::names::{TensorKey, TensorKind as K};

fn tensor(w: &mut GgufWriter, key: TensorKey, ty: GgmlType, shape: &[usize], seed: u32) {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 4000.0 - 0.125)
        .collect();
    let mut bytes = vec![0u8; ty.bytes_for(n as u64).unwrap() as usize];
    quantize_row(ty, &values, &mut bytes).unwrap();
    w.add_tensor(key.gguf_name(), ty, shape, bytes);
}

/// 2 layers, n_embd 64, 4 heads (2 KV heads), n_vocab 256; weights of 8 different types.
pub fn quantized_llama() -> Model {
    let (n_embd, n_ff, n_vocab, n_layer) = (64usize, 128usize, 256usize, 2usize);
    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", MetaValue::String("llama".into())),
        ("llama.context_length", MetaValue::U32(128)),
        ("llama.embedding_length", MetaValue::U32(n_embd as u32)),
        ("llama.block_count", MetaValue::U32(n_layer as u32)),
        ("llama.feed_forward_length", MetaValue::U32(n_ff as u32)),
        ("llama.attention.head_count", MetaValue::U32(4)),
        ("llama.attention.head_count_kv", MetaValue::U32(2)),
        ("llama.vocab_size", MetaValue::U32(n_vocab as u32)),
    ] {
        w.add_kv(k, v);
    }
    tensor(
        &mut w,
        TensorKey::global(K::TokenEmbd),
        GgmlType::Q8_0,
        &[n_vocab, n_embd],
        1,
    );
    tensor(
        &mut w,
        TensorKey::global(K::OutputNorm),
        GgmlType::F32,
        &[n_embd],
        2,
    );
    for il in 0..n_layer {
        let l = |k| TensorKey::layer(k, il);
        tensor(&mut w, l(K::AttnNorm), GgmlType::F32, &[n_embd], 3);
        tensor(&mut w, l(K::AttnQ), GgmlType::Q4_0, &[n_embd, n_embd], 4);
        tensor(
            &mut w,
            l(K::AttnK),
            GgmlType::Q4_1,
            &[n_embd / 2, n_embd],
            5,
        );
        tensor(
            &mut w,
            l(K::AttnV),
            GgmlType::Q8_0,
            &[n_embd / 2, n_embd],
            6,
        );
        tensor(&mut w, l(K::AttnOut), GgmlType::F16, &[n_embd, n_embd], 7);
        tensor(&mut w, l(K::FfnNorm), GgmlType::F32, &[n_embd], 8);
        tensor(&mut w, l(K::FfnGate), GgmlType::Q5_0, &[n_ff, n_embd], 9);
        tensor(&mut w, l(K::FfnUp), GgmlType::Q5_1, &[n_ff, n_embd], 10);
        tensor(&mut w, l(K::FfnDown), GgmlType::BF16, &[n_embd, n_ff], 11);
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    let file = GgufFile::from_bytes(bytes).unwrap();
    Model::from_gguf(&file).unwrap()
}
