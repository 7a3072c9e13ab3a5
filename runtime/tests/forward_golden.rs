//! The forward pass against llama.cpp (`testdata/golden/generate.*.jsonl`, and
//! `generate-kv-*.jsonl` made with a quantized KV cache, whose records name it), teacher-forced
//! through the library API, with the tolerance rules of `testdata/golden/README.md`; chunked
//! evaluation (`max_batch`) against one batch; the generation loop (greedy on a golden chat
//! prompt, seeded sampling reproducible).
//!
//! The real models live in `<workspace>/models` (or `$FLASHSTREAM_MODELS_DIR`); when absent
//! their tests print that they skipped, unless `CI=true`, where they fail.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use flashstream_formats::gguf::GgufModel;
use flashstream_runtime::generate::{generate, GenerateOptions, StopReason};
use flashstream_runtime::kernels::Numerics;
use flashstream_runtime::model::kv::{KvType, KvTypes};
use flashstream_runtime::model::{LogitsWanted, Model, ModelOptions};
use flashstream_runtime::sampler::SamplerConfig;
use flashstream_runtime::tokenizer::Tokenizer;
use flashstream_scheduler::ResidentSource;
use serde_json::Value;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(name: &str) -> Vec<Value> {
    let path = workspace().join("testdata/golden").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Where a model named in a golden record is; `None` (skip) for an absent real model, a
/// panic under `CI=true`.
fn model_path(name: &str) -> Option<PathBuf> {
    if name.starts_with("rand-") {
        return Some(workspace().join("testdata/models").join(name));
    }
    let dir = std::env::var_os("FLASHSTREAM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"));
    let p = dir.join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is missing (run tools/fetch-models.sh)", p.display());
    }
    eprintln!("skipped: {name} is absent from models/ (run tools/fetch-models.sh)");
    None
}

fn load(path: &Path, max_batch: usize) -> (Model, Tokenizer) {
    load_kv(path, max_batch, KvTypes::default(), Numerics::default())
}

/// The KV-cache types a golden record was made with (its `kv_type` field; f16 without one).
fn kv_types_of(case: &Value) -> KvTypes {
    let t = |w: &str| {
        case["kv_type"][w]
            .as_str()
            .map_or(KvType::F16, |s| KvType::parse(s).expect("a known kv_type"))
    };
    KvTypes {
        k: t("k"),
        v: t("v"),
    }
}

fn load_kv(
    path: &Path,
    max_batch: usize,
    kv_types: KvTypes,
    numerics: Numerics,
) -> (Model, Tokenizer) {
    let gguf = GgufModel::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = Tokenizer::from_metadata(&gguf.metadata).unwrap();
    let source = ResidentSource::load(&gguf).unwrap();
    let opts = ModelOptions {
        threads: 2,
        max_batch,
        kv_types,
        numerics,
        ..ModelOptions::default()
    };
    (Model::new(&gguf, Box::new(source), &opts).unwrap(), tok)
}

/// How a teacher-forced run compares with one golden record, by the README's rules.
#[derive(Debug)]
struct Verdict {
    /// Largest |ours - reference| over the reference top-10, as a multiple of the tolerance.
    worst: f64,
    /// Fraction of steps whose reference top-1 is our top-1.
    top1: f64,
    /// Whether the reference top-1 is ours on each of the first 8 steps.
    first8: bool,
}

fn judge(case: &Value, logits: &[f32], n_vocab: usize) -> Verdict {
    let real = !case["model"].as_str().unwrap().starts_with("rand-");
    let abs_tol = if real { 0.5 } else { 0.1 };
    let steps = case["steps"].as_array().unwrap();
    let n0 = ids(&case["prompt_tokens"]).len() - 1;
    let (mut worst, mut top1, mut first8) = (0f64, 0usize, true);
    for (j, s) in steps.iter().enumerate() {
        let row = &logits[(n0 + j) * n_vocab..(n0 + j + 1) * n_vocab];
        let best = (0..n_vocab)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap();
        if best as u64 == s["token"].as_u64().unwrap() {
            top1 += 1;
        } else if j < 8 {
            first8 = false;
        }
        for tv in s["top"].as_array().unwrap() {
            let t = tv[0].as_u64().unwrap() as usize;
            let v = tv[1].as_f64().unwrap();
            let lim = abs_tol + 0.02 * v.abs();
            worst = worst.max((row[t] as f64 - v).abs() / lim);
        }
    }
    Verdict {
        worst,
        top1: top1 as f64 / steps.len() as f64,
        first8,
    }
}

