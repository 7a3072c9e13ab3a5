//! The one table of tensor names and roles: which tensors each architecture has, what each is
//! for, and whether a model must have it.
//!
//! Every crate that needs a tensor name asks here: the scheduler (which tensors form which
//! unit, which are sliced per expert), the runtime (which weights a layer needs) and `mkmodel`
//! (which tensors a random model gets). The idea is llama.cpp's `LLM_TENSOR_NAMES` table; the
//! behaviour that is not a tensor (activation, scales, routing) is in
//! [`ModelConfig`](crate::ModelConfig), set from the architecture and its metadata.
//!
//! Adding an architecture here is one [`ArchTensors`] row in [`arch_tensors`]; adding a tensor
//! kind is one [`TensorRole`] variant with its name in [`TensorRole::base_name`].

use crate::config::Architecture;

/// What a tensor is for. A layer role's tensor is named `blk.{il}.{base}.{suffix}`
/// ([`TensorRole::name`]); a global role's has no layer prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorRole {
    /// Token embedding (`token_embd.weight`), also the output head of tied models.
    TokenEmbd,
    /// Final RMSNorm weight (`output_norm.weight`).
    OutputNorm,
    /// Output head (`output.weight`); absent when tied to the embedding.
    Output,
    /// RoPE frequency factors (`rope_freqs.weight`, Llama 3.1).
    RopeFreqs,
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
    /// MLA query down-projection (`attn_q_a`).
    AttnQA,
    /// RMSNorm weight of the query latent (`attn_q_a_norm`).
    AttnQANorm,
    /// MLA query up-projection (`attn_q_b`), heads of `[nope | rope]`.
    AttnQB,
    /// MLA key/value down-projection to `[latent | rope key]` (`attn_kv_a_mqa`).
    AttnKvAMqa,
    /// RMSNorm weight of the key/value latent (`attn_kv_a_norm`).
    AttnKvANorm,
    /// Per-head key up-projection `[nope, kv_lora_rank, n_head]` (`attn_k_b`), absorbed
    /// into the query.
    AttnKB,
    /// Per-head value up-projection `[kv_lora_rank, head_dim_v, n_head]` (`attn_v_b`),
    /// applied to the attention output.
    AttnVB,
    /// Per-expert score bias added for expert selection only (`exp_probs_b.bias`).
    FfnExpProbsB,
    /// Attention output projection bias (gpt-oss).
    AttnOutBias,
    /// Attention sinks: one logit per query head joining the softmax (gpt-oss).
    AttnSinks,
    /// MoE router bias (gpt-oss).
    FfnRouterBias,
    /// Fused expert gate biases, `[n_ff_expert, n_expert]` (sliced per expert).
    FfnGateExpsBias,
    /// Fused expert up biases.
    FfnUpExpsBias,
    /// Fused expert down biases, `[n_embd, n_expert]`.
    FfnDownExpsBias,
    /// Linear attention's joint `[q | k | v]` projection (`attn_qkv`, Qwen3.5).
    AttnQkv,
    /// Linear attention's output gate projection `z` (`attn_gate`).
    AttnGate,
    /// Depthwise causal convolution taps `[d_conv, channels]` (`ssm_conv1d`).
    SsmConv1d,
    /// Decay bias per value head (`ssm_dt.bias`).
    SsmDt,
    /// Decay rate per value head, `-exp(A_log)` (`ssm_a`, no suffix).
    SsmA,
    /// Delta-rule write strength projection (`ssm_beta`).
    SsmBeta,
    /// Decay projection (`ssm_alpha`).
    SsmAlpha,
    /// RMSNorm weight per value head of the output (`ssm_norm`).
    SsmNorm,
    /// Linear attention's output projection (`ssm_out`).
    SsmOut,
}

/// Whether a model must have a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Loading fails without it, naming it.
    Required,
    /// Used when present.
    Optional,
}

