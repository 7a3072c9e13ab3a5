//! Attention of one query row over a KV cache whose keys or values are quantized (Q8_0,
//! Q4_0), with the arithmetic of llama.cpp's CPU flash attention for such caches
//! (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`, the only kernel it runs for them:
//! its tiled kernel takes f16 keys and values only, at any batch size):
//!
//! - keys: the query row is converted once to the key type's dot-product partner (f16 for f16
//!   keys; Q8_0, quantized from the f32 row, for Q8_0 and Q4_0 keys) and each score is the
//!   type's `vec_dot` ([`crate::kernels::dot_kernel`]'s `dot`);
//! - values: f16 values accumulate in f16 as in [`super::attn::attend_f16`]; quantized ones
//!   are dequantized to f32 and accumulated in an f32 row (a fused multiply-add per value,
//!   the running sum rescaled in f32 when the maximum grows).
//!
//! Before that, llama.cpp (`llama_kv_cache`'s `attn_rot_k` / `attn_rot_v`) rotates what a
//! quantized cache holds by a Walsh-Hadamard transform, which spreads outliers across a block:
//! with quantized keys and a key head dimension that is a multiple of 64, Q and K rows are
//! transformed in chunks of the largest power of two (at least 64) dividing the head
//! dimension ([`key_rotation`]); with quantized values and a value head dimension that is a
//! multiple of 64, V rows are transformed in chunks of 64 before they are stored and the
//! attention output is transformed back (the transform is its own inverse). [`fwht_chunks`]
//! computes it as ggml's CPU `fwht` does.

use half::f16;

use super::attn::{fma_f16, scale_f16, score};
use super::kv::KvRows;
use crate::kernels::{dot_kernel, scalar, DotKernel, Isa, KernelError};
use crate::model::{Model, RuntimeError};
use crate::pool::{ChunkCounter, SendPtr};
use flashstream_formats::GgmlType;

/// The chunk length of the keys' Hadamard rotation for quantized keys of `kind` with head
/// dimension `dk`; `None` if the keys are f16 or `dk` is not a multiple of 64.
pub fn key_rotation(quantized: bool, dk: usize) -> Option<usize> {
    if !quantized || dk == 0 || !dk.is_multiple_of(64) {
        return None;
    }
    let mut n = 64;
    while dk.is_multiple_of(2 * n) {
        n *= 2;
    }
    Some(n)
}

/// The chunk length of the values' Hadamard rotation (64), for quantized values whose head
/// dimension `dv` is a multiple of 64.
pub fn value_rotation(quantized: bool, dv: usize) -> Option<usize> {
    (quantized && dv > 0 && dv.is_multiple_of(64)).then_some(64)
}

/// Transforms every chunk of `n` (a power of two) values of `x` by the orthonormal
/// Walsh-Hadamard matrix, as ggml's CPU `fwht`: the chunk is scaled by `1/sqrt(n)` first, then
/// butterfly passes of growing span (`u + v`, `u - v`). A tail shorter than `n` is left.
pub fn fwht_chunks(x: &mut [f32], n: usize) {
    let scale = 1.0f32 / (n as f32).sqrt();
    for c in x.chunks_exact_mut(n) {
        for v in c.iter_mut() {
            *v *= scale;
        }
        let mut len = 1;
        while len < n {
            for i in (0..n).step_by(2 * len) {
                for j in i..i + len {
                    let (u, v) = (c[j], c[j + len]);
                    c[j] = u + v;
                    c[j + len] = u - v;
                }
            }
            len *= 2;
        }
    }
}

/// The rows of one KV head, from its first visible position on: a view into [`KvRows`] at
/// the head's offset, with the distance between positions.
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    rows: KvRows<'a>,
    /// Elements (f16) or bytes (quantized) from one position to the next.
    stride: usize,
}

impl<'a> HeadRows<'a> {
    /// Head `g` (of `dim` values) of the layer rows `rows`, from position `first` on, where a
    /// position holds `n_heads` heads.
    pub fn new(rows: KvRows<'a>, first: usize, g: usize, dim: usize, n_heads: usize) -> Self {
        match rows {
            KvRows::F16(d) => HeadRows {
                rows: KvRows::F16(&d[(first * n_heads + g) * dim..]),
                stride: n_heads * dim,
            },
            KvRows::Quant {
                ty,
                data,
                row_bytes,
            } => {
                let head = row_bytes / n_heads.max(1);
                HeadRows {
                    rows: KvRows::Quant {
                        ty,
                        data: &data[first * row_bytes + g * head..],
                        row_bytes: head,
                    },
                    stride: row_bytes,
                }
            }
        }
    }
}

/// The dimensions of one layer's attention over a quantized cache.
pub(crate) struct Shape {
    /// Query rows (tokens).
    pub n: usize,
    /// Query heads.
    pub nh: usize,
    /// KV heads.
    pub nkv: usize,
    /// Key head dimension.
    pub hd: usize,
    /// Value head dimension.
    pub hdv: usize,
    /// Position of the first query row.
    pub pos0: usize,
    /// Sliding window, on windowed layers.
    pub window: Option<usize>,
    /// Score scale.
    pub scale: f32,
    /// Score soft-cap.
    pub softcap: Option<f32>,
}

