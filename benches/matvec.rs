//! Matvec throughput per weight type, in bytes of weights processed per second, on one and on
//! two threads, with the best kernels of this CPU (and the scalar reference for comparison).
//!
//! `cargo bench --bench matvec` (add `-- Q4_0` to filter). The matrix is 4096 x 4096: 9 MB
//! (Q2_K) to 64 MB (F32). The larger ones exceed the caches and compare with the memory read
//! rate measured in the same run (`memory_read`); the smaller quantized ones can stay in a big
//! L3 between iterations, so there a figure above the memory rate is cache bandwidth.
//!
//! `matmul64_*` is the prompt case: a 1536 x 576 matrix (SmolLM2's FFN shape) times 64
//! activation rows, in multiply-adds per second (criterion's "elements"), best kernels only.
//! `FLASHSTREAM_MATMUL_SHAPE=ROWSxK` picks another shape (K-quants round K up to 256), e.g.
//! `2048x640` for Gemma 3 270M's FFN. On aarch64 each NEON type is also run without its tile
//! kernels (`…-one-row`: the one-row dot per (row, token)), the comparison the tiles exist for.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flashstream::formats::GgmlType;
use flashstream::runtime::kernels::matvec::{matmul, matvec, quantize_rows};
use flashstream::runtime::kernels::testutil::{random_activations, random_weights};
use flashstream::runtime::kernels::{dot_kernel, Isa, ScratchBuf};
use flashstream::runtime::pool::WorkerPool;

/// Every weight type with compute kernels, in [`GgmlType::ALL`]'s order.
fn types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL
        .into_iter()
        .filter(|t| t.is_supported_for_compute())
}

/// The machine's own read bandwidth, in the same run: summing a buffer larger than the caches
/// on one and two threads. Matvec GB/s divided by this is the efficiency figure.
fn memory_read(c: &mut Criterion, pools: &[WorkerPool]) {
    let words: usize = 64 << 20; // 512 MiB of u64
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut g = c.benchmark_group("memory_read");
    g.throughput(Throughput::Bytes((words * 8) as u64));
    g.sample_size(10);
    for pool in pools {
        let n = pool.n_threads();
        g.bench_function(BenchmarkId::from_parameter(format!("{n}t")), |b| {
            b.iter(|| {
                let parts: Vec<std::sync::atomic::AtomicU64> = (0..n)
                    .map(|_| std::sync::atomic::AtomicU64::new(0))
                    .collect();
                pool.run(|i| {
                    let chunk = words.div_ceil(n);
                    let s: u64 = buf[i * chunk..((i + 1) * chunk).min(words)]
                        .iter()
                        .fold(0u64, |a, &x| a.wrapping_add(x));
                    parts[i].store(s, std::sync::atomic::Ordering::Relaxed);
                });
                criterion::black_box(parts)
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    let k = 4096;
    let rows = 4096;
    let x = random_activations(k, 1);
    let pools: Vec<WorkerPool> = [1, 2]
        .iter()
        .map(|&n| WorkerPool::new(n).expect("spawn worker threads"))
        .collect();
    memory_read(c, &pools);
    let best = Isa::detect();
    for ty in types() {
        let w = random_weights(ty, k * rows, 7);
        let mut g = c.benchmark_group(format!("matvec_{}", ty.name()));
        g.throughput(Throughput::Bytes(w.len() as u64));
        g.sample_size(20);
        for isa in [best, Isa::Scalar] {
            let kernel = dot_kernel(isa, ty).expect("kernel");
            let mut xq = ScratchBuf::default();
            quantize_rows(&kernel, &x, k, &mut xq).expect("quantize");
            let mut y = vec![0f32; rows];
            for pool in &pools {
                if isa == Isa::Scalar && pool.n_threads() > 1 {
                    continue;
                }
                let id = BenchmarkId::new(format!("{isa:?}"), format!("{}t", pool.n_threads()));
                g.bench_function(id, |b| {
                    b.iter(|| matvec(pool, &kernel, &w, k, &xq, &mut y).expect("matvec"))
                });
            }
        }
        g.finish();
    }
}

/// Batched products, as a prompt runs them: weights stay in cache, so this is compute.
fn bench_matmul(c: &mut Criterion) {
    let (rows, k): (usize, usize) = std::env::var("FLASHSTREAM_MATMUL_SHAPE")
        .ok()
        .and_then(|v| {
            let (r, k) = v.split_once('x')?;
            Some((r.parse().ok()?, k.parse().ok()?))
        })
        .unwrap_or((1536, 576));
    let n_tok = 64;
    let x: Vec<f32> = (0..n_tok)
        .flat_map(|t| random_activations(k.div_ceil(256) * 256, 10 + t as u64))
        .collect();
    let pools: Vec<WorkerPool> = [1, 2]
        .iter()
        .map(|&n| WorkerPool::new(n).expect("spawn worker threads"))
        .collect();
    let best = Isa::detect();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::F16,
    ] {
        // K-quants need rows of 256: 576 becomes 768 (same order of size).
        let k = if ty.block_size() == 256 {
            k.div_ceil(256) * 256
        } else {
            k
        };
        let x = &x[..k * n_tok.min(x.len() / k)];
        let n_tok = x.len() / k;
        let w = random_weights(ty, k * rows, 7);
        let kernel = dot_kernel(best, ty).expect("kernel");
        let mut xq = ScratchBuf::default();
        quantize_rows(&kernel, x, k, &mut xq).expect("quantize");
        let mut y = vec![0f32; rows * n_tok];
        let mut g = c.benchmark_group(format!("matmul64_{}", ty.name()));
        g.throughput(Throughput::Elements((rows * k * n_tok) as u64));
        g.sample_size(20);
        // The same kernel without its batch kernels (same activation layout: no packed copy).
        let one_row = (cfg!(target_arch = "aarch64") && kernel.dot_block.is_some()).then(|| {
            let mut k1 = kernel;
            (k1.dot_block, k1.dot_rows) = (None, None);
            k1
        });
        let variants = [
            (format!("{best:?}"), Some(kernel)),
            (format!("{best:?}-one-row"), one_row),
        ];
        for (name, kern) in &variants {
            let Some(kern) = kern else { continue };
            for pool in &pools {
                let id = BenchmarkId::new(name, format!("{}t", pool.n_threads()));
                g.bench_function(id, |b| {
                    b.iter(|| matmul(pool, kern, &w, k, &xq, n_tok, &mut y).expect("matmul"))
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench, bench_matmul);
criterion_main!(benches);
