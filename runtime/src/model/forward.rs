//! The forward pass.
//!
//! Arithmetic follows llama.cpp's CPU backend wherever the choice is visible in the logits:
//! activations are quantized to the weight type's paired type before every product (as
//! ggml's x86 quantizers do); attention over the f16 KV cache follows llama.cpp's CPU flash
//! attention ([`attn`]: f16 Q and an f16 running sum for small batches and decode steps, f32
//! tiles for large batches); GELU goes through an f16 table; norms sum squares in f64.

use std::sync::atomic::Ordering;

use half::f16;

use flashstream_formats::config::{Activation, RopeScaling, RopeStyle};
use flashstream_formats::GgmlType;
use flashstream_scheduler::{Lease, UnitId};

use super::attn;
#[path = "deltanet.rs"]
mod deltanet;
#[path = "head.rs"]
mod head;
#[path = "mla.rs"]
mod mla;
#[path = "moe.rs"]
mod moe;
use super::attn_quant;
use super::kv::{KvCache, KvRows, KvType};
use super::routing::{route, RouteScratch};
use super::{Model, Role, RuntimeError, WeightRef};
use crate::kernels::matvec::{matmul, quantize_rows};
use crate::kernels::{dot_kernel_with, scalar, ScratchBuf};
use crate::ops;
use crate::pool::{ChunkCounter, SendPtr};
use crate::yarn::Yarn;
pub use deltanet::RecurrentState;
pub(super) use head::output_head;

/// Which positions' logits [`Session::eval`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Only the last position's (generation).
    Last,
    /// Every position's (teacher forcing, perplexity).
    All,
}

/// Activations quantized for the last product, and the layout they were quantized to: the
/// paired type and whether the rows carry the packed copy of the tile kernels (so the Q/K/V
/// or gate/up products of one input share one quantization when their kernels read the same
/// layout; a row's stride differs between the two, so a mismatch would misread every row but
/// the first).
#[derive(Default)]
pub(super) struct Quantized {
    buf: ScratchBuf,
    ty: Option<(GgmlType, bool)>,
}

/// Scratch reused across layers, chunks and calls (sized by the largest batch seen).
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) xq: Quantized,
    /// Residual stream, `n × n_embd`.
    pub(super) x: Vec<f32>,
    /// Normed input of a block.
    pub(super) cur: Vec<f32>,
    /// Block output before the residual add.
    pub(super) out: Vec<f32>,
    pub(super) tmp: Vec<f32>,
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) attn: Vec<f32>,
    pub(super) gate: Vec<f32>,
    pub(super) up: Vec<f32>,
    pub(super) down: Vec<f32>,
    pub(super) router: Vec<f32>,
    pub(super) xe: Vec<f32>,
    pub(super) emb_bytes: Vec<u8>,
    /// Linear-attention layers' buffers (Qwen3.5).
    pub(super) delta: deltanet::DeltaScratch,
}

/// A conversation with a model: a KV cache (of the attention layers), the recurrent state
/// of the linear-attention layers where the model has them, and scratch buffers.
pub struct Session<'m> {
    model: &'m Model,
    kv: KvCache,
    rec: Option<RecurrentState>,
    pub(super) pos: usize,
    scratch: Scratch,
    /// MoE: the experts predicted for a layer (layer, sorted expert ids), until it routes.
    predicted: Option<(usize, Vec<usize>)>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pos", &self.pos)
            .field("n_ctx", &self.kv.n_ctx())
            .finish()
    }
}

pub(super) fn f32s<'a>(lease: &'a Lease<'_>, w: &WeightRef) -> Result<&'a [f32], RuntimeError> {
    bytemuck::try_cast_slice(lease.part(w.part)).map_err(|_| RuntimeError::BadTensor {
        name: w.name.clone(),
        reason: "F32 data is not 4-byte aligned in memory".into(),
    })
}

pub(super) fn rms_rows(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        ops::rms_norm(xr, w, eps, or);
    }
}

