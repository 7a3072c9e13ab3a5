//! Writer → reader round trips: the test models, synthetic models with every value type and
//! several alignments, split models, the streaming writer's checks, and a proptest over
//! arbitrary writer inputs.

mod common;

use std::io::{self, Write};

use common::{pattern, rewrite, same_metadata, tensor_bytes, test_models, TempDir};
use flashstream_formats::gguf::{
    split_paths, GgufWriter, ALIGNMENT_KEY, SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY,
};
use flashstream_formats::{Array, FormatError, GgmlType, GgufModel, Metadata, Value};
use proptest::prelude::*;

#[test]
fn test_models_rewrite_byte_for_byte() {
    for path in test_models() {
        let bytes = std::fs::read(&path).unwrap();
        let m = GgufModel::from_bytes(&bytes).unwrap();
        let out = rewrite(&m, &bytes);
        let back = GgufModel::from_bytes(&out).unwrap();
        assert_eq!(back.metadata, m.metadata, "{}", path.display());
        assert_eq!(back.tensors, m.tensors, "{}", path.display());
        for t in &m.tensors {
            assert_eq!(tensor_bytes(&out, t), tensor_bytes(&bytes, t), "{}", t.name);
        }
        // gguf-py lays files out exactly as our writer does.
        assert!(out == bytes, "{}: rewritten file differs", path.display());
    }
}

#[test]
fn rewrite_reorders_tensor_data_into_declaration_order() {
    // A file whose data is not in tensor-info order (legal) is rewritten in declaration order,
    // with the same tensor bytes.
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[3]).unwrap();
    w.add_tensor("b", GgmlType::F32, &[5]).unwrap();
    let a = pattern(1, 12);
    let b = pattern(2, 20);
    let mut bytes = w.to_bytes(&[&a, &b]).unwrap();
    // Swap the two relative offsets in the tensor infos (a: 0, b: 32) and the data.
    let m = GgufModel::from_bytes(&bytes).unwrap();
    let data_offset = m.files[0].data_offset as usize;
    let find = |name: &str, from: usize| {
        let pat = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
        from + bytes[from..]
            .windows(pat.len())
            .position(|w| w == pat)
            .unwrap()
            + pat.len()
    };
    let a_off_at = find("a", 24) + 4 + 8 + 4;
    let b_off_at = find("b", a_off_at) + 4 + 8 + 4;
    bytes[a_off_at..a_off_at + 8].copy_from_slice(&32u64.to_le_bytes());
    bytes[b_off_at..b_off_at + 8].copy_from_slice(&0u64.to_le_bytes());
    let mut data = vec![0u8; 64];
    data[..20].copy_from_slice(&b);
    data[32..44].copy_from_slice(&a);
    bytes.truncate(data_offset);
    bytes.extend_from_slice(&data);
    let m = GgufModel::from_bytes(&bytes).unwrap();
    assert_eq!(tensor_bytes(&bytes, m.tensor("a").unwrap()), &a[..]);
    let out = rewrite(&m, &bytes);
    let back = GgufModel::from_bytes(&out).unwrap();
    let (ta, tb) = (back.tensor("a").unwrap(), back.tensor("b").unwrap());
    assert!(ta.offset < tb.offset);
    assert_eq!(tensor_bytes(&out, ta), &a[..]);
    assert_eq!(tensor_bytes(&out, tb), &b[..]);
}

