//! Quantized KV caches (`ModelOptions::kv_types`) through the library: the bytes
//! `memory.rs` counts for each type are the bytes a session's cache allocates, on a dense,
//! a per-head-normed and a hybrid (Qwen3.5: gated attention beside linear layers) model;
//! taking tokens back (`Session::truncate`, as speculative decoding does) and evaluating them
//! again gives the logits of a fresh session.

use std::path::PathBuf;

use flashstream_formats::gguf::GgufModel;
use flashstream_formats::ModelConfig;
use flashstream_runtime::memory::{kv_bytes_per_position_for, runtime_needs, NeedsOptions};
use flashstream_runtime::model::kv::{KvType, KvTypes};
use flashstream_runtime::model::{LogitsWanted, Model, ModelOptions};
use flashstream_scheduler::ResidentSource;

fn model(name: &str, kv_types: KvTypes) -> (Model, ModelConfig) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/models")
        .join(name);
    let gguf = GgufModel::open(&path).unwrap();
    let config = ModelConfig::from_model(&gguf).unwrap();
    let source = ResidentSource::load(&gguf).unwrap();
    let opts = ModelOptions {
        threads: 2,
        kv_types,
        ..ModelOptions::default()
    };
    (Model::new(&gguf, Box::new(source), &opts).unwrap(), config)
}

fn all_types() -> Vec<KvTypes> {
    let mut v = Vec::new();
    for k in KvType::ALL {
        for t in KvType::ALL {
            v.push(KvTypes { k, v: t });
        }
    }
    v
}

#[test]
fn counted_kv_bytes_equal_allocated_for_every_type() {
    for name in [
        "rand-llama-f16.gguf",
        "rand-qwen3-q5km.gguf",
        "rand-qwen35-q8.gguf",
    ] {
        for t in all_types() {
            let (m, c) = model(name, t);
            let n_ctx = 100;
            let s = m.session(n_ctx).unwrap();
            let per_pos = kv_bytes_per_position_for(&c, t);
            assert_eq!(s.kv_bytes(), per_pos * n_ctx as u64, "{name} {t}");
            let needs = runtime_needs(
                &c,
                &NeedsOptions {
                    kv_types: t,
                    ..NeedsOptions::default()
                },
            );
            assert_eq!(needs.kv_bytes_per_pos, per_pos, "{name} {t}");
            if t.k == KvType::Q4_0 && t.v == KvType::Q4_0 {
                let f16 = kv_bytes_per_position_for(&c, KvTypes::default());
                assert_eq!(
                    per_pos * 64,
                    f16 * 18,
                    "{name}: q4_0 is 18 bytes per 32 values"
                );
            }
        }
    }
}

#[test]
fn truncate_and_eval_again_equals_a_fresh_session() {
    let toks: Vec<u32> = (0..40u32).map(|i| (i * 53 + 7) % 256).collect();
    for t in [KvTypes::both(KvType::Q8_0), KvTypes::both(KvType::Q4_0)] {
        let (m, _) = model("rand-qwen3-q5km.gguf", t);
        let mut fresh = m.session(64).unwrap();
        let want = fresh.eval(&toks, LogitsWanted::Last).unwrap();
        let mut s = m.session(64).unwrap();
        s.eval(&toks[..30], LogitsWanted::Last).unwrap();
        // A rejected draft: 6 wrong tokens, taken back.
        s.eval(&[1, 2, 3, 4, 5, 6], LogitsWanted::All).unwrap();
        assert_eq!(s.truncate(30), 30);
        let got = s.eval(&toks[30..], LogitsWanted::Last).unwrap();
        assert_eq!(got, want, "{t}");
        // The quantized cache changes the logits (the option reaches the attention).
        let (f, _) = model("rand-qwen3-q5km.gguf", KvTypes::default());
        let f16 = f
            .session(64)
            .unwrap()
            .eval(&toks, LogitsWanted::Last)
            .unwrap();
        assert_ne!(f16, want, "{t}");
    }
}