/// One tensor of an architecture: its role and whether it is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    /// The role.
    pub role: TensorRole,
    /// Required or optional.
    pub need: Need,
    /// The architecture's own base name for the role, where it differs from
    /// [`TensorRole::base_name`] (gpt-oss calls its pre-FFN norm `post_attention_norm`).
    pub base: Option<&'static str>,
}

impl TensorSpec {
    /// The tensor's name in layer `il` under this architecture's naming.
    pub fn name(&self, il: usize) -> String {
        match self.base {
            Some(b) if !self.role.is_global() => format!("blk.{il}.{b}{}", self.role.dot_suffix()),
            Some(b) => format!("{b}{}", self.role.dot_suffix()),
            None => self.role.name(il),
        }
    }
}

const fn req(role: TensorRole) -> TensorSpec {
    TensorSpec {
        role,
        need: Need::Required,
        base: None,
    }
}

const fn opt(role: TensorRole) -> TensorSpec {
    TensorSpec {
        role,
        need: Need::Optional,
        base: None,
    }
}

/// A required tensor under an architecture-specific base name.
const fn req_as(role: TensorRole, base: &'static str) -> TensorSpec {
    TensorSpec {
        role,
        need: Need::Required,
        base: Some(base),
    }
}

/// The tensors of one architecture, in the order a layer uses (and `mkmodel` writes) them.
#[derive(Debug, Clone, Copy)]
pub struct ArchTensors {
    /// The architecture.
    pub arch: Architecture,
    /// Tensors outside the layers.
    pub globals: &'static [TensorSpec],
    /// Attention block of every layer (its norms, projections, biases and post-norm), and
    /// the pre-FFN norm.
    pub attn: &'static [TensorSpec],
    /// Feed-forward block of a dense layer (every layer of a model without experts, and the
    /// leading dense layers of one with them).
    pub dense_ffn: &'static [TensorSpec],
    /// Feed-forward block of a MoE layer (router, experts, shared expert); empty when the
    /// architecture has no experts.
    pub moe_ffn: &'static [TensorSpec],
    /// The block replacing `attn` in linear-attention (recurrent) layers, and their pre-FFN
    /// norm; empty when the architecture has none.
    pub linear_attn: &'static [TensorSpec],
}

impl ArchTensors {
    /// The tensors of an attention layer: attention, then the dense or the MoE feed-forward
    /// block.
    pub fn layer(&self, moe_layer: bool) -> impl Iterator<Item = TensorSpec> + '_ {
        self.layer_of(false, moe_layer)
    }

    /// The tensors of a layer of either kind: attention (or, in a recurrent layer, linear
    /// attention), then the dense or the MoE feed-forward block.
    pub fn layer_of(
        &self,
        recurrent: bool,
        moe_layer: bool,
    ) -> impl Iterator<Item = TensorSpec> + '_ {
        let ffn = if moe_layer {
            self.moe_ffn
        } else {
            self.dense_ffn
        };
        let mixer = if recurrent {
            self.linear_attn
        } else {
            self.attn
        };
        mixer.iter().chain(ffn).copied()
    }

    /// Whether the architecture lists `role` for a layer of the given kind.
    pub fn has(&self, role: TensorRole, moe_layer: bool) -> bool {
        self.layer(moe_layer).any(|s| s.role == role)
    }
}

use TensorRole::*;