/// Metadata with every value type, nested and empty arrays, odd strings.
fn every_value_type() -> Metadata {
    let mut m = Metadata::new();
    let pairs = vec![
        ("general.architecture", Value::String("llama".into())),
        ("t.u8", Value::U8(250)),
        ("t.i8", Value::I8(-7)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(0xDEAD_BEEF)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.f32.nan", Value::F32(f32::from_bits(0x7fc0_1234))),
        ("t.bool.true", Value::Bool(true)),
        ("t.bool.false", Value::Bool(false)),
        ("t.string", Value::String("héllo ✓ \u{0} \n".into())),
        ("t.string.empty", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-1, 2]))),
        ("a.u32", Value::Array(Array::U32(vec![7; 100]))),
        ("a.i32", Value::Array(Array::I32(vec![-3, 0, 3]))),
        (
            "a.f32",
            Value::Array(Array::F32(vec![0.5, -0.0, f32::INFINITY])),
        ),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "a.string",
            Value::Array(Array::String(vec!["".into(), "a".into(), "日本".into()])),
        ),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MAX]))),
        ("a.f64", Value::Array(Array::F64(vec![1e300, -2.5]))),
        ("a.empty", Value::Array(Array::U32(vec![]))),
        ("a.empty.strings", Value::Array(Array::String(vec![]))),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![
                    Array::F64(vec![0.25]),
                    Array::Array(vec![]),
                    Array::Bool(vec![]),
                ]),
                Array::I64(vec![]),
            ])),
        ),
        ("a.nested.empty", Value::Array(Array::Array(vec![]))),
    ];
    for (k, v) in pairs {
        m.insert(k, v).unwrap();
    }
    m
}

fn synthetic_tensors() -> Vec<(&'static str, GgmlType, Vec<u64>)> {
    vec![
        ("token_embd.weight", GgmlType::Q4_0, vec![64, 5]),
        ("blk.0.attn_norm.weight", GgmlType::F32, vec![7]),
        ("blk.0.ffn_up.weight", GgmlType::Q4_K, vec![256, 3]),
        ("blk.0.ffn_gate_exps.weight", GgmlType::Q8_0, vec![32, 2, 3]),
        ("blk.0.four_d", GgmlType::F16, vec![3, 2, 1, 2]),
        ("scalar", GgmlType::I32, vec![]),
        ("output.weight", GgmlType::IQ4_XS, vec![256, 1]),
    ]
}

fn synthetic_file(alignment: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut w = GgufWriter::with_alignment(alignment).unwrap();
    w.copy_metadata(&every_value_type()).unwrap();
    for (name, ty, shape) in synthetic_tensors() {
        w.add_tensor(name, ty, &shape).unwrap();
    }
    let (layout, _) = w.layout().unwrap();
    let data: Vec<Vec<u8>> = layout
        .iter()
        .enumerate()
        .map(|(i, t)| pattern(i as u64 + 1, t.n_bytes as usize))
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    (w.to_bytes(&refs).unwrap(), data)
}

#[test]
fn every_value_type_and_alignment_round_trips() {
    for alignment in [1u64, 8, 32, 64, 4096] {
        let (bytes, data) = synthetic_file(alignment);
        let m = GgufModel::from_bytes(&bytes).unwrap();
        let f = &m.files[0];
        assert_eq!(f.alignment, alignment);
        assert_eq!(f.data_offset % alignment, 0);
        assert_eq!(f.version, 3);
        // The alignment key is written exactly when it is not the default.
        // with_alignment() came first, so the key (if any) precedes the copied metadata.
        let mut want = Metadata::new();
        if alignment != 32 {
            want.set(ALIGNMENT_KEY, Value::U32(alignment as u32));
        }
        for (k, v) in every_value_type().iter() {
            want.set(k, v.clone());
        }
        if alignment != 32 {
            assert_eq!(
                m.metadata.get(ALIGNMENT_KEY),
                Some(&Value::U32(alignment as u32))
            );
        } else {
            assert!(m.metadata.get(ALIGNMENT_KEY).is_none());
        }
        assert!(same_metadata(&m.metadata, &want), "alignment {alignment}");
        let expected = synthetic_tensors();
        assert_eq!(m.tensors.len(), expected.len());
        for ((t, (name, ty, shape)), d) in m.tensors.iter().zip(&expected).zip(&data) {
            assert_eq!((&t.name[..], t.ty, &t.shape), (*name, *ty, shape));
            assert_eq!((t.offset - f.data_offset) % alignment, 0);
            assert_eq!(tensor_bytes(&bytes, t), &d[..], "{name}");
        }
        assert_eq!(m.require_tensor("scalar").unwrap().n_bytes, 4);
        assert_eq!(bytes.len() as u64 % alignment, 0);
    }
}

