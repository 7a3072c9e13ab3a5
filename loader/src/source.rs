//! The syscall layer under the thread-pool backends: one positional read at a time from one
//! file.
//!
//! [`ReadSource`] is what the pread pool (and the mmap backend, which runs on the same pool)
//! calls; [`FileSource`] is the real implementation over an open file. The trait exists so
//! tests can put a faulty source (short reads, `EINTR`, `EAGAIN`, `EIO`) under the real backend
//! logic, see [`PreadBackend::from_sources`](crate::PreadBackend::from_sources).

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::LoaderError;

/// One file, read with single positional reads (the pluggable syscall layer of the pool
/// backends).
///
/// `read_at` makes one attempt, like `pread(2)`: it may return fewer bytes than asked for,
/// `Ok(0)` at the end of the file, or an error. The backend continues short reads, retries
/// [`io::ErrorKind::Interrupted`] and [`io::ErrorKind::WouldBlock`], and turns every other
/// error into an error completion naming [`ReadSource::path`].
pub trait ReadSource: Send + Sync {
    /// The path, for error messages.
    fn path(&self) -> &Path;

    /// Alignment the offset and length of every [`ReadSource::read_at`] must have (4096 while
    /// `O_DIRECT` is in effect, else 1). A continuation after a short read that ended at an
    /// unaligned position restarts at the aligned position below it (rereading a few bytes).
    fn read_alignment(&self) -> usize {
        1
    }

    /// One read of up to `buf.len()` bytes at `offset`; returns how many bytes were written to
    /// the start of `buf`.
    fn read_at(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize>;

    /// The file's length now (`fstat`).
    fn current_len(&self) -> io::Result<u64>;

    /// A hint that `[offset, offset + len)` will be read soon (`F_RDADVISE` on Apple,
    /// `madvise(WILLNEED)` for a map). Default: nothing.
    fn will_need(&self, _offset: u64, _len: usize) {}

    /// Called after `[offset, offset + len)` has been read: drop what the read left in the
    /// page cache or the process's mappings. Default: nothing.
    fn release(&self, _offset: u64, _len: usize) {}

    /// Whether the file is still the one that was opened: `Err` says what changed (size or
    /// modification time of the open file, or the path now naming another file).
    fn check_unchanged(&self) -> Result<(), String> {
        Ok(())
    }

    /// Whether reads bypass the page cache (`O_DIRECT` on Linux, `F_NOCACHE` on Apple).
    fn bypasses_cache(&self) -> bool {
        false
    }
}

/// What identifies an open file: compared by [`ReadSource::check_unchanged`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    len: u64,
    mtime: Option<SystemTime>,
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Identity {
            len: meta.len(),
            mtime: meta.modified().ok(),
            #[cfg(unix)]
            dev: meta.dev(),
            #[cfg(unix)]
            ino: meta.ino(),
        }
    }
}

/// A model file opened for positional reads, uncached where the platform allows.
///
/// * Linux/Android: opened with `O_DIRECT` (offsets, lengths and buffers 4096-aligned). If the
///   file system refuses `O_DIRECT` with `EINVAL` (at `open` or on the first aligned read), the
///   file falls back to buffered reads followed by `posix_fadvise(DONTNEED)` of the range just
///   read, so the page cache does not grow; logged once per process at debug level.
/// * Apple (macOS, iOS): `F_NOCACHE`, plus `F_RDADVISE` for ranges about to be read.
/// * Elsewhere: plain buffered reads.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    /// `path` made absolute when opened (symlinks kept), for the replacement check: a later
    /// change of the working directory does not matter.
    check_path: PathBuf,
    file: File,
    direct: AtomicBool,
    identity: Identity,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

#[cfg(any(target_os = "linux", target_os = "android"))]
fn log_direct_fallback(path: &Path, when: &str) {
    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::debug!(
            path = %path.display(),
            "the file system refused O_DIRECT ({when}: EINVAL): reading buffered and dropping \
             the pages behind each read with posix_fadvise(DONTNEED) (logged once)"
        );
    }
}

