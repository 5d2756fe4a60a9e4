//! Writer → reader round trips: every value type, several tensor types and ranks, default and
//! non-default alignment, in-memory and streaming writes, and a file on disk through the mmap.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::{all_value_kinds, seed_tensors, seed_writer, write_to_vec};
use gorae_formats::FormatError;
use gorae_formats::gguf::{GgufFile, GgufWriter, MetaValue};
use gorae_kernels::GgmlType;

fn check_round_trip(alignment: Option<u32>) {
    let w = seed_writer(alignment);
    let bytes = write_to_vec(&w);
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    let expected_alignment = u64::from(alignment.unwrap_or(32));
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), expected_alignment);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.data_offset() % expected_alignment, 0);

    // Metadata in file order, every value type intact.
    let mut expected = vec![("general.architecture".to_owned(), MetaValue::from("llama"))];
    if let Some(a) = alignment {
        expected.push(("general.alignment".to_owned(), MetaValue::U32(a)));
    }
    expected.extend(all_value_kinds());
    assert_eq!(f.metadata(), expected.as_slice());
    for (k, v) in &expected {
        assert_eq!(f.get(k), Some(v), "{k}");
    }

    // Tensors in file order, shapes row-major, data byte-exact and aligned.
    assert_eq!(f.tensors().len(), seed_tensors().len());
    for (i, (name, ty, shape)) in seed_tensors().into_iter().enumerate() {
        let info = &f.tensors()[i];
        assert_eq!(info.name, name);
        assert_eq!(info.ty, ty);
        assert_eq!(info.shape, shape);
        assert_eq!(info.offset % expected_alignment, 0);
        let v = f.tensor(name).unwrap();
        let n: usize = shape.iter().product();
        assert_eq!(v.n_elements(), n);
        assert_eq!(
            v.data,
            common::filler(n / ty.block_size() * ty.type_size(), i as u8)
        );
        let start = v.data.as_ptr() as usize - f.as_bytes().as_ptr() as usize;
        assert_eq!(start as u64 % expected_alignment, 0);
    }
    assert!(f.tensor("missing").is_none());

    // Writing what was read reproduces the file byte for byte.
    let again = write_to_vec(&GgufWriter::from_gguf(&f));
    assert_eq!(again, bytes);
}

#[test]
fn round_trip_default_alignment() {
    check_round_trip(None);
}

#[test]
fn round_trip_explicit_alignment_32() {
    check_round_trip(Some(32));
}

#[test]
fn round_trip_alignment_64_and_256() {
    check_round_trip(Some(64));
    check_round_trip(Some(256));
}

#[test]
fn shape_is_reverse_of_ne() {
    let mut w = GgufWriter::new();
    w.add_tensor("token_embd.weight", GgmlType::F32, &[3, 8], vec![0; 96]);
    let bytes = write_to_vec(&w);
    // The first (and only) tensor info's ne[] follows the 24-byte header and the name.
    let name_len = "token_embd.weight".len();
    let ne_at = 24 + 8 + name_len + 4;
    let ne0 = u64::from_le_bytes(bytes[ne_at..ne_at + 8].try_into().unwrap());
    let ne1 = u64::from_le_bytes(bytes[ne_at + 8..ne_at + 16].try_into().unwrap());
    assert_eq!((ne0, ne1), (8, 3), "GGUF ne[] is innermost first");
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.tensor("token_embd.weight").unwrap().shape, &[3, 8]);
}

#[test]
fn streaming_writer_matches_in_memory_writer() {
    let full = write_to_vec(&seed_writer(Some(64)));

    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::from("llama"));
    w.set_alignment(64);
    for (k, v) in all_value_kinds() {
        w.add_kv(k, v);
    }
    let tensors = seed_tensors();
    // Mix: the first tensor carries its bytes, the rest are streamed.
    for (i, (name, ty, shape)) in tensors.iter().enumerate() {
        if i == 0 {
            let n: usize = shape.iter().product();
            w.add_tensor(
                *name,
                *ty,
                shape,
                common::filler(n / ty.block_size() * ty.type_size(), 0),
            );
        } else {
            w.declare_tensor(*name, *ty, shape);
        }
    }
    let mut s = w.into_stream(Vec::new()).unwrap();
    for (i, (name, ty, shape)) in tensors.iter().enumerate().skip(1) {
        assert_eq!(s.next_tensor(), Some(*name));
        let n: usize = shape.iter().product();
        let data = common::filler(n / ty.block_size() * ty.type_size(), i as u8);
        s.write_tensor_data(name, &data).unwrap();
    }
    assert_eq!(s.next_tensor(), None);
    let streamed = s.finish().unwrap();
    assert_eq!(streamed, full);
}