const GLOBALS: &[TensorSpec] = &[req(TokenEmbd), req(OutputNorm), opt(Output), opt(RopeFreqs)];
const ATTN_OPT_BIAS: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQ),
    req(AttnK),
    req(AttnV),
    req(AttnOut),
    opt(AttnQBias),
    opt(AttnKBias),
    opt(AttnVBias),
    req(FfnNorm),
];
const ATTN_BIAS: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQ),
    req(AttnK),
    req(AttnV),
    req(AttnOut),
    req(AttnQBias),
    req(AttnKBias),
    req(AttnVBias),
    req(FfnNorm),
];
const ATTN_QK_NORM: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQ),
    req(AttnK),
    req(AttnV),
    req(AttnOut),
    req(AttnQNorm),
    req(AttnKNorm),
    req(FfnNorm),
];
/// GLM-4.5 attention: optional q/k/v biases and q/k norms; its pre-FFN norm is named
/// `post_attention_norm`.
const ATTN_GLM4MOE: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQ),
    req(AttnK),
    req(AttnV),
    opt(AttnQBias),
    opt(AttnKBias),
    opt(AttnVBias),
    opt(AttnQNorm),
    opt(AttnKNorm),
    req(AttnOut),
    req_as(FfnNorm, "post_attention_norm"),
];
const FFN: &[TensorSpec] = &[req(FfnGate), req(FfnUp), req(FfnDown)];
const MOE: &[TensorSpec] = &[
    req(FfnRouter),
    req(FfnGateExps),
    req(FfnUpExps),
    req(FfnDownExps),
];
const MOE_SHARED_GATED: &[TensorSpec] = &[
    req(FfnRouter),
    req(FfnGateExps),
    req(FfnUpExps),
    req(FfnDownExps),
    req(FfnRouterShexp),
    req(FfnGateShexp),
    req(FfnUpShexp),
    req(FfnDownShexp),
];

/// Multi-head latent attention (deepseek2): the query through a low-rank pair (or one
/// `attn_q` without q low-rank), keys and values through one latent.
const ATTN_MLA: &[TensorSpec] = &[
    req(AttnNorm),
    opt(AttnQA),
    opt(AttnQANorm),
    opt(AttnQB),
    opt(AttnQ),
    req(AttnKvAMqa),
    req(AttnKvANorm),
    req(AttnKB),
    req(AttnVB),
    req(AttnOut),
    req(FfnNorm),
];
/// Sigmoid routing with a selection bias (required by llama.cpp for GLM-4.5, optional for
/// deepseek2), and an ungated shared expert.
const MOE_BIASED_SHARED: &[TensorSpec] = &[
    req(FfnRouter),
    opt(FfnExpProbsB),
    req(FfnGateExps),
    req(FfnUpExps),
    req(FfnDownExps),
    req(FfnGateShexp),
    req(FfnUpShexp),
    req(FfnDownShexp),
];
/// gpt-oss attention: biases on every projection, sinks; its pre-FFN norm is named
/// `post_attention_norm`.
const ATTN_GPT_OSS: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQ),
    req(AttnK),
    req(AttnV),
    req(AttnOut),
    req(AttnQBias),
    req(AttnKBias),
    req(AttnVBias),
    req(AttnOutBias),
    req(AttnSinks),
    req_as(FfnNorm, "post_attention_norm"),
];
/// Qwen3.5 gated full attention: `attn_q` rows per head `[q | gate]`, per-head q/k norms;
/// the pre-FFN norm is named `post_attention_norm`.
const ATTN_QWEN35: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQ),
    req(AttnK),
    req(AttnV),
    req(AttnQNorm),
    req(AttnKNorm),
    req(AttnOut),
    req_as(FfnNorm, "post_attention_norm"),
];
/// Qwen3.5 Gated DeltaNet linear attention (`model/deltanet.rs` in the runtime).
const LINEAR_ATTN_QWEN35: &[TensorSpec] = &[
    req(AttnNorm),
    req(AttnQkv),
    req(AttnGate),
    req(SsmConv1d),
    req(SsmDt),
    req(SsmA),
    req(SsmBeta),
    req(SsmAlpha),
    req(SsmNorm),
    req(SsmOut),
    req_as(FfnNorm, "post_attention_norm"),
];
/// gpt-oss experts: router and every expert projection with a bias.
const MOE_BIASED: &[TensorSpec] = &[
    req(FfnRouter),
    req(FfnRouterBias),
    req(FfnGateExps),
    req(FfnGateExpsBias),
    req(FfnUpExps),
    req(FfnUpExpsBias),
    req(FfnDownExps),
    req(FfnDownExpsBias),
];