/// Teacher-forces every case of `file`, the matmuls of batches rounding as `numerics` says
/// (with [`Numerics::Llama`] the whole sequence in one batch, with [`Numerics::Fast`] the
/// prompt in one batch and then one token at a time); returns the verdicts (empty if the model
/// is absent).
fn run_file(file: &str, numerics: Numerics) -> Vec<(String, Verdict)> {
    let cases = golden(file);
    let Some(path) = model_path(cases[0]["model"].as_str().unwrap()) else {
        return Vec::new();
    };
    let (model, _) = load_kv(&path, 512, kv_types_of(&cases[0]), numerics);
    let n_vocab = model.config().n_vocab;
    let mut out = Vec::new();
    for c in &cases {
        let steps = c["steps"].as_array().unwrap();
        let mut seq = ids(&c["prompt_tokens"]);
        seq.extend(
            steps[..steps.len() - 1]
                .iter()
                .map(|s| s["token"].as_u64().unwrap() as u32),
        );
        let mut session = model.session(seq.len()).unwrap();
        let logits = match numerics {
            // One batch rounds as single tokens do.
            Numerics::Llama => session.eval(&seq, LogitsWanted::All).unwrap(),
            // The prompt in one batch, then one token at a time: as generation runs and as
            // the goldens were made.
            Numerics::Fast => {
                let n_p = ids(&c["prompt_tokens"]).len();
                let mut l = session.eval(&seq[..n_p], LogitsWanted::All).unwrap();
                for &t in &seq[n_p..] {
                    l.extend(session.eval(&[t], LogitsWanted::Last).unwrap());
                }
                l
            }
        };
        assert_eq!(logits.len(), seq.len() * n_vocab);
        let v = judge(c, &logits, n_vocab);
        eprintln!(
            "{file} {numerics:?} {:?}: {v:?}",
            c["prompt"].as_str().unwrap()
        );
        out.push((c["prompt"].as_str().unwrap().to_string(), v));
    }
    out
}

/// Random models: every case within the README's tolerance (logits within
/// `0.1 + 0.02·|logit|`, top-1 agreement at least 75%).
fn check_random(file: &str) {
    let verdicts = run_file(file, Numerics::default());
    assert!(!verdicts.is_empty());
    for (prompt, v) in verdicts {
        assert!(v.worst <= 1.0 && v.top1 >= 0.75, "{file} {prompt:?}: {v:?}");
    }
}

#[test]
fn golden_rand_llama_f16() {
    check_random("generate.rand-llama-f16.jsonl");
}

#[test]
fn golden_kv_q8_0_rand_llama_f16() {
    check_random("generate-kv-q8_0.rand-llama-f16.jsonl");
}

#[test]
fn golden_kv_q4_0_rand_llama_f16() {
    check_random("generate-kv-q4_0.rand-llama-f16.jsonl");
}

#[test]
fn golden_kv_q8_0_rand_qwen3_q5km() {
    check_random("generate-kv-q8_0.rand-qwen3-q5km.jsonl");
}

#[test]
fn golden_kv_q4_0_rand_qwen3_q5km() {
    check_random("generate-kv-q4_0.rand-qwen3-q5km.jsonl");
}

#[test]
fn golden_rand_llama_q4_0() {
    check_random("generate.rand-llama-q4_0.jsonl");
}

#[test]
fn golden_rand_llama_q8_0() {
    check_random("generate.rand-llama-q8_0.jsonl");
}

#[test]
fn golden_rand_qwen3_q5km() {
    check_random("generate.rand-qwen3-q5km.jsonl");
}

