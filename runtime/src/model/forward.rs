//! The forward pass.

use half::f16;
use half::slice::HalfFloatSliceExt;

use flashstream_formats::Architecture;
use flashstream_scheduler::{Lease, UnitId};

use super::kv::KvCache;
use super::{Model, Role, RuntimeError, WeightRef};
use crate::kernels::matvec::{matmul, quantize_rows};
use crate::kernels::{dot_kernel, scalar, AlignedBuf};
use crate::ops;
use crate::pool::ChunkCounter;

/// Which positions' logits [`Session::eval`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Only the last position's (generation).
    Last,
    /// Every position's (teacher forcing, perplexity).
    All,
}

/// A conversation with a model: a KV cache and scratch buffers.
pub struct Session<'m> {
    model: &'m Model,
    kv: KvCache,
    pos: usize,
    xq: AlignedBuf,
    xq_key: Option<flashstream_formats::GgmlType>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pos", &self.pos)
            .field("n_ctx", &self.kv.n_ctx())
            .finish()
    }
}

fn f32s<'a>(lease: &'a Lease<'_>, w: &WeightRef) -> Result<&'a [f32], RuntimeError> {
    bytemuck::try_cast_slice(lease.part(w.part)).map_err(|_| RuntimeError::BadTensor {
        name: w.name.clone(),
        reason: "F32 data is not 4-byte aligned in memory".into(),
    })
}

fn rms_rows(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        ops::rms_norm(xr, w, eps, or);
    }
}

fn add_bias(y: &mut [f32], b: &[f32]) {
    for row in y.chunks_exact_mut(b.len()) {
        ops::add_assign(row, b);
    }
}

impl<'m> Session<'m> {
    pub(super) fn new(model: &'m Model, n_ctx: usize) -> Result<Self, RuntimeError> {
        let c = &model.config;
        if n_ctx == 0 || n_ctx > c.n_ctx_train {
            return Err(RuntimeError::Invalid(format!(
                "context length {n_ctx} must be in 1..={} (the model's training context)",
                c.n_ctx_train
            )));
        }
        let kv = KvCache::new(
            c.n_layer,
            n_ctx,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
        )
        .ok_or_else(|| RuntimeError::OutOfMemory {
            what: format!(
                "a KV cache of {} bytes for {n_ctx} positions",
                KvCache::bytes_for(
                    c.n_layer,
                    n_ctx,
                    c.n_head_kv * c.head_dim_k,
                    c.n_head_kv * c.head_dim_v
                )
            ),
        })?;
        Ok(Session {
            model,
            kv,
            pos: 0,
            xq: AlignedBuf::default(),
            xq_key: None,
        })
    }

    /// Positions processed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Context length.
    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    /// Forgets every position (the next eval starts at position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// `out = x · Wᵀ` for `n` rows of `x`, with `w` from `lease`. The quantized `x` is reused
    /// while consecutive calls pass the same input (`same_input`) with the same paired type.
    fn linear(
        &mut self,
        lease: &Lease<'_>,
        w: &WeightRef,
        x: &[f32],
        n: usize,
        same_input: bool,
        out: &mut Vec<f32>,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let kernel = dot_kernel(m.isa, w.ty)?;
        let k = w.k();
        if x.len() != n * k {
            return Err(RuntimeError::BadTensor {
                name: w.name.clone(),
                reason: format!(
                    "row length {k} does not match the input ({} values for {n} rows)",
                    x.len()
                ),
            });
        }
        if !(same_input && self.xq_key == Some(kernel.act_type)) {
            quantize_rows(&kernel, x, k, &mut self.xq)?;
            self.xq_key = Some(kernel.act_type);
        }
        out.resize(n * w.rows(), 0.0);
        matmul(&m.pool, &kernel, lease.part(w.part), k, &self.xq, n, out)?;
        Ok(())
    }

