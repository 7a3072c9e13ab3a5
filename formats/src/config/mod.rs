//! Typed, validated model configs.
//!
//! [`ModelConfig::from_model`] reads the hyperparameters an architecture needs from GGUF
//! metadata (`{arch}.block_count`, `{arch}.attention.head_count`, ...), fills documented
//! defaults, checks them against each other and against the tensor table, and names the key at
//! fault when something is missing or inconsistent.

use crate::gguf::{GgufModel, Metadata, Value};
use crate::tensor_names::TensorRole;
use crate::{FormatError, Result};

/// An architecture flashstream runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// Llama 2/3, SmolLM, Mistral; with `expert_count` set, Mixtral-style MoE.
    Llama,
    /// Qwen2: llama with q/k/v biases.
    Qwen2,
    /// Qwen3: per-head q/k RMS norms.
    Qwen3,
    /// Gemma 3: embedding scaling, extra norms, GELU, interleaved sliding-window attention.
    Gemma3,
    /// Qwen2-MoE: experts plus a sigmoid-gated shared expert, q/k/v biases.
    Qwen2Moe,
    /// Qwen3-MoE: experts with renormalised top-k weights, per-head q/k norms.
    Qwen3Moe,
    /// DeepSeek-V2/V3, Kimi-K2: multi-head latent attention ([`MlaConfig`]), sigmoid routing
    /// with a score bias and expert groups, leading dense layers, a shared expert.
    Deepseek2,
    /// gpt-oss: biased projections, attention sinks, sliding window on even layers, YaRN,
    /// biased experts with a clamped SwiGLU, softmax over the selected experts.
    GptOss,
    /// GLM-4.5/4.6/4.7 and GLM-4.5-Air: q/k/v biases, per-head q/k norms, partial NeoX RoPE,
    /// leading dense layers, sigmoid + score-bias routing, an ungated shared expert, and
    /// NextN/MTP layers after the trunk (skipped).
    Glm4Moe,
    /// Qwen3.5 (dense): Gated-DeltaNet linear-attention layers ([`SsmConfig`]) between gated
    /// full-attention layers (every `full_attention_interval`-th).
    Qwen35,
    /// Qwen3.5-MoE: the Qwen3.5 layers with experts and a sigmoid-gated shared expert.
    Qwen35Moe,
}

impl Architecture {
    /// Every supported architecture.
    pub const ALL: [Architecture; 11] = [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Gemma3,
        Architecture::Qwen2Moe,
        Architecture::Qwen3Moe,
        Architecture::Deepseek2,
        Architecture::GptOss,
        Architecture::Glm4Moe,
        Architecture::Qwen35,
        Architecture::Qwen35Moe,
    ];

    /// The `general.architecture` string.
    pub const fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Gemma3 => "gemma3",
            Architecture::Qwen2Moe => "qwen2moe",
            Architecture::Qwen3Moe => "qwen3moe",
            Architecture::Deepseek2 => "deepseek2",
            Architecture::GptOss => "gpt-oss",
            Architecture::Glm4Moe => "glm4moe",
            Architecture::Qwen35 => "qwen35",
            Architecture::Qwen35Moe => "qwen35moe",
        }
    }

    /// Parses a `general.architecture` string; an unknown one is an error naming it.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.name() == name)
            .ok_or_else(|| FormatError::UnsupportedArchitecture(name.to_string()))
    }

    /// How this architecture rotates query/key pairs (llama.cpp's `llama_model_rope_type`).
    pub const fn rope_style(self) -> RopeStyle {
        match self {
            Architecture::Llama | Architecture::Deepseek2 => RopeStyle::Normal,
            _ => RopeStyle::Neox,
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which elements RoPE pairs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (llama).
    Normal,
    /// Halves `(i, i + d/2)` (GPT-NeoX, Qwen, Gemma).
    Neox,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// None.
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The factor.
        factor: f32,
    },
    /// YaRN: frequencies interpolated by `1/factor` below the correction range, kept above
    /// it, ramped between (ggml's `rope_yarn`), cos/sin scaled by `attn_factor·(1 + 0.1 ln
    /// factor)`.
    Yarn {
        /// The factor.
        factor: f32,
        /// Context length the model was trained on before scaling.
        original_context: usize,
        /// `rope.scaling.yarn_beta_fast` (default 32).
        beta_fast: f32,
        /// `rope.scaling.yarn_beta_slow` (default 1).
        beta_slow: f32,
        /// The magnitude factor given to RoPE (llama.cpp's `yarn_attn_factor` after its
        /// context set-up: the mscale ratio, divided by `1 + 0.1 ln factor`).
        attn_factor: f32,
        /// `rope.scaling.yarn_log_multiplier` as llama.cpp uses it (deepseek2: the stored value
        /// divided by 0.1), 0 when absent.
        log_mul: f32,
    },
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Pairing.
    pub style: RopeStyle,
    /// Rotated dimensions per head (`rope.dimension_count`, default the key head size).
    pub dims: usize,
    /// Base frequency (`rope.freq_base`, default 10000).
    pub freq_base: f32,
    /// Base frequency of sliding-window layers (Gemma 3: 10000).
    pub freq_base_swa: Option<f32>,
    /// Scaling.
    pub scaling: RopeScaling,
}