#[test]
fn alignment_key_of_any_unsigned_type_round_trips() {
    for v in [
        Value::U8(64),
        Value::U16(128),
        Value::U32(16),
        Value::U64(1 << 12),
    ] {
        let want = v.as_u64().unwrap();
        let mut w = GgufWriter::new();
        w.set(ALIGNMENT_KEY, v.clone()).unwrap();
        assert_eq!(w.alignment(), want);
        w.add_tensor("t", GgmlType::F32, &[3]).unwrap();
        let bytes = w.to_bytes(&[&[0u8; 12]]).unwrap();
        let m = GgufModel::from_bytes(&bytes).unwrap();
        assert_eq!(m.metadata.get(ALIGNMENT_KEY), Some(&v));
        assert_eq!(m.files[0].alignment, want);
        assert_eq!(m.files[0].data_offset % want, 0);
    }
    // Explicitly setting the default keeps the key; removing it restores the default.
    let mut w = GgufWriter::with_alignment(64).unwrap();
    w.set_alignment(32).unwrap();
    assert_eq!(w.metadata().get(ALIGNMENT_KEY), Some(&Value::U32(32)));
    assert_eq!(w.remove(ALIGNMENT_KEY), Some(Value::U32(32)));
    assert_eq!(w.alignment(), 32);
    assert!(matches!(
        w.set(ALIGNMENT_KEY, Value::U32(48)),
        Err(FormatError::BadAlignment(48))
    ));
    assert!(matches!(
        w.set(ALIGNMENT_KEY, Value::I32(64)),
        Err(FormatError::BadKey { .. })
    ));
    assert!(matches!(
        GgufWriter::with_alignment(0),
        Err(FormatError::BadAlignment(0))
    ));
    assert_eq!(w.alignment(), 32);
}

#[test]
fn changing_alignment_lays_declared_tensors_out_again() {
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[1]).unwrap();
    w.add_tensor("b", GgmlType::F32, &[1]).unwrap();
    let (t, len32) = w.layout().unwrap();
    assert_eq!(t[1].offset - t[0].offset, 32);
    w.set_alignment(256).unwrap();
    let (t, len256) = w.layout().unwrap();
    assert_eq!(t[1].offset - t[0].offset, 256);
    assert_eq!(t[0].offset % 256, 0);
    assert!(len256 > len32);
    let bytes = w.to_bytes(&[&[1, 2, 3, 4], &[5, 6, 7, 8]]).unwrap();
    assert_eq!(bytes.len() as u64, len256);
    let m = GgufModel::from_bytes(&bytes).unwrap();
    assert_eq!(m.tensors, t);
}

/// Writes `model` (held in `bytes`) as `parts` files named `dir/m-0000i-of-0000n.gguf`, the
/// metadata in the first, the tensors dealt out in order.
fn write_split(
    bytes: &[u8],
    model: &GgufModel,
    dir: &std::path::Path,
    parts: u16,
) -> Vec<std::path::PathBuf> {
    let paths = split_paths(&dir.join("m.gguf"), parts);
    let per = model.tensors.len().div_ceil(usize::from(parts));
    for (i, (path, chunk)) in paths.iter().zip(model.tensors.chunks(per)).enumerate() {
        let mut w = if i == 0 {
            GgufWriter::from_model(
                &GgufModel::from_parts(vec![], model.metadata.clone(), vec![]).unwrap(),
            )
            .unwrap()
        } else {
            GgufWriter::new()
        };
        w.set(SPLIT_NO_KEY, Value::U16(i as u16)).unwrap();
        w.set(SPLIT_COUNT_KEY, Value::U16(parts)).unwrap();
        w.set(
            SPLIT_TENSORS_COUNT_KEY,
            Value::I32(model.tensors.len() as i32),
        )
        .unwrap();
        for t in chunk {
            w.add_tensor(t.name.clone(), t.ty, &t.shape).unwrap();
        }
        let data: Vec<&[u8]> = chunk.iter().map(|t| tensor_bytes(bytes, t)).collect();
        w.write_file(path, &data).unwrap();
    }
    paths
}

fn read_tensor(model: &GgufModel, name: &str) -> Vec<u8> {
    let t = model.require_tensor(name).unwrap();
    let file = std::fs::read(&model.files[t.file].path).unwrap();
    tensor_bytes(&file, t).to_vec()
}

