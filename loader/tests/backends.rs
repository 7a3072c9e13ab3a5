//! Every backend against `std::fs`: random ranges, many ops in flight, tags, refused ops,
//! truncation/replacement while open, fixed buffers, and the bandwidth probe.

mod common;

use std::ptr::NonNull;

use common::*;
use flashstream_formats::GgufModel;
use flashstream_loader::{
    open_backend, probe_read_bandwidth, BackendOptions, IoBuffer, IoKind, LoaderError, ReadOp,
    BACKEND_CHUNK_BYTES,
};

/// 5 MiB + 12345 bytes: several chunks and a tail that is not block-aligned.
const GEN_LEN: usize = 5 * (1 << 20) + 12345;

#[test]
fn random_ranges_of_a_generated_file_match_std_fs() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = random_file(dir.path(), "gen.bin", GEN_LEN, 1);
    let bytes = std::fs::read(&path).unwrap();
    for (i, mut b) in all_backends(&model).into_iter().enumerate() {
        let plans = random_plans(
            0,
            GEN_LEN as u64,
            b.alignment(),
            48,
            3 * BACKEND_CHUNK_BYTES,
            i as u64,
        );
        let got = run(&mut *b, &plans);
        check_bytes(b.kind(), &bytes, &plans, &got);
        // The whole file in one op, len rounded past its end.
        let whole = plan(0, 0, GEN_LEN.div_ceil(4096) * 4096, GEN_LEN as u64, 99);
        let got = run(&mut *b, std::slice::from_ref(&whole));
        check_bytes(b.kind(), &bytes, std::slice::from_ref(&whole), &got);
    }
}

#[test]
fn mmap_reads_unaligned_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = random_file(dir.path(), "gen.bin", 300_001, 2);
    let bytes = std::fs::read(&path).unwrap();
    let mut b = open(&model, IoKind::Mmap, None).unwrap();
    assert_eq!(b.alignment(), 1);
    assert!(!b.bypasses_cache());
    let plans = random_plans(0, bytes.len() as u64, 1, 64, 70_001, 3);
    assert!(plans.iter().any(|p| p.op.offset % 4096 != 0));
    let got = run(&mut *b, &plans);
    check_bytes(IoKind::Mmap, &bytes, &plans, &got);
}

#[test]
fn random_ranges_of_testdata_models_match_std_fs() {
    for path in testdata_models() {
        let model = GgufModel::open(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for mut b in all_backends(&model) {
            let plans = random_plans(0, bytes.len() as u64, b.alignment(), 24, 1 << 20, 7);
            let got = run(&mut *b, &plans);
            check_bytes(b.kind(), &bytes, &plans, &got);
        }
        // Every tensor, rounded out to the alignment, as the scheduler will read them.
        let mut b = open(&model, IoKind::Auto, None).unwrap();
        let a = b.alignment() as u64;
        let plans: Vec<Planned> = model
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let start = t.offset / a * a;
                let end = (t.offset + t.n_bytes).div_ceil(a) * a;
                let mut p = plan(
                    t.file,
                    start,
                    (end - start) as usize,
                    bytes.len() as u64,
                    i as u64,
                );
                p.op.required = (t.offset + t.n_bytes - start) as usize;
                p
            })
            .collect();
        let got = run(&mut *b, &plans);
        for (p, t) in plans.iter().zip(&model.tensors) {
            got[&p.op.tag].as_ref().unwrap();
            let inner = (t.offset - p.op.offset) as usize;
            assert!(
                p.buf.as_slice()[inner..inner + t.n_bytes as usize]
                    == bytes[t.offset as usize..(t.offset + t.n_bytes) as usize],
                "{}: tensor {}",
                path.display(),
                t.name
            );
        }
    }
}

#[test]
fn many_ops_in_flight_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = random_file(dir.path(), "gen.bin", GEN_LEN, 4);
    let bytes = std::fs::read(&path).unwrap();
    for mut b in all_backends(&model) {
        assert!(b.queue_depth() >= 1);
        let mut out = Vec::new();
        b.wait(&mut out).unwrap();
        assert!(out.is_empty(), "{}: wait with nothing in flight", b.kind());
        // 300 small ops (far more than any queue depth), tags far apart.
        let a = b.alignment();
        let mut plans: Vec<Planned> = (0..300u64)
            .map(|i| {
                plan(
                    0,
                    (i * 7919) % (GEN_LEN as u64 / 2 / a as u64) * a as u64,
                    a * (1 + i as usize % 3),
                    GEN_LEN as u64,
                    i * 1_000_003,
                )
            })
            .collect();
        // Zero-length ops complete too.
        plans.push(plan(0, 0, 0, GEN_LEN as u64, u64::MAX));
        let got = run(&mut *b, &plans);
        assert_eq!(got.len(), plans.len());
        assert_eq!(*got[&u64::MAX].as_ref().unwrap(), 0);
        check_bytes(b.kind(), &bytes, &plans, &got);
    }
}

