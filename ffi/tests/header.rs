//! The checked-in `include/flashstream.h` is what cbindgen generates from the crate now: the
//! test fails on any difference (run with `FLASHSTREAM_BLESS=1` to rewrite the header).

use std::path::PathBuf;

#[test]
fn header_is_up_to_date() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen cannot generate the header")
        .write(&mut fresh);
    let path = dir.join("include/flashstream.h");
    if std::env::var("FLASHSTREAM_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} differs from a fresh cbindgen generation: run \
         `FLASHSTREAM_BLESS=1 cargo test -p flashstream-ffi --test header` and commit it",
        path.display()
    );
}