/// Every architecture's row (one per [`Architecture`], in [`Architecture::ALL`] order).
static TABLE: [ArchTensors; 11] = [
    ArchTensors {
        arch: Architecture::Llama,
        globals: GLOBALS,
        attn: ATTN_OPT_BIAS,
        dense_ffn: FFN,
        moe_ffn: MOE,
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Qwen2,
        globals: GLOBALS,
        attn: ATTN_BIAS,
        dense_ffn: FFN,
        moe_ffn: &[],
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Qwen3,
        globals: GLOBALS,
        attn: ATTN_QK_NORM,
        dense_ffn: FFN,
        moe_ffn: &[],
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Gemma3,
        globals: GLOBALS,
        attn: &[
            req(AttnNorm),
            req(AttnQ),
            req(AttnK),
            req(AttnV),
            req(AttnOut),
            req(AttnQNorm),
            req(AttnKNorm),
            req(PostAttnNorm),
            req(FfnNorm),
        ],
        dense_ffn: &[req(FfnGate), req(FfnUp), req(FfnDown), req(PostFfwNorm)],
        moe_ffn: &[],
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Qwen2Moe,
        globals: GLOBALS,
        attn: ATTN_BIAS,
        dense_ffn: FFN,
        moe_ffn: MOE_SHARED_GATED,
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Qwen3Moe,
        globals: GLOBALS,
        attn: ATTN_QK_NORM,
        dense_ffn: FFN,
        moe_ffn: MOE,
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Deepseek2,
        globals: GLOBALS,
        attn: ATTN_MLA,
        dense_ffn: FFN,
        moe_ffn: MOE_BIASED_SHARED,
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::GptOss,
        globals: GLOBALS,
        attn: ATTN_GPT_OSS,
        dense_ffn: FFN,
        moe_ffn: MOE_BIASED,
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Glm4Moe,
        globals: GLOBALS,
        attn: ATTN_GLM4MOE,
        dense_ffn: FFN,
        moe_ffn: MOE_BIASED_SHARED,
        linear_attn: &[],
    },
    ArchTensors {
        arch: Architecture::Qwen35,
        globals: GLOBALS,
        attn: ATTN_QWEN35,
        dense_ffn: FFN,
        moe_ffn: &[],
        linear_attn: LINEAR_ATTN_QWEN35,
    },
    ArchTensors {
        arch: Architecture::Qwen35Moe,
        globals: GLOBALS,
        attn: ATTN_QWEN35,
        dense_ffn: FFN,
        moe_ffn: MOE_SHARED_GATED,
        linear_attn: LINEAR_ATTN_QWEN35,
    },
];

/// The tensor table row of `arch`.
pub fn arch_tensors(arch: Architecture) -> &'static ArchTensors {
    // An exhaustive match, so a new architecture does not compile without its row.
    let i = match arch {
        Architecture::Llama => 0,
        Architecture::Qwen2 => 1,
        Architecture::Qwen3 => 2,
        Architecture::Gemma3 => 3,
        Architecture::Qwen2Moe => 4,
        Architecture::Qwen3Moe => 5,
        Architecture::Deepseek2 => 6,
        Architecture::GptOss => 7,
        Architecture::Glm4Moe => 8,
        Architecture::Qwen35 => 9,
        Architecture::Qwen35Moe => 10,
    };
    &TABLE[i]
}

/// The roles whose tensors are sliced per expert (`[.., n_expert]`, the last dimension).
const EXPERT_ROLES: [TensorRole; 6] = [
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    FfnGateExpsBias,
    FfnUpExpsBias,
    FfnDownExpsBias,
];

