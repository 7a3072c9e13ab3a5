//! Fault injection under the real pread backend: a [`ReadSource`] wrapping the real file that
//! gives short reads, `EINTR`, `EAGAIN` (retried: the bytes must equal the file's) and `EIO`
//! (an error completion naming the file); and dropping a backend while reads are blocked.

mod common;

use std::io;
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use common::*;
use flashstream_loader::{
    FileSource, IoBuffer, IoKind, LoaderError, PreadBackend, ReadBackend, ReadOp, ReadSource,
    BACKEND_CHUNK_BYTES,
};

/// What the faulty source does on its calls.
#[derive(Default)]
struct Plan {
    /// Every `eintr`-th call fails with EINTR (0: never).
    eintr: u64,
    /// Every `eagain`-th call fails with EAGAIN (0: never).
    eagain: u64,
    /// Short reads: calls return at most `1 + (k * 7919) % short` bytes, except every third
    /// (0: no short reads).
    short: usize,
    /// Reads covering this offset fail with EIO.
    eio_at: Option<u64>,
    /// Every call fails with EINTR.
    always_eintr: bool,
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    eintr: AtomicU64,
    eagain: AtomicU64,
    short: AtomicU64,
    eio: AtomicU64,
}

struct Faulty {
    inner: FileSource,
    plan: Plan,
    counts: Arc<Counts>,
}

impl ReadSource for Faulty {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn read_alignment(&self) -> usize {
        self.inner.read_alignment()
    }
    fn read_at(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        let c = &self.counts;
        let k = c.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let p = &self.plan;
        if p.always_eintr || (p.eintr > 0 && k.is_multiple_of(p.eintr)) {
            c.eintr.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::from_raw_os_error(libc::EINTR));
        }
        if p.eagain > 0 && k.is_multiple_of(p.eagain) {
            c.eagain.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        if let Some(at) = p.eio_at {
            if (offset..offset + buf.len() as u64).contains(&at) {
                c.eio.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        // The real read (aligned when the inner file is O_DIRECT), then maybe report less.
        let n = self.inner.read_at(buf, offset)?;
        if p.short > 0 && !k.is_multiple_of(3) {
            let cap = 1 + (k as usize * 7919) % p.short;
            if cap < n {
                c.short.fetch_add(1, Ordering::Relaxed);
                return Ok(cap);
            }
        }
        Ok(n)
    }
    fn current_len(&self) -> io::Result<u64> {
        self.inner.current_len()
    }
    fn check_unchanged(&self) -> Result<(), String> {
        self.inner.check_unchanged()
    }
}

fn faulty_backend(
    path: &Path,
    direct: bool,
    plan: Plan,
    threads: usize,
) -> (PreadBackend, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let src = Faulty {
        inner: FileSource::open(path, direct).unwrap(),
        plan,
        counts: Arc::clone(&counts),
    };
    let b = PreadBackend::from_sources(vec![Arc::new(src)], threads, 4096).unwrap();
    (b, counts)
}

#[test]
fn short_reads_eintr_and_eagain_are_transparent() {
    let dir = tempfile::tempdir().unwrap();
    let len = 3 * BACKEND_CHUNK_BYTES + 777;
    let (path, _) = random_file(dir.path(), "gen.bin", len, 21);
    let bytes = std::fs::read(&path).unwrap();
    // Buffered inner file (reads may end anywhere) and O_DIRECT inner file (continuations
    // restart at the block boundary below a short read's end).
    for direct in [false, true] {
        for threads in [1, 4] {
            let plan = Plan {
                eintr: 4,
                eagain: 7,
                short: 50_000,
                ..Plan::default()
            };
            let (mut b, counts) = faulty_backend(&path, direct, plan, threads);
            assert_eq!(b.kind(), IoKind::Pread);
            let plans = random_plans(
                0,
                len as u64,
                4096,
                40,
                2 * BACKEND_CHUNK_BYTES,
                threads as u64,
            );
            let got = run(&mut b, &plans);
            check_bytes(IoKind::Pread, &bytes, &plans, &got);
            for (what, n) in [
                ("EINTR", &counts.eintr),
                ("EAGAIN", &counts.eagain),
                ("short reads", &counts.short),
            ] {
                assert!(n.load(Ordering::Relaxed) > 0, "no {what} were injected");
            }
        }
    }
}

#[test]
fn eio_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let len = 2 * BACKEND_CHUNK_BYTES + 4096;
    let (path, _) = random_file(dir.path(), "gen.bin", len, 22);
    let bytes = std::fs::read(&path).unwrap();
    let bad = BACKEND_CHUNK_BYTES as u64 + 5000;
    let plan = Plan {
        eio_at: Some(bad),
        eintr: 5,
        ..Plan::default()
    };
    let (mut b, counts) = faulty_backend(&path, true, plan, 3);
    let plans = vec![
        plan_at(0, 8192, len),                                 // before the bad byte
        plan_at(BACKEND_CHUNK_BYTES as u64 + 4096, 4096, len), // covers it
        plan_at(0, 2 * BACKEND_CHUNK_BYTES, len),              // covers it in its second chunk
        plan_at(2 * BACKEND_CHUNK_BYTES as u64, 8192, len),    // after it, runs past the end
    ];
    let plans: Vec<Planned> = plans
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.op.tag = i as u64;
            p
        })
        .collect();
    let got = run(&mut b, &plans);
    for i in [1u64, 2] {
        match &got[&i] {
            Err(LoaderError::Io { path: p, source }) => {
                assert_eq!(p, &path);
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            r => panic!("op {i}: {r:?}"),
        }
        let msg = got[&i].as_ref().unwrap_err().to_string();
        assert!(msg.contains("gen.bin"), "{msg}");
    }
    let ok: Vec<Planned> = plans
        .into_iter()
        .filter(|p| p.op.tag == 0 || p.op.tag == 3)
        .collect();
    check_bytes(IoKind::Pread, &bytes, &ok, &got);
    assert!(counts.eio.load(Ordering::Relaxed) >= 2);
}

