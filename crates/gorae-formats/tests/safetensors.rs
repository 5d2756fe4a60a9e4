//! safetensors: serialise → load round trips, sharded directories, and one test per header rule
//! of the ecosystem guide's C3 list, each asserting the specific error.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

use std::path::Path;

use gorae_formats::FormatError;
use gorae_formats::safetensors::{SafetensorsModel, StDtype, StTensorView, serialize};
use gorae_kernels::GgmlType;

fn view<'a>(name: &'a str, dtype: StDtype, shape: &'a [usize], data: &'a [u8]) -> StTensorView<'a> {
    StTensorView {
        name,
        dtype,
        shape,
        data,
    }
}

/// A file image from a raw JSON header and data bytes.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn reject(bytes: Vec<u8>) -> FormatError {
    match SafetensorsModel::from_bytes(bytes) {
        Ok(_) => panic!("accepted a file that should be rejected"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn round_trip_several_dtypes() {
    let a: Vec<u8> = (0..24).collect();
    let b: Vec<u8> = (0..6).collect();
    let c = [1u8, 0, 1];
    let d: Vec<u8> = vec![7; 8];
    let tensors = [
        view("a", StDtype::F32, &[2, 3], &a),
        view("b", StDtype::BF16, &[3], &b),
        view("c", StDtype::BOOL, &[3], &c),
        view("scalar", StDtype::I64, &[], &d),
        view("empty", StDtype::F16, &[0, 4], &[]),
    ];
    let meta = vec![("format".to_owned(), "pt".to_owned())];
    let bytes = serialize(&meta, &tensors).unwrap();
    let m = SafetensorsModel::from_bytes(bytes).unwrap();
    assert_eq!(m.len(), 5);
    assert_eq!(m.names(), ["a", "b", "c", "scalar", "empty"]);
    assert_eq!(m.metadata(), meta.as_slice());
    for t in &tensors {
        let got = m.tensor(t.name).unwrap();
        assert_eq!(
            (got.dtype, got.shape, got.data),
            (t.dtype, t.shape, t.data),
            "{}",
            t.name
        );
    }
    assert_eq!(m.tensor("scalar").unwrap().n_elements(), 1);
    assert!(m.tensor("nope").is_none());
    assert_eq!(StDtype::BF16.as_ggml(), Some(GgmlType::BF16));
    assert_eq!(StDtype::F8_E4M3.as_ggml(), None);
}

#[test]
fn sub_byte_dtypes_must_end_on_a_byte_boundary() {
    let ok = raw(
        r#"{"x":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}"#,
        &[0; 3],
    );
    assert_eq!(
        SafetensorsModel::from_bytes(ok)
            .unwrap()
            .tensor("x")
            .unwrap()
            .data
            .len(),
        3
    );
    let e = reject(raw(
        r#"{"x":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
        &[0; 2],
    ));
    assert!(
        matches!(e, FormatError::StSizeMismatch { expected: None, .. }),
        "{e}"
    );
    let ok = raw(
        r#"{"x":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}"#,
        &[0; 3],
    );
    SafetensorsModel::from_bytes(ok).unwrap();
}

#[test]
fn header_length_over_cap() {
    let mut b = 100_000_001u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(matches!(
        reject(b),
        FormatError::StHeaderTooLarge {
            len: 100_000_001,
            ..
        }
    ));
    assert!(matches!(
        reject(u64::MAX.to_le_bytes().to_vec()),
        FormatError::StHeaderTooLarge { .. }
    ));
}

#[test]
fn header_past_end_of_file() {
    let mut b = 100u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(matches!(
        reject(b),
        FormatError::StHeaderPastEnd {
            len: 100,
            file_len: 10
        }
    ));
    assert!(matches!(
        reject(vec![1, 2, 3]),
        FormatError::Truncated { .. }
    ));
}

#[test]
fn header_must_start_with_brace() {
    assert!(matches!(
        reject(raw(" {}", &[])),
        FormatError::StHeaderStart
    ));
    assert!(matches!(reject(raw("", &[])), FormatError::StHeaderStart));
    assert!(matches!(reject(raw("[]", &[])), FormatError::StHeaderStart));
    // Trailing spaces are allowed padding.
    SafetensorsModel::from_bytes(raw("{}      ", &[])).unwrap();
}

#[test]
fn header_must_be_utf8_json_object() {
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    assert!(matches!(reject(b), FormatError::StHeaderUtf8 { offset: 1 }));
    let e = reject(raw("{\"a\":\n  nope}", &[]));
    assert!(
        matches!(e, FormatError::StHeaderJson { line: 2, .. }),
        "{e}"
    );
    assert!(matches!(
        reject(raw("{} x", &[])),
        FormatError::StHeaderJson { .. }
    ));
}

#[test]
fn duplicate_keys_rejected() {
    let h = r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
    assert!(matches!(reject(raw(h, &[0; 2])), FormatError::StDuplicateKey { key } if key == "x"));
    let h = r#"{"__metadata__":{"a":"1","a":"2"}}"#;
    assert!(matches!(
        reject(raw(h, &[])),
        FormatError::StDuplicateKey { .. }
    ));
    let h = r#"{"__metadata__":{},"__metadata__":{}}"#;
    assert!(matches!(
        reject(raw(h, &[])),
        FormatError::StDuplicateKey { .. }
    ));
    // A repeated field inside one tensor entry is a JSON error.
    let h = r#"{"x":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
    assert!(matches!(
        reject(raw(h, &[0])),
        FormatError::StHeaderJson { .. }
    ));
}

#[test]
fn unknown_dtype() {
    let h = r#"{"x":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#;
    assert!(
        matches!(reject(raw(h, &[0; 16])), FormatError::StUnknownDtype { dtype, .. } if dtype == "F128")
    );
}

#[test]
fn shape_times_size_must_equal_span() {
    let h = r#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    assert!(matches!(
        reject(raw(h, &[0; 12])),
        FormatError::StSizeMismatch {
            expected: Some(16),
            actual: 12,
            ..
        }
    ));
    // Overflowing product: checked, not wrapped to a small number.
    let h = r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#;
    assert!(matches!(
        reject(raw(h, &[])),
        FormatError::StSizeMismatch { expected: None, .. }
    ));
    let h = r#"{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}"#;
    assert!(matches!(
        reject(raw(h, &[])),
        FormatError::StHeaderJson { .. }
    ));
    let h = r#"{"x":{"dtype":"U8","shape":[2],"data_offsets":[2,0]}}"#;
    assert!(matches!(
        reject(raw(h, &[0; 2])),
        FormatError::StReversedOffsets { .. }
    ));
}