impl TensorRole {
    /// The name between the layer prefix and the suffix (`attn_q` of `blk.3.attn_q.bias`), or
    /// the whole stem of a global tensor.
    pub const fn base_name(self) -> &'static str {
        match self {
            TokenEmbd => "token_embd",
            OutputNorm => "output_norm",
            Output => "output",
            RopeFreqs => "rope_freqs",
            AttnNorm => "attn_norm",
            AttnQ | AttnQBias => "attn_q",
            AttnK | AttnKBias => "attn_k",
            AttnV | AttnVBias => "attn_v",
            AttnOut => "attn_output",
            AttnQNorm => "attn_q_norm",
            AttnKNorm => "attn_k_norm",
            PostAttnNorm => "post_attention_norm",
            FfnNorm => "ffn_norm",
            FfnGate => "ffn_gate",
            FfnUp => "ffn_up",
            FfnDown => "ffn_down",
            PostFfwNorm => "post_ffw_norm",
            FfnRouter => "ffn_gate_inp",
            FfnGateExps => "ffn_gate_exps",
            FfnUpExps => "ffn_up_exps",
            FfnDownExps => "ffn_down_exps",
            FfnGateShexp => "ffn_gate_shexp",
            FfnUpShexp => "ffn_up_shexp",
            FfnDownShexp => "ffn_down_shexp",
            FfnRouterShexp => "ffn_gate_inp_shexp",
            AttnQA => "attn_q_a",
            AttnQANorm => "attn_q_a_norm",
            AttnQB => "attn_q_b",
            AttnKvAMqa => "attn_kv_a_mqa",
            AttnKvANorm => "attn_kv_a_norm",
            AttnKB => "attn_k_b",
            AttnVB => "attn_v_b",
            FfnExpProbsB => "exp_probs_b",
            AttnOutBias => "attn_output",
            AttnSinks => "attn_sinks",
            FfnRouterBias => "ffn_gate_inp",
            FfnGateExpsBias => "ffn_gate_exps",
            FfnUpExpsBias => "ffn_up_exps",
            FfnDownExpsBias => "ffn_down_exps",
            AttnQkv => "attn_qkv",
            AttnGate => "attn_gate",
            SsmConv1d => "ssm_conv1d",
            SsmDt => "ssm_dt",
            SsmA => "ssm_a",
            SsmBeta => "ssm_beta",
            SsmAlpha => "ssm_alpha",
            SsmNorm => "ssm_norm",
            SsmOut => "ssm_out",
        }
    }

    /// `weight` or `bias`, or empty for a tensor named without one (`ssm_a`).
    pub const fn suffix(self) -> &'static str {
        match self {
            AttnQBias | AttnKBias | AttnVBias | AttnOutBias | FfnRouterBias | FfnGateExpsBias
            | FfnUpExpsBias | FfnDownExpsBias | FfnExpProbsB | SsmDt => "bias",
            SsmA => "",
            _ => "weight",
        }
    }

    /// `.suffix`, or nothing when the role's tensor has no suffix.
    fn dot_suffix(self) -> String {
        match self.suffix() {
            "" => String::new(),
            s => format!(".{s}"),
        }
    }

    /// Whether the tensor is outside the layers.
    pub const fn is_global(self) -> bool {
        matches!(self, TokenEmbd | OutputNorm | Output | RopeFreqs)
    }

    /// Whether the tensor holds every expert of a layer, sliced per expert into expert units.
    pub fn is_expert(self) -> bool {
        EXPERT_ROLES.contains(&self)
    }

    /// The tensor's name in layer `il` (`il` is ignored for a global role).
    pub fn name(self, il: usize) -> String {
        if self.is_global() {
            self.global_name()
        } else {
            format!("blk.{il}.{}{}", self.base_name(), self.dot_suffix())
        }
    }

    /// The name of a global role's tensor (`token_embd.weight`).
    pub fn global_name(self) -> String {
        format!("{}.{}", self.base_name(), self.suffix())
    }

    /// For an expert role, the older one-tensor-per-expert name of expert `ex` in layer `il`
    /// (`blk.{il}.ffn_gate.{ex}.weight` for [`TensorRole::FfnGateExps`]).
    pub fn per_expert_name(self, il: usize, ex: usize) -> Option<String> {
        self.per_expert_base()
            .map(|b| format!("blk.{il}.{b}.{ex}.{}", self.suffix()))
    }

    fn per_expert_base(self) -> Option<&'static str> {
        match self {
            FfnGateExps => Some("ffn_gate"),
            FfnUpExps => Some("ffn_up"),
            FfnDownExps => Some("ffn_down"),
            _ => None,
        }
    }
}