#[test]
fn queue_depth_option_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = random_file(dir.path(), "gen.bin", 8192, 5);
    assert_eq!(
        open(&model, IoKind::Pread, Some(3)).unwrap().queue_depth(),
        3
    );
    assert_eq!(
        open(&model, IoKind::Mmap, Some(2)).unwrap().queue_depth(),
        2
    );
    if let Some(b) = open(&model, IoKind::Uring, Some(8)) {
        assert_eq!(b.queue_depth(), 8);
        assert_eq!(b.kind(), IoKind::Uring);
    }
}

#[test]
fn refused_ops_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = random_file(dir.path(), "gen.bin", 3 * 4096 + 10, 6);
    let file_len = 3 * 4096 + 10;
    for mut b in all_backends(&model) {
        let kind = b.kind();
        let align = b.alignment();
        let mut buf = IoBuffer::zeroed(4 * 4096).unwrap();
        let dst = NonNull::new(buf.as_mut_slice().as_mut_ptr()).unwrap();
        let good = ReadOp {
            file: 0,
            offset: 4096,
            len: 4096,
            required: 4096,
            dst,
            tag: 0,
        };
        let mut submit = |op: ReadOp| unsafe { b.submit(op) };
        let e = submit(ReadOp { file: 1, ..good }).unwrap_err();
        assert!(
            matches!(e, LoaderError::OutOfRange { file: 1, .. }),
            "{kind}: {e}"
        );
        assert!(e.to_string().contains("1 file"), "{e}");
        let e = submit(ReadOp {
            required: 8192,
            ..good
        })
        .unwrap_err();
        assert!(matches!(e, LoaderError::InvalidRequest(_)), "{kind}: {e}");
        // Required bytes past the end of the file as opened.
        let e = submit(ReadOp {
            offset: 3 * 4096,
            required: 11,
            ..good
        })
        .unwrap_err();
        assert!(matches!(e, LoaderError::OutOfRange { .. }), "{kind}: {e}");
        assert!(e.to_string().contains(&format!("{file_len} bytes")), "{e}");
        let e = submit(ReadOp {
            offset: u64::MAX - 100,
            required: 0,
            ..good
        })
        .unwrap_err();
        assert!(matches!(e, LoaderError::OutOfRange { .. }), "{kind}: {e}");
        if align > 1 {
            for bad in [
                ReadOp {
                    offset: 4096 + 512,
                    ..good
                },
                ReadOp {
                    len: 4096 + 32,
                    required: 10,
                    ..good
                },
                ReadOp {
                    dst: NonNull::new(unsafe { dst.as_ptr().add(32) }).unwrap(),
                    ..good
                },
            ] {
                let e = submit(bad).unwrap_err();
                assert!(
                    matches!(
                        e,
                        LoaderError::Misaligned {
                            alignment: 4096,
                            ..
                        }
                    ),
                    "{kind}: {e}"
                );
                assert!(e.to_string().contains("round the range out"), "{e}");
            }
        }
        assert_eq!(b.in_flight(), 0, "{kind}: refused ops are not in flight");
        // The op they were derived from is fine.
        let got = run(&mut *b, &[Planned { op: good, buf }]);
        assert_eq!(*got[&0].as_ref().unwrap(), 4096);
    }
}

/// A copy of a testdata model in a temporary directory, parsed.
fn temp_model(dir: &std::path::Path) -> (std::path::PathBuf, GgufModel) {
    let src = &testdata_models()[0];
    let path = dir.join("model.gguf");
    std::fs::copy(src, &path).unwrap();
    let model = GgufModel::open(&path).unwrap();
    (path, model)
}

fn reopen_kinds() -> [IoKind; 3] {
    [IoKind::Pread, IoKind::Mmap, IoKind::Uring]
}

#[test]
fn truncated_while_open_is_truncated() {
    for kind in reopen_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = temp_model(dir.path());
        let Some(mut b) = open(&model, kind, None) else {
            continue;
        };
        let len = model.files[0].len;
        let cut = (len / 2 / 4096) * 4096 + 100;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let off = (cut / 4096 - 1) * 4096;
        let e = read_one(&mut *b, off, 3 * 4096, 3 * 4096).unwrap_err();
        match &e {
            LoaderError::Truncated {
                path: p,
                offset,
                required,
                file_len,
            } => {
                assert_eq!(
                    (p, *offset, *required, *file_len),
                    (&path, off, 3 * 4096, cut),
                    "{kind}"
                );
            }
            e => panic!("{kind}: {e}"),
        }
        assert!(e.to_string().contains("truncated or replaced"), "{e}");
        // The batch check saw the new size: the file is refused from now on.
        let e = read_one(&mut *b, 0, 4096, 4096).unwrap_err();
        assert!(matches!(e, LoaderError::FileChanged { .. }), "{kind}: {e}");
        assert!(e.to_string().contains("size changed"), "{e}");
    }
}

