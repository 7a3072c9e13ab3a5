//! Speculative decoding gives greedy output identical, token for token, to plain decoding:
//! prompt lookup and a draft model, on the real test models and random ones (dense and MoE),
//! resident and streamed under the smallest budget the model runs in.

use std::ops::ControlFlow;
use std::path::PathBuf;

use flashstream::runtime::generate::{generate, GenerateOptions, Generation};
use flashstream::runtime::sampler::SamplerConfig;
use flashstream::runtime::speculative::{
    check_vocab, generate_speculative, DraftModel, Drafter, Lookup, SpecOptions, SpecStats,
};
use flashstream::{Engine, EngineOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn real(name: &str) -> Option<PathBuf> {
    let p = root().join("models").join(name);
    if p.exists() {
        Some(p)
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing: run tools/fetch-models.sh", p.display());
    } else {
        None
    }
}

fn models() -> Vec<PathBuf> {
    let mut v = vec![
        root().join("testdata/models/rand-llama-q8_0.gguf"),
        root().join("testdata/models/rand-qwen3moe-q4km.gguf"),
        root().join("testdata/models/rand-qwen2moe-q2k.gguf"),
    ];
    v.extend(real("SmolLM2-135M-Instruct.Q4_1.gguf"));
    v.extend(real("gemma-3-270m-q4_k_m.gguf"));
    v
}

const K: usize = 6;
const N: usize = 40;
/// A text that repeats itself, so prompt lookup has something to propose.
const PROMPT: &str = "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n\n\
                      def sub(a, b):\n    \"\"\"Subtract two numbers.\"\"\"\n    return a - b\n\n\
                      def add(a, b):\n";

fn opts(mem: Option<u64>) -> EngineOptions {
    EngineOptions {
        mem: Some(mem.unwrap_or(4 << 30)),
        threads: 2,
        ctx: Some(256),
        logits_rows: K + 1,
        max_batch: 64,
        ..EngineOptions::default()
    }
}

/// The model resident, and under its smallest budget (streamed).
fn engines(path: &PathBuf) -> Vec<(Engine, &'static str)> {
    let resident = Engine::open(path, &opts(None)).unwrap();
    assert!(!resident.plan().streams(), "{}", path.display());
    let min = resident.min_budget().unwrap();
    let streamed = Engine::open(path, &opts(Some(min))).unwrap();
    assert!(
        streamed.plan().streams(),
        "{}: the minimum budget streams",
        path.display()
    );
    vec![(resident, "resident"), (streamed, "streamed")]
}

fn gen_opts(sampler: SamplerConfig) -> GenerateOptions {
    GenerateOptions {
        max_tokens: N,
        sampler,
        stop_at_eog: false,
        ..GenerateOptions::default()
    }
}

fn plain(engine: &Engine, o: &GenerateOptions) -> (Generation, usize) {
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode(PROMPT, true, true).unwrap();
    let mut s = engine.session().unwrap();
    let g = generate(&mut s, &tok, &prompt, o, |_| ControlFlow::Continue(())).unwrap();
    (g, s.pos())
}

fn speculative(
    engine: &Engine,
    o: &GenerateOptions,
    drafter: &mut dyn Drafter,
    k: usize,
) -> (Generation, SpecStats, String, usize) {
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode(PROMPT, true, true).unwrap();
    let mut s = engine.session().unwrap();
    let mut streamed = String::new();
    let (g, st) = generate_speculative(
        &mut s,
        &tok,
        &prompt,
        o,
        &SpecOptions { k },
        drafter,
        |ev| {
            streamed.push_str(ev.text);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    (g, st, streamed, s.pos())
}

/// The same output, and the session left at the same position (the last token emitted is
/// not in the cache, as after plain decoding).
fn assert_same(want: &(Generation, usize), got: &(Generation, usize), streamed: &str, what: &str) {
    assert_eq!(want.1, got.1, "{what}: session position");
    let (want, got) = (&want.0, &got.0);
    assert_eq!(want.tokens, got.tokens, "{what}: tokens");
    assert_eq!(want.text, got.text, "{what}: text");
    assert_eq!(want.text, streamed, "{what}: streamed text");
    assert_eq!(want.stop_reason, got.stop_reason, "{what}: stop reason");
}

#[test]
fn lookup_greedy_equals_plain_decoding() {
    for path in models() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for (engine, how) in engines(&path) {
            let o = gen_opts(SamplerConfig::greedy());
            let want = plain(&engine, &o);
            for (k, ngram) in [(K, 3), (1, 1)] {
                let mut lookup = Lookup::new(ngram, 1);
                let (got, st, streamed, pos) = speculative(&engine, &o, &mut lookup, k);
                let what = format!("{name} {how} lookup k={k}");
                assert_same(&want, &(got, pos), &streamed, &what);
                assert!(st.accepted <= st.proposed, "{what}");
                assert_eq!(st.passes + 1 + st.accepted, N, "{what}: {st:?}");
                assert!(st.proposed > 0, "{what}: lookup proposed nothing");
            }
        }
    }
}

#[test]
fn stop_strings_and_eog_end_speculative_output_where_plain_ends() {
    let path = root().join("testdata/models/rand-llama-q8_0.gguf");
    let engine = Engine::open(&path, &opts(None)).unwrap();
    let base = gen_opts(SamplerConfig::greedy());
    let (full, _) = plain(&engine, &base);
    // A stop string from the middle of the plain output, and a token limit inside a pass.
    let cut: String = full.text.chars().skip(20).take(3).collect();
    for o in [
        GenerateOptions {
            stop: vec![cut],
            ..base.clone()
        },
        GenerateOptions {
            max_tokens: 7,
            ..base.clone()
        },
        GenerateOptions {
            stop_at_eog: true,
            ..base.clone()
        },
    ] {
        let want = plain(&engine, &o);
        let (got, _, streamed, pos) = speculative(&engine, &o, &mut Lookup::default(), K);
        assert_same(&want, &(got, pos), &streamed, &format!("{:?}", o.stop));
    }
}

/// A draft model: the real SmolLM2 drafting for itself (every proposal should be accepted),
/// and a random model drafting for another with the same vocabulary.
#[test]
fn draft_model_greedy_equals_plain_decoding() {
    let mut pairs = vec![(
        root().join("testdata/models/rand-llama-q8_0.gguf"),
        root().join("testdata/models/rand-llama-q4_0.gguf"),
    )];
    if let Some(p) = real("SmolLM2-135M-Instruct.Q4_1.gguf") {
        pairs.push((p.clone(), p));
    }
    for (target, draft) in pairs {
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        let d = Engine::open(&draft, &opts(None)).unwrap();
        let dtok = d.tokenizer().unwrap();
        for (engine, how) in engines(&target) {
            let tok = engine.tokenizer().unwrap();
            check_vocab(&tok, &dtok).unwrap();
            let o = gen_opts(SamplerConfig::greedy());
            let want = plain(&engine, &o);
            let nv = engine.model().config().n_vocab;
            let mut drafter =
                DraftModel::new(d.session().unwrap(), nv, SamplerConfig::greedy()).unwrap();
            let (got, st, streamed, pos) = speculative(&engine, &o, &mut drafter, K);
            let what = format!("{name} {how} draft");
            assert_same(&want, &(got, pos), &streamed, &what);
            assert_eq!(st.passes + 1 + st.accepted, N, "{what}: {st:?}");
            if target == draft {
                // Same model, same arithmetic: only the batch tail can differ.
                assert!(
                    st.accepted * 10 >= st.proposed * 9,
                    "{what}: a model drafting for itself keeps its drafts: {st:?}"
                );
                assert!(st.tokens_per_pass > 3.0, "{what}: {st:?}");
            }
        }
    }
}

#[test]
fn draft_model_with_another_vocabulary_is_refused() {
    let (Some(smol), Some(gemma)) = (
        real("SmolLM2-135M-Instruct.Q4_1.gguf"),
        real("gemma-3-270m-q4_k_m.gguf"),
    ) else {
        return;
    };
    let a = Engine::open(&smol, &opts(None)).unwrap();
    let b = Engine::open(&gemma, &opts(None)).unwrap();
    let e = check_vocab(&a.tokenizer().unwrap(), &b.tokenizer().unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("vocabulary differs"), "{msg}");
    assert!(msg.contains("49152"), "{msg}");
    let e = DraftModel::new(
        b.session().unwrap(),
        a.model().config().n_vocab,
        SamplerConfig::greedy(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("logits"), "{e}");
}

/// With temperature > 0 the same seed gives the same speculative output (the acceptance
/// test draws from the sampler's seeded stream), and every token comes from the target's
/// distribution (the rule itself is held to the target distribution statistically in
/// `runtime/src/speculative/accept.rs`).
#[test]
fn sampled_speculative_output_is_reproducible() {
    let path = root().join("testdata/models/rand-llama-q8_0.gguf");
    let engine = Engine::open(&path, &opts(None)).unwrap();
    let o = gen_opts(SamplerConfig {
        temperature: 0.9,
        seed: 42,
        ..SamplerConfig::default()
    });
    let (a, sa, _, _) = speculative(&engine, &o, &mut Lookup::default(), K);
    let (b, sb, _, _) = speculative(&engine, &o, &mut Lookup::default(), K);
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(sa.accepted, sb.accepted);
    assert_eq!(a.tokens.len(), N);
}

/// Sampled output keeps the target's distribution on a real forward pass: the second and
/// third tokens (the ones verification decides) over many seeds, plain against lookup and
/// against a draft model, compared by a chi-square homogeneity test with a generous bound
/// (top-k 3 keeps the categories few; the rule itself is tested tightly in `accept.rs`).
/// Accepting every proposal instead of applying the rule fails it (the draft mode: chi2 66
/// against a bound of 42, checked by hand).
#[test]
fn sampled_speculative_tokens_follow_the_plain_distribution() {
    use std::collections::BTreeMap;
    let target = root().join("testdata/models/rand-llama-q8_0.gguf");
    let draft = root().join("testdata/models/rand-llama-q4_0.gguf");
    let engine = Engine::open(&target, &opts(None)).unwrap();
    let d = Engine::open(&draft, &opts(None)).unwrap();
    let tok = engine.tokenizer().unwrap();
    let prompt = tok.encode("a b a b a b a", true, true).unwrap();
    let nv = engine.model().config().n_vocab;
    let trials = 500u64;
    let mut s = engine.session().unwrap();
    // (token 1, token 2) counts per mode.
    let mut run = |mode: usize| {
        let mut counts: BTreeMap<(usize, u32), u64> = BTreeMap::new();
        let mut ds = d.session().unwrap();
        for seed in 0..trials {
            let o = GenerateOptions {
                max_tokens: 3,
                sampler: SamplerConfig {
                    temperature: 1.0,
                    top_k: 3,
                    top_p: 1.0,
                    min_p: 0.0,
                    seed: seed * 7919 + 1,
                    ..SamplerConfig::default()
                },
                stop_at_eog: false,
                ..GenerateOptions::default()
            };
            s.reset();
            let g = match mode {
                0 => generate(&mut s, &tok, &prompt, &o, |_| ControlFlow::Continue(())).unwrap(),
                1 => {
                    let mut l = Lookup::new(2, 1);
                    let spec = SpecOptions { k: 2 };
                    generate_speculative(&mut s, &tok, &prompt, &o, &spec, &mut l, |_| {
                        ControlFlow::Continue(())
                    })
                    .unwrap()
                    .0
                }
                _ => {
                    ds.reset();
                    let sess = std::mem::replace(&mut ds, d.session().unwrap());
                    let mut dm = DraftModel::new(sess, nv, o.sampler.clone()).unwrap();
                    let spec = SpecOptions { k: 2 };
                    generate_speculative(&mut s, &tok, &prompt, &o, &spec, &mut dm, |_| {
                        ControlFlow::Continue(())
                    })
                    .unwrap()
                    .0
                }
            };
            for i in 1..3 {
                *counts.entry((i, g.tokens[i])).or_default() += 1;
            }
        }
        counts
    };
    let plain = run(0);
    for mode in [1, 2] {
        let other = run(mode);
        for pos in 1..3 {
            let cats: std::collections::BTreeSet<u32> = plain
                .keys()
                .chain(other.keys())
                .filter(|k| k.0 == pos)
                .map(|k| k.1)
                .collect();
            let mut x2 = 0.0;
            for &c in &cats {
                let a = *plain.get(&(pos, c)).unwrap_or(&0) as f64;
                let b = *other.get(&(pos, c)).unwrap_or(&0) as f64;
                x2 += (a - b).powi(2) / (a + b);
            }
            let dof = cats.len().saturating_sub(1) as f64;
            let bound = dof + 6.0 * (2.0 * dof).sqrt() + 10.0;
            assert!(
                x2 < bound,
                "mode {mode}, token {pos}: chi2 {x2:.1} over {} categories (bound {bound:.1})",
                cats.len()
            );
        }
    }
}