fn plan_at(offset: u64, len: usize, file_len: usize) -> Planned {
    plan(0, offset, len, file_len as u64, 0)
}

#[test]
fn endless_eintr_fails_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "gen.bin", 10_000, 23);
    let plan = Plan {
        always_eintr: true,
        ..Plan::default()
    };
    let (mut b, _) = faulty_backend(&path, false, plan, 1);
    let e = read_one(&mut b, 0, 4096, 4096).unwrap_err();
    assert!(e.to_string().contains("no progress"), "{e}");
    assert!(matches!(e, LoaderError::Io { .. }));
}

#[test]
fn alignment_of_sources_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "gen.bin", 10_000, 24);
    let src = Arc::new(FileSource::open(&path, true).unwrap());
    let needs = src.read_alignment();
    let e = PreadBackend::from_sources(vec![src.clone()], 2, 1);
    assert_eq!(e.is_err(), needs > 1);
    assert!(PreadBackend::from_sources(vec![src.clone()], 2, 3000).is_err());
    assert!(PreadBackend::from_sources(vec![src], 2, 4096).is_ok());
}

/// A source whose reads block until a gate opens.
struct Gated {
    inner: FileSource,
    gate: Arc<(Mutex<bool>, Condvar)>,
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

impl ReadSource for Gated {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn read_alignment(&self) -> usize {
        self.inner.read_alignment()
    }
    fn read_at(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<usize> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let (m, cv) = &*self.gate;
        let mut open = m.lock().unwrap();
        cv.notify_all();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        let r = self.inner.read_at(buf, offset);
        self.finished.fetch_add(1, Ordering::SeqCst);
        r
    }
    fn current_len(&self) -> io::Result<u64> {
        self.inner.current_len()
    }
}

#[test]
fn dropping_a_backend_waits_for_reads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = random_file(dir.path(), "gen.bin", 1 << 20, 25);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let src = Gated {
        inner: FileSource::open(&path, false).unwrap(),
        gate: Arc::clone(&gate),
        started: Arc::clone(&started),
        finished: Arc::clone(&finished),
    };
    let threads = 3;
    let mut b = PreadBackend::from_sources(vec![Arc::new(src)], threads, 4096).unwrap();
    let mut bufs: Vec<IoBuffer> = (0..10).map(|_| IoBuffer::zeroed(65536).unwrap()).collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        let op = ReadOp {
            file: 0,
            offset: i as u64 * 65536,
            len: 65536,
            required: 65536,
            dst: std::ptr::NonNull::new(buf.as_mut_slice().as_mut_ptr()).unwrap(),
            tag: i as u64,
        };
        // SAFETY: the buffers outlive the backend (dropped below, before them).
        unsafe { b.submit(op) }.unwrap();
    }
    // Wait until every thread is inside a read.
    {
        let (m, cv) = &*gate;
        let mut g = m.lock().unwrap();
        while started.load(Ordering::SeqCst) < threads {
            g = cv.wait(g).unwrap();
        }
    }
    let dropping = Arc::new(AtomicBool::new(false));
    let d2 = Arc::clone(&dropping);
    let (s2, f2) = (Arc::clone(&started), Arc::clone(&finished));
    let dropper = std::thread::spawn(move || {
        d2.store(true, Ordering::SeqCst);
        drop(b);
        // Every read that started has finished by the time drop returns.
        (s2.load(Ordering::SeqCst), f2.load(Ordering::SeqCst))
    });
    while !dropping.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    // Give a wrong drop (one that does not wait) the chance to return first.
    std::thread::sleep(std::time::Duration::from_millis(50));
    {
        let (m, cv) = &*gate;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }
    let (s, f) = dropper.join().unwrap();
    assert!(s >= threads);
    assert_eq!(s, f, "drop returned while reads were in flight");
    drop(bufs);
}
