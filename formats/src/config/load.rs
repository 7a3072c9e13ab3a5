//! Reading a [`ModelConfig`] from GGUF metadata: the keys, their defaults and the checks of
//! one value against another (the tensor shapes are checked in `check.rs`).

use super::*;

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

pub(super) fn bad(key: &str, reason: &str) -> FormatError {
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
}
