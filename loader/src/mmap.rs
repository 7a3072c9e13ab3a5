//! The mmap backend: the pool's threads copy out of a read-only map of each file.
//!
//! At submit the op's range is `madvise(WILLNEED)`-ed (the kernel starts reading ahead);
//! after a chunk is copied its pages are dropped from the process (`madvise(DONTNEED)`) and,
//! on Linux/Android, from the page cache (`posix_fadvise(DONTNEED)`), so streaming a model
//! through the map does not pile up resident pages. Reads go through the page cache on their
//! way in, so this backend never [bypasses the cache](crate::ReadBackend::bypasses_cache).
//!
//! Truncation: before each copy the file's current length is taken (`fstat`) and only bytes
//! inside it are touched, so a file truncated while open reads as
//! [`Truncated`](crate::LoaderError::Truncated) rather than faulting. A truncation racing a
//! copy between that `fstat` and the copy can still raise `SIGBUS` (as with any mapping):
//! prefer pread/io_uring for files that may change under the process.

use std::io;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::Arc;

use flashstream_formats::GgufModel;

use crate::pool::{open_model_files, Pool, PreadBackend};
use crate::source::{FileSource, ReadSource};
use crate::{BackendOptions, IoKind, LoaderError};

/// Default number of copy threads of the mmap backend.
pub const DEFAULT_MMAP_THREADS: usize = 4;

/// One file, mapped read-only.
pub(crate) struct MmapSource {
    file: Arc<FileSource>,
    map: memmap2::Mmap,
    page: usize,
}

impl MmapSource {
    fn new(file: Arc<FileSource>) -> Result<Self, LoaderError> {
        // SAFETY: a read-only shared map; truncation is guarded as the module docs say.
        let map = unsafe { memmap2::Mmap::map(file.file()) }.map_err(|source| LoaderError::Io {
            path: file.path().to_path_buf(),
            source,
        })?;
        Ok(MmapSource {
            file,
            map,
            page: page_size(),
        })
    }

    /// `[offset, offset + len)` widened to whole pages and clipped to the map, as (pointer,
    /// length); `None` if empty.
    fn pages(&self, offset: u64, len: usize) -> Option<(*mut u8, usize)> {
        let map_len = self.map.len() as u64;
        let start = offset.min(map_len);
        let end = offset.saturating_add(len as u64).min(map_len);
        if start >= end {
            return None;
        }
        let start = start - start % self.page as u64;
        let end = end.div_ceil(self.page as u64) * self.page as u64;
        let end = end.min(map_len.div_ceil(self.page as u64) * self.page as u64);
        // SAFETY: start is inside the map.
        let ptr = unsafe { self.map.as_ptr().add(start as usize) } as *mut u8;
        Some((ptr, (end - start) as usize))
    }

    #[cfg(unix)]
    fn advise(&self, offset: u64, len: usize, advice: libc::c_int) {
        if let Some((ptr, n)) = self.pages(offset, len) {
            // SAFETY: a page-aligned range inside our own read-only shared mapping; WILLNEED
            // and DONTNEED never change what the mapping reads as (for a shared file map,
            // DONTNEED only drops the process's page table entries).
            unsafe {
                libc::madvise(ptr.cast(), n, advice);
            }
        }
    }
}

fn page_size() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 && (p as usize).is_power_of_two() {
            return p as usize;
        }
    }
    4096
}

impl ReadSource for MmapSource {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn read_at(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        let now = self.file.current_len()?;
        let end = (self.map.len() as u64).min(now);
        if offset >= end {
            return Ok(0);
        }
        let n = buf.len().min((end - offset) as usize);
        // SAFETY: [offset, offset + n) lies inside both the map and the file as it is now;
        // buf is valid for n bytes and does not overlap the read-only map.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset as usize),
                buf.as_mut_ptr().cast::<u8>(),
                n,
            );
        }
        Ok(n)
    }

    fn current_len(&self) -> io::Result<u64> {
        self.file.current_len()
    }

    fn will_need(&self, offset: u64, len: usize) {
        #[cfg(unix)]
        self.advise(offset, len, libc::MADV_WILLNEED);
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    fn release(&self, offset: u64, len: usize) {
        #[cfg(unix)]
        self.advise(offset, len, libc::MADV_DONTNEED);
        self.file.drop_cached(offset, len);
    }

    fn check_unchanged(&self) -> Result<(), String> {
        self.file.check_unchanged()
    }
}

/// Opens the mmap backend: every file mapped read-only, `opts.queue_depth` (default
/// [`DEFAULT_MMAP_THREADS`]) copy threads, no alignment requirement.
pub(crate) fn open(model: &GgufModel, opts: &BackendOptions) -> Result<PreadBackend, LoaderError> {
    let files = open_model_files(model, false)?;
    let lens = files.iter().map(|f| f.len_at_open()).collect();
    let sources = files
        .into_iter()
        .map(|f| MmapSource::new(f).map(|s| Arc::new(s) as Arc<dyn ReadSource>))
        .collect::<Result<Vec<_>, _>>()?;
    let threads = opts.queue_depth.unwrap_or(DEFAULT_MMAP_THREADS);
    Ok(PreadBackend::from_pool(Pool::new(
        IoKind::Mmap,
        sources,
        lens,
        threads,
        1,
    )?))
}
