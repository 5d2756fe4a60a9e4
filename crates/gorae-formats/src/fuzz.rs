//! Fuzz entry points: one function per parser that takes arbitrary bytes, so the same harness
//! body serves the in-tree mutation tests (`tests/fuzz_*.rs`, stable toolchain) and a cargo-fuzz
//! or AFL target (ecosystem guide A9).
//!
//! Beyond "does not panic", each entry point checks the parser's promises on whatever it accepts:
//! every tensor view exists and has the advertised size, and an accepted file rewritten by this
//! crate's writer parses again to the same content. Those checks use `assert!` on purpose: a
//! fuzzer reports a failed invariant the same way as a crash.

use crate::gguf::{GgufFile, GgufWriter, MetaValue};
use crate::safetensors::{SafetensorsModel, StTensorView, serialize};

/// Parses `data` as GGUF and, if accepted, touches every metadata value and tensor view and
/// round-trips the file through the writer. Never returns an error; panics only on a bug.
pub fn fuzz_gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, value) in file.metadata() {
        touch_value(value);
        assert!(
            file.get(key).is_some(),
            "metadata key {key:?} not found by get"
        );
    }
    let _ = file.architecture();
    let mut checksum = 0u8;
    for info in file.tensors() {
        let Some(view) = file.tensor(&info.name) else {
            panic!("accepted tensor {:?} has no view", info.name)
        };
        assert_eq!(view.data.len(), info.n_bytes);
        assert_eq!(view.shape, info.shape.as_slice());
        let n = view.n_elements();
        assert_eq!(info.ty.bytes_for(n as u64), Some(info.n_bytes as u64));
        checksum ^=
            view.data.first().copied().unwrap_or(0) ^ view.data.last().copied().unwrap_or(0);
    }
    std::hint::black_box(checksum);

    // What the reader accepts, the writer must reproduce, and the result must read back.
    let mut first = Vec::new();
    if let Err(e) = GgufWriter::from_gguf(&file).write_to(&mut first) {
        panic!("writer refused an accepted file: {e}");
    }
    let again = match GgufFile::from_bytes(first.clone()) {
        Ok(f) => f,
        Err(e) => panic!("rewritten file rejected: {e}"),
    };
    // Offsets may differ (the writer packs tensors in order); everything else must not.
    assert_eq!(again.tensors().len(), file.tensors().len());
    for (a, b) in again.tensor_views().zip(file.tensor_views()) {
        assert!(a.name == b.name && a.ty == b.ty && a.shape == b.shape && a.data == b.data);
    }
    assert_eq!(again.metadata().len(), file.metadata().len());
    let mut second = Vec::new();
    if let Err(e) = GgufWriter::from_gguf(&again).write_to(&mut second) {
        panic!("writer refused a rewritten file: {e}");
    }
    assert!(first == second, "rewriting is not idempotent");
}

fn touch_value(value: &MetaValue) {
    let _ = (
        value.as_u64(),
        value.as_u32(),
        value.as_i64(),
        value.as_f32(),
        value.as_bool(),
        value.as_str(),
    );
    if let Some(a) = value.as_array() {
        let _ = (
            a.len(),
            a.as_strings(),
            a.as_f32s(),
            a.as_i32s(),
            a.elem_type(),
        );
    }
}

/// Parses `data` as a safetensors file and, if accepted, touches every tensor view and
/// round-trips the file through [`serialize`]. Never returns an error; panics only on a bug.
pub fn fuzz_safetensors(data: &[u8]) {
    let Ok(model) = SafetensorsModel::from_bytes(data.to_vec()) else {
        return;
    };
    let mut views: Vec<StTensorView<'_>> = Vec::with_capacity(model.len());
    for name in model.names() {
        let Some(view) = model.tensor(name) else {
            panic!("accepted tensor {name:?} has no view")
        };
        let n = view
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        assert_eq!(
            n.and_then(|n| view.dtype.bytes_for(n)),
            Some(view.data.len() as u64)
        );
        views.push(view);
    }
    let bytes = match serialize(model.metadata(), &views) {
        Ok(b) => b,
        Err(e) => panic!("serialize refused an accepted file: {e}"),
    };
    let again = match SafetensorsModel::from_bytes(bytes) {
        Ok(m) => m,
        Err(e) => panic!("re-serialised file rejected: {e}"),
    };
    assert_eq!(again.names(), model.names());
    assert_eq!(again.metadata(), model.metadata());
    for v in &views {
        let Some(w) = again.tensor(v.name) else {
            panic!("tensor {:?} lost in round trip", v.name)
        };
        assert!(w.dtype == v.dtype && w.shape == v.shape && w.data == v.data);
    }
}