#[test]
fn split_model_round_trips() {
    let path = &test_models()[3];
    let bytes = std::fs::read(path).unwrap();
    let model = GgufModel::from_bytes(&bytes).unwrap();
    let dir = TempDir::new("split");
    let paths = write_split(&bytes, &model, dir.path(), 3);
    assert!(paths[0].ends_with("m-00001-of-00003.gguf"));
    for opened in &paths {
        let m = GgufModel::open(opened).unwrap();
        assert_eq!(m.files.len(), 3);
        assert_eq!(
            m.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            paths.iter().collect::<Vec<_>>()
        );
        let mut want = model.metadata.clone();
        want.set(SPLIT_NO_KEY, Value::U16(0));
        want.set(SPLIT_COUNT_KEY, Value::U16(3));
        want.set(
            SPLIT_TENSORS_COUNT_KEY,
            Value::I32(model.tensors.len() as i32),
        );
        assert_eq!(m.metadata, want);
        assert_eq!(m.tensors.len(), model.tensors.len());
        let per = model.tensors.len().div_ceil(3);
        for (i, (a, b)) in m.tensors.iter().zip(&model.tensors).enumerate() {
            assert_eq!(
                (&a.name, a.ty, &a.shape, a.n_bytes),
                (&b.name, b.ty, &b.shape, b.n_bytes)
            );
            assert_eq!(a.file, i / per);
        }
        for t in &model.tensors {
            assert_eq!(
                read_tensor(&m, &t.name),
                tensor_bytes(&bytes, t),
                "{}",
                t.name
            );
        }
        // Merging the parts again gives the original file back.
        let merged_bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let w = GgufWriter::from_model(&m).unwrap();
        let data: Vec<Vec<u8>> = m
            .tensors
            .iter()
            .map(|t| tensor_bytes(&merged_bytes[t.file], t).to_vec())
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        assert!(w.to_bytes(&refs).unwrap() == bytes);
    }
    // The same from memory.
    let parts: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    let m = GgufModel::from_split_bytes(&refs).unwrap();
    assert_eq!(m.tensors.len(), model.tensors.len());
    // One part alone is not a model.
    assert!(matches!(
        GgufModel::from_bytes(&parts[1]),
        Err(FormatError::Split(_))
    ));
    // Parts in the wrong order.
    let swapped = [refs[1], refs[0], refs[2]];
    assert!(matches!(
        GgufModel::from_split_bytes(&swapped),
        Err(FormatError::Split(_))
    ));
    // A missing part is named.
    std::fs::remove_file(&paths[2]).unwrap();
    match GgufModel::open(&paths[0]) {
        Err(e @ FormatError::MissingSplitPart { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("m-00003-of-00003.gguf") && msg.contains("part 3 of 3"),
                "{msg}"
            );
        }
        other => panic!("expected MissingSplitPart, got {other:?}"),
    }
}

fn split_part(no: u16, count: u16, total: i32, tensors: &[&str]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set(SPLIT_NO_KEY, Value::U16(no)).unwrap();
    w.set(SPLIT_COUNT_KEY, Value::U16(count)).unwrap();
    w.set(SPLIT_TENSORS_COUNT_KEY, Value::I32(total)).unwrap();
    for t in tensors {
        w.add_tensor(*t, GgmlType::F32, &[2]).unwrap();
    }
    let data = vec![[0u8; 8].as_slice(); tensors.len()];
    w.to_bytes(&data).unwrap()
}