/// Every query row and head of `q` (`n × nh × hd`, already rotated where the keys are)
/// against the cache rows `keys`/`values` (causal, windowed), [`attend_row`] on the model's
/// threads; the `n × nh × hdv` outputs go to `out` (resized).
pub(crate) fn attend_all(
    m: &Model,
    q: &[f32],
    keys: KvRows<'_>,
    values: KvRows<'_>,
    sh: &Shape,
    sink_of: &(dyn Fn(usize) -> Option<f32> + Sync),
    out: &mut Vec<f32>,
) -> Result<(), RuntimeError> {
    let Shape {
        n,
        nh,
        nkv,
        hd,
        hdv,
        pos0,
        window,
        scale,
        softcap,
    } = *sh;
    let kt = match keys {
        KvRows::F16(_) => GgmlType::F16,
        KvRows::Quant { ty, .. } => ty,
    };
    let kernels = CacheKernels::new(m.isa, kt)?;
    out.clear();
    out.resize(n * nh * hdv, 0.0);
    let group = nh / nkv.max(1);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let items = ChunkCounter::new(n * nh);
    let work = |_: usize| {
        let mut sc = RowScratch::default();
        while let Some(item) = items.next_chunk() {
            let (t, h) = (item / nh, item % nh);
            let p = pos0 + t;
            let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
            let g = h / group;
            let qh = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
            // SAFETY: each (t, h) item is claimed once and owns out[(t*nh+h)*hdv..+hdv].
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add((t * nh + h) * hdv), hdv)
            };
            attend_row(
                m.isa,
                &kernels,
                qh,
                HeadRows::new(keys, lo, g, hd, nkv),
                HeadRows::new(values, lo, g, hdv, nkv),
                (hd, hdv),
                p + 1 - lo,
                scale,
                softcap,
                sink_of(h),
                &mut sc,
                dst,
            );
        }
    };
    m.pool.run(work);
    Ok(())
}

/// Per-thread scratch of [`attend_row`].
#[derive(Default)]
pub struct RowScratch {
    q8: Vec<u64>,
    acc16: Vec<f16>,
    acc32: Vec<f32>,
    v32: Vec<f32>,
}

/// The dot kernels of a cache's key and value types (`None` for f16).
#[derive(Clone, Copy)]
pub struct CacheKernels {
    k: Option<DotKernel>,
}

impl CacheKernels {
    /// The kernels for keys of `k` on `isa`.
    pub fn new(isa: Isa, k: GgmlType) -> Result<Self, KernelError> {
        Ok(CacheKernels {
            k: match k {
                GgmlType::F16 => None,
                t => Some(dot_kernel(isa, t)?),
            },
        })
    }
}

