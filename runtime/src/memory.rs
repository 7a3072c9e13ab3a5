//! What the runtime will allocate beside the weights, computed from the config alone, so the
//! scheduler can count it against the budget before anything is allocated.
//!
//! The figures are upper bounds of what [`crate::model::Session`] allocates for a batch of at
//! most `max_batch` tokens (activations, quantized activations, attention scratch per thread,
//! MoE routing buffers, logits), with a margin for vector growth; a test runs real models
//! under a counting allocator and checks the bound holds.

use flashstream_formats::{Array, GgmlType, Metadata, ModelConfig, Value};
use flashstream_scheduler::RuntimeNeeds;

use crate::model::kv::{KvCache, KvTypes};

/// Inputs of [`runtime_needs`] besides the config.
#[derive(Debug, Clone, Copy)]
pub struct NeedsOptions {
    /// Largest number of tokens evaluated together (prompt chunks are at most this long).
    pub max_batch: usize,
    /// Compute threads (each has its own attention scratch).
    pub threads: usize,
    /// Positions whose logits one eval returns at most (1 for generation; the sequence
    /// length, up to `max_batch`, for teacher forcing).
    pub logits_rows: usize,
    /// Storage types of the KV cache.
    pub kv_types: KvTypes,
}

impl Default for NeedsOptions {
    fn default() -> Self {
        NeedsOptions {
            max_batch: 512,
            threads: 1,
            logits_rows: 1,
            kv_types: KvTypes::default(),
        }
    }
}

/// Bytes per KV-cache position (f16 keys and values of every layer). With MLA one row of
/// `kv_lora_rank + rope dims` per layer (the latent, which is also the value, and the rope
/// key), as llama.cpp caches it.
/// Linear-attention layers (Qwen3.5) have no KV cache.
pub fn kv_bytes_per_position(c: &ModelConfig) -> u64 {
    c.n_kv_layers() as u64 * c.n_head_kv as u64 * c.kv_values_per_head() as u64 * 2
}

/// [`kv_bytes_per_position`] for a cache of `types` (what [`KvCache::with_types`] allocates
/// per position). MLA and f16 caches are f16; a type the model cannot use
/// ([`crate::model::kv::check_kv_types`]) is counted as f16 (loading refuses it).
pub fn kv_bytes_per_position_for(c: &ModelConfig, types: KvTypes) -> u64 {
    if types.is_f16() || c.mla.is_some() {
        return kv_bytes_per_position(c);
    }
    let (kd, vd) = (c.n_head_kv * c.head_dim_k, c.n_head_kv * c.head_dim_v);
    KvCache::bytes_for_types(c.n_kv_layers(), 1, kd, vd, types)
        .unwrap_or_else(|| kv_bytes_per_position(c))
}

/// Bytes one quantized activation row of length `k` takes, for the worst paired type.
fn act_row_bytes(k: usize) -> u64 {
    // Q8_K (292 bytes per 256) is the largest paired type per value; F32 activations (for F32
    // weights) are 4 bytes per value.
    let worst = [
        GgmlType::Q8_K,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::F16,
        GgmlType::F32,
    ]
    .iter()
    .filter_map(|t| t.row_bytes(k.div_ceil(256) as u64 * 256))
    .max()
    .unwrap_or(4 * k as u64);
    worst.div_ceil(64) * 64
}