pub(super) fn add_bias(y: &mut [f32], b: &[f32]) {
    for row in y.chunks_exact_mut(b.len()) {
        ops::add_assign(row, b);
    }
}

/// `out = x · Wᵀ` for `n` rows of `x`, with `w` from `lease`. The quantized `x` in `xq` is
/// reused when `same_input` says `x` is the input of the previous call and the paired type
/// is the same.
#[allow(clippy::too_many_arguments)]
pub(super) fn linear(
    m: &Model,
    xq: &mut Quantized,
    lease: &Lease<'_>,
    w: &WeightRef,
    x: &[f32],
    n: usize,
    same_input: bool,
    out: &mut Vec<f32>,
) -> Result<(), RuntimeError> {
    let kernel = dot_kernel_with(m.isa, w.ty, m.numerics)?;
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
    let layout = (kernel.act_type, kernel.packed_act);
    if !(same_input && xq.ty == Some(layout)) {
        quantize_rows(&kernel, x, k, &mut xq.buf)?;
        xq.ty = Some(layout);
    }
    out.resize(n * w.rows(), 0.0);
    if w.unit == lease.unit().id {
        matmul(&m.pool, &kernel, lease.part(w.part), k, &xq.buf, n, out)?;
    } else {
        // A matrix streamed as a unit of its own (a sub-layer piece): leased for this product
        // only, while the caller keeps its layer's pinned core.
        let own = m.source.lease(w.unit)?;
        matmul(&m.pool, &kernel, own.part(w.part), k, &xq.buf, n, out)?;
    }
    Ok(())
}

/// `gate = act(x·Gᵀ) * (x·Uᵀ)`, `down = gate·Dᵀ` for `n` rows of `x`.
#[allow(clippy::too_many_arguments)]
pub(super) fn dense_ffn(
    m: &Model,
    xq: &mut Quantized,
    lease: &Lease<'_>,
    w: (&WeightRef, &WeightRef, &WeightRef),
    x: &[f32],
    n: usize,
    gate: &mut Vec<f32>,
    up: &mut Vec<f32>,
    down: &mut Vec<f32>,
) -> Result<(), RuntimeError> {
    ffn_biased(m, xq, lease, w, None, x, n, gate, up, down)
}

/// The gate, up and down biases of one expert (gpt-oss).
type FfnBiases<'a> = (&'a [f32], &'a [f32], &'a [f32]);

/// [`dense_ffn`] with optional biases after each of the three products (the down bias
/// before any routing weight, as llama.cpp adds it).
#[allow(clippy::too_many_arguments)]
fn ffn_biased(
    m: &Model,
    xq: &mut Quantized,
    lease: &Lease<'_>,
    (gate_w, up_w, down_w): (&WeightRef, &WeightRef, &WeightRef),
    biases: Option<FfnBiases<'_>>,
    x: &[f32],
    n: usize,
    gate: &mut Vec<f32>,
    up: &mut Vec<f32>,
    down: &mut Vec<f32>,
) -> Result<(), RuntimeError> {
    linear(m, xq, lease, gate_w, x, n, false, gate)?;
    linear(m, xq, lease, up_w, x, n, true, up)?;
    if let Some((gb, ub, _)) = biases {
        add_bias(gate, gb);
        add_bias(up, ub);
    }
    match m.config.activation {
        Activation::Swiglu => {
            let row = gate.len() / n.max(1);
            ops::swiglu(gate, up, row)
        }
        Activation::GegluF16Table => ops::geglu_f16_table(gate, up),
        Activation::SwigluOai { alpha, limit } => ops::swiglu_oai(gate, up, alpha, limit),
    }
    linear(m, xq, lease, down_w, gate, n, false, down)?;
    if let Some((_, _, db)) = biases {
        add_bias(down, db);
    }
    Ok(())
}

