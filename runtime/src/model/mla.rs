//! Multi-head latent attention (deepseek2: DeepSeek-V2/V3, Kimi-K2), computed in the absorbed
//! form llama.cpp uses (`src/models/deepseek2.cpp`), so the KV cache holds per position only
//! the normed latent and the roped key (`kv_lora_rank + rope dims` f16 values per layer):
//!
//! - queries: `attn_q_a` → RMS norm → `attn_q_b` (or one `attn_q`), heads of `[nope | rope]`;
//!   the nope part goes through the head's key up-projection (`attn_k_b`, absorbed), giving
//!   a query against the latent; the rope part is rotated (adjacent pairs, YaRN);
//! - keys/values: `attn_kv_a_mqa` → `[latent | rope key]`, RMS norm on the latent only, the
//!   rope key rotated; cached as one row; the values are the latent (the row's first part);
//! - attention of every query head against that one cached row per position (as multi-query
//!   attention), then each head's output through its value up-projection (`attn_v_b`).

use half::f16;

use flashstream_formats::config::RopeScaling;
use flashstream_scheduler::Lease;

use super::{f32s, linear, Quantized, Scratch, SendPtr, Session};
use crate::kernels::dot_kernel_with;
use crate::kernels::matvec::{matmul, quantize_rows};
use crate::model::{attn, Model, Role, RuntimeError, WeightRef};
use crate::ops;
use crate::pool::ChunkCounter;
use crate::yarn::Yarn;

/// `out = x · W_hᵀ` for `n` rows of `x`, where `W_h` is head `head`'s matrix of the 3-D
/// per-head weight `w` (`[k, rows, n_head]`).
#[allow(clippy::too_many_arguments)]
fn head_linear(
    m: &Model,
    xq: &mut Quantized,
    lease: &Lease<'_>,
    w: &WeightRef,
    head: usize,
    x: &[f32],
    n: usize,
    out: &mut Vec<f32>,
) -> Result<(), RuntimeError> {
    let kernel = dot_kernel_with(m.isa, w.ty, m.numerics)?;
    let k = w.k();
    let rows = w.shape.get(1).copied().unwrap_or(1) as usize;
    let bad = |reason: String| RuntimeError::BadTensor {
        name: w.name.clone(),
        reason,
    };
    let row_bytes =
        w.ty.row_bytes(k as u64)
            .ok_or_else(|| bad(format!("rows of {k} are not whole blocks of {}", w.ty)))?
            as usize;
    let size = rows * row_bytes;
    let bytes = lease
        .part(w.part)
        .get(head * size..(head + 1) * size)
        .ok_or_else(|| bad(format!("has no head {head} of {rows} rows")))?;
    if x.len() != n * k {
        return Err(bad(format!(
            "row length {k} does not match the input ({} values for {n} rows)",
            x.len()
        )));
    }
    quantize_rows(&kernel, x, k, &mut xq.buf)?;
    xq.ty = Some((kernel.act_type, kernel.packed_act));
    out.clear();
    out.resize(n * rows, 0.0);
    matmul(&m.pool, &kernel, bytes, k, &xq.buf, n, out)?;
    Ok(())
}

/// Copies the `len` values at `off` of every `stride`-long row of `src` (n rows) into `dst`.
fn gather(src: &[f32], n: usize, stride: usize, off: usize, len: usize, dst: &mut Vec<f32>) {
    dst.clear();
    for t in 0..n {
        dst.extend_from_slice(&src[t * stride + off..t * stride + off + len]);
    }
}