/// The gated activation of the feed-forward blocks: `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `silu(gate) * up` (llama, Qwen, Mixtral).
    Swiglu,
    /// `gelu(gate) * up`, GELU's tanh form through ggml's f16 table (Gemma).
    GegluF16Table,
    /// gpt-oss's clamped SwiGLU: `x·σ(alpha·x)·(y + 1)` with `x = min(gate, limit)`,
    /// `y = clamp(up, -limit, limit)` (llama.cpp's `swiglu_oai`, alpha 1.702, limit 7).
    SwigluOai {
        /// Slope inside the sigmoid.
        alpha: f32,
        /// Clamp of the gate (above) and the up projection (both sides).
        limit: f32,
    },
}

/// Where attention's score scale is applied (the placement is visible in the last bits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttnScale {
    /// Scores multiplied by this (usually `1/sqrt(head_dim_k)`).
    Scores(f32),
    /// Queries multiplied by this before attention, scores not scaled (Gemma, as llama.cpp).
    Query(f32),
}

impl AttnScale {
    /// The query pre-scale (if any) and the score scale.
    pub fn split(self) -> (Option<f32>, f32) {
        match self {
            AttnScale::Scores(s) => (None, s),
            AttnScale::Query(s) => (Some(s), 1.0),
        }
    }
}

/// How the router's logits become the weights of the selected experts.
///
/// The scores are computed from the logits as this says; top-k selects on the scores plus the
/// layer's expert score bias (`exp_probs_b`, when present; deepseek2 within the best expert
/// groups), the weights are the unbiased scores of the selected experts, renormalised if
/// [`MoeConfig::norm_top_k`] and times [`MoeConfig::weights_scale`]
/// (`runtime/src/model/routing.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gating {
    /// Softmax over all experts (Mixtral, Qwen-MoE; `expert_gating_func` 1).
    Softmax,
    /// Sigmoid of each logit (deepseek2, glm4moe); the layer's `exp_probs_b` score bias, when
    /// present, is added for the selection only (within the best groups when
    /// [`MoeConfig::n_group`] > 1); the weights are the unbiased sigmoids.
    Sigmoid,
    /// Top-k of the raw (biased) logits, then a softmax over the selected k only (gpt-oss,
    /// llama.cpp's `SOFTMAX_WEIGHT`).
    SoftmaxSelected,
}

/// Mixture-of-experts parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    /// Experts per layer (`expert_count`).
    pub n_expert: usize,
    /// Experts used per token (`expert_used_count`).
    pub n_expert_used: usize,
    /// Hidden size of one expert (`expert_feed_forward_length`, default `feed_forward_length`).
    pub n_ff_expert: usize,
    /// Hidden size of the shared expert, if any (`expert_shared_feed_forward_length`, else
    /// `expert_shared_count × n_ff_expert` when `expert_shared_count` is set).
    pub n_ff_shared: Option<usize>,
    /// Whether the selected experts' weights are renormalised to sum to one
    /// (`expert_weights_norm`; the sum is clamped below at 2^-14 first, as llama.cpp does).
    pub norm_top_k: bool,
    /// Factor on the selected experts' weights after renormalising (`expert_weights_scale`;
    /// 1 when absent or 0).
    pub weights_scale: f32,
    /// How router logits become expert weights.
    pub gating: Gating,
    /// Leading layers with a dense FFN instead of experts (`leading_dense_block_count`,
    /// default 0).
    pub n_leading_dense: usize,
    /// Expert groups (`expert_group_count`, default 1): with more than one, only experts of
    /// the [`MoeConfig::n_group_used`] groups with the best top-2 score sums are selectable.
    pub n_group: usize,
    /// Groups kept (`expert_group_used_count`, default `n_group`).
    pub n_group_used: usize,
}

