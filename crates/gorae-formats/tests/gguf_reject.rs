//! One test per item of the GGUF reject-cleanly checklist (ecosystem guide C6) that belongs to the
//! file layer, each asserting the specific error. Files are built field by field with `Raw`.

#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a test failure with a backtrace

mod common;

use common::Raw;
use gorae_formats::FormatError;
use gorae_formats::gguf::{GgufFile, ValueType};

fn parse(bytes: Vec<u8>) -> FormatError {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("accepted a file that should be rejected"),
        Err(e) => {
            // Every error renders without panicking and says something.
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

/// A valid file with one F32 tensor of 8 elements; the base most tensor tests perturb.
fn one_tensor(ne: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    Raw::header(3, 1, 0)
        .tensor("w", ne, ty, offset)
        .data(32, data)
        .finish()
}

#[test]
fn baseline_files_are_accepted() {
    GgufFile::from_bytes(Raw::header(3, 0, 0).finish()).unwrap();
    GgufFile::from_bytes(Raw::header(2, 0, 0).finish()).unwrap();
    let f = GgufFile::from_bytes(one_tensor(&[8], 0, 0, 32)).unwrap();
    assert_eq!(f.tensor("w").unwrap().data.len(), 32);
}

#[test]
fn bad_magic() {
    let mut b = Raw::header(3, 0, 0).finish();
    b[0] = b'X';
    assert!(matches!(parse(b), FormatError::BadMagic { .. }));
}

#[test]
fn empty_and_short_files() {
    assert!(matches!(
        parse(vec![]),
        FormatError::Truncated { offset: 0, .. }
    ));
    assert!(matches!(
        parse(b"GG".to_vec()),
        FormatError::Truncated { .. }
    ));
    let mut b = Raw::header(3, 0, 0).finish();
    b.truncate(20);
    assert!(matches!(
        parse(b),
        FormatError::Truncated { what: "n_kv", .. }
    ));
}

#[test]
fn big_endian() {
    let mut b = Raw::header(3, 0, 0).finish();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(parse(b), FormatError::BigEndian { .. }));
}

#[test]
fn version_1_and_unknown_versions() {
    for v in [0u32, 1, 4, u32::MAX] {
        assert!(
            matches!(parse(Raw::header(v, 0, 0).finish()), FormatError::UnsupportedVersion { version } if version == v),
            "{v}"
        );
    }
}

#[test]
fn n_kv_or_n_tensors_more_than_bytes_allow() {
    for (nt, nkv) in [
        (0, 1),
        (1, 0),
        (0, 1 << 20),
        (1 << 20, 0),
        (1 << 20, 1 << 20),
    ] {
        assert!(
            matches!(
                parse(Raw::header(3, nt, nkv).finish()),
                FormatError::TooManyEntries { .. }
            ),
            "{nt} {nkv}"
        );
    }
    // 13 bytes is the smallest entry: one byte less than needed for two entries is refused up front.
    let b = Raw::header(3, 0, 2).bytes(&[0; 25]).finish();
    assert!(matches!(parse(b), FormatError::TooManyEntries { .. }));
}

#[test]
fn n_kv_or_n_tensors_over_cap() {
    for (nt, nkv) in [
        (0, u64::MAX),
        (u64::MAX, 0),
        ((1 << 20) + 1, 0),
        (0, (1 << 20) + 1),
    ] {
        let e = parse(Raw::header(3, nt, nkv).bytes(&[0; 64]).finish());
        assert!(
            matches!(e, FormatError::CountOverCap { .. }),
            "{nt} {nkv}: {e}"
        );
    }
}

#[test]
fn key_longer_than_cap() {
    let b = Raw::header(3, 0, 1)
        .u64(64 * 1024 + 1)
        .bytes(&[b'k'; 100])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::StringTooLong {
            what: "metadata key",
            offset: 24,
            ..
        }
    ));
}

#[test]
fn string_value_longer_than_cap() {
    // The length alone is refused: no 1 MiB allocation happens for a 40-byte file.
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(1024 * 1024 + 1)
        .bytes(&[b'x'; 16])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::StringTooLong {
            what: "string value",
            ..
        }
    ));
}

#[test]
fn string_past_end() {
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(1000)
        .bytes(b"short")
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::Truncated {
            what: "string value",
            needed: 1000,
            ..
        }
    ));
}

