//! Qwen3.5's two layer kinds (`qwen35`, `qwen35moe`), as llama.cpp computes them
//! (`src/models/qwen35.cpp`, `delta-net-base.cpp`, ggml's CPU `ssm_conv` and
//! `gated_delta_net`):
//!
//! - Gated DeltaNet linear attention, whose per-sequence state has a fixed size
//!   ([`RecurrentState`]): `attn_qkv` gives `[q | k | v]`; a causal depthwise convolution of
//!   `d_conv` taps (oldest input first) over those channels, then SiLU; q and k L2-normalised
//!   per head; value head `h` reads key/query head `h % n_k_heads`; decay
//!   `g = softplus(alpha + ssm_dt) · ssm_a`, write strength `β = sigmoid(beta)`; per token the
//!   delta rule `S ← e^g S; δ = β (v − Sᵀk); S += k δᵀ; o = Sᵀq / √d`, token by token for
//!   prompts too (llama.cpp's CPU path); then an RMSNorm per head times `ssm_norm` times
//!   `silu(z)` (`z` from `attn_gate`), and `ssm_out` (in `finish_layer`).
//! - Gated full attention: `attn_q` rows per head are `[q | gate]`; the usual attention (per
//!   head q/k norms, partial NeoX RoPE, the f16 KV cache), its output times `sigmoid(gate)`.

use flashstream_formats::config::SsmConfig;
use flashstream_scheduler::Lease;

use super::{f32s, linear, Scratch, SendPtr, Session};
use crate::model::{Role, RuntimeError};
use crate::ops;
use crate::pool::ChunkCounter;

/// The recurrent state of one sequence over every linear layer: the last `d_conv - 1`
/// inputs of every convolution channel, and the delta-rule matrix of every value head, f32.
/// Its size does not depend on the context.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    /// Per linear layer, `channels × (d_conv - 1)` (one channel's inputs contiguous, oldest
    /// first).
    conv: Vec<f32>,
    /// Per linear layer and value head, `d × d` with `m[j·d + i] = S[i][j]`.
    s: Vec<f32>,
    conv_len: usize,
    s_len: usize,
}

impl RecurrentState {
    /// A zero state for the linear layers of `c`; `None` if it cannot be allocated.
    pub fn new(c: &SsmConfig) -> Option<Self> {
        let n = c.n_recurrent();
        let conv_len = (c.d_conv - 1) * c.conv_channels();
        let s_len = c.n_v_heads * c.head_v_dim() * c.head_v_dim();
        let mut conv = Vec::new();
        conv.try_reserve_exact(n.checked_mul(conv_len)?).ok()?;
        conv.resize(n * conv_len, 0.0);
        let mut s = Vec::new();
        s.try_reserve_exact(n.checked_mul(s_len)?).ok()?;
        s.resize(n * s_len, 0.0);
        Some(RecurrentState {
            conv,
            s,
            conv_len,
            s_len,
        })
    }

    /// Forgets everything (a new sequence starts from zeros, as in llama.cpp).
    pub fn clear(&mut self) {
        self.conv.fill(0.0);
        self.s.fill(0.0);
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        ((self.conv.len() + self.s.len()) * 4) as u64
    }
}

/// Scratch of the linear layers (kept in [`Scratch`]).
#[derive(Default)]
pub(crate) struct DeltaScratch {
    qkv: Vec<f32>,
    z: Vec<f32>,
    beta: Vec<f32>,
    alpha: Vec<f32>,
    conv: Vec<f32>,
}