#[test]
fn truncation_behind_the_read_is_a_change() {
    for kind in reopen_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = temp_model(dir.path());
        let Some(mut b) = open(&model, kind, None) else {
            continue;
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(model.files[0].len - 1)
            .unwrap();
        // The read itself is complete, but the file is not the one opened.
        let e = read_one(&mut *b, 0, 4096, 4096).unwrap_err();
        assert!(matches!(e, LoaderError::FileChanged { .. }), "{kind}: {e}");
    }
}

#[test]
fn replaced_while_open_is_an_error() {
    for kind in reopen_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = temp_model(dir.path());
        let Some(mut b) = open(&model, kind, None) else {
            continue;
        };
        read_one(&mut *b, 0, 4096, 4096).unwrap();
        // Same bytes, new inode: what a re-download + rename does.
        let other = dir.path().join("new.gguf");
        std::fs::copy(&path, &other).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let e = read_one(&mut *b, 0, 4096, 4096).unwrap_err();
        match &e {
            LoaderError::FileChanged { path: p, what } => {
                assert_eq!(p, &path);
                assert!(what.contains("replaced"), "{kind}: {what}");
            }
            e => panic!("{kind}: {e}"),
        }
        // Removed altogether.
        let (path2, model2) = {
            let p = dir.path().join("again.gguf");
            std::fs::copy(&path, &p).unwrap();
            (p.clone(), GgufModel::open(&p).unwrap())
        };
        let mut b = open(&model2, kind, None).unwrap();
        std::fs::remove_file(&path2).unwrap();
        let e = read_one(&mut *b, 0, 4096, 4096).unwrap_err();
        assert!(e.to_string().contains("removed or replaced"), "{kind}: {e}");
    }
}

#[test]
fn modified_in_place_while_open_is_an_error() {
    for kind in reopen_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let (path, model) = temp_model(dir.path());
        let Some(mut b) = open(&model, kind, None) else {
            continue;
        };
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        )
        .unwrap();
        let e = read_one(&mut *b, 4096, 4096, 4096).unwrap_err();
        assert!(e.to_string().contains("modified"), "{kind}: {e}");
    }
}

#[test]
fn a_file_changed_before_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = temp_model(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(model.files[0].len - 10).unwrap();
    for kind in IoKind::ALL {
        let e = open_backend(
            &model,
            &BackendOptions {
                kind,
                queue_depth: None,
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{kind} opened a truncated model"));
        if kind == IoKind::Uring && matches!(e, LoaderError::Unavailable { .. }) {
            continue; // no io_uring here: the ring is refused before the files are opened
        }
        assert!(matches!(e, LoaderError::Truncated { .. }), "{kind}: {e}");
    }
    f.set_len(model.files[0].len + 10).unwrap();
    let e = open_backend(&model, &BackendOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, LoaderError::FileChanged { .. }), "{e}");
    let mut missing = model.clone();
    missing.files[0].path = dir.path().join("missing");
    let e = open_backend(&missing, &BackendOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, LoaderError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn auto_prefers_uring_where_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = random_file(dir.path(), "gen.bin", 10_000, 8);
    let auto = open(&model, IoKind::Auto, None).unwrap();
    let uring_works = open(&model, IoKind::Uring, None).is_some();
    let want = if uring_works {
        IoKind::Uring
    } else {
        IoKind::Pread
    };
    assert_eq!(auto.kind(), want);
    if !cfg!(target_os = "linux") {
        assert!(!uring_works);
    }
}

#[test]
fn uring_fixed_buffers_read_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = random_file(dir.path(), "gen.bin", GEN_LEN, 9);
    let bytes = std::fs::read(&path).unwrap();
    let Some(mut b) = open(&model, IoKind::Uring, None) else {
        return;
    };
    // One region holding every destination, as the scheduler's slot ring would be.
    let n = 12;
    let slot = BACKEND_CHUNK_BYTES + 4096;
    let mut region = IoBuffer::zeroed(n * slot).unwrap();
    let base = region.as_mut_slice().as_mut_ptr();
    let registered = unsafe { b.register_buffers(&[(NonNull::new(base).unwrap(), region.len())]) };
    eprintln!("io_uring fixed buffers registered: {registered}");
    let mut plans = random_plans(0, GEN_LEN as u64, 4096, n, slot, 10);
    for (i, p) in plans.iter_mut().enumerate() {
        p.op.dst = NonNull::new(unsafe { base.add(i * slot) }).unwrap();
    }
    let got = run(&mut *b, &plans);
    for (i, p) in plans.iter().enumerate() {
        let n = *got[&p.op.tag].as_ref().unwrap();
        let off = p.op.offset as usize;
        assert_eq!(n, (bytes.len() - off).min(p.op.len));
        assert!(region.as_slice()[i * slot..i * slot + n] == bytes[off..off + n]);
    }
    // Pool backends gain nothing from registration and say so.
    let mut p = open(&model, IoKind::Pread, None).unwrap();
    assert!(!unsafe { p.register_buffers(&[(NonNull::new(base).unwrap(), region.len())]) });
    drop(b);
}

/// Whether this file system takes `O_DIRECT` reads (what the backends should find out).
#[cfg(target_os = "linux")]
fn o_direct_works(path: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    else {
        return false;
    };
    let mut buf = IoBuffer::zeroed(4096).unwrap();
    f.read_at(buf.as_mut_slice(), 0).is_ok()
}

#[cfg(target_os = "linux")]
#[test]
fn direct_backends_bypass_the_cache_where_the_file_system_allows() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = random_file(dir.path(), "gen.bin", 10_000, 11);
    let want = o_direct_works(&path);
    eprintln!("O_DIRECT works in {}: {want}", dir.path().display());
    for kind in [IoKind::Pread, IoKind::Uring, IoKind::Auto] {
        let Some(b) = open(&model, kind, None) else {
            continue;
        };
        assert_eq!(b.bypasses_cache(), want, "{kind}");
    }
    assert!(!open(&model, IoKind::Mmap, None).unwrap().bypasses_cache());
}