/// Where a tensor of the one-tensor-per-expert layout belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerExpertName {
    /// The expert role it is a slice of.
    pub role: TensorRole,
    /// Layer index.
    pub layer: usize,
    /// Expert index.
    pub expert: usize,
}

/// Parses `blk.N.ffn_{gate,up,down}.E.weight` (the older per-expert layout).
pub fn parse_per_expert(name: &str) -> Option<PerExpertName> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    EXPERT_ROLES.iter().find_map(|&role| {
        let rest = rest
            .strip_prefix(role.per_expert_base()?)?
            .strip_prefix('.')?;
        let (expert, suffix) = rest.split_once('.')?;
        (suffix == role.suffix()).then_some(())?;
        Some(PerExpertName {
            role,
            layer: layer.parse().ok()?,
            expert: expert.parse().ok()?,
        })
    })
}

/// The weight matrices of a dense layer that may be streamed as units of their own (sub-layer
/// pieces), in the order the forward pass multiplies by them. Each is used only through a
/// matrix product (never read element-wise), so the runtime can lease it on its own; a
/// layer's other tensors (norms, biases, convolution taps, per-head MLA factors) stay in the
/// layer's core unit.
pub const PIECE_ROLES: [TensorRole; 15] = [
    TensorRole::AttnQkv,
    TensorRole::AttnGate,
    TensorRole::SsmBeta,
    TensorRole::SsmAlpha,
    TensorRole::AttnQA,
    TensorRole::AttnKvAMqa,
    TensorRole::AttnQB,
    TensorRole::AttnQ,
    TensorRole::AttnK,
    TensorRole::AttnV,
    TensorRole::SsmOut,
    TensorRole::AttnOut,
    TensorRole::FfnGate,
    TensorRole::FfnUp,
    TensorRole::FfnDown,
];

/// If `name` is one of layer `layer`'s [`PIECE_ROLES`] matrices, its index in that list.
pub fn piece_index(name: &str, layer: usize) -> Option<usize> {
    PIECE_ROLES.iter().position(|r| r.name(layer) == name)
}