/// The Q, K and V projections of the normed rows in `s.cur` into `s.q`, `s.k`, `s.v`.
pub(super) fn project_qkv(
    m: &Model,
    s: &mut Scratch,
    il: usize,
    lease: &Lease<'_>,
    n: usize,
) -> Result<(), RuntimeError> {
    let outs = [
        (Role::AttnQ, false, &mut s.q),
        (Role::AttnK, true, &mut s.k),
        (Role::AttnV, true, &mut s.v),
    ];
    for (role, reuse, out) in outs {
        let w = m.layer_weight(il, role)?;
        linear(m, &mut s.xq, lease, w, &s.cur, n, reuse, out)?;
    }
    Ok(())
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
        // With MLA the values are the first part of each cached key row.
        let vd = if c.mla.is_some() {
            0
        } else {
            c.n_head_kv * c.head_dim_v
        };
        let kd = c.n_head_kv * c.head_dim_k;
        let nl = c.n_kv_layers();
        let types = model.kv_types();
        let kv = KvCache::with_types(nl, n_ctx, kd, vd, types).ok_or_else(|| {
            RuntimeError::OutOfMemory {
                what: format!(
                    "a {types} KV cache of {} bytes for {n_ctx} positions",
                    KvCache::bytes_for_types(nl, n_ctx, kd, vd, types).unwrap_or(u64::MAX)
                ),
            }
        })?;
        let rec = match &c.ssm {
            Some(ssm) => {
                Some(
                    RecurrentState::new(ssm).ok_or_else(|| RuntimeError::OutOfMemory {
                        what: format!("a recurrent state of {} bytes", c.recurrent_state_bytes()),
                    })?,
                )
            }
            None => None,
        };
        Ok(Session {
            model,
            kv,
            rec,
            pos: 0,
            scratch: Scratch::default(),
            predicted: None,
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

    /// Bytes its KV cache holds.
    pub fn kv_bytes(&self) -> u64 {
        self.kv.allocated_bytes()
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Forgets every position (the next eval starts at position 0, with a zero recurrent
    /// state).
    pub fn reset(&mut self) {
        self.pos = 0;
        if let Some(r) = &mut self.rec {
            r.clear();
        }
    }

    /// Forgets the positions from `pos` on (the next eval continues from there; keeps the
    /// KV cache of the positions before, e.g. a conversation's shared prefix) and returns
    /// the position the session now continues from. A model with linear-attention layers
    /// cannot take back tokens folded into its recurrent state: going back forgets
    /// everything and returns 0 (the caller evaluates the whole sequence again).
    #[must_use = "a recurrent model may continue from 0, not from `pos`"]
    pub fn truncate(&mut self, pos: usize) -> usize {
        if pos < self.pos && self.rec.is_some() {
            self.reset();
        } else {
            self.pos = self.pos.min(pos);
        }
        self.pos
    }

    /// The recurrent state of the linear-attention layers, where the model has them.
    pub fn recurrent_state(&self) -> Option<&RecurrentState> {
        self.rec.as_ref()
    }

    /// Runs `tokens` (at positions `pos()..pos()+tokens.len()`) through the model and returns
    /// the logits of the last position (`n_vocab` values) or of every position
    /// (`tokens.len() * n_vocab`, row-major).
    ///
    /// At most the model's `max_batch` tokens go through the layers at a time; longer inputs
    /// are processed in consecutive chunks (the result is the same up to float accumulation
    /// order). If a chunk fails, the positions of the chunks before it stay in the cache.
    pub fn eval(&mut self, tokens: &[u32], want: LogitsWanted) -> Result<Vec<f32>, RuntimeError> {
        let c = &self.model.config;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        if self.pos + tokens.len() > self.kv.n_ctx() {
            return Err(RuntimeError::ContextFull {
                needed: self.pos + tokens.len(),
                n_ctx: self.kv.n_ctx(),
                n_ctx_train: c.n_ctx_train,
            });
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(RuntimeError::BadToken {
                token: t,
                n_vocab: c.n_vocab,
            });
        }
        let _one_pass_at_a_time = self.model.eval_lock.lock();
        self.model.source.before_pass()?;
        let max_batch = self.model.max_batch.max(1);
        let n_chunks = tokens.len().div_ceil(max_batch);
        let mut logits = Vec::new();
        for (i, chunk) in tokens.chunks(max_batch).enumerate() {
            let want = match want {
                LogitsWanted::All => Some(LogitsWanted::All),
                LogitsWanted::Last if i + 1 == n_chunks => Some(LogitsWanted::Last),
                LogitsWanted::Last => None,
            };
            let mut s = std::mem::take(&mut self.scratch);
            let r = self.eval_batch(&mut s, chunk, want, &mut logits);
            self.scratch = s;
            r?;
        }
        Ok(logits)
    }

    /// One batch through every layer; appends the wanted logits to `logits`.
    fn eval_batch(
        &mut self,
        s: &mut Scratch,
        tokens: &[u32],
        want: Option<LogitsWanted>,
        logits: &mut Vec<f32>,
    ) -> Result<(), RuntimeError> {
        let _span = tracing::debug_span!("eval", n = tokens.len(), pos = self.pos).entered();
        let m = self.model;
        let c = &m.config;
        let n = tokens.len();
        let (pass, pos0, t_pass) = (m.trace.next_pass(), self.pos, m.trace.now());
        self.embed(s, tokens)?;

        let n_layer = c.n_layer;
        for il in 0..n_layer {
            let _l = tracing::trace_span!("layer", il).entered();
            let t_layer = m.trace.now();
            let lease = m.source.lease(UnitId::Layer(il))?;
            let req = |r: Role| m.layer_weight(il, r);

            // Attention block.
            rms_rows(
                &s.x,
                f32s(&lease, req(Role::AttnNorm)?)?,
                c.rms_eps,
                &mut s.cur,
            );
            if c.ssm.is_some() {
                self.mixer(s, il, &lease, n)?;
            } else if c.mla.is_some() {
                self.mla_attention(s, il, &lease, n)?;
            } else {
                self.attention(s, il, &lease, n)?;
            }
            self.finish_layer(s, il, &lease, n)?;
            m.trace_compute(pass, t_layer, pos0, n, || format!("blk.{il}"));
        }
        self.pos += n;

        // Output head on the rows whose logits are wanted.
        let first = match want {
            None => 0,
            Some(LogitsWanted::All) => 0,
            Some(LogitsWanted::Last) => n - 1,
        };
        if want.is_some() {
            let t_head = m.trace.now();
            output_head(m, s, first)?;
            m.trace_compute(pass, t_head, pos0, n, || "output".into());
            logits.extend_from_slice(&s.tmp);
        }
        m.trace_pass(pass, t_pass, pos0, n, || match n {
            1 => format!("token {pos0}"),
            _ => format!("prompt {pos0}..{}", pos0 + n),
        });
        Ok(())
    }

    /// The rest of layer `il` once the attention output is in `s.attn`: the output projection
    /// (and bias, and post-attention norm), the residual, the pre-FFN norm, the dense or MoE
    /// feed-forward (MoE on the union of the rows' routed experts), its post norm and the
    /// residual. Shared by [`Self::eval`] and the shared weight passes.
    pub(super) fn finish_layer(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let lw = &m.layers[il];
        let req = |r: Role| m.layer_weight(il, r);
        // Linear-attention layers (Qwen3.5) project with their own output matrix.
        let out_role = if c.is_recurrent_layer(il) {
            Role::SsmOut
        } else {
            Role::AttnOut
        };
        linear(
            m,
            &mut s.xq,
            lease,
            req(out_role)?,
            &s.attn,
            n,
            false,
            &mut s.out,
        )?;
        if let Some(b) = lw.get(Role::AttnOutBias) {
            add_bias(&mut s.out, f32s(lease, b)?);
        }
        if let Some(w) = lw.get(Role::PostAttnNorm) {
            rms_rows(&s.out, f32s(lease, w)?, c.rms_eps, &mut s.tmp);
            std::mem::swap(&mut s.out, &mut s.tmp);
        }
        ops::add_assign(&mut s.x, &s.out);

        // Feed-forward block (the table names the pre-FFN norm per architecture).
        rms_rows(
            &s.x,
            f32s(lease, req(Role::FfnNorm)?)?,
            c.rms_eps,
            &mut s.cur,
        );
        if c.is_moe_layer(il) {
            self.moe_ffn(s, il, lease, n)?;
        } else {
            let w = (req(Role::FfnGate)?, req(Role::FfnUp)?, req(Role::FfnDown)?);
            dense_ffn(
                m,
                &mut s.xq,
                lease,
                w,
                &s.cur,
                n,
                &mut s.gate,
                &mut s.up,
                &mut s.out,
            )?;
        }
        if let Some(w) = lw.get(Role::PostFfwNorm) {
            rms_rows(&s.out, f32s(lease, w)?, c.rms_eps, &mut s.tmp);
            std::mem::swap(&mut s.out, &mut s.tmp);
        }
        ops::add_assign(&mut s.x, &s.out);
        Ok(())
    }

    /// Embedding rows of `tokens` into `s.x`, dequantized and scaled by the config's
    /// `embedding_scale` (Gemma: sqrt(n_embd)).
    pub(super) fn embed(&self, s: &mut Scratch, tokens: &[u32]) -> Result<(), RuntimeError> {
        let m = self.model;
        let e = m.config.n_embd;
        let w = &m.embd;
        let rb =
            w.ty.row_bytes(e as u64)
                .ok_or_else(|| RuntimeError::BadTensor {
                    name: w.name.clone(),
                    reason: format!("rows of {e} are not whole blocks of {}", w.ty),
                })? as usize;
        s.emb_bytes.clear();
        s.emb_bytes.resize(rb * tokens.len(), 0);
        m.source.embedding_rows(tokens, &mut s.emb_bytes)?;
        s.x.clear();
        s.x.resize(e * tokens.len(), 0.0);
        for (src, dst) in s.emb_bytes.chunks_exact(rb).zip(s.x.chunks_exact_mut(e)) {
            scalar::dequantize_row(w.ty, src, dst)?;
        }
        if let Some(f) = m.config.embedding_scale {
            ops::scale(&mut s.x, f);
        }
        Ok(())
    }

    /// Q/K/V projections of `s.cur`, norms, RoPE, cache update and attention for `n` rows;
    /// leaves the attention output (`n × n_head·head_dim_v`, before the output projection) in
    /// `s.attn`.
    fn attention(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        project_qkv(self.model, s, il, lease, n)?;
        self.attend(s, il, lease, n)
    }

    /// The rest of [`Self::attention`] for `n` rows whose projections are in `s.q`, `s.k`,
    /// `s.v` (at this session's next positions): biases, norms, RoPE, cache update and
    /// attention into `s.attn` (shared weight passes project many sessions' rows at once).
    pub(super) fn attend(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let lw = &m.layers[il];
        let (hd, hdv, nh, nkv) = (c.head_dim_k, c.head_dim_v, c.n_head, c.n_head_kv);
        for (role, y) in [
            (Role::AttnQBias, &mut s.q),
            (Role::AttnKBias, &mut s.k),
            (Role::AttnVBias, &mut s.v),
        ] {
            if let Some(b) = lw.get(role) {
                add_bias(y, f32s(lease, b)?);
            }
        }
        for (role, y) in [(Role::AttnQNorm, &mut s.q), (Role::AttnKNorm, &mut s.k)] {
            if let Some(w) = lw.get(role) {
                let w = f32s(lease, w)?;
                for head in y.chunks_exact_mut(hd) {
                    ops::rms_norm_inplace(head, w, c.rms_eps);
                }
            }
        }

        // RoPE: sliding-window layers have their own base (and no scaling) where the
        // architecture says so.
        let swa = c.is_swa_layer(il);
        let dims = c.rope.dims;
        let (base, freq_scale, yarn) = match (swa, c.rope.freq_base_swa, c.rope.scaling) {
            // gpt-oss keeps YaRN on its own SWA base, if it has one; Gemma's SWA layers are
            // unscaled.
            (true, Some(b), y @ RopeScaling::Yarn { .. }) => {
                (b, 1.0, Yarn::from_scaling(y, dims, b))
            }
            (true, Some(b), _) => (b, 1.0, None),
            (_, _, RopeScaling::Linear { factor }) => (c.rope.freq_base, 1.0 / factor, None),
            (_, _, y @ RopeScaling::Yarn { .. }) => (
                c.rope.freq_base,
                1.0,
                Yarn::from_scaling(y, dims, c.rope.freq_base),
            ),
            (_, _, RopeScaling::None) => (c.rope.freq_base, 1.0, None),
        };
        let neox = c.rope.style == RopeStyle::Neox;
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
            match &yarn {
                Some(y) => y.cache(p, dims, base, freq_factors, &mut cos, &mut sin),
                None => {
                    ops::rope_cache(p, dims, base, freq_scale, freq_factors, &mut cos, &mut sin)
                }
            }
            let qt = &mut s.q[t * nh * hd..(t + 1) * nh * hd];
            ops::rope_apply(qt, hd, dims, neox, &cos, &sin);
            let kt = &mut s.k[t * nkv * hd..(t + 1) * nkv * hd];
            ops::rope_apply(kt, hd, dims, neox, &cos, &sin);
        }
        // A quantized cache holds Hadamard-rotated rows, as llama.cpp's (see `attn_quant`).
        let types = self.kv.types();
        let rot_k = attn_quant::key_rotation(types.k != KvType::F16, hd);
        let rot_v = attn_quant::value_rotation(types.v != KvType::F16, hdv);
        if let Some(r) = rot_k {
            attn_quant::fwht_chunks(&mut s.k[..n * nkv * hd], r);
        }
        if let Some(r) = rot_v {
            attn_quant::fwht_chunks(&mut s.v[..n * nkv * hdv], r);
        }
        let kl = c.layer_slot(il);
        for t in 0..n {
            self.kv.store(
                kl,
                self.pos + t,
                &s.k[t * nkv * hd..(t + 1) * nkv * hd],
                &s.v[t * nkv * hdv..(t + 1) * nkv * hdv],
            );
        }

        // Gemma scales Q before attention (and attends with scale 1); the others scale the
        // scores.
        let (q_scale, scale) = c.attn_scale.split();
        if let Some(f) = q_scale {
            ops::scale(&mut s.q, f);
        }
        if let Some(r) = rot_k {
            attn_quant::fwht_chunks(&mut s.q[..n * nh * hd], r);
        }
        // Small batches (and decode steps) take Q in f16, as llama.cpp converts it to the
        // cache's type; large batches stay in f32 (see `attn`).
        // llama.cpp's tiled kernel takes f16 keys and values only; a quantized cache goes
        // row by row at any batch size, with Q converted to the keys' dot partner (from f32).
        let tiled = n >= attn::TILE && types.is_f16();
        if !tiled && types.k == KvType::F16 {
            for v in s.q.iter_mut() {
                *v = f16::from_f32(*v).to_f32();
            }
        }

        // Scaled dot-product attention over the cache, causal (and windowed on SWA layers).
        let window = if swa {
            c.sliding_window.map(|w| w.window)
        } else {
            None
        };
        s.attn.clear();
        s.attn.resize(n * nh * hdv, 0.0);
        let (key_rows, value_rows) = (self.kv.keys(kl), self.kv.values(kl));
        let group = nh / nkv;
        let pos0 = self.pos;
        let softcap = c.attn_softcap;
        let sinks: Option<&[f32]> = match lw.get(Role::AttnSinks) {
            Some(w) => Some(f32s(lease, w)?),
            None => None,
        };
        let sink_of = |h: usize| sinks.and_then(|v| v.get(h)).copied();
        let q = &s.q;
        let out_ptr = SendPtr(s.attn.as_mut_ptr());
        if !types.is_f16() {
            let shape = attn_quant::Shape {
                n,
                nh,
                nkv,
                hd,
                hdv,
                pos0,
                window,
                scale,
                softcap,
            };
            let out = &mut s.attn;
            attn_quant::attend_all(m, &s.q, key_rows, value_rows, &shape, &sink_of, out)?;
            if let Some(r) = rot_v {
                attn_quant::fwht_chunks(out, r);
            }
            return Ok(());
        }
        let (KvRows::F16(keys), KvRows::F16(values)) = (key_rows, value_rows) else {
            return Err(RuntimeError::Invalid("f16 KV cache expected".into()));
        };
        if tiled {
            // Work items: a tile of up to TILE consecutive rows of one head.
            let n_tiles = n.div_ceil(attn::TILE);
            let items = ChunkCounter::new(n_tiles * nh);
            let work = |_: usize| {
                let mut scratch = attn::TileScratch::default();
                let mut qt = Vec::with_capacity(attn::TILE * hd);
                let mut ot = vec![0f32; attn::TILE * hdv];
                while let Some(item) = items.next_chunk() {
                    let (tile, h) = (item / nh, item % nh);
                    let t0 = tile * attn::TILE;
                    let t1 = (t0 + attn::TILE).min(n);
                    let g = h / group;
                    qt.clear();
                    for t in t0..t1 {
                        qt.extend_from_slice(&q[(t * nh + h) * hd..(t * nh + h + 1) * hd]);
                    }
                    let cache = attn::TileCache {
                        keys: &keys[g * hd..],
                        values: &values[g * hdv..],
                        dk: hd,
                        k_stride: nkv * hd,
                        dv: hdv,
                        v_stride: nkv * hdv,
                        scale,
                        softcap,
                        window,
                    };
                    let ot = &mut ot[..(t1 - t0) * hdv];
                    attn::attend_tile_sink(
                        m.isa,
                        &qt,
                        pos0 + t0,
                        &cache,
                        sink_of(h),
                        &mut scratch,
                        ot,
                    );
                    for (i, t) in (t0..t1).enumerate() {
                        // SAFETY: each (tile, h) item is claimed once and owns the rows
                        // out[(t*nh+h)*hdv..+hdv] of its tokens t.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(
                                out_ptr.get().add((t * nh + h) * hdv),
                                hdv,
                            )
                        };
                        dst.copy_from_slice(&ot[i * hdv..(i + 1) * hdv]);
                    }
                }
            };
            m.pool.run(work);
            return Ok(());
        }
        let items = ChunkCounter::new(n * nh);
        let dims = (hd, nkv * hd, hdv, nkv * hdv);
        let work = |_: usize| {
            let mut acc = vec![f16::ZERO; hdv];
            while let Some(item) = items.next_chunk() {
                let (t, h) = (item / nh, item % nh);
                let p = pos0 + t;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let g = h / group;
                let qh = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
                let ks = &keys[(lo * nkv + g) * hd..];
                let vs = &values[(lo * nkv + g) * hdv..];
                // SAFETY: each (t, h) item is claimed once and owns out[(t*nh+h)*hdv..+hdv].
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add((t * nh + h) * hdv), hdv)
                };
                let n_kv = p + 1 - lo;
                let sink = sink_of(h);
                attn::attend_f16_sink(
                    m.isa, qh, ks, vs, dims, n_kv, scale, softcap, sink, &mut acc, dst,
                );
            }
        };
        m.pool.run(work);
        Ok(())
    }
}