/// Multi-head latent attention (deepseek2), in the absorbed form llama.cpp computes: the
/// cache holds per position one latent of `kv_lora_rank` values and one rope key of
/// `rope.dims` values (the config's `n_head_kv` is 1, `head_dim_k` their sum, `head_dim_v`
/// the latent), the per-head key and value up-projections are applied to the query and to
/// the attention output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaConfig {
    /// Rank of the query down-projection (`attention.q_lora_rank`); `None` when the queries
    /// are one projection `attn_q` (DeepSeek-V2-Lite).
    pub q_lora_rank: Option<usize>,
    /// Rank of the key/value latent (`attention.kv_lora_rank`).
    pub kv_lora_rank: usize,
    /// Query/key head size before absorption, nope part then rope part
    /// (`attention.key_length_mla`).
    pub head_dim_qk: usize,
    /// Value head size after the up-projection (`attention.value_length_mla`).
    pub head_dim_v: usize,
}

/// Gated DeltaNet linear attention (Qwen3.5), llama.cpp's `ssm.*` keys.
///
/// A linear layer projects `[q | k | v]` (`conv_channels` values), runs a causal depthwise
/// convolution of `d_conv` taps over them, and keeps per sequence the last `d_conv - 1` inputs
/// of every channel and a `head_v_dim × head_v_dim` f32 state per value head: a fixed size
/// whatever the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsmConfig {
    /// Convolution taps (`ssm.conv_kernel`).
    pub d_conv: usize,
    /// Value width, `n_v_heads · head_v_dim` (`ssm.inner_size`).
    pub d_inner: usize,
    /// Key head size (`ssm.state_size`).
    pub head_k_dim: usize,
    /// Key (and query) heads (`ssm.group_count`).
    pub n_k_heads: usize,
    /// Value heads (`ssm.time_step_rank`).
    pub n_v_heads: usize,
    /// Per layer: whether it is a linear (recurrent) layer.
    pub recurrent: Vec<bool>,
}

impl SsmConfig {
    /// Value head size.
    pub fn head_v_dim(&self) -> usize {
        self.d_inner / self.n_v_heads
    }

    /// Channels of the convolution: `[q | k | v]`.
    pub fn conv_channels(&self) -> usize {
        2 * self.n_k_heads * self.head_k_dim + self.d_inner
    }

    /// f32 values of one linear layer's state per sequence: the convolution's last
    /// `d_conv - 1` inputs of every channel and the delta-rule matrices.
    pub fn state_values_per_layer(&self) -> usize {
        (self.d_conv - 1) * self.conv_channels() + self.n_v_heads * self.head_v_dim().pow(2)
    }

    /// Linear layers.
    pub fn n_recurrent(&self) -> usize {
        self.recurrent.iter().filter(|&&r| r).count()
    }
}

/// Sliding-window attention layout (Gemma 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    /// Window length in tokens.
    pub window: usize,
    /// Every `pattern`-th layer (the last of each group) uses global attention.
    pub pattern: usize,
}

impl SlidingWindow {
    /// Whether layer `il` uses the sliding window.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.pattern == 0 || !(il + 1).is_multiple_of(self.pattern)
    }
}

/// The index of the first NextN / multi-token-prediction layer (`block_count −
/// nextn_predict_layers` of the model's architecture), when the metadata declares such layers.
///
/// Those layers (GLM-4.5, DeepSeek-V3) follow the trunk and serve only speculative decoding,
/// which flashstream does not do; their tensors are left out of the units, like llama.cpp
/// skips them when it runs without MTP. Reads only the two keys, so it works for any
/// architecture string; `None` when either is absent or not a count.
pub fn first_nextn_layer(meta: &Metadata) -> Option<usize> {
    let arch = meta.get("general.architecture")?.as_str()?;
    let get = |k: &str| {
        meta.get(&format!("{arch}.{k}"))?
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
    };
    let nextn = get("nextn_predict_layers").filter(|&n| n > 0)?;
    get("block_count")?.checked_sub(nextn)
}