/// Whether `name` is a fused expert tensor of layer `layer` (sliced per expert).
pub fn is_fused_expert(name: &str, layer: usize) -> bool {
    EXPERT_ROLES.iter().any(|r| r.name(layer) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(AttnQBias.name(3), "blk.3.attn_q.bias");
        assert_eq!(FfnRouterShexp.name(0), "blk.0.ffn_gate_inp_shexp.weight");
        assert_eq!(TokenEmbd.name(7), "token_embd.weight");
        assert_eq!(Output.global_name(), "output.weight");
        assert_eq!(
            FfnUpExps.per_expert_name(2, 5).as_deref(),
            Some("blk.2.ffn_up.5.weight")
        );
        assert_eq!(AttnQ.per_expert_name(2, 5), None);
    }

    #[test]
    fn per_expert_names_parse() {
        assert_eq!(
            parse_per_expert("blk.12.ffn_down.3.weight"),
            Some(PerExpertName {
                role: FfnDownExps,
                layer: 12,
                expert: 3
            })
        );
        for bad in [
            "blk.1.ffn_down.weight",
            "blk.1.ffn_down.x.weight",
            "blk.1.ffn_down.3.bias",
            "blk.x.ffn_up.3.weight",
            "blk.1.ffn_gate_exps.weight",
            "blk.1.attn_q.3.weight",
        ] {
            assert_eq!(parse_per_expert(bad), None, "{bad}");
        }
        assert!(is_fused_expert("blk.4.ffn_gate_exps.weight", 4));
        assert!(!is_fused_expert("blk.4.ffn_gate_exps.weight", 3));
        assert!(!is_fused_expert("blk.4.ffn_gate_inp.weight", 4));
    }

    #[test]
    fn every_architecture_has_one_row() {
        for a in Architecture::ALL {
            assert_eq!(TABLE.iter().filter(|t| t.arch == a).count(), 1, "{a}");
            let t = arch_tensors(a);
            assert_eq!(t.arch, a);
            for moe in [false, true] {
                if moe && t.moe_ffn.is_empty() {
                    continue;
                }
                let qkv: &[TensorRole] = if t.has(AttnKvAMqa, moe) {
                    &[AttnKB, AttnVB]
                } else {
                    &[AttnK, AttnV]
                };
                for &r in [AttnNorm, AttnQ, AttnOut, FfnNorm].iter().chain(qkv) {
                    assert!(t.has(r, moe), "{a} lacks {r:?}");
                }
                assert!(t.layer(moe).all(|s| !s.role.is_global()), "{a}");
            }
            assert!(t.globals.iter().all(|s| s.role.is_global()), "{a}");
            assert!(t.dense_ffn.iter().all(|s| !s.role.is_expert()), "{a}");
        }
        assert!(arch_tensors(Architecture::Qwen2Moe).has(FfnRouterShexp, true));
        assert!(!arch_tensors(Architecture::Qwen3).has(AttnQBias, false));
        let glm = arch_tensors(Architecture::Glm4Moe);
        assert!(glm.has(FfnExpProbsB, true) && !glm.has(FfnRouterShexp, true));
        assert!(glm.has(FfnGate, false) && !glm.has(FfnExpProbsB, false));
        assert_eq!(FfnExpProbsB.name(3), "blk.3.exp_probs_b.bias");
        // The pre-FFN norm under its `post_attention_norm` name, as gpt-oss's.
        let names: Vec<String> = glm.layer(false).map(|s| s.name(0)).collect();
        assert!(names
            .iter()
            .any(|x| x == "blk.0.post_attention_norm.weight"));
        assert!(!names.iter().any(|x| x == "blk.0.ffn_norm.weight"));
        let ds = arch_tensors(Architecture::Deepseek2);
        assert!(ds.has(AttnQA, false) && ds.has(AttnKvAMqa, true) && !ds.has(AttnK, true));
        assert!(ds.has(FfnExpProbsB, true) && !ds.has(FfnRouterShexp, true));
        assert_eq!(FfnExpProbsB.name(1), "blk.1.exp_probs_b.bias");
        assert!(!AttnKB.is_expert() && !FfnExpProbsB.is_expert());
        let q35 = arch_tensors(Architecture::Qwen35Moe);
        let lin: Vec<String> = q35.layer_of(true, true).map(|s| s.name(0)).collect();
        for n in [
            "blk.0.ssm_a",
            "blk.0.ssm_dt.bias",
            "blk.0.attn_qkv.weight",
            "blk.0.post_attention_norm.weight",
            "blk.0.ffn_gate_inp_shexp.weight",
        ] {
            assert!(lin.iter().any(|x| x == n), "{n} in {lin:?}");
        }
        assert!(!lin.iter().any(|x| x == "blk.0.attn_q.weight"));
        assert!(q35.has(AttnQNorm, true) && !q35.has(SsmA, true));
    }

    /// gpt-oss: the pre-FFN norm under its own name, biases sliced per expert like weights.
    #[test]
    fn gpt_oss_names() {
        let t = arch_tensors(Architecture::GptOss);
        let names: Vec<String> = t.layer(true).map(|s| s.name(2)).collect();
        for n in [
            "blk.2.post_attention_norm.weight",
            "blk.2.attn_sinks.weight",
            "blk.2.attn_output.bias",
            "blk.2.ffn_gate_inp.bias",
            "blk.2.ffn_down_exps.bias",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(!names.iter().any(|x| x == "blk.2.ffn_norm.weight"));
        assert!(is_fused_expert("blk.2.ffn_up_exps.bias", 2));
        assert!(!is_fused_expert("blk.2.ffn_gate_inp.bias", 2));
        assert_eq!(FfnUpExpsBias.per_expert_name(2, 1), None);
    }
}
