//! A rough single-thread matvec throughput probe for the AVX2 kernels (ignored by default;
//! it asserts nothing about speed). Run with:
//!
//! ```text
//! cargo test -p flashstream-runtime --release --test avx2_bench -- --ignored --nocapture
//! ```
//!
//! For each weight type: a 4096 × 4096 matrix (rows dotted one by one with the same quantized
//! activation row, as a decode matvec does on one thread), best of several passes, reported as
//! GB/s of weight bytes. The matrix is 8–67 MB, so it streams from L3/RAM, not L1/L2.
//! `FLASHSTREAM_BENCH_SCALAR=1` also times the scalar kernels for comparison.

mod common;

use std::time::{Duration, Instant};

use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::testutil::{random_activations, random_weights};
use flashstream_runtime::kernels::{dot_kernel, Isa, ScratchBuf};

fn matvec_gbps(isa: Isa, ty: GgmlType, rows: usize, cols: usize) -> (f64, f32) {
    let k = dot_kernel(isa, ty).unwrap();
    let row_bytes = ty.row_bytes(cols as u64).unwrap() as usize;
    // One random row repeated would sit in L1; generate distinct rows (cheaply, by seed).
    let mut w = Vec::with_capacity(rows * row_bytes);
    for r in 0..rows {
        w.extend_from_slice(&random_weights(ty, cols, r as u64 % 64));
    }
    let x = random_activations(cols, 1);
    let mut a = ScratchBuf::zeroed(k.act_type.row_bytes(cols as u64).unwrap() as usize);
    (k.quantize)(&x, a.as_bytes_mut());
    let mut out = vec![0f32; rows];
    let mut best = Duration::MAX;
    let start = Instant::now();
    let mut passes = 0;
    while passes < 3 || (start.elapsed() < Duration::from_millis(700) && passes < 50) {
        let t = Instant::now();
        for (o, wr) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
            *o = (k.dot)(cols, wr, a.as_bytes());
        }
        best = best.min(t.elapsed());
        std::hint::black_box(&out);
        passes += 1;
    }
    (w.len() as f64 / best.as_secs_f64() / 1e9, out[0])
}

#[test]
#[ignore = "throughput probe, run by hand"]
fn avx2_matvec_throughput() {
    if !Isa::Avx2.is_available() {
        println!("skipping: this CPU lacks AVX2+FMA+F16C");
        return;
    }
    let scalar_too = std::env::var_os("FLASHSTREAM_BENCH_SCALAR").is_some();
    println!("4096x4096 matvec, one thread, GB/s of weight bytes (best pass)");
    for ty in common::compute_types() {
        let (g, _) = matvec_gbps(Isa::Avx2, ty, 4096, 4096);
        if scalar_too {
            let (s, _) = matvec_gbps(Isa::Scalar, ty, 4096, 4096);
            println!(
                "{:>7}: avx2 {g:6.2} GB/s   scalar {s:6.2} GB/s   x{:.1}",
                ty.name(),
                g / s
            );
        } else {
            println!("{:>7}: avx2 {g:6.2} GB/s", ty.name());
        }
    }
}
