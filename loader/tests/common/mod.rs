//! Helpers shared by the loader's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use flashstream_formats::gguf::GgufFile;
use flashstream_formats::{GgufModel, Metadata};
use flashstream_loader::{
    open_backend, BackendOptions, Completion, IoBuffer, IoKind, LoaderError, ReadBackend, ReadOp,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A file of `len` pseudo-random bytes and a one-file model over it (no tensors).
pub fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, GgufModel) {
    let mut rng = StdRng::seed_from_u64(seed);
    let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path.clone(), model_over(&[path]))
}

/// A model over existing files (no tensors), with their current lengths.
pub fn model_over(paths: &[PathBuf]) -> GgufModel {
    let files = paths
        .iter()
        .map(|p| GgufFile {
            path: p.clone(),
            len: std::fs::metadata(p).unwrap().len(),
            version: 3,
            data_offset: 0,
            alignment: 32,
        })
        .collect();
    GgufModel::from_parts(files, Metadata::new(), Vec::new()).unwrap()
}

/// The testdata models.
pub fn testdata_models() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no models in {}", dir.display());
    v
}

/// Opens `kind`, or `None` (with a note) when it is io_uring and the kernel refuses it here.
pub fn open(model: &GgufModel, kind: IoKind, depth: Option<usize>) -> Option<Box<dyn ReadBackend>> {
    let opts = BackendOptions {
        kind,
        queue_depth: depth,
    };
    match open_backend(model, &opts) {
        Ok(b) => Some(b),
        Err(LoaderError::Unavailable {
            kind: IoKind::Uring,
            reason,
        }) if kind == IoKind::Uring => {
            eprintln!("io_uring unavailable here ({reason}): its checks are skipped");
            None
        }
        Err(e) => panic!("opening {kind}: {e}"),
    }
}

/// Every backend that opens here: pread, mmap, uring (if the kernel allows), auto, and pread
/// with odd thread counts.
pub fn all_backends(model: &GgufModel) -> Vec<Box<dyn ReadBackend>> {
    let mut v = Vec::new();
    for (kind, depth) in [
        (IoKind::Pread, None),
        (IoKind::Pread, Some(1)),
        (IoKind::Pread, Some(3)),
        (IoKind::Mmap, None),
        (IoKind::Uring, None),
        (IoKind::Uring, Some(2)),
        (IoKind::Auto, None),
    ] {
        if let Some(b) = open(model, kind, depth) {
            v.push(b);
        }
    }
    v
}

/// One planned read and its buffer.
pub struct Planned {
    pub op: ReadOp,
    pub buf: IoBuffer,
}

/// A read of `len` bytes at `offset` requiring what the file has of them.
pub fn plan(file: usize, offset: u64, len: usize, file_len: u64, tag: u64) -> Planned {
    let mut buf = IoBuffer::zeroed(len.max(1)).unwrap();
    let required = (len as u64).min(file_len.saturating_sub(offset)) as usize;
    let op = ReadOp {
        file,
        offset,
        len,
        required,
        dst: NonNull::new(buf.as_mut_slice().as_mut_ptr()).unwrap(),
        tag,
    };
    Planned { op, buf }
}

/// `n` random reads of a file of `file_len` bytes with `align`-aligned offsets and lengths of
/// up to `max_len` (some running past the end of the file), tags 0..n.
pub fn random_plans(
    file: usize,
    file_len: u64,
    align: usize,
    n: usize,
    max_len: usize,
    seed: u64,
) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let a = align as u64;
    (0..n)
        .map(|i| {
            let offset = if i % 5 == 0 {
                // Near the end: len runs past it, required is what is left.
                (file_len.saturating_sub(rng.gen_range(1..=3 * align as u64)) / a) * a
            } else {
                (rng.gen_range(0..file_len.max(1)) / a) * a
            };
            let len = rng.gen_range(1..=max_len).div_ceil(align) * align;
            plan(file, offset, len, file_len, i as u64)
        })
        .collect()
}

/// Submits every plan at once and waits for all; returns results by tag.
pub fn run(b: &mut dyn ReadBackend, plans: &[Planned]) -> HashMap<u64, Result<usize, LoaderError>> {
    for p in plans {
        // SAFETY: the buffer outlives the op (we wait for every completion below).
        unsafe { b.submit(p.op) }
            .unwrap_or_else(|e| panic!("{} refused {:?}: {e}", b.kind(), p.op));
    }
    assert_eq!(b.in_flight(), plans.len());
    let mut got = HashMap::new();
    let mut out: Vec<Completion> = Vec::new();
    while got.len() < plans.len() {
        b.wait(&mut out).unwrap();
        assert!(!out.is_empty(), "wait returned nothing with ops in flight");
        for c in out.drain(..) {
            assert!(got.insert(c.tag, c.result).is_none(), "tag {} twice", c.tag);
        }
    }
    assert_eq!(b.in_flight(), 0);
    got
}

/// Checks each plan's bytes against the file's.
pub fn check_bytes(
    kind: IoKind,
    file_bytes: &[u8],
    plans: &[Planned],
    got: &HashMap<u64, Result<usize, LoaderError>>,
) {
    for p in plans {
        let n = match &got[&p.op.tag] {
            Ok(n) => *n,
            Err(e) => panic!("{kind}: {:?}: {e}", p.op),
        };
        let off = p.op.offset as usize;
        let avail = file_bytes.len().saturating_sub(off).min(p.op.len);
        assert_eq!(n, avail, "{kind}: bytes read for {:?}", p.op);
        assert!(n >= p.op.required);
        assert!(
            p.buf.as_slice()[..n] == file_bytes[off..off + n],
            "{kind}: wrong bytes for {:?}",
            p.op
        );
    }
}

/// One read through `b`; the completion's result.
pub fn read_one(
    b: &mut dyn ReadBackend,
    offset: u64,
    len: usize,
    required: usize,
) -> Result<usize, LoaderError> {
    let mut buf = IoBuffer::zeroed(len).unwrap();
    let op = ReadOp {
        file: 0,
        offset,
        len,
        required,
        dst: NonNull::new(buf.as_mut_slice().as_mut_ptr()).unwrap(),
        tag: 1,
    };
    // SAFETY: buf outlives the op: we wait for its completion.
    unsafe { b.submit(op) }?;
    let mut out = Vec::new();
    while out.is_empty() {
        b.wait(&mut out).unwrap();
    }
    out.pop().unwrap().result
}
