//! Shared weight passes ([`MultiPass`]): sequences that join at different passes, prompt
//! chunks beside decode steps, get logits equal bit for bit to each sequence run alone in
//! its own session (dense, MoE, and the real models when present).

use std::path::PathBuf;

use flashstream_formats::gguf::GgufModel;
use flashstream_runtime::model::kv::{KvType, KvTypes};
use flashstream_runtime::model::{
    LogitsWanted, Model, ModelOptions, MultiPass, RowLogits, SeqInput,
};
use flashstream_scheduler::ResidentSource;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(path: &PathBuf) -> Model {
    load_kv(path, KvTypes::default())
}

fn load_kv(path: &PathBuf, kv_types: KvTypes) -> Model {
    let gguf = GgufModel::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let source = ResidentSource::load(&gguf).unwrap();
    let opts = ModelOptions {
        threads: 2,
        max_batch: 256,
        kv_types,
        ..ModelOptions::default()
    };
    Model::new(&gguf, Box::new(source), &opts).unwrap()
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// A deterministic prompt of `n` tokens (ids spread over the vocabulary).
fn prompt(n: usize, seed: u64, n_vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab as u64) as u32
        })
        .collect()
}

const STEPS: usize = 5;

/// Logits after the prompt and after each of `STEPS` greedy decode steps, alone.
fn alone(model: &Model, p: &[u32]) -> Vec<Vec<f32>> {
    let mut s = model.session(512).unwrap();
    let mut out = vec![s.eval(p, LogitsWanted::Last).unwrap()];
    for _ in 0..STEPS {
        let t = argmax(out.last().unwrap());
        out.push(s.eval(&[t], LogitsWanted::Last).unwrap());
    }
    out
}

fn check(path: PathBuf) {
    check_kv(path, KvTypes::default())
}

fn check_kv(path: PathBuf, kv_types: KvTypes) {
    let model = load_kv(&path, kv_types);
    let nv = model.config().n_vocab;
    // Lengths under and over the 64-row attention tile, sequences joining one pass apart.
    let prompts: Vec<Vec<u32>> = [7usize, 70, 3, 12]
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(n, i as u64 + 1, nv))
        .collect();
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(&model, p)).collect();

    let mut sessions: Vec<_> = prompts
        .iter()
        .map(|_| model.session(512).unwrap())
        .collect();
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    let mut multi = MultiPass::new();
    for pass in 0..prompts.len() + STEPS + 1 {
        let next: Vec<Vec<u32>> = (0..prompts.len())
            .map(|i| {
                if pass < i || got[i].len() > STEPS {
                    Vec::new()
                } else if got[i].is_empty() {
                    prompts[i].clone()
                } else {
                    vec![argmax(got[i].last().unwrap())]
                }
            })
            .collect();
        let active: Vec<usize> = (0..prompts.len())
            .filter(|&i| !next[i].is_empty())
            .collect();
        if active.is_empty() {
            continue;
        }
        let mut inputs: Vec<SeqInput<'_, '_>> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !next[*i].is_empty())
            .map(|(i, s)| SeqInput {
                session: s,
                tokens: &next[i],
                want_logits: RowLogits::Last,
            })
            .collect();
        let out = multi.eval(&model, &mut inputs).unwrap();
        for (&i, l) in active.iter().zip(out) {
            got[i].push(l.expect("logits were wanted"));
        }
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "sequence {i}: steps");
        for (step, (a, b)) in g.iter().zip(w).enumerate() {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{}: sequence {i} step {step}: logits differ from the sequence alone",
                path.display()
            );
        }
    }
}

#[test]
fn shared_passes_equal_sequences_alone_dense() {
    check(workspace().join("testdata/models/rand-llama-q4_0.gguf"));
    check(workspace().join("testdata/models/rand-qwen3-q5km.gguf"));
}

#[test]
fn shared_passes_equal_sequences_alone_moe() {
    check(workspace().join("testdata/models/rand-qwen3moe-q4km.gguf"));
    check(workspace().join("testdata/models/rand-qwen2moe-q2k.gguf"));
    check(workspace().join("testdata/models/rand-gptoss-mxfp4.gguf"));
}

/// A quantized KV cache (Hadamard-rotated rows) in shared passes, dense and hybrid.
#[test]
fn shared_passes_equal_sequences_alone_quantized_kv() {
    for t in [KvType::Q8_0, KvType::Q4_0] {
        check_kv(
            workspace().join("testdata/models/rand-qwen3-q5km.gguf"),
            KvTypes::both(t),
        );
        check_kv(
            workspace().join("testdata/models/rand-qwen35-q8.gguf"),
            KvTypes {
                k: t,
                v: KvType::F16,
            },
        );
    }
}

