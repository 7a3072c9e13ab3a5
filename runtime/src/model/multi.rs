//! Shared weight passes: one pass over the (streamed) weights advances several sessions.
//!
//! [`MultiPass::eval`] takes a list of sessions, each with the tokens it adds (one token for a
//! decode step, a prompt chunk for a new sequence), and runs them through every layer
//! together: every matrix product takes all their rows at once (each weight is read, and
//! leased, once for all of them), while attention reads each session's own KV cache at its
//! own positions, and a MoE layer runs the union of the experts its rows route to. Each
//! session's rows get exactly the arithmetic [`Session::eval`] would give them alone: the
//! batch kernels are bit-identical to the one-row ones per row, attention is computed per
//! session with the same segment length, and expert outputs are summed per row; tests hold
//! the logits equal bit for bit.

use flashstream_scheduler::UnitId;

use super::forward::{f32s, output_head, project_qkv, rms_rows, Scratch};
use super::{Model, Role, RuntimeError, Session};

/// One session's share of a shared pass.
pub struct SeqInput<'a, 'm> {
    /// The session (its KV cache and position).
    pub session: &'a mut Session<'m>,
    /// The tokens it adds at its next positions (at least one).
    pub tokens: &'a [u32],
    /// Which rows' logits are wanted (a prompt chunk before the last needs none; a
    /// speculative verification needs every row).
    pub want_logits: RowLogits,
}

/// Which logits a [`SeqInput`] wants back from a shared pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLogits {
    /// None.
    None,
    /// Its last token's (`n_vocab` values).
    Last,
    /// Every token's, row after row (`tokens.len() * n_vocab` values).
    All,
}

/// Scratch of shared passes (reused across calls; sized by the largest pass seen).
#[derive(Default)]
pub struct MultiPass {
    all: Scratch,
    seg: Scratch,
}

impl std::fmt::Debug for MultiPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiPass").finish_non_exhaustive()
    }
}

/// Bytes a [`MultiPass`] holds beyond one session's scratch for passes of at most
/// `max_batch` rows: the per-session copy of the attention projections and output.
pub fn multi_pass_extra_bytes(c: &flashstream_formats::ModelConfig, max_batch: usize) -> u64 {
    let q = (c.n_head * c.head_dim_k) as u64;
    let kdim = (c.n_head_kv * c.head_dim_k) as u64;
    let vdim = (c.n_head_kv * c.head_dim_v) as u64;
    let attn = (c.n_head * c.head_dim_v) as u64;
    // f32 values, with a margin for vector growth.
    (q + kdim + vdim + attn) * max_batch as u64 * 4 * 2
}

/// Copies rows `r0..r1` of `src` (rows of `width`) into `dst`.
fn rows_into(src: &[f32], width: usize, r0: usize, r1: usize, dst: &mut Vec<f32>) {
    dst.clear();
    dst.extend_from_slice(&src[r0 * width..r1 * width]);
}