#[test]
fn golden_rand_qwen3moe_q4km() {
    check_random("generate.rand-qwen3moe-q4km.jsonl");
}

#[test]
fn golden_rand_qwen2moe_q2k() {
    check_random("generate.rand-qwen2moe-q2k.jsonl");
}

#[test]
fn golden_rand_deepseek2_q4k() {
    check_random("generate.rand-deepseek2-q4k.jsonl");
}

#[test]
fn golden_rand_gptoss_mxfp4() {
    check_random("generate.rand-gptoss-mxfp4.jsonl");
}

#[test]
fn golden_rand_glm4moe_q5k() {
    check_random("generate.rand-glm4moe-q5k.jsonl");
}

#[test]
fn golden_rand_qwen35_q8() {
    check_random("generate.rand-qwen35-q8.jsonl");
}

#[test]
fn golden_rand_qwen35moe_q4k() {
    check_random("generate.rand-qwen35moe-q4k.jsonl");
}

/// Whether this build reproduces llama.cpp's x86 arithmetic: the AVX2 kernels take ggml's
/// float order (Q4_K that of its repacked kernels), and the SiLU, RoPE and attention-sum steps
/// follow its x86 build. llama.cpp built on this machine (flash attention on, as the goldens'
/// generator has it) reproduces the SmolLM2 references exactly, batched and token by token
/// (`benches/peer/golden_floor.py`), and flashstream here equals it on SmolLM2 and Gemma 3:
/// every logit equal up to the references' printed precision. Elsewhere (NEON, scalar) the
/// order differs and the real-model bound applies.
fn llama_cpp_x86_arithmetic() -> bool {
    flashstream_runtime::kernels::Isa::Avx2.is_available()
}

/// A real model against `file`, with [`Numerics::Llama`]: equal to llama.cpp on x86 (logits
/// within 1/1000 of the tolerance, every top-1 and the first 8 tokens equal); elsewhere
/// `fallback`.
fn check_exact_on_x86(file: &str, fallback: impl Fn(&str, Verdict)) {
    for (prompt, v) in run_file(file, Numerics::Llama) {
        if llama_cpp_x86_arithmetic() {
            assert!(
                v.worst <= 1e-3 && v.top1 == 1.0 && v.first8,
                "{file} {prompt:?}: {v:?}"
            );
        } else {
            fallback(&prompt, v);
        }
    }
}

/// Real models off x86: every logit of the reference top-10 within 2.5x the README's tolerance
/// `0.5 + 0.02·|logit|` (these small quantized models amplify accumulation-order noise) and
/// top-1 agreement of at least 90%. First-8 equality is not asserted there: near-ties in the
/// first steps flip with the float order (as "def fibonacci" did with AVX2 and "The capital"
/// with NEON under qemu before the x86 order was matched).
fn real_bound(file: &'static str) -> impl Fn(&str, Verdict) {
    move |prompt, v| assert!(v.worst <= 2.5 && v.top1 >= 0.9, "{file} {prompt:?}: {v:?}")
}

#[test]
fn golden_smollm2() {
    let f = "generate.SmolLM2-135M-Instruct.Q4_1.jsonl";
    check_exact_on_x86(f, real_bound(f));
}

#[test]
fn golden_kv_q8_0_smollm2() {
    let f = "generate-kv-q8_0.SmolLM2-135M-Instruct.Q4_1.jsonl";
    check_exact_on_x86(f, real_bound(f));
}

/// A Q4_0 cache on the real model. On x86 it equals llama.cpp's references. With other
/// kernels (NEON, scalar), whose float order is not llama.cpp's x86 one, its 16-level grid turns
/// last-bit differences upstream into flipped quants (measured before the x86 arithmetic was
/// matched: single steps at 3.5x and 8x; llama.cpp's own Q4_0 and f16 caches differ by 6.5x on
/// the first prompt), so there it is held to a bound that still catches a broken cache (a wrong
/// rotation or block layout gave 10-12x and top-1 below 85%).
#[test]
fn golden_kv_q4_0_smollm2() {
    check_exact_on_x86(
        "generate-kv-q4_0.SmolLM2-135M-Instruct.Q4_1.jsonl",
        |prompt, v| assert!(v.worst <= 9.0 && v.top1 >= 0.85, "{prompt:?}: {v:?}"),
    );
}