/// One query row `q` (f32; already rounded to f16 values when the keys are f16) against
/// `n_kv` positions of `keys`/`values` (rows of `dk`/`dv` values), the llama.cpp one-row
/// kernel for a cache with quantized keys or values. Writes the `dv` outputs to `out`.
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    isa: Isa,
    kernels: &CacheKernels,
    q: &[f32],
    keys: HeadRows<'_>,
    values: HeadRows<'_>,
    (dk, dv): (usize, usize),
    n_kv: usize,
    scale: f32,
    softcap: Option<f32>,
    sink: Option<f32>,
    sc: &mut RowScratch,
    out: &mut [f32],
) {
    // The query row in the keys' dot-product partner type.
    let q8: &[u8] = match kernels.k {
        Some(kern) => {
            let nb = kern.act_type.row_bytes(dk as u64).unwrap_or(0) as usize;
            sc.q8.resize(nb.div_ceil(8), 0);
            let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut sc.q8)[..nb];
            (kern.quantize)(&q[..dk], bytes);
            &bytemuck::cast_slice::<u64, u8>(&sc.q8)[..nb]
        }
        None => &[],
    };
    let v_f16 = matches!(values.rows, KvRows::F16(_));
    if v_f16 {
        sc.acc16.clear();
        sc.acc16.resize(dv, f16::ZERO);
    } else {
        sc.acc32.clear();
        sc.acc32.resize(dv, 0.0);
        sc.v32.resize(dv, 0.0);
    }
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for j in 0..n_kv {
        let dot = match (keys.rows, kernels.k) {
            (KvRows::F16(k), _) => {
                super::attn::dot_f16(isa, q, &k[j * keys.stride..j * keys.stride + dk])
            }
            (
                KvRows::Quant {
                    data, row_bytes, ..
                },
                Some(kern),
            ) => (kern.dot)(dk, &data[j * keys.stride..j * keys.stride + row_bytes], q8),
            (KvRows::Quant { .. }, None) => f32::NAN,
        };
        let s = score(dot, scale, softcap);
        let (mut ms, mut vs) = (1.0f32, 1.0f32);
        let grows = s > m;
        if grows {
            let old = m;
            m = s;
            ms = (old - m).exp();
        } else {
            vs = (s - m).exp();
        }
        match values.rows {
            KvRows::F16(v) => {
                if grows {
                    scale_f16(isa, &mut sc.acc16, ms);
                }
                let vr = &v[j * values.stride..j * values.stride + dv];
                fma_f16(isa, &mut sc.acc16, vr, vs);
            }
            KvRows::Quant {
                ty,
                data,
                row_bytes,
            } => {
                if grows {
                    for a in sc.acc32.iter_mut() {
                        *a *= ms;
                    }
                }
                let vr = &data[j * values.stride..j * values.stride + row_bytes];
                if scalar::dequantize_row(ty, vr, &mut sc.v32).is_err() {
                    sc.v32.fill(f32::NAN);
                }
                for (a, &x) in sc.acc32.iter_mut().zip(&sc.v32) {
                    *a = x.mul_add(vs, *a);
                }
            }
        }
        sum = sum.mul_add(ms, vs);
    }
    if v_f16 {
        for (o, a) in out[..dv].iter_mut().zip(&sc.acc16) {
            *o = a.to_f32();
        }
    } else {
        out[..dv].copy_from_slice(&sc.acc32);
    }
    if let Some(s) = sink {
        let (ms, new_sum) = super::attn::join_sink(s, m, sum);
        if ms != 1.0 {
            for o in out[..dv].iter_mut() {
                *o *= ms;
            }
        }
        sum = new_sum;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for o in out[..dv].iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kv::{KvCache, KvType, KvTypes};

    #[test]
    fn fwht_is_orthonormal_and_its_own_inverse() {
        assert_eq!(key_rotation(true, 128), Some(128));
        assert_eq!(key_rotation(true, 192), Some(64));
        assert_eq!(key_rotation(true, 96), None);
        assert_eq!(key_rotation(false, 128), None);
        assert_eq!(value_rotation(true, 128), Some(64));
        let x: Vec<f32> = (0..128).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut y = x.clone();
        fwht_chunks(&mut y, 64);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&y)).abs() < 1e-3);
        // Row 1 of the 64-Hadamard is (+1, -1, +1, -1, ...) / 8.
        let want: f32 = x[..64]
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { *v } else { -*v })
            .sum::<f32>()
            / 8.0;
        assert!((y[1] - want).abs() < 1e-5);
        fwht_chunks(&mut y, 64);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    /// Against exact attention over the dequantized cache: only the query's Q8_0 rounding
    /// (for quantized keys) and f16/f32 accumulation separate them.
    #[test]
    fn quantized_cache_attention_is_close_to_exact() {
        let (nkv, hd, n) = (2usize, 64usize, 40usize);
        let r = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        for (k, v) in [
            (KvType::Q8_0, KvType::Q8_0),
            (KvType::Q4_0, KvType::Q4_0),
            (KvType::F16, KvType::Q8_0),
            (KvType::Q8_0, KvType::F16),
        ] {
            let types = KvTypes { k, v };
            let mut c = KvCache::with_types(1, n, nkv * hd, nkv * hd, types).unwrap();
            for p in 0..n {
                let kr: Vec<f32> = (0..nkv * hd).map(|i| r(p * 1000 + i)).collect();
                let vr: Vec<f32> = (0..nkv * hd).map(|i| r(p * 977 + i + 5)).collect();
                c.store(0, p, &kr, &vr);
            }
            let deq = |rows: KvRows<'_>, p: usize| -> Vec<f32> {
                let mut o = vec![0f32; nkv * hd];
                match rows {
                    KvRows::F16(d) => {
                        for (x, y) in o.iter_mut().zip(&d[p * nkv * hd..]) {
                            *x = y.to_f32();
                        }
                    }
                    KvRows::Quant {
                        ty,
                        data,
                        row_bytes,
                    } => scalar::dequantize_row(ty, &data[p * row_bytes..][..row_bytes], &mut o)
                        .unwrap(),
                }
                o
            };
            let mut q: Vec<f32> = (0..hd).map(|i| r(i + 31) * 2.0).collect();
            if k == KvType::F16 {
                q.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
            }
            let g = 1;
            let kern = CacheKernels::new(Isa::detect(), k.ggml()).unwrap();
            let mut out = vec![0f32; hd];
            attend_row(
                Isa::detect(),
                &kern,
                &q,
                HeadRows::new(c.keys(0), 0, g, hd, nkv),
                HeadRows::new(c.values(0), 0, g, hd, nkv),
                (hd, hd),
                n,
                0.125,
                None,
                None,
                &mut RowScratch::default(),
                &mut out,
            );
            let s: Vec<f64> = (0..n)
                .map(|p| {
                    let kr = deq(c.keys(0), p);
                    q.iter()
                        .zip(&kr[g * hd..])
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * 0.125
                })
                .collect();
            let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let tot: f64 = w.iter().sum();
            for (d, o) in out.iter().enumerate() {
                let want: f64 = (0..n)
                    .map(|p| w[p] / tot * deq(c.values(0), p)[g * hd + d] as f64)
                    .sum();
                assert!(
                    (*o as f64 - want).abs() < 2e-2,
                    "{types}: {o} vs {want} at {d}"
                );
            }
        }
    }
}