/// A model's validated hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Architecture,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// Number of transformer blocks run (the trunk: `block_count` minus the NextN layers).
    pub n_layer: usize,
    /// NextN / multi-token-prediction layers after the trunk (`nextn_predict_layers`), which
    /// flashstream does not run: their tensors are neither loaded nor streamed.
    pub n_layer_nextn: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Key (and query) head size.
    pub head_dim_k: usize,
    /// Value head size.
    pub head_dim_v: usize,
    /// Dense feed-forward hidden size (0 for MoE models without a dense FFN).
    pub n_ff: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE.
    pub rope: RopeConfig,
    /// MoE parameters, for models with experts.
    pub moe: Option<MoeConfig>,
    /// Sliding-window attention, where the architecture has it.
    pub sliding_window: Option<SlidingWindow>,
    /// Attention logit soft-capping (`attn_logit_softcapping`), where present.
    pub attn_softcap: Option<f32>,
    /// Final logit soft-capping (`final_logit_softcapping`), where present.
    pub final_softcap: Option<f32>,
    /// Whether the output head reuses `token_embd.weight` (no `output.weight`).
    pub tied_output: bool,
    /// Factor applied to the embedding rows (Gemma: `sqrt(n_embd)`).
    pub embedding_scale: Option<f32>,
    /// Feed-forward activation (dense FFN, experts and shared expert alike).
    pub activation: Activation,
    /// Attention score scale and where it is applied.
    pub attn_scale: AttnScale,
    /// Multi-head latent attention, for architectures with it.
    pub mla: Option<MlaConfig>,
    /// Gated DeltaNet linear-attention layers (Qwen3.5).
    pub ssm: Option<SsmConfig>,
    /// Whether each query head's projection is followed by a gate of the same size
    /// (`attn_q` rows per head `[q | gate]`) that scales the attention output by its sigmoid
    /// (Qwen3.5).
    pub attn_output_gate: bool,
}

mod check;
mod load;
#[cfg(test)]
mod tests;

impl ModelConfig {
    /// Whether layer `il`'s feed-forward block is a mixture of experts (not one of the
    /// leading dense layers of a MoE model).
    pub fn is_moe_layer(&self, il: usize) -> bool {
        self.moe.is_some_and(|m| il >= m.n_leading_dense)
    }

    /// Whether layer `il` is a linear-attention (recurrent) layer without a KV cache.
    pub fn is_recurrent_layer(&self, il: usize) -> bool {
        self.ssm
            .as_ref()
            .is_some_and(|s| s.recurrent.get(il).copied().unwrap_or(false))
    }

    /// Layer `il`'s index among the layers of its kind (the KV cache's layer index for an
    /// attention layer, the recurrent state's for a linear one); `il` without linear layers.
    pub fn layer_slot(&self, il: usize) -> usize {
        match &self.ssm {
            None => il,
            Some(s) => {
                let rec = s.recurrent.get(il).copied().unwrap_or(false);
                s.recurrent[..il.min(s.recurrent.len())]
                    .iter()
                    .filter(|&&r| r == rec)
                    .count()
            }
        }
    }

    /// Layers with a KV cache (all but the recurrent ones).
    pub fn n_kv_layers(&self) -> usize {
        self.n_layer - self.ssm.as_ref().map_or(0, |s| s.n_recurrent())
    }

    /// Bytes of recurrent state one sequence keeps over all linear layers (f32), whatever
    /// its length; 0 without linear layers.
    pub fn recurrent_state_bytes(&self) -> u64 {
        self.ssm.as_ref().map_or(0, |s| {
            s.n_recurrent() as u64 * s.state_values_per_layer() as u64 * 4
        })
    }

    /// Whether layer `il` uses sliding-window attention.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some_and(|s| s.is_swa_layer(il))
    }

    /// Bytes of K and V cache per token over all layers, at `bytes_per_value` (2 for f16).
    /// With MLA the values are the first `kv_lora_rank` values of each key row, not stored
    /// again.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        self.n_kv_layers() * self.n_head_kv * self.kv_values_per_head() * bytes_per_value
    }

    /// Cache values stored per position, layer and KV head: `head_dim_k + head_dim_v`, or
    /// `head_dim_k` alone with MLA (the latent and the rope key).
    pub fn kv_values_per_head(&self) -> usize {
        match self.mla {
            Some(_) => self.head_dim_k,
            None => self.head_dim_k + self.head_dim_v,
        }
    }
}