    /// Runs `tokens` (at positions `pos()..pos()+tokens.len()`) through the model and returns
    /// the logits of the last position (`n_vocab` values) or of every position
    /// (`tokens.len() * n_vocab`, row-major).
    pub fn eval(&mut self, tokens: &[u32], want: LogitsWanted) -> Result<Vec<f32>, RuntimeError> {
        let _span = tracing::debug_span!("eval", n = tokens.len(), pos = self.pos).entered();
        let m = self.model;
        let c = &m.config;
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if self.pos + n > self.kv.n_ctx() {
            return Err(RuntimeError::ContextFull {
                needed: self.pos + n,
                n_ctx: self.kv.n_ctx(),
                n_ctx_train: c.n_ctx_train,
            });
        }
        for &t in tokens {
            if t as usize >= c.n_vocab {
                return Err(RuntimeError::BadToken {
                    token: t,
                    n_vocab: c.n_vocab,
                });
            }
        }
        let e = c.n_embd;
        let mut x = self.embed(tokens)?;

        let mut cur = Vec::new();
        let mut tmp = Vec::new();
        let n_layer = c.n_layer;
        for il in 0..n_layer {
            let _l = tracing::trace_span!("layer", il).entered();
            let next: Vec<UnitId> = (il + 1..n_layer.min(il + 3)).map(UnitId::Layer).collect();
            m.source.prefetch(&next);
            let lease = m.source.lease(UnitId::Layer(il))?;
            let lw = &m.layers[il];
            let get = |r: Role| lw.get(r);
            let req = |r: Role| {
                lw.get(r).ok_or_else(|| RuntimeError::MissingTensor {
                    arch: c.arch,
                    name: r.tensor_name(il),
                })
            };

            // Attention block.
            rms_rows(&x, f32s(&lease, req(Role::AttnNorm)?)?, c.rms_eps, &mut cur);
            let attn = self.attention(il, &lease, &cur, n)?;
            let mut out = Vec::new();
            self.linear(&lease, req(Role::AttnOut)?, &attn, n, false, &mut out)?;
            if let Some(w) = get(Role::PostAttnNorm) {
                rms_rows(&out, f32s(&lease, w)?, c.rms_eps, &mut tmp);
                std::mem::swap(&mut out, &mut tmp);
            }
            ops::add_assign(&mut x, &out);

            // Feed-forward block.
            rms_rows(&x, f32s(&lease, req(Role::FfnNorm)?)?, c.rms_eps, &mut cur);
            let mut ffn = if c.moe.is_some() {
                self.moe_ffn(il, &lease, &cur, n)?
            } else {
                self.dense_ffn(
                    &lease,
                    req(Role::FfnGate)?,
                    req(Role::FfnUp)?,
                    req(Role::FfnDown)?,
                    &cur,
                    n,
                )?
            };
            if let Some(w) = get(Role::PostFfwNorm) {
                rms_rows(&ffn, f32s(&lease, w)?, c.rms_eps, &mut tmp);
                std::mem::swap(&mut ffn, &mut tmp);
            }
            ops::add_assign(&mut x, &ffn);
        }
        self.pos += n;

        // Output head on the rows whose logits are wanted.
        let rows: &[f32] = match want {
            LogitsWanted::All => &x,
            LogitsWanted::Last => &x[(n - 1) * e..],
        };
        let n_out = rows.len() / e;
        {
            let globals = m.source.lease(UnitId::Globals)?;
            rms_rows(rows, f32s(&globals, &m.output_norm)?, c.rms_eps, &mut cur);
        }
        let mut logits = Vec::new();
        let head = m.source.lease(m.output.unit)?;
        self.linear(&head, &m.output, &cur, n_out, false, &mut logits)?;
        drop(head);
        if let Some(cap) = c.final_softcap {
            ops::softcap(&mut logits, cap);
        }
        Ok(logits)
    }

