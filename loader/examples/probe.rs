//! Prints the sequential read bandwidth of a model's files through a backend.
//!
//! `cargo run --release -p flashstream-loader --example probe -- MODEL.gguf [auto|uring|pread]
//! [MAX_MiB]`

use flashstream_formats::GgufModel;
use flashstream_loader::{probe_read_bandwidth, BackendOptions, IoKind};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: probe MODEL.gguf [auto|uring|pread] [MAX_MiB]");
        std::process::exit(2);
    };
    let kind: IoKind = match args.get(1).map(|s| s.parse()) {
        None => IoKind::Auto,
        Some(Ok(k)) => k,
        Some(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let max_mib: u64 = match args.get(2).map(|s| s.parse()) {
        None => 1 << 20,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("MAX_MiB: {e}");
            std::process::exit(2);
        }
    };
    let model = match GgufModel::open(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let opts = BackendOptions {
        kind,
        queue_depth: None,
    };
    match probe_read_bandwidth(&model, &opts, max_mib << 20) {
        Ok(p) => println!(
            "{}: {} bytes in {:.3} s = {:.2} GB/s (backend {}, bypasses page cache: {})",
            path, p.bytes, p.seconds, p.gb_per_s, p.kind, p.bypasses_cache
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