#[test]
fn split_inconsistencies_are_errors() {
    let ok = [
        split_part(0, 2, 3, &["a", "b"]),
        split_part(1, 2, 3, &["c"]),
    ];
    let m = GgufModel::from_split_bytes(&[&ok[0], &ok[1]]).unwrap();
    assert_eq!(
        m.tensors.iter().map(|t| t.file).collect::<Vec<_>>(),
        vec![0, 0, 1]
    );
    // Tensor total disagrees with split.tensors.count.
    let p = [
        split_part(0, 2, 4, &["a", "b"]),
        split_part(1, 2, 4, &["c"]),
    ];
    assert!(matches!(
        GgufModel::from_split_bytes(&[&p[0], &p[1]]),
        Err(FormatError::Split(_))
    ));
    // Parts disagree on the total.
    let p = [
        split_part(0, 2, 3, &["a", "b"]),
        split_part(1, 2, 5, &["c"]),
    ];
    assert!(matches!(
        GgufModel::from_split_bytes(&[&p[0], &p[1]]),
        Err(FormatError::Split(_))
    ));
    // A tensor in two parts.
    let p = [
        split_part(0, 2, 3, &["a", "b"]),
        split_part(1, 2, 3, &["a"]),
    ];
    assert!(matches!(
        GgufModel::from_split_bytes(&[&p[0], &p[1]]),
        Err(FormatError::DuplicateTensor(n)) if n == "a"
    ));
    // Count disagrees with the number of parts.
    let p = [
        split_part(0, 3, 3, &["a", "b"]),
        split_part(1, 3, 3, &["c"]),
    ];
    assert!(matches!(
        GgufModel::from_split_bytes(&[&p[0], &p[1]]),
        Err(FormatError::Split(_))
    ));
    // split.no out of range.
    let mut w = GgufWriter::new();
    w.set(SPLIT_NO_KEY, Value::U16(2)).unwrap();
    w.set(SPLIT_COUNT_KEY, Value::U16(2)).unwrap();
    let b = w.to_bytes(&[]).unwrap();
    assert!(
        matches!(GgufModel::from_bytes(&b), Err(FormatError::BadKey { key, .. }) if key == SPLIT_NO_KEY)
    );

    // On disk: a part whose name does not match its split.no.
    let dir = TempDir::new("split-bad");
    let paths = split_paths(&dir.path().join("x.gguf"), 2);
    std::fs::write(&paths[0], &ok[1]).unwrap();
    std::fs::write(&paths[1], &ok[0]).unwrap();
    assert!(matches!(
        GgufModel::open(&paths[0]),
        Err(FormatError::Split(_))
    ));
    // A part not following the naming scheme cannot find its siblings.
    let odd = dir.path().join("odd.gguf");
    std::fs::write(&odd, &ok[1]).unwrap();
    assert!(matches!(GgufModel::open(&odd), Err(FormatError::Split(_))));
}

#[test]
fn streaming_writer_matches_in_memory_writer() {
    let make = || {
        let mut w = GgufWriter::with_alignment(64).unwrap();
        w.set("general.architecture", Value::String("llama".into()))
            .unwrap();
        w.add_tensor("a", GgmlType::Q8_0, &[64, 3]).unwrap();
        w.add_tensor("b", GgmlType::F32, &[5]).unwrap();
        w
    };
    let a = pattern(3, 34 * 2 * 3);
    let b = pattern(4, 20);
    let whole = make().to_bytes(&[&a, &b]).unwrap();
    let mut s = make().write_header(Vec::new()).unwrap();
    assert_eq!(s.next_tensor().unwrap().name, "a");
    for chunk in a.chunks(7) {
        s.write_chunk("a", chunk).unwrap();
    }
    assert_eq!(s.next_tensor().unwrap().name, "b");
    s.write_chunk("b", &b[..1]).unwrap();
    assert_eq!(s.bytes_written_of_next(), 1);
    s.write_chunk("b", &[]).unwrap();
    s.write_chunk("b", &b[1..]).unwrap();
    assert!(s.next_tensor().is_none());
    assert_eq!(s.file_len(), whole.len() as u64);
    let streamed = s.finish().unwrap();
    assert!(streamed == whole);

    // Through a file.
    let dir = TempDir::new("stream");
    let path = dir.path().join("s.gguf");
    let mut s = make().create(&path).unwrap();
    s.write_tensor("a", &a).unwrap();
    s.write_tensor("b", &b).unwrap();
    s.finish().unwrap();
    assert!(std::fs::read(&path).unwrap() == whole);
}

