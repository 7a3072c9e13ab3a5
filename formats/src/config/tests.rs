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