#[test]
fn streaming_writer_enforces_order_and_sizes() {
    let mut w = GgufWriter::new();
    w.declare_tensor("a", GgmlType::F32, &[4]);
    w.declare_tensor("b", GgmlType::F32, &[2]);
    let mut s = w.into_stream(Vec::new()).unwrap();
    assert!(matches!(
        s.write_tensor_data("b", &[0; 8]),
        Err(FormatError::StreamOrder(_))
    ));
    assert!(matches!(
        s.write_tensor_data("a", &[0; 3]),
        Err(FormatError::BadTensorForWrite { .. })
    ));
    s.write_tensor_data("a", &[0; 16]).unwrap();
    assert!(matches!(s.finish(), Err(FormatError::StreamOrder(_))));

    let mut w = GgufWriter::new();
    w.declare_tensor("a", GgmlType::F32, &[4]);
    assert!(matches!(
        w.write_to(&mut Vec::new()),
        Err(FormatError::BadTensorForWrite { .. })
    ));
}

#[test]
fn writer_refuses_what_the_reader_would_reject() {
    let bad_tensor = |ty, shape: &[usize], n| {
        let mut w = GgufWriter::new();
        w.add_tensor("t", ty, shape, vec![0; n]);
        w.write_to(&mut Vec::new())
    };
    assert!(matches!(
        bad_tensor(GgmlType::F32, &[], 0),
        Err(FormatError::BadTensorForWrite { .. })
    ));
    assert!(matches!(
        bad_tensor(GgmlType::F32, &[1, 1, 1, 1, 1], 4),
        Err(FormatError::BadTensorForWrite { .. })
    ));
    assert!(matches!(
        bad_tensor(GgmlType::F32, &[0, 4], 0),
        Err(FormatError::BadTensorForWrite { .. })
    ));
    assert!(matches!(
        bad_tensor(GgmlType::Q4_0, &[2, 33], 36),
        Err(FormatError::BadTensorForWrite { .. })
    ));
    assert!(matches!(
        bad_tensor(GgmlType::F32, &[4], 15),
        Err(FormatError::BadTensorForWrite { .. })
    ));

    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]);
    w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]);
    assert!(matches!(
        w.write_to(&mut Vec::new()),
        Err(FormatError::BadTensorForWrite { .. })
    ));

    for a in [0u32, 4, 48, 1 << 30] {
        let mut w = GgufWriter::new();
        w.set_alignment(a);
        assert!(
            matches!(
                w.write_to(&mut Vec::new()),
                Err(FormatError::BadAlignment { .. })
            ),
            "{a}"
        );
    }
    let mut w = GgufWriter::new();
    w.add_kv("general.alignment", MetaValue::U64(32));
    assert!(matches!(
        w.write_to(&mut Vec::new()),
        Err(FormatError::AlignmentType { .. })
    ));

    let mut w = GgufWriter::new();
    w.add_kv("k", MetaValue::String("x".repeat(1024 * 1024 + 1)));
    assert!(matches!(
        w.write_to(&mut Vec::new()),
        Err(FormatError::BadKvForWrite { .. })
    ));
}

#[test]
fn add_kv_replaces_in_place() {
    let mut w = GgufWriter::new();
    w.add_kv("a", MetaValue::U32(1));
    w.add_kv("b", MetaValue::U32(2));
    w.add_kv("a", MetaValue::U32(3));
    let f = GgufFile::from_bytes(write_to_vec(&w)).unwrap();
    assert_eq!(f.metadata().len(), 2);
    assert_eq!(f.metadata()[0], ("a".to_owned(), MetaValue::U32(3)));
}

#[test]
fn write_file_then_open_through_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.gguf");
    let w = seed_writer(Some(128));
    w.write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 128);
    assert_eq!(f.as_bytes(), write_to_vec(&w).as_slice());
    for v in f.tensor_views() {
        // A page-aligned mapping plus aligned offsets gives aligned pointers.
        assert_eq!(v.data.as_ptr() as usize % 128, 0, "{}", v.name);
    }
    assert!(matches!(
        GgufFile::open(&dir.path().join("nope.gguf")),
        Err(FormatError::MissingFile { .. })
    ));
}

#[test]
fn from_bytes_views_are_aligned_and_types_are_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<GgufFile>();
    shareable::<gorae_formats::safetensors::SafetensorsModel>();
    // An odd-offset source buffer still yields aligned views.
    let bytes = write_to_vec(&seed_writer(Some(64)));
    let mut shifted = vec![0u8; 1];
    shifted.extend_from_slice(&bytes);
    let f = GgufFile::from_bytes(shifted[1..].to_vec()).unwrap();
    assert_eq!(f.as_bytes(), bytes.as_slice());
    for v in f.tensor_views() {
        assert_eq!(v.data.as_ptr() as usize % 64, 0, "{}", v.name);
    }
}