#[test]
fn bandwidth_probe_reads_what_it_says() {
    let dir = tempfile::tempdir().unwrap();
    let (_, model) = random_file(dir.path(), "gen.bin", GEN_LEN, 12);
    for kind in IoKind::ALL {
        if kind == IoKind::Uring && open(&model, kind, None).is_none() {
            continue;
        }
        let opts = BackendOptions {
            kind,
            queue_depth: None,
        };
        let p = probe_read_bandwidth(&model, &opts, 3 << 20).unwrap();
        assert_eq!(p.bytes, 3 << 20, "{kind}");
        assert!(p.seconds > 0.0 && p.gb_per_s.is_finite() && p.gb_per_s > 0.0);
        assert_ne!(p.kind, IoKind::Mmap, "the probe reads direct");
        assert_ne!(p.kind, IoKind::Auto);
        // More than the file: the whole file, once.
        let p = probe_read_bandwidth(&model, &opts, 1 << 40).unwrap();
        assert_eq!(p.bytes, GEN_LEN as u64, "{kind}");
    }
    // Two files, read one after the other.
    let (p2, _) = random_file(dir.path(), "gen2.bin", 100_000, 13);
    let two = model_over(&[model.files[0].path.clone(), p2]);
    let p = probe_read_bandwidth(&two, &BackendOptions::default(), 1 << 40).unwrap();
    assert_eq!(p.bytes, GEN_LEN as u64 + 100_000);
    let e = probe_read_bandwidth(&model, &BackendOptions::default(), 0).unwrap_err();
    assert!(matches!(e, LoaderError::InvalidRequest(_)), "{e}");
}

#[test]
fn dropping_with_ops_in_flight_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let (path, model) = random_file(dir.path(), "gen.bin", GEN_LEN, 14);
    let bytes = std::fs::read(&path).unwrap();
    for mut b in all_backends(&model) {
        let kind = b.kind();
        let plans = random_plans(
            0,
            GEN_LEN as u64,
            b.alignment(),
            40,
            2 * BACKEND_CHUNK_BYTES,
            15,
        );
        for p in &plans {
            // SAFETY: the buffers outlive the backend, dropped below before them.
            unsafe { b.submit(p.op) }.unwrap();
        }
        // Take one completion, leave the rest in flight.
        let mut out = Vec::new();
        b.wait(&mut out).unwrap();
        assert!(!out.is_empty());
        drop(b);
        // Whatever completed is right; nothing writes into the buffers any more.
        let snapshot: Vec<Vec<u8>> = plans.iter().map(|p| p.buf.as_slice().to_vec()).collect();
        for c in out {
            let p = &plans[c.tag as usize];
            let n = c.result.unwrap();
            let off = p.op.offset as usize;
            assert!(p.buf.as_slice()[..n] == bytes[off..off + n], "{kind}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        for (p, s) in plans.iter().zip(&snapshot) {
            assert!(
                p.buf.as_slice() == &s[..],
                "{kind}: a buffer changed after drop"
            );
        }
    }
}
