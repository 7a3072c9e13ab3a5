//! Hostile GGUF input: hand-built files for each error the reader reports, truncation at every
//! length, random mutations and huge counts. Nothing may panic, and no allocation may be much
//! larger than the input (checked with a tracking global allocator).
//!
//! One file (about 1000 lines) on purpose: one test per reader error, sharing the hand-built
//! file helpers and the tracking allocator, which must be the test binary's only global one.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{test_models, Bytes};
use flashstream_formats::gguf::{parse_header, GgufWriter, Limits, HARD_MAX_ARRAY_DEPTH};
use flashstream_formats::{Array, FormatError, GgmlType, GgufModel, Value};
use proptest::prelude::*;

// ---- largest single allocation, per thread ----

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note` only updates a
// const-initialised thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Parses `bytes`, returning the result and the largest single allocation made meanwhile.
fn parse_tracked(bytes: &[u8]) -> (Result<GgufModel, FormatError>, usize) {
    LARGEST.with(|c| c.set(0));
    let r = GgufModel::from_bytes(bytes);
    (r, LARGEST.with(|c| c.get()))
}

/// Allocation bound: a small multiple of the input (the worst case is an array of empty
/// strings or nested arrays, a few `Vec` headers per few bytes of file) plus fixed buffers.
fn alloc_bound(len: usize) -> usize {
    16 * len + (1 << 20)
}

fn parse(bytes: &[u8]) -> Result<GgufModel, FormatError> {
    let (r, largest) = parse_tracked(bytes);
    assert!(
        largest <= alloc_bound(bytes.len()),
        "{largest} bytes allocated at once for a {}-byte input",
        bytes.len()
    );
    r
}

// ---- hand-built files ----

/// A file: header, `n_kv` pairs from `kvs`, `n_tensors` infos from `infos`, padding to 32 and
/// `data` zero bytes.
fn file(n_kv: u64, kvs: &Bytes, n_tensors: u64, infos: &Bytes, data: usize) -> Vec<u8> {
    let mut b = Bytes::header(3, n_tensors, n_kv);
    b.raw(&kvs.0).raw(&infos.0).pad(32).zeros(data);
    b.build()
}

fn kv_only(n_kv: u64, kvs: &Bytes) -> Vec<u8> {
    file(n_kv, kvs, 0, &Bytes::default(), 0)
}

fn one_kv(f: impl FnOnce(&mut Bytes)) -> Vec<u8> {
    let mut kvs = Bytes::default();
    f(&mut kvs);
    kv_only(1, &kvs)
}

fn tensors_only(n: u64, f: impl FnOnce(&mut Bytes), data: usize) -> Vec<u8> {
    let mut infos = Bytes::default();
    f(&mut infos);
    file(0, &Bytes::default(), n, &infos, data)
}

const F32: u32 = 0;
const Q4_0: u32 = 2;

#[test]
fn minimal_files_parse() {
    let m = parse(&kv_only(0, &Bytes::default())).unwrap();
    assert!(m.tensors.is_empty() && m.metadata.is_empty());
    // Header without padding when there are no tensors.
    let m = parse(&Bytes::header(2, 0, 0).build()).unwrap();
    assert_eq!(m.files[0].version, 2);
    let b = tensors_only(
        2,
        |i| {
            i.tensor("a", &[4], F32, 0).tensor("b", &[32, 2], Q4_0, 32);
        },
        32 + 36,
    );
    let m = parse(&b).unwrap();
    let a = m.tensor("a").unwrap();
    assert_eq!((a.offset, a.n_bytes), (m.files[0].data_offset, 16));
    assert_eq!(m.tensor("b").unwrap().n_bytes, 36);
}

#[test]
fn bad_magic_version_and_endianness() {
    assert!(matches!(
        parse(b""),
        Err(FormatError::Truncated {
            offset: 0,
            needed: 4,
            available: 0,
            ..
        })
    ));
    assert!(matches!(parse(b"GGU"), Err(FormatError::Truncated { .. })));
    assert!(matches!(parse(b"GGML\x03\0\0\0"), Err(FormatError::BadMagic(m)) if &m == b"GGML"));
    assert!(matches!(
        parse(&Bytes::header(1, 0, 0).build()),
        Err(FormatError::UnsupportedVersion(1))
    ));
    assert!(matches!(
        parse(&Bytes::header(0, 0, 0).build()),
        Err(FormatError::UnsupportedVersion(0))
    ));
    assert!(matches!(
        parse(&Bytes::header(4, 0, 0).build()),
        Err(FormatError::UnsupportedVersion(4))
    ));
    // A big-endian v3 file: every field byte-swapped.
    let mut be = Bytes::default();
    be.raw(b"GGUF")
        .raw(&3u32.to_be_bytes())
        .raw(&0u64.to_be_bytes())
        .raw(&0u64.to_be_bytes());
    match parse(&be.build()) {
        Err(e @ FormatError::BigEndian(0x0300_0000)) => {
            assert!(e.to_string().contains("big-endian"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse(b"GGUF\x03\0\0"),
        Err(FormatError::Truncated { .. })
    ));
}

#[test]
fn counts_beyond_limits_or_file() {
    let b = Bytes::header(3, u64::MAX, 0).build();
    assert!(matches!(
        parse(&b),
        Err(FormatError::LimitExceeded {
            value: u64::MAX,
            ..
        })
    ));
    let b = Bytes::header(3, 0, u64::MAX).build();
    assert!(matches!(
        parse(&b),
        Err(FormatError::LimitExceeded {
            value: u64::MAX,
            ..
        })
    ));
    // Within the limits, but the file cannot hold that many.
    let mut b = Bytes::header(3, 1000, 1000);
    b.zeros(100);
    match parse(&b.build()) {
        Err(FormatError::Truncated {
            offset: 24,
            available: 100,
            needed,
            ..
        }) => assert!(needed > 100),
        other => panic!("{other:?}"),
    }
    // Custom limits.
    let lim = Limits {
        max_kv: 2,
        max_tensors: 1,
        ..Limits::default()
    };
    let b = Bytes::header(3, 0, 3).build();
    assert!(matches!(
        parse_header(&b[..], b.len() as u64, &lim),
        Err(FormatError::LimitExceeded {
            value: 3,
            limit: 2,
            ..
        })
    ));
    let b = Bytes::header(3, 2, 0).build();
    assert!(matches!(
        parse_header(&b[..], b.len() as u64, &lim),
        Err(FormatError::LimitExceeded {
            value: 2,
            limit: 1,
            ..
        })
    ));
}

#[test]
fn strings_too_long_or_truncated() {
    // Key length beyond the name limit.
    let b = one_kv(|k| {
        k.u64(1 << 40).zeros(16);
    });
    assert!(matches!(parse(&b), Err(FormatError::LimitExceeded { value, .. }) if value == 1 << 40));
    // String value longer than the string limit.
    let b = one_kv(|k| {
        k.str("k").u32(8).u64(u64::MAX);
    });
    match parse(&b) {
        Err(FormatError::LimitExceeded {
            what,
            value: u64::MAX,
            limit,
        }) => {
            assert!(what.contains("\"k\""), "{what}");
            assert_eq!(limit, Limits::default().max_string_len);
        }
        other => panic!("{other:?}"),
    }
    // Within the limit but longer than the file.
    let b = one_kv(|k| {
        k.str("k").u32(8).u64(1000).raw(b"abc");
    });
    match parse(&b) {
        Err(e @ FormatError::Truncated { needed: 1000, .. }) => {
            assert!(e.to_string().contains("\"k\""))
        }
        other => panic!("{other:?}"),
    }
    // Custom string limit.
    let b = one_kv(|k| {
        k.str("k").u32(8).str("hello");
    });
    let lim = Limits {
        max_string_len: 4,
        ..Limits::default()
    };
    assert!(matches!(
        parse_header(&b[..], b.len() as u64, &lim),
        Err(FormatError::LimitExceeded {
            value: 5,
            limit: 4,
            ..
        })
    ));
    assert!(parse(&b).is_ok());
}

#[test]
fn arrays_checked_against_bytes_left_before_allocation() {
    // 2^27 u32 (512 MiB) claimed in a tiny file: must fail before allocating.
    let b = one_kv(|k| {
        k.str("arr").u32(9).u32(4).u64(1 << 27).zeros(64);
    });
    let (r, largest) = parse_tracked(&b);
    match r {
        Err(e @ FormatError::Truncated { needed, .. }) => {
            assert_eq!(needed, 4 << 27);
            assert!(e.to_string().contains("\"arr\""), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(largest < 1 << 20, "{largest}");
    // Beyond the array length limit.
    let b = one_kv(|k| {
        k.str("arr").u32(9).u32(0).u64(u64::MAX);
    });
    assert!(matches!(
        parse(&b),
        Err(FormatError::LimitExceeded {
            value: u64::MAX,
            ..
        })
    ));
    // Strings need at least 8 bytes each, nested arrays 12.
    for (elem, count, needed) in [
        (8u32, 100u64, 800u64),
        (9, 100, 1200),
        (10, 10, 80),
        (7, 100, 100),
    ] {
        let b = one_kv(|k| {
            k.str("arr").u32(9).u32(elem).u64(count).zeros(20);
        });
        let len = b.len();
        match parse(&b) {
            Err(FormatError::Truncated {
                needed: n,
                available,
                offset,
                ..
            }) => {
                assert_eq!(n, needed);
                assert_eq!(offset + available, len as u64);
            }
            other => panic!("elem {elem}: {other:?}"),
        }
    }
    // Every element type reads back.
    let b = one_kv(|k| {
        k.str("arr")
            .u32(9)
            .u32(3)
            .u64(3)
            .raw(&(-1i16).to_le_bytes())
            .raw(&2i16.to_le_bytes())
            .raw(&7i16.to_le_bytes());
    });
    assert_eq!(
        parse(&b).unwrap().metadata.get("arr"),
        Some(&Value::Array(Array::I16(vec![-1, 2, 7])))
    );
}

fn nested(depth: u32) -> Vec<u8> {
    one_kv(|k| {
        k.str("deep").u32(9);
        for _ in 1..depth {
            k.u32(9).u64(1);
        }
        k.u32(0).u64(1).u8(42);
    })
}

#[test]
fn array_nesting_is_bounded() {
    let m = parse(&nested(8)).unwrap();
    let mut a = m.metadata.get_array("deep").unwrap();
    for _ in 1..8 {
        let Array::Array(v) = a else { panic!() };
        a = &v[0];
    }
    assert_eq!(a, &Array::U8(vec![42]));
    match parse(&nested(9)) {
        Err(FormatError::LimitExceeded {
            what,
            value: 9,
            limit: 8,
        }) => assert!(what.contains("\"deep\"")),
        other => panic!("{other:?}"),
    }
    // A permissive limit is still capped (no unbounded recursion).
    let lim = Limits {
        max_array_depth: u32::MAX,
        ..Limits::default()
    };
    let b = nested(100_000);
    assert!(matches!(
        parse_header(&b[..], b.len() as u64, &lim),
        Err(FormatError::LimitExceeded { value: 65, limit, .. }) if limit == u64::from(HARD_MAX_ARRAY_DEPTH)
    ));
    let b = nested(HARD_MAX_ARRAY_DEPTH);
    assert!(parse_header(&b[..], b.len() as u64, &lim).is_ok());
}

#[test]
fn invalid_utf8_is_named() {
    let bad = b"ab\xffcd";
    let b = one_kv(|k| {
        k.bstr(bad).u32(0).u8(1);
    });
    match parse(&b) {
        Err(FormatError::InvalidUtf8 { what }) => {
            assert!(what.contains("metadata key #0 at byte 24"), "{what}")
        }
        other => panic!("{other:?}"),
    }
    let b = one_kv(|k| {
        k.str("name.key").u32(8).bstr(bad);
    });
    match parse(&b) {
        Err(FormatError::InvalidUtf8 { what }) => assert!(what.contains("\"name.key\""), "{what}"),
        other => panic!("{other:?}"),
    }
    let b = one_kv(|k| {
        k.str("toks").u32(9).u32(8).u64(2).str("ok").bstr(bad);
    });
    match parse(&b) {
        Err(FormatError::InvalidUtf8 { what }) => assert!(
            what.contains("element 1") && what.contains("\"toks\""),
            "{what}"
        ),
        other => panic!("{other:?}"),
    }
    let b = tensors_only(
        1,
        |i| {
            i.bstr(bad).u32(1).u64(4).u32(F32).u64(0);
        },
        16,
    );
    match parse(&b) {
        Err(FormatError::InvalidUtf8 { what }) => {
            assert!(what.contains("tensor name #0"), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bools_must_be_0_or_1() {
    let b = one_kv(|k| {
        k.str("flag").u32(7).u8(2);
    });
    assert!(matches!(parse(&b), Err(FormatError::InvalidBool { key, value: 2 }) if key == "flag"));
    let b = one_kv(|k| {
        k.str("flags").u32(9).u32(7).u64(3).raw(&[1, 0, 255]);
    });
    assert!(
        matches!(parse(&b), Err(FormatError::InvalidBool { key, value: 255 }) if key == "flags[2]")
    );
}

#[test]
fn duplicates_are_errors() {
    let mut kvs = Bytes::default();
    kvs.kv_u32("a", 1).kv_u32("b", 2).kv_u32("a", 3);
    assert!(matches!(parse(&kv_only(3, &kvs)), Err(FormatError::DuplicateKey(k)) if k == "a"));
    let b = tensors_only(
        2,
        |i| {
            i.tensor("t", &[4], F32, 0).tensor("t", &[4], F32, 32);
        },
        64,
    );
    assert!(matches!(parse(&b), Err(FormatError::DuplicateTensor(n)) if n == "t"));
}

#[test]
fn unknown_types_are_errors() {
    let b = one_kv(|k| {
        k.str("k").u32(13).u64(0);
    });
    assert!(
        matches!(parse(&b), Err(FormatError::UnknownValueType { key, type_id: 13 }) if key == "k")
    );
    let b = one_kv(|k| {
        k.str("k").u32(9).u32(u32::MAX).u64(0);
    });
    assert!(
        matches!(parse(&b), Err(FormatError::UnknownValueType { key, type_id: u32::MAX }) if key == "k")
    );
    let b = tensors_only(
        1,
        |i| {
            i.tensor("t", &[4], 4, 0);
        },
        64,
    );
    match parse(&b) {
        Err(e @ FormatError::UnknownTensorTypeOf { type_id: 4, .. }) => {
            assert!(e.to_string().contains("\"t\""))
        }
        other => panic!("{other:?}"),
    }
}

fn shape_error(b: &[u8], needle: &str) {
    match parse(b) {
        Err(FormatError::BadTensorShape { name, reason }) => {
            assert_eq!(name, "t");
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_shapes_are_errors() {
    shape_error(
        &tensors_only(
            1,
            |i| {
                i.tensor("t", &[1, 1, 1, 1, 1], F32, 0);
            },
            64,
        ),
        "5 dimensions",
    );
    shape_error(
        &tensors_only(
            1,
            |i| {
                i.str("t").u32(u32::MAX);
            },
            64,
        ),
        "dimensions",
    );
    shape_error(
        &tensors_only(
            1,
            |i| {
                i.tensor("t", &[4, 0], F32, 0);
            },
            64,
        ),
        "dimension 1 is 0",
    );
    shape_error(
        &tensors_only(
            1,
            |i| {
                i.tensor("t", &[48], Q4_0, 0);
            },
            64,
        ),
        "not a multiple of the Q4_0 block size 32",
    );
    shape_error(
        &tensors_only(
            1,
            |i| {
                i.tensor("t", &[1 << 32, 1 << 32], F32, 0);
            },
            64,
        ),
        "elements",
    );
    shape_error(
        &tensors_only(
            1,
            |i| {
                i.tensor("t", &[1 << 62], F32, 0);
            },
            64,
        ),
        "overflows",
    );
    // A 0-dimensional tensor is a scalar (llama.cpp accepts it).
    let m = parse(&tensors_only(
        1,
        |i| {
            i.tensor("t", &[], F32, 0);
        },
        4,
    ))
    .unwrap();
    assert_eq!(m.tensor("t").unwrap().n_bytes, 4);
}

#[test]
fn alignment_key_is_checked() {
    for (v, ok) in [
        (0u32, false),
        (3, false),
        (48, false),
        (1, true),
        (64, true),
        (1 << 31, true),
    ] {
        let b = one_kv(|k| {
            k.kv_u32("general.alignment", v);
        });
        match parse(&b) {
            Ok(m) => {
                assert!(ok, "{v}");
                assert_eq!(m.files[0].alignment, u64::from(v));
            }
            Err(FormatError::BadAlignment(a)) => assert!(!ok && a == u64::from(v)),
            other => panic!("{other:?}"),
        }
    }
    let b = one_kv(|k| {
        k.str("general.alignment").u32(10).u64(1 << 40);
    });
    assert_eq!(parse(&b).unwrap().files[0].alignment, 1 << 40);
    let b = one_kv(|k| {
        k.str("general.alignment").u32(5).u32(32);
    });
    assert!(
        matches!(parse(&b), Err(FormatError::BadKey { key, .. }) if key == "general.alignment")
    );
    // A huge alignment with a tensor puts the data past the end.
    let mut kvs = Bytes::default();
    kvs.str("general.alignment").u32(10).u64(1 << 63);
    let mut infos = Bytes::default();
    infos.tensor("t", &[1], F32, 0);
    assert!(matches!(
        parse(&file(1, &kvs, 1, &infos, 64)),
        Err(FormatError::TensorPastEnd { .. })
    ));
}

/// Found by probing the fuzz target's round trip: a file without tensors may declare any
/// power-of-two alignment (its data section is empty), and the writer used to pad the header of
/// its copy to that alignment, allocating up to 2^63 bytes (an abort). Now a file without
/// tensors is written unpadded, and its copy is as small as the original.
#[test]
fn huge_alignment_without_tensors_rewrites_small() {
    for v in [
        Value::U32(1 << 31),
        Value::U64(1 << 40),
        Value::U64(1 << 63),
    ] {
        let mut kvs = Bytes::default();
        kvs.str("general.alignment").u32(v.value_type().id());
        match v {
            Value::U32(x) => kvs.u32(x),
            Value::U64(x) => kvs.u64(x),
            _ => unreachable!(),
        };
        let b = kv_only(1, &kvs);
        let m = parse(&b).unwrap();
        let (out, largest) = {
            LARGEST.with(|c| c.set(0));
            let out = GgufWriter::from_model(&m).unwrap().to_bytes(&[]).unwrap();
            (out, LARGEST.with(|c| c.get()))
        };
        assert!(largest <= alloc_bound(b.len()), "{largest} bytes for {v:?}");
        assert!(out.len() <= b.len() + 32, "{} bytes for {v:?}", out.len());
        let back = parse(&out).unwrap();
        assert_eq!(back.files[0].alignment, m.files[0].alignment);
        assert!(back.tensors.is_empty());
    }
}

/// `GgufModel::from_headers` (the fuzz targets' way in): a file's head parsed with
/// `parse_header` and its real length gives the model `from_bytes` gives; a length too short
/// for the tensors is `TensorPastEnd`, as is claiming a shorter length than was parsed.
#[test]
fn models_from_headers_of_file_heads() {
    for path in test_models() {
        let bytes = std::fs::read(&path).unwrap();
        let full = GgufModel::from_bytes(&bytes).unwrap();
        let head = &bytes[..full.files[0].data_offset as usize];
        let len = bytes.len() as u64;
        let h = parse_header(head, len, &Limits::default()).unwrap();
        let m = GgufModel::from_headers(vec![(path.clone(), len, h.clone())]).unwrap();
        assert_eq!(m.tensors, full.tensors, "{}", path.display());
        assert_eq!(m.files[0].data_offset, full.files[0].data_offset);
        assert_eq!(m.files[0].len, len);
        let end = full
            .tensors
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap();
        assert!(matches!(
            GgufModel::from_headers(vec![(path.clone(), end - 1, h)]),
            Err(FormatError::TensorPastEnd { .. })
        ));
        assert!(matches!(
            parse_header(head, end - 1, &Limits::default()),
            Err(FormatError::TensorPastEnd { .. })
        ));
    }
}

#[test]
fn tensor_placement_is_checked() {
    // Past the end.
    let b = tensors_only(
        1,
        |i| {
            i.tensor("t", &[8], F32, 0);
        },
        31,
    );
    match parse(&b) {
        Err(FormatError::TensorPastEnd {
            name,
            start,
            end,
            file_len,
        }) => {
            assert_eq!(name, "t");
            assert_eq!(end - start, 32);
            assert_eq!(file_len, b.len() as u64);
            assert_eq!(end, file_len + 1);
        }
        other => panic!("{other:?}"),
    }
    // Offsets that overflow.
    let b = tensors_only(
        1,
        |i| {
            i.tensor("t", &[8], F32, u64::MAX - 31);
        },
        64,
    );
    assert!(matches!(
        parse(&b),
        Err(FormatError::TensorPastEnd { end: u64::MAX, .. })
    ));
    // Misaligned.
    let b = tensors_only(
        1,
        |i| {
            i.tensor("t", &[4], F32, 16);
        },
        64,
    );
    assert!(matches!(
        parse(&b),
        Err(FormatError::MisalignedTensor {
            offset: 16,
            alignment: 32,
            ..
        })
    ));
    // Overlapping, in either order.
    let b = tensors_only(
        2,
        |i| {
            i.tensor("a", &[16], F32, 0).tensor("b", &[4], F32, 32);
        },
        96,
    );
    assert!(
        matches!(parse(&b), Err(FormatError::OverlappingTensors { a, b }) if a == "a" && b == "b")
    );
    let b = tensors_only(
        2,
        |i| {
            i.tensor("b", &[4], F32, 32).tensor("a", &[16], F32, 0);
        },
        96,
    );
    assert!(
        matches!(parse(&b), Err(FormatError::OverlappingTensors { a, b }) if a == "a" && b == "b")
    );
    let b = tensors_only(
        2,
        |i| {
            i.tensor("a", &[1], F32, 64).tensor("b", &[1], F32, 64);
        },
        96,
    );
    assert!(matches!(
        parse(&b),
        Err(FormatError::OverlappingTensors { .. })
    ));
    // Gaps and any order are fine.
    let b = tensors_only(
        2,
        |i| {
            i.tensor("b", &[4], F32, 64).tensor("a", &[8], F32, 0);
        },
        96,
    );
    assert!(parse(&b).is_ok());
}

#[test]
fn short_reader_is_an_io_error_not_a_panic() {
    let b = kv_only(0, &Bytes::default());
    match parse_header(&b[..10], 1000, &Limits::default()) {
        Err(FormatError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_reports_missing_file() {
    match GgufModel::open("/nonexistent/flashstream/x.gguf") {
        Err(e @ FormatError::Io { .. }) => {
            assert!(e.to_string().contains("/nonexistent/flashstream/x.gguf"))
        }
        other => panic!("{other:?}"),
    }
}

// ---- truncation ----

/// Truncating `bytes` at `cut`: an error that says so, or (only past the last tensor's data) the
/// same model.
fn check_truncation(bytes: &[u8], full: &GgufModel, cut: usize) {
    let data_end = full
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap_or(0);
    let header_end = full.files[0]
        .data_offset
        .saturating_sub(full.files[0].alignment);
    match parse(&bytes[..cut]) {
        Ok(m) => {
            assert!(cut as u64 >= data_end, "cut {cut} parsed");
            assert_eq!(m.tensors, full.tensors);
        }
        Err(FormatError::Truncated {
            offset,
            needed,
            available,
            ..
        }) => {
            assert_eq!(offset + available, cut as u64);
            assert!(needed > available);
        }
        Err(FormatError::TensorPastEnd { file_len, .. }) => {
            assert!(
                cut as u64 > header_end,
                "cut {cut}: data past end reported inside the header"
            );
            assert_eq!(file_len, cut as u64);
        }
        Err(e) => panic!("cut {cut}: unexpected {e:?}"),
    }
}

fn synthetic_model() -> Vec<u8> {
    let mut w = GgufWriter::with_alignment(64).unwrap();
    w.set("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.set("b", Value::Bool(true)).unwrap();
    w.set("f", Value::F64(0.5)).unwrap();
    w.set(
        "toks",
        Value::Array(Array::String(vec!["a".into(), "".into(), "ccc".into()])),
    )
    .unwrap();
    w.set(
        "n",
        Value::Array(Array::Array(vec![
            Array::U16(vec![1, 2]),
            Array::Bool(vec![false]),
        ])),
    )
    .unwrap();
    w.add_tensor("x", GgmlType::Q8_0, &[32, 2]).unwrap();
    w.add_tensor("y", GgmlType::F32, &[3]).unwrap();
    w.to_bytes(&[&[7u8; 68], &[9u8; 12]]).unwrap()
}

#[test]
fn truncation_at_every_length() {
    let bytes = synthetic_model();
    let full = parse(&bytes).unwrap();
    for cut in 0..=bytes.len() {
        check_truncation(&bytes, &full, cut);
    }
    // The header region of a real model, at every length.
    let bytes = std::fs::read(&test_models()[1]).unwrap();
    let full = parse(&bytes).unwrap();
    for cut in 0..full.files[0].data_offset as usize + 64 {
        check_truncation(&bytes, &full, cut);
    }
}

// ---- proptest: random truncation, mutation, huge counts ----

fn real_models() -> &'static Vec<Vec<u8>> {
    static M: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        test_models()
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    })
}

/// Checks the invariants of an accepted (possibly mutated) file.
fn check_accepted(bytes: &[u8], m: &GgufModel) {
    let f = &m.files[0];
    assert!(f.data_offset <= bytes.len() as u64 || m.tensors.is_empty());
    let mut spans: Vec<(u64, u64)> = m
        .tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.n_bytes))
        .collect();
    spans.sort();
    for t in &m.tensors {
        assert!(
            t.offset >= f.data_offset && (t.offset - f.data_offset).is_multiple_of(f.alignment)
        );
        assert!(t.offset + t.n_bytes <= bytes.len() as u64);
        assert_eq!(t.ty.row_bytes(t.row_len()).unwrap() * t.n_rows(), t.n_bytes);
    }
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0);
    }
    for (_, v) in m.metadata.iter() {
        let _ = (
            v.as_u64(),
            v.as_f64(),
            v.as_str(),
            v.as_array().map(|a| a.get(0)),
        );
    }
}

/// Values that make counts and lengths absurd.
fn huge() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 63),
        Just((1u64 << 63) - 1),
        Just(1u64 << 40),
        Just(1u64 << 32),
        Just(u64::from(u32::MAX)),
        Just(1u64 << 28),
        Just((1u64 << 28) + 1),
        Just(1u64 << 20),
        any::<u64>(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Set byte `at` (scaled into the header region) to `v`.
    Byte(usize, u8),
    /// Overwrite 8 bytes at `at` with a huge little-endian value.
    Overwrite(usize, u64),
    /// Insert a huge value at `at`.
    Insert(usize, u64),
    /// Delete `n` bytes at `at`.
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(a, v)| Mutation::Byte(a, v)),
        3 => (any::<usize>(), huge()).prop_map(|(a, v)| Mutation::Overwrite(a, v)),
        2 => (any::<usize>(), huge()).prop_map(|(a, v)| Mutation::Insert(a, v)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(a, n)| Mutation::Delete(a, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, region: usize, m: &Mutation) {
    let at = |a: usize| a % region.max(1);
    match *m {
        Mutation::Byte(a, v) => {
            let i = at(a);
            if let Some(b) = bytes.get_mut(i) {
                *b = v;
            }
        }
        Mutation::Overwrite(a, v) => {
            let i = at(a);
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                if let Some(x) = bytes.get_mut(i + k) {
                    *x = b;
                }
            }
        }
        Mutation::Insert(a, v) => {
            let i = at(a).min(bytes.len());
            bytes.splice(i..i, v.to_le_bytes());
        }
        Mutation::Delete(a, n) => {
            let i = at(a).min(bytes.len());
            let j = (i + n).min(bytes.len());
            bytes.drain(i..j);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn truncated_real_models_are_errors(which in 0usize..6, frac in 0.0f64..1.0) {
        let bytes = &real_models()[which];
        let full = parse(bytes).unwrap();
        let cut = (frac * bytes.len() as f64) as usize;
        check_truncation(bytes, &full, cut);
    }

    #[test]
    fn mutated_files_never_panic_or_overallocate(
        which in 0usize..7,
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = if which == 6 { synthetic_model() } else { real_models()[which].clone() };
        // Mutate the header (where the structure is), not the tensor data.
        let region = GgufModel::from_bytes(&bytes).unwrap().files[0].data_offset as usize;
        for m in &muts {
            apply(&mut bytes, region, m);
        }
        if let Ok(m) = parse(&bytes) {
            check_accepted(&bytes, &m);
        }
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(
        n_tensors in huge(),
        n_kv in huge(),
        tail in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut b = Bytes::header(3, n_tensors % 64, n_kv % 64);
        b.raw(&tail);
        if let Ok(m) = parse(&b.build()) {
            check_accepted(&b.build(), &m);
        }
        let mut b = Bytes::header(3, n_tensors, n_kv);
        b.raw(&tail);
        prop_assert!(parse(&b.build()).is_err() || (n_tensors == 0 && n_kv == 0));
    }
}