/// The runtime's fixed allocations for `c` (named, for the plan's budget lines; the first is
/// the batch-dependent activations and scratch) and its
/// KV-cache cost per position.
pub fn runtime_needs(c: &ModelConfig, o: &NeedsOptions) -> RuntimeNeeds {
    let n = o.max_batch.max(1) as u64;
    let e = c.n_embd as u64;
    let q = (c.n_head * c.head_dim_k) as u64;
    let kdim = (c.n_head_kv * c.head_dim_k) as u64;
    let vdim = (c.n_head_kv * c.head_dim_v) as u64;
    let attn = (c.n_head * c.head_dim_v) as u64;
    let (n_expert, n_ff_exp, n_ff_sh) = match &c.moe {
        Some(m) => (
            m.n_expert as u64,
            m.n_ff_expert as u64,
            m.n_ff_shared.unwrap_or(0) as u64,
        ),
        None => (0, 0, 0),
    };
    let ff = (c.n_ff as u64).max(n_ff_exp).max(n_ff_sh);
    // f32 activations alive at once: the residual stream and norms (x, cur, tmp, out), the
    // attention projections and output, or the FFN's gate, up and down (plus, for MoE, the
    // gathered rows of one expert, its outputs and the routed sum), router logits.
    let attn_f32 = match c.mla {
        None => q + kdim + vdim + attn,
        // MLA (`model/mla.rs`): q_b's output, [latent | k_pe] rows, the absorbed queries
        // (a cache row per head), the heads' latent outputs, the heads' values after
        // attn_v_b, and one head's gathered rows and product.
        Some(mla) => {
            let h = c.n_head as u64;
            let lora = mla.kv_lora_rank as u64;
            h * mla.head_dim_qk as u64
                + kdim
                + h * kdim
                + h * lora
                + h * mla.head_dim_v as u64
                + 2 * (lora + mla.q_lora_rank.unwrap_or(0) as u64 + mla.head_dim_qk as u64)
        }
    };
    // Qwen3.5: gated attention's [q | gate] rows and gates; a linear layer's [q | k | v]
    // projection and its convolution, z, output, and the per-head beta and decay.
    let attn_f32 = match &c.ssm {
        None => attn_f32,
        Some(ssm) => {
            let ch = ssm.conv_channels() as u64;
            let di = ssm.d_inner as u64;
            let hv = ssm.n_v_heads as u64;
            (attn_f32 + 2 * q).max(2 * ch + 2 * di + 2 * hv)
        }
    };
    let ffn_f32 = 2 * ff
        + e
        + if n_expert > 0 {
            3 * e + 2 * ff + n_expert
        } else {
            0
        };
    let act = 4 * n * (4 * e + attn_f32.max(ffn_f32) + attn_f32);
    let k_max = [
        c.n_embd,
        c.ssm.as_ref().map_or(0, |x| x.d_inner),
        c.n_ff,
        attn as usize,
        n_ff_exp as usize,
        n_ff_sh as usize,
    ]
    .into_iter()
    .max()
    .unwrap_or(c.n_embd);
    let xq = n * act_row_bytes(k_max);
    let scores = o.threads.max(1) as u64
        * 4
        * (c.n_ctx_train as u64 + c.head_dim_k as u64 + c.head_dim_v as u64 + 64);
    // Embedding rows as stored (at most 4 bytes per value) plus the f32 rows.
    let embd = n * e * 4;
    let logits_rows = o.logits_rows.clamp(1, o.max_batch.max(1)) as u64;
    let logits = logits_rows * c.n_vocab as u64 * 4 + logits_rows * e * 4;
    let routing = if n_expert > 0 {
        n * n_expert * 16 + n_expert * 24
    } else {
        0
    };
    // Vector growth and small buffers: half again, plus 1 MiB.
    let scratch = act + xq + scores + embd + routing;
    let margin = scratch / 2 + (1 << 20);
    RuntimeNeeds {
        fixed: vec![
            (
                format!("activations and scratch ({} tokens a batch)", o.max_batch),
                scratch + margin,
            ),
            (format!("logits ({logits_rows} rows)"), logits),
        ]
        .into_iter()
        .chain(c.ssm.as_ref().map(|ssm| {
            (
                format!(
                    "recurrent state ({} linear layers, any context)",
                    ssm.n_recurrent()
                ),
                c.recurrent_state_bytes(),
            )
        }))
        .collect(),
        kv_bytes_per_pos: kv_bytes_per_position_for(c, o.kv_types),
        n_ctx_max: c.n_ctx_train,
        experts_per_token: c.moe.map_or(0, |m| m.n_expert_used),
    }
}

/// Approximate heap bytes of parsed GGUF metadata (strings, arrays), to count it against the
/// budget.
pub fn metadata_heap_bytes(meta: &Metadata) -> u64 {
    fn array_bytes(a: &Array) -> u64 {
        let n = a.len() as u64;
        32 + match a {
            Array::String(v) => v.iter().map(|s| 24 + s.len() as u64).sum(),
            Array::Array(v) => v.iter().map(array_bytes).sum(),
            _ => n * a.element_type().scalar_size().unwrap_or(8) as u64,
        }
    }
    meta.iter()
        .map(|(k, v)| {
            64 + k.len() as u64
                + match v {
                    Value::String(s) => 24 + s.len() as u64,
                    Value::Array(a) => array_bytes(a),
                    _ => 16,
                }
        })
        .sum()
}