/// ggml's `rms_norm` with `eps / d` then a scale by `1/√d`: the L2 normalisation of a head.
fn l2_norm(x: &mut [f32], eps: f32) {
    let d = x.len();
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = (sum / d as f64) as f32;
    let inv = 1.0 / (mean + eps / d as f32).sqrt();
    let s = 1.0 / (d as f32).sqrt();
    for v in x.iter_mut() {
        *v *= inv;
        *v *= s;
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// ggml's softplus (linear above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

impl Session<'_> {
    /// A Qwen3.5 layer's token mixer for `n` rows of `s.cur`: Gated DeltaNet in a linear
    /// layer, gated attention in the others; the output (before its projection) in `s.attn`.
    pub(in crate::model) fn mixer(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        if self.model.config.is_recurrent_layer(il) {
            self.deltanet(s, il, lease, n)
        } else {
            self.gated_attention(s, il, lease, n)
        }
    }

    /// Gated DeltaNet for `n` rows of `s.cur` (consecutive tokens of this sequence) in linear
    /// layer `il`; leaves the gated, normed output (`n × d_inner`, before `ssm_out`) in
    /// `s.attn` and advances the layer's state.
    pub(super) fn deltanet(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let cfg = c
            .ssm
            .as_ref()
            .ok_or_else(|| RuntimeError::Invalid("not a linear-attention model".into()))?;
        let req = |r: Role| m.layer_weight(il, r);
        let ds = &mut s.delta;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::AttnQkv)?,
            &s.cur,
            n,
            false,
            &mut ds.qkv,
        )?;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::AttnGate)?,
            &s.cur,
            n,
            true,
            &mut ds.z,
        )?;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::SsmBeta)?,
            &s.cur,
            n,
            true,
            &mut ds.beta,
        )?;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::SsmAlpha)?,
            &s.cur,
            n,
            true,
            &mut ds.alpha,
        )?;
        let hv = cfg.n_v_heads;
        let hk = cfg.n_k_heads;
        let dk = cfg.head_k_dim;
        let dv = cfg.head_v_dim();
        let ch = cfg.conv_channels();
        let taps = cfg.d_conv;
        let dt = f32s(lease, req(Role::SsmDt)?)?;
        let a = f32s(lease, req(Role::SsmA)?)?;
        let kernel = f32s(lease, req(Role::SsmConv1d)?)?;
        let norm = f32s(lease, req(Role::SsmNorm)?)?;
        if dt.len() != hv || a.len() != hv || kernel.len() != taps * ch || norm.len() != dv {
            return Err(RuntimeError::BadTensor {
                name: Role::SsmConv1d.name(il),
                reason: format!(
                    "linear-attention vectors do not match {hv} value heads of {dv} and \
                     {ch} channels of {taps} taps"
                ),
            });
        }
        // Write strength and decay per token and value head.
        for b in ds.beta.iter_mut() {
            *b = sigmoid(*b);
        }
        for row in ds.alpha.chunks_exact_mut(hv) {
            for ((g, &bias), &ah) in row.iter_mut().zip(dt).zip(a) {
                *g = softplus(*g + bias) * ah;
            }
        }

        let slot = c.layer_slot(il);
        let state = self
            .rec
            .as_mut()
            .ok_or_else(|| RuntimeError::Invalid("session has no recurrent state".into()))?;
        let (conv_len, s_len) = (state.conv_len, state.s_len);
        let conv_state = &mut state.conv[slot * conv_len..(slot + 1) * conv_len];
        let past = taps - 1;

        // Causal depthwise convolution over [past inputs | this batch], then SiLU.
        ds.conv.clear();
        ds.conv.resize(n * ch, 0.0);
        let mut window = vec![0f32; past + n];
        for chn in 0..ch {
            window[..past].copy_from_slice(&conv_state[chn * past..(chn + 1) * past]);
            for t in 0..n {
                window[past + t] = ds.qkv[t * ch + chn];
            }
            let w = &kernel[chn * taps..(chn + 1) * taps];
            for t in 0..n {
                let mut sum = 0f32;
                for (x, &wi) in window[t..t + taps].iter().zip(w) {
                    sum += x * wi;
                }
                ds.conv[t * ch + chn] = ops::silu(sum);
            }
            conv_state[chn * past..(chn + 1) * past].copy_from_slice(&window[n..n + past]);
        }

        // q and k heads L2-normalised.
        let eps = c.rms_eps;
        for row in ds.conv.chunks_exact_mut(ch) {
            for head in row[..2 * hk * dk].chunks_exact_mut(dk) {
                l2_norm(head, eps);
            }
        }

        // The delta rule, token by token, one value head per work item.
        s.attn.clear();
        s.attn.resize(n * hv * dv, 0.0);
        let st = &mut state.s[slot * s_len..(slot + 1) * s_len];
        let st_ptr = SendPtr(st.as_mut_ptr());
        let out_ptr = SendPtr(s.attn.as_mut_ptr());
        let (conv, beta, gate) = (&ds.conv, &ds.beta, &ds.alpha);
        let scale = 1.0 / (dv as f32).sqrt();
        let items = ChunkCounter::new(hv);
        let work = |_: usize| {
            let mut delta = vec![0f32; dv];
            while let Some(h) = items.next_chunk() {
                // SAFETY: each head h is claimed once and owns its d×d block of the state
                // and the rows out[(t·hv + h)·dv..+dv].
                let mat = unsafe {
                    std::slice::from_raw_parts_mut(st_ptr.get().add(h * dv * dv), dv * dv)
                };
                let kh = h % hk;
                for t in 0..n {
                    let row = &conv[t * ch..(t + 1) * ch];
                    let q = &row[kh * dk..(kh + 1) * dk];
                    let k = &row[(hk + kh) * dk..(hk + kh + 1) * dk];
                    let v = &row[2 * hk * dk + h * dv..2 * hk * dk + (h + 1) * dv];
                    let decay = gate[t * hv + h].exp();
                    let b = beta[t * hv + h];
                    for x in mat.iter_mut() {
                        *x *= decay;
                    }
                    for (j, dj) in delta.iter_mut().enumerate() {
                        let col = &mat[j * dv..(j + 1) * dv];
                        let sk: f32 = col.iter().zip(k).map(|(x, y)| x * y).sum();
                        *dj = (v[j] - sk) * b;
                    }
                    for (j, &dj) in delta.iter().enumerate() {
                        for (x, &ki) in mat[j * dv..(j + 1) * dv].iter_mut().zip(k) {
                            *x += ki * dj;
                        }
                    }
                    // SAFETY: see above.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add((t * hv + h) * dv), dv)
                    };
                    for (j, oj) in o.iter_mut().enumerate() {
                        let col = &mat[j * dv..(j + 1) * dv];
                        let sq: f32 = col.iter().zip(q).map(|(x, y)| x * y).sum();
                        *oj = sq * scale;
                    }
                }
            }
        };
        m.pool.run(work);

        // RMSNorm per head times ssm_norm, times silu(z).
        for (o, z) in s.attn.chunks_exact_mut(dv).zip(ds.z.chunks_exact(dv)) {
            ops::rms_norm_inplace(o, norm, eps);
            for (x, &zi) in o.iter_mut().zip(z) {
                *x *= ops::silu(zi);
            }
        }
        Ok(())
    }

    /// Qwen3.5's gated full attention for `n` rows of `s.cur`: `attn_q` gives per head
    /// `[q | gate]`; the attention output (in `s.attn`) is scaled by `sigmoid(gate)`.
    pub(super) fn gated_attention(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let req = |r: Role| m.layer_weight(il, r);
        let hd = c.head_dim_k;
        let nh = c.n_head;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::AttnQ)?,
            &s.cur,
            n,
            false,
            &mut s.tmp,
        )?;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::AttnK)?,
            &s.cur,
            n,
            true,
            &mut s.k,
        )?;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::AttnV)?,
            &s.cur,
            n,
            true,
            &mut s.v,
        )?;
        if s.tmp.len() != n * nh * 2 * hd {
            return Err(RuntimeError::BadTensor {
                name: Role::AttnQ.name(il),
                reason: format!(
                    "expected {} rows per token ([q | gate] per head)",
                    nh * 2 * hd
                ),
            });
        }
        s.q.clear();
        let gate = &mut s.delta.z;
        gate.clear();
        for head in s.tmp.chunks_exact(2 * hd) {
            s.q.extend_from_slice(&head[..hd]);
            gate.extend_from_slice(&head[hd..]);
        }
        self.attend(s, il, lease, n)?;
        for (o, &g) in s.attn.iter_mut().zip(&s.delta.z) {
            *o *= sigmoid(g);
        }
        Ok(())
    }
}