impl Session<'_> {
    /// MLA for `n` rows of `s.cur` (the normed input) in layer `il`; leaves the attention
    /// output (`n × n_head·head_dim_v`, before `attn_output`) in `s.attn`.
    pub(super) fn mla_attention(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let mla = c
            .mla
            .ok_or_else(|| RuntimeError::Invalid("not an MLA model".into()))?;
        let req = |r: Role| m.layer_weight(il, r);
        let nh = c.n_head;
        let rope = c.rope.dims;
        let qk = mla.head_dim_qk;
        let nope = qk - rope;
        let lora = mla.kv_lora_rank;
        // The cached row: [latent | rope key].
        let kd = c.head_dim_k;
        let hdv = mla.head_dim_v;

        // Down-projections of the input: the query latent (if low-rank) and [latent | k_pe].
        let q_a = match mla.q_lora_rank {
            Some(_) => Some(req(Role::AttnQA)?),
            None => None,
        };
        if let Some(w) = q_a {
            linear(m, &mut s.xq, lease, w, &s.cur, n, false, &mut s.tmp)?;
        }
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::AttnKvAMqa)?,
            &s.cur,
            n,
            q_a.is_some(),
            &mut s.k,
        )?;
        match q_a {
            Some(_) => {
                let norm = f32s(lease, req(Role::AttnQANorm)?)?;
                for row in s.tmp.chunks_exact_mut(norm.len()) {
                    ops::rms_norm_inplace(row, norm, c.rms_eps);
                }
                linear(
                    m,
                    &mut s.xq,
                    lease,
                    req(Role::AttnQB)?,
                    &s.tmp,
                    n,
                    false,
                    &mut s.q,
                )?;
            }
            None => linear(
                m,
                &mut s.xq,
                lease,
                req(Role::AttnQ)?,
                &s.cur,
                n,
                false,
                &mut s.q,
            )?,
        }
        let kv_norm = f32s(lease, req(Role::AttnKvANorm)?)?;
        for row in s.k.chunks_exact_mut(kd) {
            ops::rms_norm_inplace(&mut row[..lora], kv_norm, c.rms_eps);
        }

        // RoPE (adjacent pairs) on the rope parts of the queries and of the cached key.
        let freq_scale = match c.rope.scaling {
            RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        };
        let yarn = Yarn::from_scaling(c.rope.scaling, rope, c.rope.freq_base);
        let neox = c.rope.style == flashstream_formats::config::RopeStyle::Neox;
        let mut cos = vec![0f32; rope / 2];
        let mut sin = vec![0f32; rope / 2];
        for t in 0..n {
            let p = self.pos + t;
            match &yarn {
                Some(y) => y.cache(p, rope, c.rope.freq_base, None, &mut cos, &mut sin),
                None => ops::rope_cache(
                    p,
                    rope,
                    c.rope.freq_base,
                    freq_scale,
                    None,
                    &mut cos,
                    &mut sin,
                ),
            }
            for h in 0..nh {
                let o = (t * nh + h) * qk + nope;
                ops::rope_apply(&mut s.q[o..o + rope], rope, rope, neox, &cos, &sin);
            }
            let o = t * kd + lora;
            ops::rope_apply(&mut s.k[o..o + rope], rope, rope, neox, &cos, &sin);
        }
        for t in 0..n {
            self.kv
                .store(il, self.pos + t, &s.k[t * kd..(t + 1) * kd], &[]);
        }

        // Absorbed queries: per head, [q_nope · W_kb(h) | q_pe], one row of `kd` a head.
        let wkb = req(Role::AttnKB)?;
        s.v.clear();
        s.v.resize(n * nh * kd, 0.0);
        for h in 0..nh {
            gather(&s.q, n, nh * qk, h * qk, nope, &mut s.tmp);
            head_linear(m, &mut s.xq, lease, wkb, h, &s.tmp, n, &mut s.gate)?;
            for t in 0..n {
                let dst = &mut s.v[(t * nh + h) * kd..(t * nh + h + 1) * kd];
                dst[..lora].copy_from_slice(&s.gate[t * lora..(t + 1) * lora]);
                let src = (t * nh + h) * qk + nope;
                dst[lora..].copy_from_slice(&s.q[src..src + rope]);
            }
        }

        let (q_scale, scale) = c.attn_scale.split();
        if let Some(f) = q_scale {
            ops::scale(&mut s.v, f);
        }
        let tiled = n >= attn::TILE;
        if !tiled {
            for v in s.v.iter_mut() {
                *v = f16::from_f32(*v).to_f32();
            }
        }

        // Every head against the one cached row per position; the values are its latent.
        s.up.clear();
        s.up.resize(n * nh * lora, 0.0);
        // Model::new refuses a quantized cache for MLA (`kv::check_kv_types`).
        let crate::model::kv::KvRows::F16(keys) = self.kv.keys(il) else {
            return Err(RuntimeError::Invalid(
                "MLA keeps its KV cache in f16 only (--kv-type f16)".into(),
            ));
        };
        let pos0 = self.pos;
        let softcap = c.attn_softcap;
        let q = &s.v;
        let out_ptr = SendPtr(s.up.as_mut_ptr());
        if tiled {
            let n_tiles = n.div_ceil(attn::TILE);
            let items = ChunkCounter::new(n_tiles * nh);
            let work = |_: usize| {
                let mut scratch = attn::TileScratch::default();
                let mut qt = Vec::with_capacity(attn::TILE * kd);
                let mut ot = vec![0f32; attn::TILE * lora];
                while let Some(item) = items.next_chunk() {
                    let (tile, h) = (item / nh, item % nh);
                    let t0 = tile * attn::TILE;
                    let t1 = (t0 + attn::TILE).min(n);
                    qt.clear();
                    for t in t0..t1 {
                        qt.extend_from_slice(&q[(t * nh + h) * kd..(t * nh + h + 1) * kd]);
                    }
                    let cache = attn::TileCache {
                        keys,
                        values: keys,
                        dk: kd,
                        k_stride: kd,
                        dv: lora,
                        v_stride: kd,
                        scale,
                        softcap,
                        window: None,
                    };
                    let ot = &mut ot[..(t1 - t0) * lora];
                    attn::attend_tile(m.isa, &qt, pos0 + t0, &cache, &mut scratch, ot);
                    for (i, t) in (t0..t1).enumerate() {
                        // SAFETY: each (tile, h) item is claimed once and owns the rows
                        // out[(t*nh+h)*lora..+lora] of its tokens t.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out_ptr.get().add((t * nh + h) * lora),
                                lora,
                            )
                        };
                        dst.copy_from_slice(&ot[i * lora..(i + 1) * lora]);
                    }
                }
            };
            m.pool.run(work);
        } else {
            let items = ChunkCounter::new(n * nh);
            let work = |_: usize| {
                let mut acc = vec![f16::ZERO; lora];
                while let Some(item) = items.next_chunk() {
                    let (t, h) = (item / nh, item % nh);
                    let p = pos0 + t;
                    let qh = &q[(t * nh + h) * kd..(t * nh + h + 1) * kd];
                    // SAFETY: each (t, h) item is claimed once and owns
                    // out[(t*nh+h)*lora..+lora].
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add((t * nh + h) * lora), lora)
                    };
                    let dims = (kd, kd, lora, kd);
                    attn::attend_f16(
                        m.isa,
                        qh,
                        keys,
                        keys,
                        dims,
                        p + 1,
                        scale,
                        softcap,
                        &mut acc,
                        dst,
                    );
                }
            };
            m.pool.run(work);
        }

        // Each head's latent output through its value up-projection.
        let wvb = req(Role::AttnVB)?;
        s.attn.clear();
        s.attn.resize(n * nh * hdv, 0.0);
        for h in 0..nh {
            gather(&s.up, n, nh * lora, h * lora, lora, &mut s.tmp);
            head_linear(m, &mut s.xq, lease, wvb, h, &s.tmp, n, &mut s.gate)?;
            for t in 0..n {
                s.attn[(t * nh + h) * hdv..(t * nh + h + 1) * hdv]
                    .copy_from_slice(&s.gate[t * hdv..(t + 1) * hdv]);
            }
        }
        Ok(())
    }
}