#[test]
fn streaming_writer_rejects_wrong_data() {
    let make = || {
        let mut w = GgufWriter::new();
        w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
        w.add_tensor("b", GgmlType::F32, &[2]).unwrap();
        w.write_header(Vec::new()).unwrap()
    };
    let writer_err = |r: Result<(), FormatError>, needle: &str| match r {
        Err(FormatError::Writer(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected a writer error, got {other:?}"),
    };
    // Out of order.
    let mut s = make();
    writer_err(s.write_chunk("b", &[0; 8]), "out of order");
    // Not declared.
    writer_err(s.write_chunk("zz", &[0; 8]), "not declared");
    // Too many bytes (in one chunk, and over several).
    writer_err(s.write_chunk("a", &[0; 17]), "17 bytes given");
    s.write_chunk("a", &[0; 10]).unwrap();
    writer_err(s.write_chunk("a", &[0; 7]), "17 bytes given");
    // Too few bytes, then the next tensor.
    writer_err(s.write_chunk("b", &[0; 8]), "only 10 of its 16 bytes");
    // write_tensor insists on the whole tensor.
    writer_err(s.write_tensor("a", &[0; 6]), "as the whole tensor");
    s.write_chunk("a", &[0; 6]).unwrap();
    writer_err(s.write_tensor("b", &[0; 4]), "as the whole tensor");
    // Finishing early.
    match s.finish() {
        Err(FormatError::Writer(msg)) => {
            assert!(msg.contains("\"b\" at 0 of its 8 bytes"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    // Data after the last tensor.
    let mut s = make();
    s.write_tensor("a", &[0; 16]).unwrap();
    s.write_tensor("b", &[0; 8]).unwrap();
    writer_err(s.write_chunk("b", &[0]), "after all 2 declared tensors");
    assert!(s.finish().is_ok());
    // The whole-file helpers check the number of buffers.
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
    assert!(matches!(w.to_bytes(&[]), Err(FormatError::Writer(_))));
}

/// A sink that fails after `left` bytes.
struct Failing {
    left: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn io_errors_are_reported_and_poison_the_writer() {
    let make = || {
        let mut w = GgufWriter::new();
        w.add_tensor("a", GgmlType::F32, &[64]).unwrap();
        w
    };
    assert!(matches!(
        make().write_header(Failing { left: 10 }),
        Err(FormatError::Io { .. })
    ));
    let mut s = make().write_header(Failing { left: 200 }).unwrap();
    assert!(matches!(
        s.write_chunk("a", &[0; 256]),
        Err(FormatError::Io { .. })
    ));
    assert!(matches!(
        s.write_chunk("a", &[0; 1]),
        Err(FormatError::Writer(_))
    ));
    assert!(s.finish().is_err());
}

#[test]
fn writer_refuses_what_the_reader_would_refuse() {
    let mut w = GgufWriter::new();
    let shape_err = |r: Result<(), FormatError>| {
        assert!(
            matches!(r, Err(FormatError::BadTensorShape { .. })),
            "{r:?}"
        )
    };
    shape_err(w.add_tensor("zero", GgmlType::F32, &[4, 0]));
    shape_err(w.add_tensor("five", GgmlType::F32, &[1, 1, 1, 1, 1]));
    shape_err(w.add_tensor("partial block", GgmlType::Q4_K, &[128]));
    shape_err(w.add_tensor("huge", GgmlType::F32, &[u64::MAX, 2]));
    w.add_tensor("t", GgmlType::F32, &[1]).unwrap();
    assert!(matches!(
        w.add_tensor("t", GgmlType::F16, &[1]),
        Err(FormatError::DuplicateTensor(_))
    ));
    let long = "x".repeat(1025);
    assert!(matches!(
        w.add_tensor(long.clone(), GgmlType::F32, &[1]),
        Err(FormatError::LimitExceeded { .. })
    ));
    assert!(matches!(
        w.set(long, Value::U8(0)),
        Err(FormatError::LimitExceeded { .. })
    ));
    let mut deep = Array::U8(vec![1]);
    for _ in 0..8 {
        deep = Array::Array(vec![deep]);
    }
    match w.set("deep", Value::Array(deep.clone())) {
        Err(FormatError::LimitExceeded {
            what,
            value: 9,
            limit: 8,
        }) => assert!(what.contains("deep")),
        other => panic!("{other:?}"),
    }
    if let Array::Array(mut v) = deep {
        let eight = v.pop().unwrap();
        w.set("eight", Value::Array(eight)).unwrap();
    }
    assert_eq!(w.tensor_count(), 1);
    let bytes = w.to_bytes(&[&[0; 4]]).unwrap();
    assert!(GgufModel::from_bytes(&bytes).is_ok());
}

// ---- proptest: arbitrary writer inputs round trip ----

fn leaf_array() -> impl Strategy<Value = Array> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Array::U8),
        prop::collection::vec(any::<i8>(), 0..8).prop_map(Array::I8),
        prop::collection::vec(any::<u16>(), 0..8).prop_map(Array::U16),
        prop::collection::vec(any::<i16>(), 0..8).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), 0..8).prop_map(Array::U32),
        prop::collection::vec(any::<i32>(), 0..8).prop_map(Array::I32),
        prop::collection::vec(any::<f32>(), 0..8).prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), 0..8).prop_map(Array::Bool),
        prop::collection::vec(".{0,6}", 0..6).prop_map(Array::String),
        prop::collection::vec(any::<u64>(), 0..8).prop_map(Array::U64),
        prop::collection::vec(any::<i64>(), 0..8).prop_map(Array::I64),
        prop::collection::vec(any::<f64>(), 0..8).prop_map(Array::F64),
    ]
}