#[test]
fn shape_with_too_many_dims() {
    let dims = vec!["1"; 65].join(",");
    let h = format!(r#"{{"x":{{"dtype":"U8","shape":[{dims}],"data_offsets":[0,1]}}}}"#);
    assert!(matches!(
        reject(raw(&h, &[0])),
        FormatError::StHeaderJson { .. }
    ));
    let dims = vec!["1"; 64].join(",");
    let h = format!(r#"{{"x":{{"dtype":"U8","shape":[{dims}],"data_offsets":[0,1]}}}}"#);
    SafetensorsModel::from_bytes(raw(&h, &[0])).unwrap();
}

#[test]
fn offsets_must_be_contiguous() {
    // Gap between tensors.
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#;
    assert!(matches!(
        reject(raw(h, &[0; 5])),
        FormatError::StNotContiguous {
            begin: 3,
            expected: 2,
            ..
        }
    ));
    // Overlap (a polyglot tensor sharing bytes).
    let h = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#;
    assert!(matches!(
        reject(raw(h, &[0; 4])),
        FormatError::StNotContiguous { .. }
    ));
    // Not starting at zero.
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#;
    assert!(matches!(
        reject(raw(h, &[0; 3])),
        FormatError::StNotContiguous {
            begin: 1,
            expected: 0,
            ..
        }
    ));
    // Listed out of order but contiguous once sorted: fine.
    let h = r#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    let m = SafetensorsModel::from_bytes(raw(h, &[1, 2, 3, 4])).unwrap();
    assert_eq!(m.tensor("b").unwrap().data, &[3, 4]);
}

#[test]
fn last_end_must_equal_data_length() {
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    assert!(matches!(
        reject(raw(h, &[0; 3])),
        FormatError::StDataLength {
            data_len: 3,
            covered: 2
        }
    ));
    assert!(matches!(
        reject(raw(h, &[0; 1])),
        FormatError::StDataLength {
            data_len: 1,
            covered: 2
        }
    ));
    assert!(matches!(
        reject(raw("{}", &[0])),
        FormatError::StDataLength { .. }
    ));
}

#[test]
fn metadata_must_be_string_to_string() {
    let h = r#"{"__metadata__":{"a":1}}"#;
    assert!(matches!(reject(raw(h, &[])), FormatError::StMetadataNotString { key } if key == "a"));
    let h = r#"{"__metadata__":["a"]}"#;
    assert!(matches!(
        reject(raw(h, &[])),
        FormatError::StHeaderJson { .. }
    ));
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn shard(names: &[&str]) -> Vec<u8> {
    let data = [0u8; 4];
    let views: Vec<_> = names
        .iter()
        .map(|n| view(n, StDtype::F32, &[1], &data))
        .collect();
    serialize(&[], &views).unwrap()
}

fn index(entries: &[(&str, &str)]) -> String {
    let map: Vec<String> = entries
        .iter()
        .map(|(t, f)| format!("{t:?}: {f:?}"))
        .collect();
    format!(
        r#"{{"metadata": {{"total_size": 12}}, "weight_map": {{{}}}}}"#,
        map.join(", ")
    )
}

#[test]
fn open_file_single_dir_and_sharded_dir() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "model.safetensors", &shard(&["x", "y"]));
    assert_eq!(SafetensorsModel::open(d.path()).unwrap().len(), 2);
    assert_eq!(
        SafetensorsModel::open(&d.path().join("model.safetensors"))
            .unwrap()
            .names(),
        ["x", "y"]
    );

    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model-00001-of-00002.safetensors",
        &shard(&["a", "b"]),
    );
    write(d.path(), "model-00002-of-00002.safetensors", &shard(&["c"]));
    let idx = index(&[
        ("a", "model-00001-of-00002.safetensors"),
        ("c", "model-00002-of-00002.safetensors"),
        ("b", "model-00001-of-00002.safetensors"),
    ]);
    write(d.path(), "model.safetensors.index.json", idx.as_bytes());
    let m = SafetensorsModel::open(d.path()).unwrap();
    assert_eq!((m.len(), m.n_shards()), (3, 2));
    assert_eq!(m.names(), ["a", "b", "c"]);
    assert_eq!(m.tensor("c").unwrap().shape, &[1]);
    let m = SafetensorsModel::open(&d.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(m.len(), 3);

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        SafetensorsModel::open(empty.path()),
        Err(FormatError::StNoWeights { .. })
    ));
    assert!(matches!(
        SafetensorsModel::open(&empty.path().join("x.safetensors")),
        Err(FormatError::MissingFile { .. })
    ));
}