/// Qwen3.5: each sequence's rows through its own recurrent state and gated attention.
#[test]
fn shared_passes_equal_sequences_alone_qwen35() {
    check(workspace().join("testdata/models/rand-qwen35-q8.gguf"));
    check(workspace().join("testdata/models/rand-qwen35moe-q4k.gguf"));
}

/// Both real models. Gemma 3 mixes weight types whose batch kernels read different
/// activation layouts on CPUs without VNNI (Q5_0 tiled, Q8_0 not); it caught the forward
/// pass reusing one layout for both.
#[test]
fn shared_passes_equal_sequences_alone_real_models() {
    for name in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let p = workspace().join("models").join(name);
        if !p.exists() {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{} is missing (run tools/fetch-models.sh)",
                p.display()
            );
            eprintln!("skipped: {name} is absent from models/");
            continue;
        }
        check(p);
    }
}

#[test]
fn shared_pass_refuses_bad_input() {
    let model = load(&workspace().join("testdata/models/rand-llama-q4_0.gguf"));
    let mut s = model.session(4).unwrap();
    let mut multi = MultiPass::new();
    let toks = [1u32, 2, 3, 4, 5];
    let mut inputs = [SeqInput {
        session: &mut s,
        tokens: &toks,
        want_logits: RowLogits::Last,
    }];
    let e = multi.eval(&model, &mut inputs).unwrap_err();
    assert!(e.to_string().contains("context full"), "{e}");
    let mut inputs = [SeqInput {
        session: &mut s,
        tokens: &[],
        want_logits: RowLogits::Last,
    }];
    assert!(multi.eval(&model, &mut inputs).is_err());
    assert_eq!(s.pos(), 0);
}

/// A sequence wanting every row's logits (speculative verification) beside one wanting its
/// last row and one wanting none: each gets, bit for bit, what it gets alone.
#[test]
fn every_row_logits_equal_the_sequence_alone() {
    for name in ["rand-llama-q4_0.gguf", "rand-qwen3moe-q4km.gguf"] {
        let model = load(&workspace().join("testdata/models").join(name));
        let nv = model.config().n_vocab;
        let (pa, pb, pc) = (prompt(9, 1, nv), prompt(5, 2, nv), prompt(4, 3, nv));
        let (ta, tb, tc) = (prompt(6, 4, nv), prompt(1, 5, nv), prompt(3, 6, nv));
        let mut alone_a = model.session(64).unwrap();
        alone_a.eval(&pa, LogitsWanted::Last).unwrap();
        let want_a = alone_a.eval(&ta, LogitsWanted::All).unwrap();
        let mut alone_b = model.session(64).unwrap();
        alone_b.eval(&pb, LogitsWanted::Last).unwrap();
        let want_b = alone_b.eval(&tb, LogitsWanted::Last).unwrap();

        let mut sa = model.session(64).unwrap();
        let mut sb = model.session(64).unwrap();
        let mut sc = model.session(64).unwrap();
        sa.eval(&pa, LogitsWanted::Last).unwrap();
        sb.eval(&pb, LogitsWanted::Last).unwrap();
        sc.eval(&pc, LogitsWanted::Last).unwrap();
        let mut multi = MultiPass::new();
        let mut inputs = [
            SeqInput {
                session: &mut sa,
                tokens: &ta,
                want_logits: RowLogits::All,
            },
            SeqInput {
                session: &mut sb,
                tokens: &tb,
                want_logits: RowLogits::Last,
            },
            SeqInput {
                session: &mut sc,
                tokens: &tc,
                want_logits: RowLogits::None,
            },
        ];
        let out = multi.eval(&model, &mut inputs).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let got_a = out[0].as_deref().expect("every row was wanted");
        assert_eq!(got_a.len(), ta.len() * nv, "{name}: one row per token");
        assert_eq!(
            bits(got_a),
            bits(&want_a),
            "{name}: every-row logits differ"
        );
        let got_b = out[1].as_deref().expect("the last row was wanted");
        assert_eq!(bits(got_b), bits(&want_b), "{name}: last-row logits differ");
        assert!(out[2].is_none(), "{name}: no logits were wanted");
        assert_eq!(sc.pos(), pc.len() + tc.len());
    }
}
