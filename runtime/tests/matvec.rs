//! matvec/matmul split over the worker pool: same numbers as a plain loop over the dot kernel,
//! bit for bit (with `Numerics::Fast`'s x86 tiles: within rounding, and the same bits on every
//! thread count); bad shapes are errors.

mod common;

use flashstream_formats::GgmlType;
use flashstream_runtime::kernels::matvec::{act_row_stride, matmul, matvec, quantize_rows};
use flashstream_runtime::kernels::testutil::{random_activations, random_weights};
use flashstream_runtime::kernels::{dot_kernel, dot_kernel_with, Isa, Numerics, ScratchBuf};
use flashstream_runtime::pool::WorkerPool;

#[test]
fn matmul_equals_plain_loop_on_any_thread_count() {
    let pools = [
        WorkerPool::new(1).unwrap(),
        WorkerPool::new(2).unwrap(),
        WorkerPool::new(3).unwrap(),
    ];
    let (k, rows) = (512, 37);
    for (isa, numerics) in Isa::available()
        .into_iter()
        .flat_map(|i| [(i, Numerics::Llama), (i, Numerics::Fast)])
    {
        for ty in common::compute_types() {
            let kernel = dot_kernel_with(isa, ty, numerics).unwrap();
            let w = random_weights(ty, k * rows, 11);
            for n_tok in [1usize, 3] {
                let x = random_activations(k * n_tok, 5);
                let mut xq = ScratchBuf::default();
                assert_eq!(quantize_rows(&kernel, &x, k, &mut xq).unwrap(), n_tok);
                let stride = act_row_stride(&kernel, k).unwrap();
                let wrow = ty.row_bytes(k as u64).unwrap() as usize;
                let arow = kernel.act_type.row_bytes(k as u64).unwrap() as usize;
                let mut want = vec![0f32; n_tok * rows];
                for t in 0..n_tok {
                    for r in 0..rows {
                        want[t * rows + r] = (kernel.dot)(
                            k,
                            &w[r * wrow..(r + 1) * wrow],
                            &xq.as_bytes()[t * stride..t * stride + arow],
                        );
                    }
                }
                assert!(want.iter().all(|v| v.is_finite()), "{ty}");
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let mut first: Option<Vec<f32>> = None;
                for pool in &pools {
                    let mut y = vec![f32::NAN; n_tok * rows];
                    matmul(pool, &kernel, &w, k, &xq, n_tok, &mut y).unwrap();
                    let what = format!(
                        "{isa:?} {numerics:?} {ty} {n_tok} tokens on {} threads",
                        pool.n_threads()
                    );
                    let exact = numerics == Numerics::Llama || n_tok == 1;
                    if exact {
                        assert_eq!(
                            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{what}"
                        );
                    } else {
                        for (a, b) in y.iter().zip(&want) {
                            assert!((a - b).abs() <= 1e-5 * scale, "{what}: {a} vs {b}");
                        }
                    }
                    let first = first.get_or_insert_with(|| y.clone());
                    assert_eq!(
                        y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        first.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{what}: differs from one thread"
                    );
                    if n_tok == 1 {
                        let mut y1 = vec![0f32; rows];
                        matvec(pool, &kernel, &w, k, &xq, &mut y1).unwrap();
                        assert_eq!(y1, y);
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let pool = WorkerPool::new(2).unwrap();
    let kernel = dot_kernel(Isa::Scalar, GgmlType::Q4_0).unwrap();
    let mut xq = ScratchBuf::default();
    // 33 is not a whole number of Q8_0 blocks.
    assert!(quantize_rows(&kernel, &[0.0; 33], 33, &mut xq).is_err());
    assert!(quantize_rows(&kernel, &vec![0.0; 70], 64, &mut xq).is_err());
    quantize_rows(&kernel, &vec![0.5; 64], 64, &mut xq).unwrap();
    let w = random_weights(GgmlType::Q4_0, 64 * 4, 1);
    let mut y = vec![0f32; 3];
    assert!(matvec(&pool, &kernel, &w, 64, &xq, &mut y).is_err());
    assert!(matvec(&pool, &kernel, &w[..50], 64, &xq, &mut [0f32; 4]).is_err());
    let mut y = vec![0f32; 4];
    matvec(&pool, &kernel, &w, 64, &xq, &mut y).unwrap();
}