/// Gemma 3 (Q5_0, Q8_0, Q4_K and Q6_K weights, GELU, sliding-window layers) against the goldens:
/// the real-model bound. They were made with the prompt in one batch, and llama.cpp's batched
/// kernels do not round as its one-token ones do: llama.cpp built here is up to 1.93x the
/// tolerance off them evaluating everything in one batch and 1.86x evaluating every token alone
/// (`benches/peer/golden_floor.py`); only its prompt-batch-then-tokens run reproduces them.
#[test]
fn golden_gemma3() {
    let file = "generate.gemma-3-270m-q4_k_m.jsonl";
    for (prompt, v) in run_file(file, Numerics::Llama) {
        assert!(v.worst <= 2.5 && v.top1 >= 0.9, "{file} {prompt:?}: {v:?}");
        assert!(v.first8, "{file} {prompt:?}: {v:?}");
    }
}

/// Gemma 3 against llama.cpp built on x86 evaluating every token alone (the golden cases and
/// tokens, each step's top-10 from `benches/peer/golden_floor.py --write-single`): on x86 equal
/// (flashstream's batches round as its single tokens do, and its kernels take llama.cpp's x86
/// order, Q4_K's that of the repacked `q4_K_8x8` kernels); elsewhere the real-model bound.
#[test]
fn single_token_gemma3() {
    let file = "single.gemma-3-270m-q4_k_m.jsonl";
    check_exact_on_x86(file, real_bound(file));
}

/// A long input evaluated in chunks of `max_batch` tokens gives the logits of one batch:
/// bit-identical when every chunk takes the same attention kernel. When the small-batch (f16)
/// kernel replaces the tiled one, each path is separately held to the random models'
/// tolerance against llama.cpp (the golden tests), so the two may differ by up to twice that
/// bound, and their top-1 agrees where the golden README asks (75% of the positions).
#[test]
fn chunked_eval_matches_one_batch() {
    let path = workspace().join("testdata/models/rand-qwen3-q5km.gguf");
    let tokens: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 256).collect();
    let all = |max_batch: usize| {
        let (model, _) = load(&path, max_batch);
        let mut s = model.session(256).unwrap();
        let l = s.eval(&tokens, LogitsWanted::All).unwrap();
        assert_eq!(s.pos(), tokens.len());
        let mut s2 = model.session(256).unwrap();
        let last = s2.eval(&tokens, LogitsWanted::Last).unwrap();
        let nv = model.config().n_vocab;
        assert_eq!(&l[l.len() - nv..], &last[..], "Last is the last row of All");
        l
    };
    let one = all(512);
    assert_eq!(one, all(75), "two tiled chunks");
    let small = all(40);
    assert_eq!(one.len(), small.len());
    for (a, b) in one.iter().zip(&small) {
        assert!((a - b).abs() <= 2.0 * (0.1 + 0.02 * a.abs()), "{a} vs {b}");
    }
    let nv = one.len() / tokens.len();
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &x)| if x > b.1 { (i, x) } else { b },
            )
            .0
    };
    let rows = one.len() / nv;
    let same = (0..rows)
        .filter(|&r| argmax(&one[r * nv..(r + 1) * nv]) == argmax(&small[r * nv..(r + 1) * nv]))
        .count();
    assert!(
        same * 4 >= rows * 3,
        "top-1 equal on {same} of {rows} positions"
    );
}