#[test]
fn invalid_utf8_key_and_value() {
    let b = Raw::header(3, 0, 1)
        .u64(2)
        .bytes(&[0xff, 0xfe])
        .u32(0)
        .u8(1)
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::InvalidUtf8 {
            what: "metadata key",
            offset: 24
        }
    ));
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(2)
        .bytes(&[0xc3, 0x28])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::InvalidUtf8 {
            what: "string value",
            ..
        }
    ));
}

#[test]
fn duplicate_keys() {
    let b = Raw::header(3, 0, 2)
        .kv_u32("a.b", 1)
        .kv_u32("a.b", 2)
        .finish();
    match parse(b) {
        FormatError::DuplicateKey { key, offset } => {
            assert_eq!(key, "a.b");
            assert_eq!(offset, 24 + 8 + 3 + 4 + 4);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn array_count_times_size_overflows() {
    // u64 elements: count * 8 overflows u64.
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(10)
        .u64(u64::MAX / 4)
        .bytes(&[0; 8])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::ArrayTooLong {
            elem_type: ValueType::U64,
            ..
        }
    ));
}

#[test]
fn array_past_end() {
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(6)
        .u64(10)
        .bytes(&[0; 12])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::ArrayTooLong {
            elem_type: ValueType::F32,
            count: 10,
            ..
        }
    ));
    // Strings: each needs at least its 8-byte length, checked before allocating a Vec<String>.
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(8)
        .u64(1 << 40)
        .bytes(&[0; 64])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::ArrayTooLong {
            elem_type: ValueType::String,
            ..
        }
    ));
}

#[test]
fn nested_array() {
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(9)
        .u64(1)
        .u32(4)
        .u64(1)
        .u32(7)
        .finish();
    assert!(matches!(parse(b), FormatError::NestedArray { .. }));
}

#[test]
fn unknown_value_type() {
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(13)
        .bytes(&[0; 8])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::UnknownValueType { type_id: 13, .. }
    ));
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(u32::MAX)
        .u64(0)
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::UnknownValueType {
            type_id: u32::MAX,
            ..
        }
    ));
}

#[test]
fn bool_that_is_not_0_or_1() {
    let b = Raw::header(3, 0, 1).str("k").u32(7).u8(2).finish();
    assert!(matches!(parse(b), FormatError::BadBool { byte: 2, .. }));
}

#[test]
fn alignment_not_u32() {
    let b = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(10)
        .u64(32)
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::AlignmentType {
            found: ValueType::U64
        }
    ));
    let b = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(5)
        .u32(32)
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::AlignmentType {
            found: ValueType::I32
        }
    ));
}

#[test]
fn alignment_zero_not_power_of_two_not_multiple_of_8_or_huge() {
    for a in [0u32, 1, 4, 24, 48, 1 << 21, 1 << 31, u32::MAX] {
        let b = Raw::header(3, 0, 1).kv_u32("general.alignment", a).finish();
        assert!(
            matches!(parse(b), FormatError::BadAlignment { alignment, .. } if alignment == u64::from(a)),
            "{a}"
        );
    }
    for a in [8u32, 16, 64, 4096, 1 << 20] {
        let b = Raw::header(3, 0, 1).kv_u32("general.alignment", a).finish();
        assert_eq!(GgufFile::from_bytes(b).unwrap().alignment(), u64::from(a));
    }
}

#[test]
fn n_dims_outside_1_to_4() {
    for n in [0u32, 5, u32::MAX] {
        let b = Raw::header(3, 1, 0)
            .str("w")
            .u32(n)
            .bytes(&[1; 64])
            .finish();
        assert!(
            matches!(parse(b), FormatError::BadDimCount { n_dims, .. } if n_dims == n),
            "{n}"
        );
    }
}

