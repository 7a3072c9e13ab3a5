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

struct Keys<'a> {
    meta: &'a Metadata,
    arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{}", self.arch, suffix)
    }

    fn usize_opt(&self, suffix: &str) -> Result<Option<usize>> {
        let key = self.key(suffix);
        match self.meta.get(&key) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                // Per-layer arrays are accepted when every layer agrees.
                let mut first = None;
                for i in 0..a.len() {
                    let v = a
                        .get(i)
                        .and_then(|v| v.as_u64())
                        .ok_or_else(|| bad(&key, "expected an array of non-negative integers"))?;
                    match first {
                        None => first = Some(v),
                        Some(f) if f != v => {
                            return Err(bad(
                                &key,
                                "per-layer values that differ between layers are not supported",
                            ))
                        }
                        _ => {}
                    }
                }
                let v = first.ok_or_else(|| bad(&key, "empty array"))?;
                to_usize(&key, v).map(Some)
            }
            Some(v) => {
                let v = v
                    .as_u64()
                    .ok_or_else(|| bad(&key, "expected a non-negative integer"))?;
                to_usize(&key, v).map(Some)
            }
        }
    }

    fn usize_req(&self, suffix: &str) -> Result<usize> {
        self.usize_opt(suffix)?
            .ok_or_else(|| FormatError::MissingKey(self.key(suffix)))
    }

    fn f32_opt(&self, suffix: &str) -> Result<Option<f32>> {
        let key = self.key(suffix);
        match self.meta.get(&key) {
            None => Ok(None),
            Some(v) => {
                let f = v.as_f64().ok_or_else(|| bad(&key, "expected a number"))? as f32;
                if !f.is_finite() {
                    return Err(bad(&key, "must be finite"));
                }
                Ok(Some(f))
            }
        }
    }
}

/// llama.cpp's RoPE magnitude factor for YaRN (its context set-up): the mscale ratio for a
/// `log_mul`, divided by the `1 + 0.1 ln factor` that ggml's `rope_yarn` multiplies back.
fn yarn_attn_factor(factor: f32, log_mul: f32, arch: Architecture) -> f32 {
    let get_mscale = |scale: f32, mscale: f32| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * mscale * scale.ln() + 1.0
        }
    };
    let freq_scale = 1.0 / factor;
    let factor = 1.0 / freq_scale;
    let af = if log_mul != 0.0 {
        let mscale = if arch == Architecture::Deepseek2 && log_mul != 1.0 {
            log_mul
        } else {
            1.0
        };
        get_mscale(factor, mscale) / get_mscale(factor, log_mul)
    } else {
        get_mscale(factor, 1.0)
    };
    af * (1.0 / (1.0 + 0.1 * factor.ln()))
}

/// deepseek2's attention score scale (`src/models/deepseek2.cpp`): `mscale² / sqrt(head_dim_qk)`
/// with the YaRN mscale, 1 without YaRN.
fn mla_kq_scale(scaling: RopeScaling, mla: MlaConfig) -> f32 {
    let mscale = match scaling {
        RopeScaling::Yarn {
            factor,
            attn_factor,
            log_mul,
            ..
        } => {
            let freq_scale = 1.0 / factor;
            let org = attn_factor * (1.0 + 0.1 * (1.0 / freq_scale).ln());
            org * (1.0 + 0.1 * log_mul * (1.0 / freq_scale).ln())
        }
        _ => 1.0,
    };
    mscale * mscale / (mla.head_dim_qk as f32).sqrt()
}

