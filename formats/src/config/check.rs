//! Checking a [`ModelConfig`] against the model's tensor shapes.

use super::load::bad;
use super::*;

impl ModelConfig {
    /// Checks the config against the tensor table: the embedding's shape fixes `n_vocab`, the
    /// attention and FFN shapes must agree with the head counts and sizes.
    pub(super) fn check_tensors(mut self, model: &GgufModel) -> Result<Self> {
        let embd = model.require_tensor(&TensorRole::TokenEmbd.global_name())?;
        self.expect_shape(embd, &[self.n_embd as u64, 0])?;
        let vocab = embd.shape.get(1).copied().unwrap_or(0) as usize;
        if self.n_vocab != 0 && self.n_vocab != vocab {
            return Err(bad(
                "tokenizer.ggml.tokens",
                &format!(
                    "has {} tokens but token_embd.weight has {vocab} rows",
                    self.n_vocab
                ),
            ));
        }
        self.n_vocab = vocab;
        let output = model.tensor(&TensorRole::Output.global_name());
        self.tied_output = output.is_none();
        if let Some(out) = output {
            self.expect_shape(out, &[self.n_embd as u64, vocab as u64])?;
        }
        let q_out = (self.n_head * self.head_dim_k) as u64;
        let kv_k = (self.n_head_kv * self.head_dim_k) as u64;
        let kv_v = (self.n_head_kv * self.head_dim_v) as u64;
        let e = self.n_embd as u64;
        for il in 0..self.n_layer {
            let need = |r: TensorRole| model.require_tensor(&r.name(il));
            if let Some(mla) = self.mla {
                self.check_mla(model, il, mla)?;
            } else if let Some(ssm) = self.ssm.as_ref().filter(|_| self.is_recurrent_layer(il)) {
                let ch = ssm.conv_channels() as u64;
                let vh = ssm.n_v_heads as u64;
                self.expect_shape(need(TensorRole::AttnQkv)?, &[e, ch])?;
                self.expect_shape(need(TensorRole::AttnGate)?, &[e, ssm.d_inner as u64])?;
                self.expect_shape(need(TensorRole::SsmConv1d)?, &[ssm.d_conv as u64, ch])?;
                self.expect_shape(need(TensorRole::SsmAlpha)?, &[e, vh])?;
                self.expect_shape(need(TensorRole::SsmBeta)?, &[e, vh])?;
                self.expect_shape(need(TensorRole::SsmDt)?, &[vh])?;
                self.expect_shape(need(TensorRole::SsmA)?, &[vh])?;
                self.expect_shape(need(TensorRole::SsmNorm)?, &[ssm.head_v_dim() as u64])?;
                self.expect_shape(need(TensorRole::SsmOut)?, &[ssm.d_inner as u64, e])?;
            } else {
                let q_out = if self.attn_output_gate {
                    2 * q_out
                } else {
                    q_out
                };
                self.expect_shape(need(TensorRole::AttnQ)?, &[e, q_out])?;
                self.expect_shape(need(TensorRole::AttnK)?, &[e, kv_k])?;
                self.expect_shape(need(TensorRole::AttnV)?, &[e, kv_v])?;
                self.expect_shape(
                    need(TensorRole::AttnOut)?,
                    &[(self.n_head * self.head_dim_v) as u64, e],
                )?;
            }
            match self.moe.filter(|_| self.is_moe_layer(il)) {
                None => {
                    let ff = self.n_ff as u64;
                    self.expect_shape(need(TensorRole::FfnUp)?, &[e, ff])?;
                    self.expect_shape(need(TensorRole::FfnDown)?, &[ff, e])?;
                }
                Some(m) => {
                    self.expect_shape(need(TensorRole::FfnRouter)?, &[e, m.n_expert as u64])?;
                    // Fused expert tensors; the older per-expert names are also accepted.
                    let fused = TensorRole::FfnUpExps;
                    if let Some(up) = model.tensor(&fused.name(il)) {
                        self.expect_shape(up, &[e, m.n_ff_expert as u64, m.n_expert as u64])?;
                    } else {
                        let n = fused.per_expert_name(il, 0).unwrap_or_default();
                        let up = model.tensor(&n).ok_or_else(|| {
                            FormatError::MissingTensor(format!(
                                "{} (or per-expert {n})",
                                fused.name(il)
                            ))
                        })?;
                        self.expect_shape(up, &[e, m.n_ff_expert as u64])?;
                    }
                }
            }
        }
        Ok(self)
    }

    /// The MLA projections of layer `il` (llama.cpp's shapes for split `attn_k_b`/`attn_v_b`).
    fn check_mla(&self, model: &GgufModel, il: usize, mla: MlaConfig) -> Result<()> {
        let need = |r: TensorRole| model.require_tensor(&r.name(il));
        let (e, h) = (self.n_embd as u64, self.n_head as u64);
        let rope = self.rope.dims as u64;
        let nope = (mla.head_dim_qk - self.rope.dims) as u64;
        let (qk, lora) = (mla.head_dim_qk as u64, mla.kv_lora_rank as u64);
        match mla.q_lora_rank {
            Some(r) => {
                let r = r as u64;
                self.expect_shape(need(TensorRole::AttnQA)?, &[e, r])?;
                self.expect_shape(need(TensorRole::AttnQB)?, &[r, h * qk])?;
            }
            None => self.expect_shape(need(TensorRole::AttnQ)?, &[e, h * qk])?,
        }
        self.expect_shape(need(TensorRole::AttnKvAMqa)?, &[e, lora + rope])?;
        self.expect_shape(need(TensorRole::AttnKB)?, &[nope, lora, h])?;
        self.expect_shape(need(TensorRole::AttnVB)?, &[lora, mla.head_dim_v as u64, h])?;
        self.expect_shape(need(TensorRole::AttnOut)?, &[h * mla.head_dim_v as u64, e])
    }

    fn expect_shape(&self, t: &crate::TensorInfo, want: &[u64]) -> Result<()> {
        let ok = t.shape.len() == want.len()
            && t.shape
                .iter()
                .zip(want)
                .all(|(&got, &w)| w == 0 || got == w);
        if ok {
            Ok(())
        } else {
            Err(FormatError::BadTensorShape {
                name: t.name.clone(),
                reason: format!(
                    "shape {:?} does not match the config ({} expects {:?}, 0 = any)",
                    t.shape, self.arch, want
                ),
            })
        }
    }
}