#[test]
fn shard_names_escaping_the_dir_are_rejected() {
    let outer = tempfile::tempdir().unwrap();
    let d = outer.path().join("model");
    std::fs::create_dir(&d).unwrap();
    write(outer.path(), "evil.safetensors", &shard(&["a"]));
    for name in [
        "../evil.safetensors",
        "/etc/passwd",
        "sub/x.safetensors",
        "..",
        ".",
        "",
        "a\\b",
        "C:x",
    ] {
        write(
            &d,
            "model.safetensors.index.json",
            index(&[("a", name)]).as_bytes(),
        );
        match SafetensorsModel::open(&d) {
            Err(FormatError::StShardPath { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
}

#[test]
fn sharded_index_inconsistencies() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "s1.safetensors", &shard(&["a", "b"]));
    write(d.path(), "s2.safetensors", &shard(&["b"]));
    let open_with = |entries: &[(&str, &str)]| {
        write(
            d.path(),
            "model.safetensors.index.json",
            index(entries).as_bytes(),
        );
        SafetensorsModel::open(d.path())
    };
    // Referenced shard does not exist.
    assert!(matches!(
        open_with(&[("a", "missing.safetensors")]),
        Err(FormatError::MissingFile { .. })
    ));
    // Tensor in two shards.
    assert!(matches!(
        open_with(&[("a", "s1.safetensors"), ("b", "s2.safetensors")]),
        Err(FormatError::StDuplicateAcrossShards { .. })
    ));
    // weight_map names a tensor its shard lacks.
    assert!(matches!(
        open_with(&[("zzz", "s1.safetensors")]),
        Err(FormatError::StBadIndex { .. })
    ));
    // Duplicate weight_map keys.
    assert!(matches!(
        open_with(&[("a", "s1.safetensors"), ("a", "s1.safetensors")]),
        Err(FormatError::StBadIndex { .. })
    ));
    assert!(matches!(
        open_with(&[]),
        Err(FormatError::StBadIndex { .. })
    ));
    write(
        d.path(),
        "model.safetensors.index.json",
        b"{\"weight_map\": ",
    );
    assert!(matches!(
        SafetensorsModel::open(d.path()),
        Err(FormatError::Json { .. })
    ));
}