fn bad(key: &str, reason: &str) -> FormatError {
    FormatError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn to_usize(key: &str, v: u64) -> Result<usize> {
    // Hyperparameters beyond 2^31 are corrupt in any model; this also keeps products sane.
    if v > (1 << 31) {
        return Err(bad(key, &format!("value {v} is implausibly large")));
    }
    Ok(v as usize)
}

fn positive(key: &str, v: usize) -> Result<usize> {
    if v == 0 {
        Err(bad(key, "must be greater than zero"))
    } else {
        Ok(v)
    }
}

impl ModelConfig {
    /// Reads and validates the config of `model` (metadata and tensor shapes).
    pub fn from_model(model: &GgufModel) -> Result<Self> {
        let cfg = Self::from_metadata(&model.metadata)?;
        cfg.check_tensors(model)
    }

    /// Reads and validates the config from metadata alone; `n_vocab` comes from the
    /// tokenizer's token list (or `{arch}.vocab_size`) and `tied_output` is left `false`.
    pub fn from_metadata(meta: &Metadata) -> Result<Self> {
        let arch_name = meta.get_str("general.architecture")?;
        let arch = Architecture::from_name(arch_name)?;
        let k = Keys {
            meta,
            arch: arch_name,
        };

        let n_block = positive(&k.key("block_count"), k.usize_req("block_count")?)?;
        let n_layer_nextn = k.usize_opt("nextn_predict_layers")?.unwrap_or(0);
        let n_layer = positive(
            &k.key("nextn_predict_layers"),
            n_block.saturating_sub(n_layer_nextn),
        )
        .map_err(|_| {
            bad(
                &k.key("nextn_predict_layers"),
                &format!("{n_layer_nextn} leaves no trunk layers of block_count {n_block}"),
            )
        })?;
        let n_embd = positive(&k.key("embedding_length"), k.usize_req("embedding_length")?)?;
        let n_head = positive(
            &k.key("attention.head_count"),
            k.usize_req("attention.head_count")?,
        )?;
        let n_head_kv = positive(
            &k.key("attention.head_count_kv"),
            k.usize_opt("attention.head_count_kv")?.unwrap_or(n_head),
        )?;
        if n_head % n_head_kv != 0 {
            return Err(bad(
                &k.key("attention.head_count_kv"),
                &format!("{n_head_kv} does not divide the query head count {n_head}"),
            ));
        }
        let default_head = if n_embd % n_head == 0 {
            Some(n_embd / n_head)
        } else {
            None
        };
        let head_dim_k = match k.usize_opt("attention.key_length")? {
            Some(v) => positive(&k.key("attention.key_length"), v)?,
            None => default_head.ok_or_else(|| {
                bad(
                    &k.key("attention.key_length"),
                    "absent, and embedding_length is not a multiple of head_count",
                )
            })?,
        };
        let head_dim_v = match k.usize_opt("attention.value_length")? {
            Some(v) => positive(&k.key("attention.value_length"), v)?,
            None => head_dim_k,
        };
        let n_ff = k.usize_opt("feed_forward_length")?.unwrap_or(0);
        let n_ctx_train = positive(
            &k.key("context_length"),
            k.usize_opt("context_length")?.unwrap_or(4096),
        )?;
        let rms_eps = k
            .f32_opt("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);
        if rms_eps <= 0.0 {
            return Err(bad(
                &k.key("attention.layer_norm_rms_epsilon"),
                "must be positive",
            ));
        }

        let dims = k.usize_opt("rope.dimension_count")?.unwrap_or(head_dim_k);
        if dims == 0 || dims > head_dim_k || dims % 2 != 0 {
            return Err(bad(
                &k.key("rope.dimension_count"),
                &format!("{dims} must be even and in 2..={head_dim_k} (the key head size)"),
            ));
        }
        let freq_base = k.f32_opt("rope.freq_base")?.unwrap_or(10000.0);
        if freq_base <= 0.0 {
            return Err(bad(&k.key("rope.freq_base"), "must be positive"));
        }
        let scaling = Self::rope_scaling(&k, arch, n_ctx_train)?;

        let n_expert = k.usize_opt("expert_count")?.unwrap_or(0);
        let moe = if n_expert > 0 {
            let used_key = k.key("expert_used_count");
            let n_expert_used = positive(&used_key, k.usize_req("expert_used_count")?)?;
            if n_expert_used > n_expert {
                return Err(bad(
                    &used_key,
                    &format!("{n_expert_used} exceeds expert_count {n_expert}"),
                ));
            }
            let n_ff_expert = match k.usize_opt("expert_feed_forward_length")? {
                Some(v) => positive(&k.key("expert_feed_forward_length"), v)?,
                None => positive(&k.key("feed_forward_length"), n_ff)?,
            };
            let n_ff_shared = match k.usize_opt("expert_shared_feed_forward_length")? {
                Some(v) => Some(v),
                None => k
                    .usize_opt("expert_shared_count")?
                    .filter(|&c| c > 0)
                    .map(|c| c * n_ff_expert),
            };
            let norm_top_k = match meta.get(&k.key("expert_weights_norm")) {
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(&k.key("expert_weights_norm"), "expected a bool"))?,
                // llama.cpp: Mixtral and Qwen3-MoE renormalise; Qwen2-MoE does not, nor
                // deepseek2 and GLM-4.5 unless their key says so, and gpt-oss's softmax over
                // the selected experts already sums to one.
                None => !matches!(
                    arch,
                    Architecture::Qwen2Moe
                        | Architecture::GptOss
                        | Architecture::Deepseek2
                        | Architecture::Glm4Moe
                ),
            };
            let lead_key = k.key("leading_dense_block_count");
            let n_leading_dense = k.usize_opt("leading_dense_block_count")?.unwrap_or(0);
            if n_leading_dense > n_layer {
                return Err(bad(
                    &lead_key,
                    &format!("{n_leading_dense} exceeds block_count {n_layer}"),
                ));
            }
            if n_leading_dense > 0 {
                positive(&k.key("feed_forward_length"), n_ff)
                    .map_err(|_| FormatError::MissingKey(k.key("feed_forward_length")))?;
            }
            let n_group = k.usize_opt("expert_group_count")?.unwrap_or(1).max(1);
            let n_group_used = k.usize_opt("expert_group_used_count")?.unwrap_or(n_group);
            if n_group > 1 {
                if n_expert % n_group != 0 {
                    return Err(bad(
                        &k.key("expert_group_count"),
                        &format!("{n_group} does not divide expert_count {n_expert}"),
                    ));
                }
                if n_group_used == 0
                    || n_group_used > n_group
                    || n_group_used * (n_expert / n_group) < n_expert_used
                {
                    return Err(bad(
                        &k.key("expert_group_used_count"),
                        &format!(
                            "{n_group_used} must be in 1..={n_group} and keep at least \
                             expert_used_count {n_expert_used} experts"
                        ),
                    ));
                }
            }
            // llama.cpp's `expert_gating_func`: 0 or absent the architecture's default
            // (sigmoid for GLM-4.5, softmax otherwise), 1 softmax, 2 sigmoid, 3 softmax over the
            // selected; gpt-oss's top-k-then-softmax is fixed by its architecture.
            let gating = match k.usize_opt("expert_gating_func")? {
                _ if arch == Architecture::GptOss => Gating::SoftmaxSelected,
                None | Some(0) => match arch {
                    Architecture::Glm4Moe => Gating::Sigmoid,
                    _ => Gating::Softmax,
                },
                Some(1) => Gating::Softmax,
                Some(2) => Gating::Sigmoid,
                Some(3) => Gating::SoftmaxSelected,
                Some(other) => {
                    return Err(bad(
                        &k.key("expert_gating_func"),
                        &format!(
                            "{other} is not supported (1 softmax, 2 sigmoid, 3 softmax over the \
                             selected)"
                        ),
                    ))
                }
            };
            // llama.cpp treats a scale of 0 as absent.
            let weights_scale = match k.f32_opt("expert_weights_scale")? {
                None | Some(0.0) => 1.0,
                Some(s) => s,
            };
            Some(MoeConfig {
                n_expert,
                n_expert_used,
                n_ff_expert,
                n_ff_shared,
                norm_top_k,
                gating,
                n_leading_dense,
                n_group,
                n_group_used,
                weights_scale,
            })
        } else {
            match arch {
                Architecture::Qwen2Moe
                | Architecture::Qwen3Moe
                | Architecture::Deepseek2
                | Architecture::GptOss
                | Architecture::Glm4Moe
                | Architecture::Qwen35Moe => {
                    return Err(FormatError::MissingKey(k.key("expert_count")))
                }
                _ => None,
            }
        };
        if moe.is_none() {
            positive(&k.key("feed_forward_length"), n_ff)
                .map_err(|_| FormatError::MissingKey(k.key("feed_forward_length")))?;
        }

        let (sliding_window, freq_base_swa) = match arch {
            Architecture::Gemma3 => {
                let window = k.usize_opt("attention.sliding_window")?;
                let pattern = k
                    .usize_opt("attention.sliding_window_pattern")?
                    .unwrap_or(6);
                (
                    window.map(|window| SlidingWindow { window, pattern }),
                    Some(10000.0),
                )
            }
            // gpt-oss: windowed even layers, full odd ones (llama.cpp's pattern 2); the
            // window is required, the base shared unless `rope.freq_base_swa` is set.
            Architecture::GptOss => {
                let key = k.key("attention.sliding_window");
                let window = positive(&key, k.usize_req("attention.sliding_window")?)?;
                (
                    Some(SlidingWindow { window, pattern: 2 }),
                    k.f32_opt("rope.freq_base_swa")?,
                )
            }
            _ => (None, None),
        };

        // Gemma scales the embedding by sqrt(n_embd) and its queries (not the scores); its
        // 27B (62 layers) by 1/sqrt(n_embd / n_head), llama.cpp's rule after the reference
        // implementation.
        let (embedding_scale, activation, attn_scale) = match arch {
            Architecture::Gemma3 => {
                let q = if n_layer == 62 {
                    1.0 / ((n_embd / n_head) as f32).sqrt()
                } else {
                    1.0 / (head_dim_k as f32).sqrt()
                };
                (
                    Some((n_embd as f32).sqrt()),
                    Activation::GegluF16Table,
                    AttnScale::Query(q),
                )
            }
            Architecture::GptOss => (
                None,
                Activation::SwigluOai {
                    alpha: 1.702,
                    limit: 7.0,
                },
                AttnScale::Scores(1.0 / (head_dim_k as f32).sqrt()),
            ),
            Architecture::Llama
            | Architecture::Qwen2
            | Architecture::Qwen3
            | Architecture::Qwen2Moe
            | Architecture::Qwen3Moe
            | Architecture::Glm4Moe
            | Architecture::Qwen35
            | Architecture::Qwen35Moe => (
                None,
                Activation::Swiglu,
                AttnScale::Scores(1.0 / (head_dim_k as f32).sqrt()),
            ),
            Architecture::Deepseek2 => (None, Activation::Swiglu, AttnScale::Scores(0.0)),
        };
        let (mla, attn_scale) = match arch {
            Architecture::Deepseek2 => {
                let mla = Self::mla(&k, n_head_kv, head_dim_k, head_dim_v, dims)?;
                (Some(mla), AttnScale::Scores(mla_kq_scale(scaling, mla)))
            }
            _ => (None, attn_scale),
        };

        let ssm = match arch {
            Architecture::Qwen35 | Architecture::Qwen35Moe => Some(Self::ssm(&k, n_layer)?),
            _ => None,
        };

        let n_vocab = match meta.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => k.usize_opt("vocab_size")?.unwrap_or(0),
        };

        Ok(ModelConfig {
            arch,
            name: meta
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            n_layer,
            n_layer_nextn,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ff,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope: RopeConfig {
                style: arch.rope_style(),
                dims,
                freq_base,
                freq_base_swa,
                scaling,
            },
            moe,
            sliding_window,
            attn_softcap: k.f32_opt("attn_logit_softcapping")?,
            final_softcap: k.f32_opt("final_logit_softcapping")?,
            tied_output: false,
            embedding_scale,
            activation,
            attn_scale,
            mla,
            attn_output_gate: ssm.is_some(),
            ssm,
        })
    }

    /// The Gated DeltaNet dimensions and which layers are linear: `attention.recurrent_layers`
    /// (one flag per layer) when present, else every layer but each
    /// `full_attention_interval`-th (default 4), as llama.cpp decides.
    fn ssm(k: &Keys<'_>, n_layer: usize) -> Result<SsmConfig> {
        let req = |key: &str| -> Result<usize> { positive(&k.key(key), k.usize_req(key)?) };
        let d_conv = req("ssm.conv_kernel")?;
        let d_inner = req("ssm.inner_size")?;
        let head_k_dim = req("ssm.state_size")?;
        let n_k_heads = req("ssm.group_count")?;
        let n_v_heads = req("ssm.time_step_rank")?;
        if d_inner % n_v_heads != 0 || d_inner / n_v_heads != head_k_dim {
            return Err(bad(
                &k.key("ssm.inner_size"),
                &format!(
                    "{d_inner} must be ssm.time_step_rank ({n_v_heads}) heads of ssm.state_size \
                     ({head_k_dim})"
                ),
            ));
        }
        if n_v_heads % n_k_heads != 0 {
            return Err(bad(
                &k.key("ssm.group_count"),
                &format!("{n_k_heads} does not divide ssm.time_step_rank {n_v_heads}"),
            ));
        }
        let rec_key = k.key("attention.recurrent_layers");
        let recurrent = match k.meta.get(&rec_key) {
            Some(Value::Array(a)) => {
                if a.len() < n_layer {
                    return Err(bad(
                        &rec_key,
                        &format!("has {} flags for {n_layer} layers", a.len()),
                    ));
                }
                (0..n_layer)
                    .map(|i| {
                        let v = a.get(i);
                        v.as_ref()
                            .and_then(|v| v.as_bool().or_else(|| v.as_u64().map(|x| x != 0)))
                            .ok_or_else(|| bad(&rec_key, "expected an array of bools"))
                    })
                    .collect::<Result<Vec<bool>>>()?
            }
            Some(_) => return Err(bad(&rec_key, "expected an array of bools")),
            None => {
                let key = k.key("full_attention_interval");
                let interval =
                    positive(&key, k.usize_opt("full_attention_interval")?.unwrap_or(4))?;
                (0..n_layer).map(|i| (i + 1) % interval != 0).collect()
            }
        };
        Ok(SsmConfig {
            d_conv,
            d_inner,
            head_k_dim,
            n_k_heads,
            n_v_heads,
            recurrent,
        })
    }

    /// The MLA dimensions of a deepseek2 model, checked against the absorbed cache layout
    /// its `key_length`/`value_length` describe.
    fn mla(
        k: &Keys<'_>,
        n_head_kv: usize,
        head_dim_k: usize,
        head_dim_v: usize,
        rope_dims: usize,
    ) -> Result<MlaConfig> {
        let kv_lora_rank = positive(
            &k.key("attention.kv_lora_rank"),
            k.usize_req("attention.kv_lora_rank")?,
        )?;
        let q_lora_rank = k.usize_opt("attention.q_lora_rank")?.filter(|&r| r > 0);
        let head_dim_qk = positive(
            &k.key("attention.key_length_mla"),
            k.usize_req("attention.key_length_mla")?,
        )?;
        let head_dim_v_mla = positive(
            &k.key("attention.value_length_mla"),
            k.usize_req("attention.value_length_mla")?,
        )?;
        if n_head_kv != 1 || head_dim_k != kv_lora_rank + rope_dims || head_dim_v != kv_lora_rank {
            return Err(bad(
                &k.key("attention.key_length"),
                &format!(
                    "MLA files store the absorbed layout: head_count_kv 1, key_length = \
                     kv_lora_rank + rope.dimension_count ({}), value_length = kv_lora_rank \
                     ({kv_lora_rank}); found {n_head_kv}, {head_dim_k}, {head_dim_v} (a file \
                     converted without split attn_k_b/attn_v_b is not supported)",
                    kv_lora_rank + rope_dims
                ),
            ));
        }
        if head_dim_qk <= rope_dims {
            return Err(bad(
                &k.key("attention.key_length_mla"),
                &format!("{head_dim_qk} must exceed rope.dimension_count {rope_dims}"),
            ));
        }
        Ok(MlaConfig {
            q_lora_rank,
            kv_lora_rank,
            head_dim_qk,
            head_dim_v: head_dim_v_mla,
        })
    }

    fn rope_scaling(k: &Keys<'_>, arch: Architecture, n_ctx_train: usize) -> Result<RopeScaling> {
        let ty_key = k.key("rope.scaling.type");
        let ty = match k.meta.get(&ty_key) {
            None => return Ok(RopeScaling::None),
            Some(v) => v
                .as_str()
                .ok_or_else(|| bad(&ty_key, "expected a string"))?,
        };
        let factor = k.f32_opt("rope.scaling.factor")?.unwrap_or(1.0);
        match ty {
            "none" => Ok(RopeScaling::None),
            "linear" if factor > 0.0 => Ok(RopeScaling::Linear { factor }),
            "yarn" if factor > 0.0 => {
                // deepseek2 files store the multiplier times 0.1 (llama.cpp cancels it).
                let log_mul = match arch {
                    Architecture::Deepseek2 => {
                        k.f32_opt("rope.scaling.yarn_log_multiplier")?
                            .unwrap_or(0.0)
                            / 0.1
                    }
                    _ => 0.0,
                };
                Ok(RopeScaling::Yarn {
                    factor,
                    // llama.cpp falls back to the training context.
                    original_context: k
                        .usize_opt("rope.scaling.original_context_length")?
                        .filter(|&n| n > 0)
                        .unwrap_or(n_ctx_train),
                    beta_fast: k.f32_opt("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                    beta_slow: k.f32_opt("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                    attn_factor: yarn_attn_factor(factor, log_mul, arch)
                        * k.f32_opt("rope.scaling.attn_factor")?.unwrap_or(1.0),
                    log_mul,
                })
            }
            "linear" | "yarn" => Err(bad(&k.key("rope.scaling.factor"), "must be positive")),
            other => Err(bad(
                &ty_key,
                &format!("unknown rope scaling type {other:?} (known: none, linear, yarn)"),
            )),
        }
    }

    /// Checks the config against the tensor table: the embedding's shape fixes `n_vocab`, the
    /// attention and FFN shapes must agree with the head counts and sizes.
    fn check_tensors(mut self, model: &GgufModel) -> Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base(arch: &str) -> Metadata {
        let mut m = Metadata::new();
        m.insert("general.architecture", Value::String(arch.into()))
            .unwrap();
        for (k, v) in [
            ("block_count", 4u32),
            ("embedding_length", 256),
            ("feed_forward_length", 512),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
        ] {
            m.insert(format!("{arch}.{k}"), Value::U32(v)).unwrap();
        }
        m
    }

    /// Qwen3.5: linear layers by the interval (or the explicit flags), KV only in the others,
    /// the recurrent state of the 397B's dimensions (186 MiB over 45 linear layers).
    #[test]
    fn qwen35_layers_and_state() {
        let mut m = base("qwen35moe");
        for (k, v) in [
            ("block_count", 60u32),
            ("embedding_length", 4096),
            ("attention.head_count", 32),
            ("attention.head_count_kv", 2),
            ("attention.key_length", 256),
            ("attention.value_length", 256),
            ("expert_count", 512),
            ("expert_used_count", 10),
            ("expert_feed_forward_length", 1024),
            ("ssm.conv_kernel", 4),
            ("ssm.state_size", 128),
            ("ssm.group_count", 16),
            ("ssm.time_step_rank", 64),
            ("ssm.inner_size", 8192),
        ] {
            m.set(format!("qwen35moe.{k}"), Value::U32(v));
        }
        let c = ModelConfig::from_metadata(&m).unwrap();
        let ssm = c.ssm.as_ref().unwrap();
        assert!(c.attn_output_gate && c.moe.unwrap().norm_top_k);
        assert_eq!((ssm.n_recurrent(), c.n_kv_layers()), (45, 15));
        assert!(c.is_recurrent_layer(0) && c.is_recurrent_layer(2) && !c.is_recurrent_layer(3));
        assert_eq!(
            (c.layer_slot(3), c.layer_slot(7), c.layer_slot(8)),
            (0, 1, 6)
        );
        assert_eq!(ssm.conv_channels(), 2 * 16 * 128 + 8192);
        assert_eq!(
            c.recurrent_state_bytes(),
            45 * (3 * 12288 + 64 * 128 * 128) * 4
        );
        assert_eq!(c.recurrent_state_bytes() >> 20, 186);
        assert_eq!(c.kv_bytes_per_token(2), 15 * 2 * 512 * 2);
        // Explicit flags win over the interval.
        let flags: Vec<bool> = (0..60).map(|i| i % 2 == 0).collect();
        m.set(
            "qwen35moe.attention.recurrent_layers",
            Value::Array(crate::Array::Bool(flags)),
        );
        let c = ModelConfig::from_metadata(&m).unwrap();
        assert!(c.is_recurrent_layer(0) && !c.is_recurrent_layer(1) && c.is_recurrent_layer(2));
        m.remove("qwen35moe.attention.recurrent_layers");
        m.set("qwen35moe.ssm.inner_size", Value::U32(8000));
        assert!(ModelConfig::from_metadata(&m).is_err());
    }

    #[test]
    fn llama_defaults() {
        let c = ModelConfig::from_metadata(&base("llama")).unwrap();
        assert_eq!(c.arch, Architecture::Llama);
        assert_eq!(c.head_dim_k, 64);
        assert_eq!(c.rope.dims, 64);
        assert_eq!(c.rope.style, RopeStyle::Normal);
        assert_eq!(c.rope.freq_base, 10000.0);
        assert!(c.moe.is_none());
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let mut m = base("qwen3");
        m.remove("qwen3.block_count");
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("qwen3.block_count"), "{e}");

        let mut m = base("qwen3");
        m.set("qwen3.attention.head_count_kv", Value::U32(3));
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("head_count_kv"), "{e}");

        let m = base("qwen3moe");
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("qwen3moe.expert_count"), "{e}");

        let m = base("mamba");
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("mamba"), "{e}");

        let mut m = base("llama");
        m.set("llama.block_count", Value::String("x".into()));
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("llama.block_count"), "{e}");
    }

    #[test]
    fn moe_and_gemma() {
        let mut m = base("qwen2moe");
        m.insert("qwen2moe.expert_count", Value::U32(16)).unwrap();
        m.insert("qwen2moe.expert_used_count", Value::U32(4))
            .unwrap();
        let c = ModelConfig::from_metadata(&m).unwrap();
        let moe = c.moe.unwrap();
        assert_eq!(
            (moe.n_expert, moe.n_expert_used, moe.n_ff_expert),
            (16, 4, 512)
        );
        assert!(!moe.norm_top_k);
        assert_eq!((moe.gating, moe.n_leading_dense), (Gating::Softmax, 0));
        assert!(c.is_moe_layer(0) && c.is_moe_layer(3));
        assert_eq!(c.activation, Activation::Swiglu);
        assert_eq!(c.attn_scale, AttnScale::Scores(0.125));
        assert_eq!(c.embedding_scale, None);
        m.insert("qwen2moe.leading_dense_block_count", Value::U32(1))
            .unwrap();
        let c = ModelConfig::from_metadata(&m).unwrap();
        assert!(!c.is_moe_layer(0) && c.is_moe_layer(1));
        m.set("qwen2moe.leading_dense_block_count", Value::U32(5));
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("leading_dense_block_count"), "{e}");
        m.set("qwen2moe.leading_dense_block_count", Value::U32(0));
        m.set("qwen2moe.expert_used_count", Value::U32(17));
        assert!(ModelConfig::from_metadata(&m).is_err());

        let mut g = base("gemma3");
        g.insert("gemma3.attention.sliding_window", Value::U32(512))
            .unwrap();
        let c = ModelConfig::from_metadata(&g).unwrap();
        assert!(c.is_swa_layer(0) && c.is_swa_layer(4) && !c.is_swa_layer(5));
        assert_eq!(c.rope.style, RopeStyle::Neox);
        assert_eq!(c.activation, Activation::GegluF16Table);
        assert_eq!(c.attn_scale, AttnScale::Query(0.125));
        assert_eq!(c.attn_scale.split(), (Some(0.125), 1.0));
        assert_eq!(c.embedding_scale, Some(16.0));
        assert!(!c.is_moe_layer(0));
    }

    /// gpt-oss: window on even layers, YaRN read with its original context (or the
    /// training context), softmax over the selected experts without renormalising, the
    /// clamped SwiGLU; the window is required.
    #[test]
    fn gpt_oss() {
        let mut m = base("gpt-oss");
        for (k, v) in [
            ("expert_count", 16u32),
            ("expert_used_count", 4),
            ("attention.sliding_window", 128),
            ("context_length", 8192),
        ] {
            m.set(format!("gpt-oss.{k}"), Value::U32(v));
        }
        m.set("gpt-oss.rope.scaling.type", Value::String("yarn".into()));
        m.set("gpt-oss.rope.scaling.factor", Value::F32(32.0));
        let c = ModelConfig::from_metadata(&m).unwrap();
        assert_eq!(c.arch, Architecture::GptOss);
        assert_eq!(c.rope.style, RopeStyle::Neox);
        match c.rope.scaling {
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                attn_factor,
                log_mul,
            } => {
                assert_eq!((factor, original_context), (32.0, 8192));
                assert_eq!((beta_fast, beta_slow, log_mul), (32.0, 1.0, 0.0));
                // llama.cpp's magnitude for gpt-oss: attn_factor 1 (tables carry 1 + 0.1 ln 32).
                assert!((attn_factor - 1.0).abs() < 1e-6, "{attn_factor}");
            }
            other => panic!("expected YaRN, got {other:?}"),
        }
        assert!(c.is_swa_layer(0) && !c.is_swa_layer(1) && c.is_swa_layer(2));
        assert_eq!(c.rope.freq_base_swa, None);
        let moe = c.moe.unwrap();
        assert_eq!(moe.gating, Gating::SoftmaxSelected);
        assert!(!moe.norm_top_k);
        assert_eq!(
            c.activation,
            Activation::SwigluOai {
                alpha: 1.702,
                limit: 7.0
            }
        );
        m.set(
            "gpt-oss.rope.scaling.original_context_length",
            Value::U32(4096),
        );
        let c = ModelConfig::from_metadata(&m).unwrap();
        assert!(matches!(
            c.rope.scaling,
            RopeScaling::Yarn {
                original_context: 4096,
                ..
            }
        ));
        m.remove("gpt-oss.attention.sliding_window");
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("gpt-oss.attention.sliding_window"), "{e}");
    }

    #[test]
    fn glm4moe_routing_nextn_and_partial_rope() {
        let mut m = base("glm4moe");
        for (k, v) in [
            ("block_count", 5u32),
            ("nextn_predict_layers", 1),
            ("expert_count", 16),
            ("expert_used_count", 4),
            ("expert_feed_forward_length", 128),
            ("expert_shared_count", 1),
            ("leading_dense_block_count", 1),
            ("rope.dimension_count", 32),
        ] {
            m.set(format!("glm4moe.{k}"), Value::U32(v));
        }
        m.set("glm4moe.expert_weights_scale", Value::F32(2.5));
        m.set("glm4moe.expert_weights_norm", Value::Bool(true));
        let c = ModelConfig::from_metadata(&m).unwrap();
        assert_eq!((c.n_layer, c.n_layer_nextn), (4, 1));
        assert_eq!(first_nextn_layer(&m), Some(4));
        assert_eq!(
            (c.rope.style, c.rope.dims, c.head_dim_k),
            (RopeStyle::Neox, 32, 64)
        );
        let moe = c.moe.unwrap();
        // No gating key: GLM-4.5 defaults to sigmoid, as llama.cpp.
        assert_eq!(moe.gating, Gating::Sigmoid);
        assert_eq!((moe.weights_scale, moe.norm_top_k), (2.5, true));
        assert_eq!((moe.n_ff_expert, moe.n_ff_shared), (128, Some(128)));
        assert!(!c.is_moe_layer(0) && c.is_moe_layer(1) && c.is_moe_layer(3));
        m.set("glm4moe.expert_gating_func", Value::U32(1));
        let moe = ModelConfig::from_metadata(&m).unwrap().moe.unwrap();
        assert_eq!(moe.gating, Gating::Softmax);
        m.set("glm4moe.expert_gating_func", Value::U32(4));
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("expert_gating_func"), "{e}");
        m.set("glm4moe.expert_gating_func", Value::U32(2));
        m.set("glm4moe.nextn_predict_layers", Value::U32(5));
        let e = ModelConfig::from_metadata(&m).unwrap_err().to_string();
        assert!(e.contains("nextn_predict_layers"), "{e}");
        // Without the key: all blocks are trunk; without the norm key, not renormalised.
        m.remove("glm4moe.nextn_predict_layers");
        m.remove("glm4moe.expert_weights_norm");
        let c = ModelConfig::from_metadata(&m).unwrap();
        assert_eq!((c.n_layer, c.n_layer_nextn), (5, 0));
        assert!(!c.moe.unwrap().norm_top_k);
        assert_eq!(first_nextn_layer(&m), None);
    }
}