    /// Embedding rows of `tokens`, dequantized (Gemma scales them by sqrt(n_embd)).
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let m = self.model;
        let e = m.config.n_embd;
        let w = &m.embd;
        let rb = w.ty.row_bytes(e as u64).unwrap_or(0) as usize;
        let mut bytes = vec![0u8; rb * tokens.len()];
        m.source.embedding_rows(tokens, &mut bytes)?;
        let mut x = vec![0f32; e * tokens.len()];
        for (src, dst) in bytes.chunks_exact(rb).zip(x.chunks_exact_mut(e)) {
            scalar::dequantize_row(w.ty, src, dst)?;
        }
        if m.config.arch == Architecture::Gemma3 {
            ops::scale(&mut x, (e as f32).sqrt());
        }
        Ok(x)
    }

    /// Q/K/V projections, norms, RoPE, cache update and attention for `n` rows of `cur`;
    /// returns the attention output (`n × n_head·head_dim_v`) before the output projection.
    fn attention(
        &mut self,
        il: usize,
        lease: &Lease<'_>,
        cur: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let lw = &m.layers[il];
        let req = |r: Role| {
            lw.get(r).ok_or_else(|| RuntimeError::MissingTensor {
                arch: c.arch,
                name: r.tensor_name(il),
            })
        };
        let (hd, hdv, nh, nkv) = (c.head_dim_k, c.head_dim_v, c.n_head, c.n_head_kv);
        let mut q = Vec::new();
        let mut k = Vec::new();
        let mut v = Vec::new();
        self.linear(lease, req(Role::AttnQ)?, cur, n, false, &mut q)?;
        self.linear(lease, req(Role::AttnK)?, cur, n, true, &mut k)?;
        self.linear(lease, req(Role::AttnV)?, cur, n, true, &mut v)?;
        for (role, y) in [
            (Role::AttnQBias, &mut q),
            (Role::AttnKBias, &mut k),
            (Role::AttnVBias, &mut v),
        ] {
            if let Some(b) = lw.get(role) {
                add_bias(y, f32s(lease, b)?);
            }
        }
        for (role, y) in [(Role::AttnQNorm, &mut q), (Role::AttnKNorm, &mut k)] {
            if let Some(w) = lw.get(role) {
                let w = f32s(lease, w)?;
                for head in y.chunks_exact_mut(hd) {
                    ops::rms_norm_inplace(head, w, c.rms_eps);
                }
            }
        }

        // RoPE.
        let swa = c.is_swa_layer(il);
        let (base, freq_scale) = match (swa, c.rope.freq_base_swa) {
            (true, Some(b)) => (b, 1.0),
            _ => (
                c.rope.freq_base,
                match c.rope.scaling {
                    flashstream_formats::config::RopeScaling::Linear { factor } => 1.0 / factor,
                    _ => 1.0,
                },
            ),
        };
        let dims = c.rope.dims;
        let neox = c.rope.style == flashstream_formats::config::RopeStyle::Neox;
        let head_lease;
        let freq_factors: Option<&[f32]> = match &m.rope_freqs {
            Some(w) => {
                head_lease = m.source.lease(UnitId::Globals)?;
                Some(f32s(&head_lease, w)?)
            }
            None => None,
        };
        let mut cos = vec![0f32; dims / 2];
        let mut sin = vec![0f32; dims / 2];
        for t in 0..n {
            let p = self.pos + t;
            rope_table(p, dims, base, freq_scale, freq_factors, &mut cos, &mut sin);
            ops::rope_apply(
                &mut q[t * nh * hd..(t + 1) * nh * hd],
                hd,
                dims,
                neox,
                &cos,
                &sin,
            );
            ops::rope_apply(
                &mut k[t * nkv * hd..(t + 1) * nkv * hd],
                hd,
                dims,
                neox,
                &cos,
                &sin,
            );
        }
        for t in 0..n {
            self.kv.store(
                il,
                self.pos + t,
                &k[t * nkv * hd..(t + 1) * nkv * hd],
                &v[t * nkv * hdv..(t + 1) * nkv * hdv],
            );
        }

        // Scaled dot-product attention over the cache, causal (and windowed on SWA layers).
        let scale = 1.0 / (hd as f32).sqrt();
        let window = if swa {
            c.sliding_window.map(|s| s.window)
        } else {
            None
        };
        let mut out = vec![0f32; n * nh * hdv];
        let keys = self.kv.keys(il);
        let values = self.kv.values(il);
        let group = nh / nkv;
        let pos0 = self.pos;
        let items = ChunkCounter::new(n * nh);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let softcap = c.attn_softcap;
        let work = |_: usize| {
            let mut scores: Vec<f32> = Vec::new();
            let mut krow = vec![0f32; hd];
            let mut acc = vec![0f32; hdv];
            while let Some(item) = items.next_chunk() {
                let (t, h) = (item / nh, item % nh);
                let p = pos0 + t;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let g = h / group;
                let qh = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
                scores.clear();
                for j in lo..=p {
                    let kr = &keys[(j * nkv + g) * hd..(j * nkv + g + 1) * hd];
                    kr.convert_to_f32_slice(&mut krow);
                    let s: f32 = qh.iter().zip(&krow).map(|(a, b)| a * b).sum();
                    scores.push(s * scale);
                }
                if let Some(cap) = softcap {
                    ops::softcap(&mut scores, cap);
                }
                ops::softmax(&mut scores);
                acc.fill(0.0);
                for (j, &s) in (lo..=p).zip(&scores) {
                    let vr: &[f16] = &values[(j * nkv + g) * hdv..(j * nkv + g + 1) * hdv];
                    for (a, &vv) in acc.iter_mut().zip(vr) {
                        *a += s * vv.to_f32();
                    }
                }
                // SAFETY: each (t, h) item is claimed once and owns out[(t*nh+h)*hdv..+hdv].
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add((t * nh + h) * hdv), hdv)
                };
                dst.copy_from_slice(&acc);
            }
        };
        m.pool.run(work);
        Ok(out)
    }

    fn dense_ffn(
        &mut self,
        lease: &Lease<'_>,
        gate: &WeightRef,
        up: &WeightRef,
        down: &WeightRef,
        cur: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let mut g = Vec::new();
        let mut u = Vec::new();
        self.linear(lease, gate, cur, n, false, &mut g)?;
        self.linear(lease, up, cur, n, true, &mut u)?;
        if self.model.config.arch == Architecture::Gemma3 {
            ops::geglu(&mut g, &u);
        } else {
            ops::swiglu(&mut g, &u);
        }
        let mut d = Vec::new();
        self.linear(lease, down, &g, n, false, &mut d)?;
        Ok(d)
    }

    /// Mixture-of-experts FFN: route each row, run each selected expert on the rows routed
    /// to it (one pass over that expert's weights for all of them), sum weighted outputs.
    fn moe_ffn(
        &mut self,
        il: usize,
        lease: &Lease<'_>,
        cur: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let moe = c
            .moe
            .ok_or_else(|| RuntimeError::Invalid("not a MoE model".into()))?;
        let lw = &m.layers[il];
        let req = |r: Role| {
            lw.get(r).ok_or_else(|| RuntimeError::MissingTensor {
                arch: c.arch,
                name: r.tensor_name(il),
            })
        };
        let e = c.n_embd;
        let mut logits = Vec::new();
        self.linear(lease, req(Role::FfnRouter)?, cur, n, false, &mut logits)?;
        let ne = moe.n_expert;
        // Per expert: the rows routed to it and their weights.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for t in 0..n {
            let mut p = logits[t * ne..(t + 1) * ne].to_vec();
            ops::softmax(&mut p);
            let mut idx: Vec<usize> = (0..ne).collect();
            idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let top = &idx[..moe.n_expert_used];
            let sum: f32 = top.iter().map(|&i| p[i]).sum();
            for &i in top {
                let wgt = if moe.norm_top_k { p[i] / sum } else { p[i] };
                routed[i].push((t, wgt));
            }
        }
        let mut out = vec![0f32; n * e];
        let gate_w = req(Role::FfnGateExps)?;
        let up_w = req(Role::FfnUpExps)?;
        let down_w = req(Role::FfnDownExps)?;
        let mut xe = Vec::new();
        for (ex, rows) in routed.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let el = m.source.lease(UnitId::Expert {
                layer: il,
                expert: ex,
            })?;
            let part = |w: &WeightRef| -> Result<WeightRef, RuntimeError> {
                let name = expert_part_name(w, il, ex);
                let idx =
                    el.unit()
                        .part_index(&name)
                        .ok_or_else(|| RuntimeError::MissingTensor {
                            arch: c.arch,
                            name: name.clone(),
                        })?;
                Ok(WeightRef {
                    part: idx,
                    unit: el.unit().id,
                    name,
                    ..w.clone()
                })
            };
            let (gw, uw, dw) = (part(gate_w)?, part(up_w)?, part(down_w)?);
            xe.clear();
            for &(t, _) in rows {
                xe.extend_from_slice(&cur[t * e..(t + 1) * e]);
            }
            let d = self.dense_ffn(&el, &gw, &uw, &dw, &xe, rows.len())?;
            for (r, &(t, wgt)) in rows.iter().enumerate() {
                for (o, &v) in out[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(&d[r * e..(r + 1) * e])
                {
                    *o += wgt * v;
                }
            }
        }
        // Shared expert (Qwen2-MoE), scaled by a sigmoid gate.
        if let (Some(g), Some(u), Some(d)) = (
            lw.get(Role::FfnGateShexp),
            lw.get(Role::FfnUpShexp),
            lw.get(Role::FfnDownShexp),
        ) {
            let shared = self.dense_ffn(lease, g, u, d, cur, n)?;
            let gates = match lw.get(Role::FfnRouterShexp) {
                Some(w) => {
                    let mut s = Vec::new();
                    self.linear(lease, w, cur, n, false, &mut s)?;
                    s.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect()
                }
                None => vec![1.0; n],
            };
            for t in 0..n {
                for (o, &v) in out[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(&shared[t * e..(t + 1) * e])
                {
                    *o += gates[t] * v;
                }
            }
        }
        Ok(out)
    }
}

/// The part name of expert `ex` for a fused (`*_exps`) or per-expert weight.
fn expert_part_name(w: &WeightRef, il: usize, ex: usize) -> String {
    if w.name.contains("_exps.") {
        w.name.clone()
    } else {
        let base = w
            .name
            .strip_prefix(&format!("blk.{il}."))
            .and_then(|s| s.split('.').next())
            .unwrap_or("ffn");
        format!("blk.{il}.{base}.{ex}.weight")
    }
}

/// cos/sin of `pos * theta_i` with `theta_i = base^(-2i/dims) * freq_scale / factor_i`.
fn rope_table(
    pos: usize,
    dims: usize,
    base: f32,
    freq_scale: f32,
    factors: Option<&[f32]>,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    ops::rope_cache(pos, dims, base, freq_scale, cos, sin);
    if let Some(f) = factors {
        let theta_scale = base.powf(-2.0 / dims as f32);
        let mut theta = pos as f32 * freq_scale;
        for i in 0..dims / 2 {
            let t = theta / f[i];
            cos[i] = t.cos();
            sin[i] = t.sin();
            theta *= theta_scale;
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint ranges from pool threads joined before the borrow ends.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // A method (not field access) so closures capture the whole Sync wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}