fn io_err(path: &Path, source: io::Error) -> LoaderError {
    LoaderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileSource {
    /// Opens `path` read-only; `uncached`: with `O_DIRECT` / `F_NOCACHE` where the platform
    /// and the file system allow (see the type's docs for the fallback).
    pub fn open(path: &Path, uncached: bool) -> Result<Self, LoaderError> {
        let (file, direct) = open_file(path, uncached).map_err(|e| io_err(path, e))?;
        let meta = file.metadata().map_err(|e| io_err(path, e))?;
        let src = FileSource {
            path: path.to_path_buf(),
            check_path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            file,
            direct: AtomicBool::new(direct),
            identity: Identity::of(&meta),
        };
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if direct {
            src.check_direct_reads();
        }
        Ok(src)
    }

    /// The file's length when it was opened.
    pub fn len_at_open(&self) -> u64 {
        self.identity.len
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// One aligned read of the first block: some file systems accept `O_DIRECT` at `open` and
    /// refuse the reads with `EINVAL`.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn check_direct_reads(&self) {
        let Some(mut buf) = crate::IoBuffer::zeroed(crate::ALIGN) else {
            return;
        };
        // SAFETY: the buffer is valid for ALIGN bytes and aligned to ALIGN.
        let r = unsafe {
            libc::pread(
                self.fd(),
                buf.as_mut_slice().as_mut_ptr().cast(),
                crate::ALIGN,
                0,
            )
        };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            self.disable_direct("first read");
        }
    }

    #[cfg(unix)]
    pub(crate) fn fd(&self) -> std::os::unix::io::RawFd {
        std::os::unix::io::AsRawFd::as_raw_fd(&self.file)
    }

    /// Whether `O_DIRECT` is in effect (Linux) / `F_NOCACHE` is set (Apple).
    pub fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Switches an `O_DIRECT` file to buffered reads (the file system refused a direct read
    /// with `EINVAL`). Returns whether it was direct before and now is not.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn disable_direct(&self, when: &str) -> bool {
        if !self.direct.load(Ordering::Relaxed) {
            return false;
        }
        let fd = self.fd();
        // SAFETY: plain fcntl calls on a descriptor we own.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) == 0
        };
        if ok && self.direct.swap(false, Ordering::Relaxed) {
            log_direct_fallback(&self.path, when);
            true
        } else {
            false
        }
    }

    /// `posix_fadvise(DONTNEED)` of a range (Linux/Android; a no-op elsewhere).
    pub(crate) fn drop_cached(&self, offset: u64, len: usize) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
            else {
                return;
            };
            // SAFETY: an advisory call on a descriptor we own.
            unsafe {
                libc::posix_fadvise(self.fd(), off, len, libc::POSIX_FADV_DONTNEED);
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = (offset, len);
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_file(path: &Path, uncached: bool) -> io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    if uncached {
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => log_direct_fallback(path, "open"),
            Err(e) => return Err(e),
        }
    }
    Ok((File::open(path)?, false))
}

