//! Tensor names per architecture, in the style of llama.cpp's `llama-arch.cpp`: which tensors
//! a layer has, which are required and which optional, for each architecture.

use flashstream_formats::Architecture;

/// The role of a tensor in a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Pre-attention RMSNorm weight.
    AttnNorm,
    /// Query projection.
    AttnQ,
    /// Key projection.
    AttnK,
    /// Value projection.
    AttnV,
    /// Output projection.
    AttnOut,
    /// Query bias.
    AttnQBias,
    /// Key bias.
    AttnKBias,
    /// Value bias.
    AttnVBias,
    /// Per-head query RMSNorm weight.
    AttnQNorm,
    /// Per-head key RMSNorm weight.
    AttnKNorm,
    /// RMSNorm after attention, before the residual add (Gemma).
    PostAttnNorm,
    /// Pre-FFN RMSNorm weight.
    FfnNorm,
    /// FFN gate projection.
    FfnGate,
    /// FFN up projection.
    FfnUp,
    /// FFN down projection.
    FfnDown,
    /// RMSNorm after the FFN, before the residual add (Gemma).
    PostFfwNorm,
    /// MoE router.
    FfnRouter,
    /// Fused expert gate projections (sliced per expert into expert units).
    FfnGateExps,
    /// Fused expert up projections.
    FfnUpExps,
    /// Fused expert down projections.
    FfnDownExps,
    /// Shared expert gate projection.
    FfnGateShexp,
    /// Shared expert up projection.
    FfnUpShexp,
    /// Shared expert down projection.
    FfnDownShexp,
    /// Shared expert sigmoid gate.
    FfnRouterShexp,
}

impl Role {
    /// The name of this role's tensor in layer `il`.
    pub fn tensor_name(self, il: usize) -> String {
        let (base, suffix) = match self {
            Role::AttnNorm => ("attn_norm", "weight"),
            Role::AttnQ => ("attn_q", "weight"),
            Role::AttnK => ("attn_k", "weight"),
            Role::AttnV => ("attn_v", "weight"),
            Role::AttnOut => ("attn_output", "weight"),
            Role::AttnQBias => ("attn_q", "bias"),
            Role::AttnKBias => ("attn_k", "bias"),
            Role::AttnVBias => ("attn_v", "bias"),
            Role::AttnQNorm => ("attn_q_norm", "weight"),
            Role::AttnKNorm => ("attn_k_norm", "weight"),
            Role::PostAttnNorm => ("post_attention_norm", "weight"),
            Role::FfnNorm => ("ffn_norm", "weight"),
            Role::FfnGate => ("ffn_gate", "weight"),
            Role::FfnUp => ("ffn_up", "weight"),
            Role::FfnDown => ("ffn_down", "weight"),
            Role::PostFfwNorm => ("post_ffw_norm", "weight"),
            Role::FfnRouter => ("ffn_gate_inp", "weight"),
            Role::FfnGateExps => ("ffn_gate_exps", "weight"),
            Role::FfnUpExps => ("ffn_up_exps", "weight"),
            Role::FfnDownExps => ("ffn_down_exps", "weight"),
            Role::FfnGateShexp => ("ffn_gate_shexp", "weight"),
            Role::FfnUpShexp => ("ffn_up_shexp", "weight"),
            Role::FfnDownShexp => ("ffn_down_shexp", "weight"),
            Role::FfnRouterShexp => ("ffn_gate_inp_shexp", "weight"),
        };
        format!("blk.{il}.{base}.{suffix}")
    }
}

/// The tensors of one layer of an architecture.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    /// Tensors every layer must have.
    pub required: &'static [Role],
    /// Tensors a layer may have.
    pub optional: &'static [Role],
}

use Role::*;

const ATTN: [Role; 5] = [AttnNorm, AttnQ, AttnK, AttnV, AttnOut];

/// The layer tensors of `arch` (`moe`: the model has experts).
pub fn layer_spec(arch: Architecture, moe: bool) -> LayerSpec {
    match (arch, moe) {
        (Architecture::Llama, false) => LayerSpec {
            required: &[
                AttnNorm, AttnQ, AttnK, AttnV, AttnOut, FfnNorm, FfnGate, FfnUp, FfnDown,
            ],
            optional: &[AttnQBias, AttnKBias, AttnVBias],
        },
        (Architecture::Llama, true) => LayerSpec {
            required: &[
                AttnNorm,
                AttnQ,
                AttnK,
                AttnV,
                AttnOut,
                FfnNorm,
                FfnRouter,
                FfnGateExps,
                FfnUpExps,
                FfnDownExps,
            ],
            optional: &[AttnQBias, AttnKBias, AttnVBias],
        },
        (Architecture::Qwen2, _) => LayerSpec {
            required: &[
                AttnNorm, AttnQ, AttnK, AttnV, AttnOut, AttnQBias, AttnKBias, AttnVBias, FfnNorm,
                FfnGate, FfnUp, FfnDown,
            ],
            optional: &[],
        },
        (Architecture::Qwen3, _) => LayerSpec {
            required: &[
                AttnNorm, AttnQ, AttnK, AttnV, AttnOut, AttnQNorm, AttnKNorm, FfnNorm, FfnGate,
                FfnUp, FfnDown,
            ],
            optional: &[],
        },
        (Architecture::Gemma3, _) => LayerSpec {
            required: &[
                AttnNorm,
                AttnQ,
                AttnK,
                AttnV,
                AttnOut,
                AttnQNorm,
                AttnKNorm,
                PostAttnNorm,
                FfnNorm,
                FfnGate,
                FfnUp,
                FfnDown,
                PostFfwNorm,
            ],
            optional: &[],
        },
        (Architecture::Qwen2Moe, _) => LayerSpec {
            required: &[
                AttnNorm,
                AttnQ,
                AttnK,
                AttnV,
                AttnOut,
                AttnQBias,
                AttnKBias,
                AttnVBias,
                FfnNorm,
                FfnRouter,
                FfnGateExps,
                FfnUpExps,
                FfnDownExps,
                FfnGateShexp,
                FfnUpShexp,
                FfnDownShexp,
                FfnRouterShexp,
            ],
            optional: &[],
        },
        (Architecture::Qwen3Moe, _) => LayerSpec {
            required: &[
                AttnNorm,
                AttnQ,
                AttnK,
                AttnV,
                AttnOut,
                AttnQNorm,
                AttnKNorm,
                FfnNorm,
                FfnRouter,
                FfnGateExps,
                FfnUpExps,
                FfnDownExps,
            ],
            optional: &[],
        },
    }
}

/// Whether every layer spec starts with the attention block (a sanity check for the table).
pub fn has_attention(spec: &LayerSpec) -> bool {
    ATTN.iter().all(|r| spec.required.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tables() {
        assert_eq!(Role::AttnQBias.tensor_name(3), "blk.3.attn_q.bias");
        assert_eq!(
            Role::FfnRouterShexp.tensor_name(0),
            "blk.0.ffn_gate_inp_shexp.weight"
        );
        for a in Architecture::ALL {
            for moe in [false, true] {
                assert!(has_attention(&layer_spec(a, moe)), "{a}");
            }
        }
    }
}
