//! `auto` falls back to pread when io_uring is refused (forced with
//! `FLASHSTREAM_DISABLE_URING=1`). A binary of its own: it sets the environment variable, which
//! must not race other tests' threads.

mod common;

use common::*;
use flashstream_loader::{open_backend, BackendOptions, IoKind, LoaderError, DISABLE_URING_ENV};

#[test]
fn auto_falls_back_to_pread_when_uring_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let len = 3 * 1024 * 1024 + 5;
    let (path, model) = random_file(dir.path(), "gen.bin", len, 31);
    let bytes = std::fs::read(&path).unwrap();
    // SAFETY (edition 2024 would require it): this binary's only test, no other threads read
    // the environment.
    std::env::set_var(DISABLE_URING_ENV, "1");
    let e = open_backend(
        &model,
        &BackendOptions {
            kind: IoKind::Uring,
            queue_depth: None,
        },
    )
    .err()
    .expect("uring opened although disabled");
    assert!(
        matches!(
            e,
            LoaderError::Unavailable {
                kind: IoKind::Uring,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains(DISABLE_URING_ENV), "{e}");
    let mut b = open_backend(&model, &BackendOptions::default()).unwrap();
    assert_eq!(b.kind(), IoKind::Pread);
    let plans = random_plans(0, len as u64, b.alignment(), 16, 1 << 20, 32);
    let got = run(&mut *b, &plans);
    check_bytes(b.kind(), &bytes, &plans, &got);
    // "0" does not disable.
    std::env::set_var(DISABLE_URING_ENV, "0");
    let b = open_backend(&model, &BackendOptions::default()).unwrap();
    let uring = open_backend(
        &model,
        &BackendOptions {
            kind: IoKind::Uring,
            queue_depth: None,
        },
    );
    assert_eq!(b.kind() == IoKind::Uring, uring.is_ok());
}
