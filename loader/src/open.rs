//! [`open_backend`]: opening the backend `--io` names, and what `auto` resolves to.

use flashstream_formats::GgufModel;

use crate::{
    BackendOptions, Completion, IoBuffer, IoKind, LoaderError, PreadBackend, ReadBackend, ReadOp,
    ALIGN,
};

/// Default io_uring queue depth: reads of up to [`BACKEND_CHUNK_BYTES`](crate::BACKEND_CHUNK_BYTES) in the
/// kernel at once.
pub const DEFAULT_URING_DEPTH: usize = 16;

/// Environment variable that makes io_uring unavailable (set it to `1`): `uring` fails with
/// [`LoaderError::Unavailable`] and `auto` picks pread, as when a kernel or a seccomp profile
/// refuses io_uring. Any value but empty or `0` counts. Meant for tests and for machines where
/// io_uring misbehaves.
pub const DISABLE_URING_ENV: &str = "FLASHSTREAM_DISABLE_URING";

/// Whether [`DISABLE_URING_ENV`] is set.
#[cfg(target_os = "linux")]
pub(crate) fn uring_disabled_by_env() -> bool {
    std::env::var_os(DISABLE_URING_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Opens the backend `opts.kind` names over every file of `model` (the backend opens the
/// files itself, with the flags it needs, and checks each still has the length it was parsed
/// with).
///
/// * [`IoKind::Uring`]: io_uring with `O_DIRECT` (Linux); [`LoaderError::Unavailable`] where
///   the ring cannot be created, on other platforms, or with [`DISABLE_URING_ENV`] set.
/// * [`IoKind::Pread`]: the thread pool ([`PreadBackend`]), everywhere.
/// * [`IoKind::Mmap`]: copies out of a read-only map, dropping the pages behind it.
/// * [`IoKind::Auto`]: io_uring if the ring can be created and a first test read (the first
///   block of file 0, compared with a plain read) works; else pread. Which one is said once
///   at `debug` level; [`ReadBackend::kind`] tells the caller.
pub fn open_backend(
    model: &GgufModel,
    opts: &BackendOptions,
) -> Result<Box<dyn ReadBackend>, LoaderError> {
    let _span = tracing::debug_span!("open_backend", io = %opts.kind).entered();
    match opts.kind {
        IoKind::Pread => Ok(Box::new(PreadBackend::open(model, opts)?)),
        IoKind::Mmap => Ok(Box::new(crate::mmap::open(model, opts)?)),
        IoKind::Uring => open_uring(model, opts),
        IoKind::Auto => open_auto(model, opts),
    }
}

#[cfg(target_os = "linux")]
fn open_uring(
    model: &GgufModel,
    opts: &BackendOptions,
) -> Result<Box<dyn ReadBackend>, LoaderError> {
    Ok(Box::new(crate::uring::UringBackend::open(model, opts)?))
}

#[cfg(not(target_os = "linux"))]
fn open_uring(
    _model: &GgufModel,
    _opts: &BackendOptions,
) -> Result<Box<dyn ReadBackend>, LoaderError> {
    Err(LoaderError::Unavailable {
        kind: IoKind::Uring,
        reason: "io_uring exists only on Linux".into(),
    })
}

fn open_auto(
    model: &GgufModel,
    opts: &BackendOptions,
) -> Result<Box<dyn ReadBackend>, LoaderError> {
    // Declared before the backend so that it outlives it (the backend's drop waits for the
    // test read).
    let mut scratch = IoBuffer::zeroed(ALIGN);
    let why = match open_uring(model, opts) {
        Ok(mut b) => match scratch.as_mut().map(|s| test_read(&mut *b, model, s)) {
            Some(Ok(())) => {
                tracing::debug!("--io auto: using io_uring (ring created, test read ok)");
                return Ok(b);
            }
            Some(Err(why)) => {
                drop(b);
                why
            }
            None => "could not allocate the test read's buffer".into(),
        },
        Err(LoaderError::Unavailable { reason, .. }) => reason,
        Err(e) => return Err(e),
    };
    tracing::debug!(reason = %why, "--io auto: io_uring unusable, using the pread pool");
    Ok(Box::new(PreadBackend::open(model, opts)?))
}

/// Reads the first block of file 0 through `b` and compares it with a plain read.
fn test_read(b: &mut dyn ReadBackend, model: &GgufModel, buf: &mut IoBuffer) -> Result<(), String> {
    let Some(f) = model.files.first() else {
        return Ok(());
    };
    let required = (f.len.min(ALIGN as u64)) as usize;
    let op = ReadOp {
        file: 0,
        offset: 0,
        len: ALIGN,
        required,
        dst: std::ptr::NonNull::new(buf.as_mut_slice().as_mut_ptr()).ok_or("null buffer")?,
        tag: 0,
    };
    // SAFETY: `buf` is ALIGN bytes, ALIGN-aligned, outlives `b`, and is not touched until the
    // completion is back (or `b` is dropped).
    unsafe { b.submit(op) }.map_err(|e| format!("test read refused: {e}"))?;
    let mut out: Vec<Completion> = Vec::new();
    while out.is_empty() {
        b.wait(&mut out).map_err(|e| format!("test read: {e}"))?;
    }
    let n = match out.pop().map(|c| c.result) {
        Some(Ok(n)) => n,
        Some(Err(e)) => return Err(format!("test read failed: {e}")),
        None => return Err("test read returned nothing".into()),
    };
    let mut want = vec![0u8; required];
    let file = std::fs::File::open(&f.path).map_err(|e| format!("{}: {e}", f.path.display()))?;
    crate::read_exact_at(&file, &mut want, 0).map_err(|e| format!("{}: {e}", f.path.display()))?;
    if n < required || buf.as_slice()[..required] != want[..] {
        return Err("test read returned different bytes than a plain read".into());
    }
    Ok(())
}
