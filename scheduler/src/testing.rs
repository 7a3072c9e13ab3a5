//! A test double for [`ReadBackend`]: reads synchronously with `pread` when an op is
//! submitted, hands completions back in a scrambled order a few at a time, and can be told to
//! fail chosen reads. It exercises the scheduler's state machine independently of the real
//! backends (which live in the loader and have their own tests).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flashstream_formats::GgufModel;
use flashstream_loader::{Completion, IoKind, LoaderError, ReadBackend, ReadOp};

/// Fails reads whose ordinal (0-based, counted over the backend's life) is in a set.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Ordinals of reads that fail with EIO.
    pub eio_at: Vec<u64>,
}

/// The test double.
pub struct ScrambledPread {
    files: Vec<(std::path::PathBuf, File)>,
    done: Vec<Completion>,
    in_flight: usize,
    count: Arc<AtomicU64>,
    faults: Faults,
    align: usize,
    depth: usize,
}

impl ScrambledPread {
    /// Opens the files of `model`; ops must be `align`-aligned (as a direct backend's).
    pub fn open(model: &GgufModel, align: usize, faults: Faults) -> std::io::Result<Self> {
        let files = model
            .files
            .iter()
            .map(|f| Ok((f.path.clone(), File::open(&f.path)?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(ScrambledPread {
            files,
            done: Vec::new(),
            in_flight: 0,
            count: Arc::new(AtomicU64::new(0)),
            faults,
            align,
            depth: 8,
        })
    }

    /// A counter of the reads submitted so far (shared, readable after the backend moved).
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }
}

impl ReadBackend for ScrambledPread {
    fn kind(&self) -> IoKind {
        IoKind::Pread
    }

    fn alignment(&self) -> usize {
        self.align
    }

    fn queue_depth(&self) -> usize {
        self.depth
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    unsafe fn submit(&mut self, op: ReadOp) -> Result<(), LoaderError> {
        let a = self.align as u64;
        if !op.offset.is_multiple_of(a)
            || !(op.len as u64).is_multiple_of(a)
            || !(op.dst.as_ptr() as u64).is_multiple_of(a)
        {
            return Err(LoaderError::OutOfRange {
                file: op.file,
                offset: op.offset,
                len: op.len as u64,
                reason: "misaligned op".into(),
            });
        }
        let ordinal = self.count.fetch_add(1, Ordering::Relaxed);
        let (path, file) = self.files.get(op.file).ok_or(LoaderError::OutOfRange {
            file: op.file,
            offset: op.offset,
            len: op.len as u64,
            reason: "no such file".into(),
        })?;
        // SAFETY: the submit contract gives us `dst` for `len` bytes until completion.
        let buf = unsafe { std::slice::from_raw_parts_mut(op.dst.as_ptr(), op.len) };
        let result = if self.faults.eio_at.contains(&ordinal) {
            Err(LoaderError::Io {
                path: path.clone(),
                source: std::io::Error::from_raw_os_error(5),
            })
        } else {
            let mut got = 0;
            loop {
                match file.read_at(&mut buf[got..], op.offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => {
                        got += n;
                        if got == buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(LoaderError::Io {
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
            if got < op.required {
                Err(LoaderError::Truncated {
                    path: path.clone(),
                    offset: op.offset,
                    required: op.required as u64,
                    file_len: op.offset + got as u64,
                })
            } else {
                Ok(got)
            }
        };
        self.done.push(Completion {
            tag: op.tag,
            result,
        });
        self.in_flight += 1;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> Result<(), LoaderError> {
        if self.in_flight == 0 {
            return Ok(());
        }
        // Hand back at most three, newest first: completions out of order and in pieces.
        let take = self.done.len().min(3);
        for _ in 0..take {
            if let Some(c) = self.done.pop() {
                out.push(c);
            }
        }
        self.in_flight -= take;
        std::thread::yield_now();
        Ok(())
    }

    unsafe fn register_buffers(&mut self, _regions: &[(NonNull<u8>, usize)]) -> bool {
        false
    }
}
