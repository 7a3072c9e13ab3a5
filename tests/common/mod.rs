//! What the budget tests share: the models they run, engine options and a greedy generation
//! with a hook between tokens.

use std::ops::ControlFlow;
use std::path::PathBuf;

use flashstream::runtime::generate::{generate, GenerateOptions};
use flashstream::runtime::sampler::SamplerConfig;
use flashstream::{Engine, EngineOptions};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A random dense model and a random MoE one, and the real SmolLM2 when fetched.
pub fn models() -> Vec<PathBuf> {
    let mut v = vec![
        root().join("testdata/models/rand-llama-q8_0.gguf"),
        root().join("testdata/models/rand-qwen3moe-q4km.gguf"),
    ];
    let real = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if real.exists() {
        v.push(real);
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing: run tools/fetch-models.sh", real.display());
    }
    v
}

pub fn opts(mem: u64) -> EngineOptions {
    EngineOptions {
        mem: Some(mem),
        threads: 2,
        ctx: Some(64),
        ..EngineOptions::default()
    }
}

pub fn greedy(engine: &Engine, n: usize, mut between: impl FnMut(usize)) -> Vec<u32> {
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode("The capital of France is", true, true).unwrap();
    let mut s = engine.session().unwrap();
    let o = GenerateOptions {
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        stop_at_eog: false,
        ..GenerateOptions::default()
    };
    generate(&mut s, &tok, &prompt, &o, |ev| {
        between(ev.index);
        ControlFlow::Continue(())
    })
    .unwrap()
    .tokens
}