#[cfg(target_vendor = "apple")]
fn open_file(path: &Path, uncached: bool) -> io::Result<(File, bool)> {
    let f = File::open(path)?;
    if !uncached {
        return Ok((f, false));
    }
    let fd = std::os::unix::io::AsRawFd::as_raw_fd(&f);
    // SAFETY: fcntl on a descriptor we own.
    let ok = unsafe { libc::fcntl(fd, libc::F_NOCACHE, 1) } == 0;
    if !ok {
        tracing::debug!(path = %path.display(), error = %io::Error::last_os_error(),
            "F_NOCACHE refused: reads go through the unified buffer cache");
    }
    Ok((f, ok))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn open_file(path: &Path, _uncached: bool) -> io::Result<(File, bool)> {
    Ok((File::open(path)?, false))
}

impl ReadSource for FileSource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_alignment(&self) -> usize {
        if cfg!(any(target_os = "linux", target_os = "android")) && self.is_direct() {
            crate::ALIGN
        } else {
            1
        }
    }

    fn read_at(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        let r = pread(&self.file, buf, offset);
        // An aligned O_DIRECT read refused with EINVAL: the file system does not take direct
        // reads after all; read buffered from now on.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = &r {
            if e.raw_os_error() == Some(libc::EINVAL) && self.disable_direct("read") {
                return pread(&self.file, buf, offset);
            }
        }
        r
    }

    fn current_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn will_need(&self, offset: u64, len: usize) {
        #[cfg(target_vendor = "apple")]
        {
            let Ok(ra_offset) = libc::off_t::try_from(offset) else {
                return;
            };
            let ra = libc::radvisory {
                ra_offset,
                ra_count: libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX),
            };
            // SAFETY: F_RDADVISE reads the struct we pass; advisory only.
            unsafe {
                libc::fcntl(self.fd(), libc::F_RDADVISE, &ra);
            }
        }
        #[cfg(not(target_vendor = "apple"))]
        let _ = (offset, len);
    }

    fn release(&self, offset: u64, len: usize) {
        if !self.is_direct() {
            self.drop_cached(offset, len);
        }
    }

    fn check_unchanged(&self) -> Result<(), String> {
        let now = self
            .file
            .metadata()
            .map_err(|e| format!("fstat of the open file failed ({e})"))?;
        let id = &self.identity;
        if now.len() != id.len {
            return Err(format!(
                "its size changed from {} to {} bytes",
                id.len,
                now.len()
            ));
        }
        if now.modified().ok() != id.mtime {
            return Err("it was modified (its modification time changed)".into());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(&self.check_path) {
                Ok(m) if (m.dev(), m.ino()) == (id.dev, id.ino) => {}
                Ok(_) => return Err("the path now names a different file (it was replaced)".into()),
                Err(e) => {
                    return Err(format!(
                        "the path no longer opens ({e}): it was removed or replaced"
                    ))
                }
            }
        }
        Ok(())
    }

    fn bypasses_cache(&self) -> bool {
        self.is_direct()
    }
}

/// One `pread(2)`.
#[cfg(unix)]
pub(crate) fn pread(f: &File, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
    use std::os::unix::io::AsRawFd;
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: buf is valid for writes of buf.len() bytes; the kernel writes at most that.
    let r = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One positional read (`ReadFile` with an offset).
#[cfg(windows)]
pub(crate) fn pread(f: &File, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    // SAFETY: zeroing makes the bytes initialised, so the slice may be viewed as &mut [u8].
    let bytes = unsafe {
        std::ptr::write_bytes(buf.as_mut_ptr(), 0, buf.len());
        std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len())
    };
    f.seek_read(bytes, offset)
}

/// Positional reads are not implemented on this platform.
#[cfg(not(any(unix, windows)))]
pub(crate) fn pread(_f: &File, _buf: &mut [MaybeUninit<u8>], _offset: u64) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "positional reads are not implemented on this platform",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_vec(src: &dyn ReadSource, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = crate::IoBuffer::zeroed(len).unwrap();
        // SAFETY: viewing initialised bytes as MaybeUninit is always sound.
        let mu =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_slice().as_mut_ptr().cast(), len) };
        let n = src.read_at(mu, offset)?;
        Ok(buf.as_slice()[..n].to_vec())
    }

    #[test]
    fn buffered_fallback_reads_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let src = FileSource::open(&path, true).unwrap();
        assert_eq!(src.len_at_open(), 20_000);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if src.is_direct() {
            assert_eq!(src.read_alignment(), crate::ALIGN);
            assert_eq!(read_vec(&src, 4096, 8192).unwrap(), bytes[4096..12288]);
            // What the EINVAL fallback does: O_DIRECT off on the open descriptor.
            assert!(src.disable_direct("test"));
            assert!(!src.disable_direct("test"), "only once");
            assert!(!src.is_direct() && !src.bypasses_cache());
            assert_eq!(src.read_alignment(), 1);
        }
        // Buffered now (or from the start): any offset and length.
        assert_eq!(read_vec(&src, 1001, 333).unwrap(), bytes[1001..1334]);
        assert_eq!(read_vec(&src, 19_990, 100).unwrap(), bytes[19_990..]);
        src.release(0, 20_000);
        assert!(src.check_unchanged().is_ok());
    }
}