impl MultiPass {
    /// A pass scratch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs every input's tokens through the model in one pass and returns, per input, the
    /// logits it wants (its last token's, or every token's row after row; `None` when it
    /// wants none). Every
    /// session must belong to `model`; together they may add at most the model's
    /// `max_batch` tokens. On error no session advances.
    pub fn eval(
        &mut self,
        model: &Model,
        inputs: &mut [SeqInput<'_, '_>],
    ) -> Result<Vec<Option<Vec<f32>>>, RuntimeError> {
        let c = &model.config;
        let total: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if c.mla.is_some() {
            return Err(RuntimeError::Invalid(format!(
                "shared passes do not run multi-head latent attention ({}); evaluate each \
                 session on its own (parallel 1)",
                c.arch.name()
            )));
        }
        if total > model.max_batch {
            return Err(RuntimeError::Invalid(format!(
                "a shared pass of {total} tokens exceeds the batch of {} (give fewer prompt tokens per pass)",
                model.max_batch
            )));
        }
        for inp in inputs.iter() {
            if !std::ptr::eq(inp.session.model(), model) {
                return Err(RuntimeError::Invalid(
                    "a shared pass was given a session of another model".into(),
                ));
            }
            if inp.tokens.is_empty() {
                return Err(RuntimeError::Invalid(
                    "every sequence of a shared pass adds at least one token".into(),
                ));
            }
            let needed = inp.session.pos() + inp.tokens.len();
            if needed > inp.session.n_ctx() {
                return Err(RuntimeError::ContextFull {
                    needed,
                    n_ctx: inp.session.n_ctx(),
                    n_ctx_train: c.n_ctx_train,
                });
            }
            if let Some(&t) = inp.tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
                return Err(RuntimeError::BadToken {
                    token: t,
                    n_vocab: c.n_vocab,
                });
            }
        }
        let _one_pass_at_a_time = model.eval_lock.lock();
        model.source.before_pass()?;
        let _span = tracing::debug_span!("multi_eval", seqs = inputs.len(), n = total).entered();
        let r = self.pass(model, inputs, total);
        if r.is_ok() {
            for inp in inputs.iter_mut() {
                inp.session.pos += inp.tokens.len();
            }
        }
        r
    }

    fn pass(
        &mut self,
        m: &Model,
        inputs: &mut [SeqInput<'_, '_>],
        n: usize,
    ) -> Result<Vec<Option<Vec<f32>>>, RuntimeError> {
        let c = &m.config;
        let e = c.n_embd;
        let (s, seg) = (&mut self.all, &mut self.seg);
        let tokens: Vec<u32> = inputs
            .iter()
            .flat_map(|i| i.tokens.iter().copied())
            .collect();
        // Row ranges of each input.
        let mut ranges = Vec::with_capacity(inputs.len());
        let mut r = 0;
        for inp in inputs.iter() {
            ranges.push((r, r + inp.tokens.len()));
            r += inp.tokens.len();
        }
        let (pass, pos0, t_pass) = (m.trace.next_pass(), inputs[0].session.pos, m.trace.now());
        inputs[0].session.embed(s, &tokens)?;
        let qd = c.n_head * c.head_dim_k;
        let kd = c.n_head_kv * c.head_dim_k;
        let vd = c.n_head_kv * c.head_dim_v;
        let ad = c.n_head * c.head_dim_v;
        for il in 0..c.n_layer {
            let _l = tracing::trace_span!("layer", il).entered();
            let t_layer = m.trace.now();
            let lease = m.source.lease(UnitId::Layer(il))?;
            let req = |r: Role| m.layer_weight(il, r);

            // Attention: projections of all rows at once, attention per session.
            rms_rows(
                &s.x,
                f32s(&lease, req(Role::AttnNorm)?)?,
                c.rms_eps,
                &mut s.cur,
            );
            if c.ssm.is_some() {
                // Qwen3.5: each session's rows through its own linear-attention state or
                // gated attention (the same arithmetic as its own eval), then the shared rest.
                let w = if c.is_recurrent_layer(il) {
                    c.ssm.as_ref().map_or(ad, |x| x.d_inner)
                } else {
                    ad
                };
                s.attn.clear();
                s.attn.resize(n * w, 0.0);
                for (inp, &(r0, r1)) in inputs.iter_mut().zip(&ranges) {
                    rows_into(&s.cur, e, r0, r1, &mut seg.cur);
                    inp.session.mixer(seg, il, &lease, r1 - r0)?;
                    s.attn[r0 * w..r1 * w].copy_from_slice(&seg.attn[..(r1 - r0) * w]);
                }
                inputs[0].session.finish_layer(s, il, &lease, n)?;
                m.trace_compute(pass, t_layer, pos0, n, || format!("blk.{il}"));
                continue;
            }
            project_qkv(m, s, il, &lease, n)?;
            s.attn.clear();
            s.attn.resize(n * ad, 0.0);
            for (inp, &(r0, r1)) in inputs.iter_mut().zip(&ranges) {
                rows_into(&s.q, qd, r0, r1, &mut seg.q);
                rows_into(&s.k, kd, r0, r1, &mut seg.k);
                rows_into(&s.v, vd, r0, r1, &mut seg.v);
                inp.session.attend(seg, il, &lease, r1 - r0)?;
                s.attn[r0 * ad..r1 * ad].copy_from_slice(&seg.attn[..(r1 - r0) * ad]);
            }
            inputs[0].session.finish_layer(s, il, &lease, n)?;
            m.trace_compute(pass, t_layer, pos0, n, || format!("blk.{il}"));
        }
        let seqs = inputs.len();
        let what = || format!("pass {pass} ({n} rows, {seqs} sequences)");

        // Output head on the rows whose logits are wanted, each row's arithmetic its own.
        let rows: Vec<(usize, usize)> = (0..inputs.len())
            .filter_map(|i| match inputs[i].want_logits {
                RowLogits::None => None,
                RowLogits::Last => Some((i, ranges[i].1 - 1)),
                RowLogits::All => Some((i, ranges[i].0)),
            })
            .flat_map(|(i, from)| (from..ranges[i].1).map(move |r| (i, r)))
            .collect();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
        if rows.is_empty() {
            m.trace_pass(pass, t_pass, pos0, n, what);
            return Ok(out);
        }
        // The wanted rows move to the front of `s.x` (no longer needed after the last layer);
        // rows only move towards the front, in order, so none is overwritten before it moves.
        for (j, &(_, r)) in rows.iter().enumerate() {
            s.x.copy_within(r * e..(r + 1) * e, j * e);
        }
        s.x.truncate(rows.len() * e);
        let t_head = m.trace.now();
        output_head(m, s, 0)?;
        m.trace_compute(pass, t_head, pos0, n, || "output".into());
        m.trace_pass(pass, t_pass, pos0, n, what);
        let nv = s.tmp.len() / rows.len();
        for (j, &(i, _)) in rows.iter().enumerate() {
            out[i]
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&s.tmp[j * nv..(j + 1) * nv]);
        }
        Ok(out)
    }
}
