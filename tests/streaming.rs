//! Streaming changes nothing: for every test model, the logits computed from weights streamed
//! through the smallest budget the model plans under equal the all-resident logits, bit for
//! bit, for a prompt and the decode steps after it.

use std::path::PathBuf;

use flashstream::formats::{GgufModel, ModelConfig};
use flashstream::runtime::memory::{runtime_needs, NeedsOptions};
use flashstream::runtime::model::{LogitsWanted, Model, ModelOptions};
use flashstream::scheduler::testing::{Faults, ScrambledPread};
use flashstream::scheduler::{
    Plan, PlanRequest, ResidentSource, SchedulerError, StreamingSource, UnitTable,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The random test models, and the real ones when fetched (required when `CI=true`).
fn models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("testdata/models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    v.sort();
    for real in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma-3-270m-q4_k_m.gguf",
    ] {
        let p = root().join("models").join(real);
        if p.exists() {
            v.push(p);
        } else if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is missing: run tools/fetch-models.sh", p.display());
        } else {
            eprintln!("skipping {real}: not fetched (tools/fetch-models.sh)");
        }
    }
    v
}

fn logits(model: &Model, steps: &[&[u32]]) -> Vec<Vec<f32>> {
    let mut s = model.session(64).unwrap();
    steps
        .iter()
        .map(|t| s.eval(t, LogitsWanted::All).unwrap())
        .collect()
}

fn smallest_plan(gguf: &GgufModel, config: &ModelConfig, rows: usize) -> Plan {
    let units = UnitTable::from_model(gguf).unwrap();
    let needs = runtime_needs(
        config,
        &NeedsOptions {
            max_batch: rows,
            threads: 2,
            logits_rows: rows,
        },
    );
    let mut req = PlanRequest::new(1, config.tied_output);
    req.ctx = Some(64);
    let min = match Plan::compute(&units, &needs, &req) {
        Err(SchedulerError::BudgetTooSmall { minimum, .. }) => minimum,
        other => panic!("expected a minimum, got {:?}", other.map(|p| p.budget)),
    };
    req.budget = min;
    Plan::compute(&units, &needs, &req).unwrap()
}

#[test]
fn streamed_logits_equal_resident_logits_bit_for_bit() {
    let opts = ModelOptions {
        threads: 2,
        ..ModelOptions::default()
    };
    for path in models() {
        let gguf = GgufModel::open(&path).unwrap();
        let config = ModelConfig::from_model(&gguf).unwrap();
        let prompt: Vec<u32> = [1u32, 17, 200, 42, 99, 7, 3, 150]
            .iter()
            .map(|t| t % config.n_vocab as u32)
            .collect();
        let steps: [&[u32]; 3] = [&prompt, &[5], &[250 % config.n_vocab as u32]];
        let resident =
            Model::new(&gguf, Box::new(ResidentSource::load(&gguf).unwrap()), &opts).unwrap();
        let want = logits(&resident, &steps);
        drop(resident);

        let plan = smallest_plan(&gguf, &config, prompt.len());
        assert!(
            !plan.cycle.is_empty(),
            "{}: the smallest budget must stream",
            path.display()
        );
        let backend = ScrambledPread::open(&gguf, 4096, Faults::default()).unwrap();
        let source =
            StreamingSource::with_backend(&gguf, plan, Box::new(backend), 64 << 10).unwrap();
        let streamed = Model::new(&gguf, Box::new(source), &opts).unwrap();
        let got = logits(&streamed, &steps);
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert_eq!(a.len(), b.len());
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{}: step {i} logits differ", path.display());
        }
        let st = streamed.source().stats();
        assert!(st.bytes_read > 0 && st.ring_leases > 0, "{st:?}");
        if config.moe.is_some() {
            assert!(st.expert_misses > 0, "{st:?}");
        }
    }
}