fn array() -> impl Strategy<Value = Array> {
    // Depth at most 4, well within the reader's default limit of 8.
    leaf_array().prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Array::Array)
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<f32>().prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,12}".prop_map(Value::String),
        array().prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<f64>().prop_map(Value::F64),
    ]
}

fn tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>)> {
    (
        0..GgmlType::ALL.len(),
        prop::collection::vec(1u64..4, 0..4),
        1u64..3,
    )
        .prop_map(|(i, mut shape, blocks)| {
            let ty = GgmlType::ALL[i];
            let row = ty.block_size() as u64 * blocks;
            if shape.is_empty() && row != 1 {
                shape.push(row);
            } else if !shape.is_empty() {
                shape[0] = row;
            }
            (ty, shape)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_writer_inputs_round_trip(
        kvs in prop::collection::vec((".{0,10}", value()), 0..12),
        tensors in prop::collection::vec(tensor(), 0..6),
        align_log2 in 0u32..13,
        seed in any::<u64>(),
    ) {
        let alignment = 1u64 << align_log2;
        let mut w = GgufWriter::with_alignment(alignment).unwrap();
        let mut want = Metadata::new();
        if alignment != 32 {
            want.set(ALIGNMENT_KEY, Value::U32(alignment as u32));
        }
        for (i, (k, v)) in kvs.into_iter().enumerate() {
            let key = format!("{i}.{k}");
            w.set(key.clone(), v.clone()).unwrap();
            want.set(key, v);
        }
        let mut data = Vec::new();
        for (i, (ty, shape)) in tensors.iter().enumerate() {
            let name = format!("blk.{i}.t");
            w.add_tensor(name, *ty, shape).unwrap();
        }
        let (layout, file_len) = w.layout().unwrap();
        for (i, t) in layout.iter().enumerate() {
            data.push(pattern(seed ^ i as u64, t.n_bytes as usize));
        }
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let bytes = w.to_bytes(&refs).unwrap();
        prop_assert_eq!(bytes.len() as u64, file_len);
        let m = GgufModel::from_bytes(&bytes).unwrap();
        prop_assert!(same_metadata(&m.metadata, &want));
        prop_assert_eq!(m.files[0].alignment, alignment);
        prop_assert_eq!(&m.tensors, &layout);
        for (t, (ty, shape)) in m.tensors.iter().zip(&tensors) {
            prop_assert_eq!((t.ty, &t.shape), (*ty, shape));
        }
        for (t, d) in m.tensors.iter().zip(&data) {
            prop_assert_eq!(tensor_bytes(&bytes, t), &d[..]);
        }
        // Writing the parsed model again gives the same bytes.
        prop_assert!(common::rewrite(&m, &bytes) == bytes);
    }
}