/// Greedy generation through the library API reproduces llama.cpp's answer to the golden
/// chat prompt and stops at its end-of-turn token.
#[test]
fn generate_greedy_chat_prompt() {
    let cases = golden("generate.SmolLM2-135M-Instruct.Q4_1.jsonl");
    let case = &cases[1];
    let Some(path) = model_path(SMOL) else { return };
    let (model, tok) = load(&path, 512);
    let prompt = tok
        .encode(case["prompt"].as_str().unwrap(), true, true)
        .unwrap();
    assert_eq!(prompt, ids(&case["prompt_tokens"]));
    let mut session = model.session(64).unwrap();
    let opts = GenerateOptions {
        max_tokens: 20,
        sampler: SamplerConfig::greedy(),
        ..GenerateOptions::default()
    };
    let mut streamed = String::new();
    let out = generate(&mut session, &tok, &prompt, &opts, |ev| {
        streamed.push_str(ev.text);
        ControlFlow::Continue(())
    })
    .unwrap();
    let want: Vec<u32> = case["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["token"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(out.tokens, want);
    assert_eq!(out.stop_reason, StopReason::EndOfGeneration);
    assert_eq!(out.text, "The capital of France is Paris.");
    assert_eq!(streamed, out.text);
    assert_eq!(out.stats.prompt_tokens, prompt.len());
    assert_eq!(out.stats.generated_tokens, want.len());
}

/// Sampling with a seed is reproducible; stop strings cut the text; the context limit stops
/// generation cleanly; a prompt longer than the context is an error.
#[test]
fn generate_sampling_stops_and_limits() {
    let path = workspace().join("testdata/models/rand-llama-q8_0.gguf");
    let (model, tok) = load(&path, 512);
    let prompt = tok.encode("Once upon a time", true, true).unwrap();
    let sample = |seed: u64| {
        let mut s = model.session(128).unwrap();
        let opts = GenerateOptions {
            max_tokens: 24,
            sampler: SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..SamplerConfig::default()
            },
            stop_at_eog: false,
            ..GenerateOptions::default()
        };
        generate(&mut s, &tok, &prompt, &opts, |_| ControlFlow::Continue(())).unwrap()
    };
    let a = sample(7);
    assert_eq!(a.tokens.len(), 24);
    assert_eq!(a.tokens, sample(7).tokens);
    assert_ne!(a.tokens, sample(8).tokens);

    // A stop string taken from the middle of the sampled text cuts it there.
    let text = tok.decode(&a.tokens);
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > 6 {
        let stop: String = chars[3..5].iter().collect();
        let cut = text.find(&stop).unwrap();
        let mut s = model.session(128).unwrap();
        let opts = GenerateOptions {
            max_tokens: 24,
            sampler: SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: 7,
                ..SamplerConfig::default()
            },
            stop: vec![stop.clone()],
            stop_at_eog: false,
            ..GenerateOptions::default()
        };
        let mut streamed = String::new();
        let out = generate(&mut s, &tok, &prompt, &opts, |ev| {
            streamed.push_str(ev.text);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(out.stop_reason, StopReason::StopString);
        assert_eq!(out.text, text[..cut]);
        assert_eq!(streamed, out.text);
    }

    // Context: room for the prompt and 3 more positions.
    let mut s = model.session(prompt.len() + 3).unwrap();
    let opts = GenerateOptions {
        max_tokens: 100,
        sampler: SamplerConfig::greedy(),
        stop_at_eog: false,
        ..GenerateOptions::default()
    };
    let out = generate(&mut s, &tok, &prompt, &opts, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.stop_reason, StopReason::ContextFull);
    assert_eq!(out.tokens.len(), 4);
    let mut s = model.session(prompt.len() - 1).unwrap();
    let e = generate(&mut s, &tok, &prompt, &opts, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
}

/// [`Numerics::Fast`] (prompt batches scaled four blocks at a time, rounding unlike single
/// tokens in the last bits) on the real models' f16 and Q8_0-cache goldens, generated as they
/// were (prompt batch, then token by token): the real-model bound.
#[test]
fn golden_real_models_fast_numerics() {
    for file in [
        "generate.SmolLM2-135M-Instruct.Q4_1.jsonl",
        "generate-kv-q8_0.SmolLM2-135M-Instruct.Q4_1.jsonl",
        "generate.gemma-3-270m-q4_k_m.jsonl",
    ] {
        for (prompt, v) in run_file(file, Numerics::Fast) {
            assert!(v.worst <= 2.5 && v.top1 >= 0.9, "{file} {prompt:?}: {v:?}");
        }
    }
}