#[test]
fn dim_zero_or_over_limit() {
    let e = parse(one_tensor(&[8, 0], 0, 0, 32));
    assert!(
        matches!(
            e,
            FormatError::BadDim {
                index: 1,
                value: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = parse(one_tensor(&[1 << 63], 0, 0, 32));
    assert!(matches!(e, FormatError::BadDim { index: 0, .. }), "{e}");
}

#[test]
fn element_count_times_type_size_overflows() {
    // 2^31 * 2^31 * 4 elements of 4 bytes: 2^66 bytes.
    let e = parse(one_tensor(&[1 << 31, 1 << 31, 4], 0, 0, 32));
    assert!(matches!(e, FormatError::TensorSizeOverflow { .. }), "{e}");
    // Element count itself overflows: (2^62)^2.
    let e = parse(one_tensor(&[1 << 62, 1 << 62], 24, 0, 32));
    assert!(matches!(e, FormatError::TensorSizeOverflow { .. }), "{e}");
}

#[test]
fn ne0_not_a_multiple_of_block_size() {
    // Q4_0 (id 2) has 32-element blocks.
    let e = parse(one_tensor(&[33, 2], 2, 0, 64));
    assert!(
        matches!(
            e,
            FormatError::RowNotBlockMultiple {
                ne0: 33,
                block: 32,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_and_retired_ggml_types() {
    for id in [40u32, 1000, u32::MAX] {
        let e = parse(one_tensor(&[8], id, 0, 32));
        assert!(
            matches!(e, FormatError::UnknownGgmlType { type_id, .. } if type_id == id),
            "{e}"
        );
    }
    for id in [4u32, 5, 31, 32, 33, 36, 37, 38] {
        let e = parse(one_tensor(&[32], id, 0, 64));
        assert!(
            matches!(e, FormatError::RetiredGgmlType { type_id, .. } if type_id == id),
            "{e}"
        );
    }
}

#[test]
fn tensor_offset_unaligned() {
    let e = parse(one_tensor(&[8], 0, 4, 64));
    assert!(
        matches!(
            e,
            FormatError::UnalignedTensor {
                offset: 4,
                alignment: 32,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn tensor_offsets_overlapping() {
    // Two 64-byte tensors, the second starting 32 bytes into the first.
    let b = Raw::header(3, 2, 0)
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[16], 0, 32)
        .data(32, 128)
        .finish();
    assert!(matches!(parse(b), FormatError::TensorOverlap { .. }));
    // Same range twice.
    let b = Raw::header(3, 2, 0)
        .tensor("a", &[8], 0, 0)
        .tensor("b", &[8], 0, 0)
        .data(32, 32)
        .finish();
    assert!(matches!(parse(b), FormatError::TensorOverlap { .. }));
}

#[test]
fn out_of_order_but_disjoint_offsets_are_accepted() {
    let b = Raw::header(3, 2, 0)
        .tensor("a", &[8], 0, 32)
        .tensor("b", &[8], 0, 0)
        .data(32, 64)
        .finish();
    let f = GgufFile::from_bytes(b).unwrap();
    assert_eq!(f.tensors()[0].offset, 32);
}

#[test]
fn tensor_past_end_of_file() {
    let e = parse(one_tensor(&[8], 0, 0, 31));
    assert!(
        matches!(
            e,
            FormatError::TensorOutOfBounds {
                end: 32,
                data_len: 31,
                ..
            }
        ),
        "{e}"
    );
    let e = parse(one_tensor(&[8], 0, 64, 64));
    assert!(matches!(e, FormatError::TensorOutOfBounds { .. }), "{e}");
    // offset + size wraps u64.
    let e = parse(one_tensor(&[8], 0, u64::MAX - 31, 64));
    assert!(matches!(e, FormatError::TensorOutOfBounds { .. }), "{e}");
    // No data section at all.
    let b = Raw::header(3, 1, 0).tensor("w", &[8], 0, 0).finish();
    assert!(matches!(parse(b), FormatError::TensorOutOfBounds { .. }));
}

#[test]
fn duplicate_tensor_names() {
    let b = Raw::header(3, 2, 0)
        .tensor("w", &[8], 0, 0)
        .tensor("w", &[8], 0, 32)
        .data(32, 64)
        .finish();
    assert!(matches!(parse(b), FormatError::DuplicateTensor { .. }));
}

#[test]
fn tensor_name_longer_than_cap_or_bad_utf8() {
    let b = Raw::header(3, 1, 0)
        .u64(1 << 20)
        .bytes(&[b'n'; 64])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::StringTooLong {
            what: "tensor name",
            ..
        }
    ));
    let b = Raw::header(3, 1, 0)
        .u64(1)
        .bytes(&[0x80])
        .bytes(&[0; 40])
        .finish();
    assert!(matches!(
        parse(b),
        FormatError::InvalidUtf8 {
            what: "tensor name",
            ..
        }
    ));
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let full = common::write_to_vec(&common::seed_writer(Some(64)));
    // The last tensor's padding is optional; every cut before its data ends is refused.
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let last = f
        .tensors()
        .iter()
        .map(|t| f.data_offset() + t.offset + t.n_bytes as u64)
        .max()
        .unwrap();
    for len in 0..last as usize {
        assert!(GgufFile::from_bytes(full[..len].to_vec()).is_err(), "{len}");
    }
    GgufFile::from_bytes(full[..last as usize].to_vec()).unwrap();
}
