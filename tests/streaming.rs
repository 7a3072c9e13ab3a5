//! Streaming changes nothing: for every test model, the logits computed from weights streamed
//! through the smallest budget the model plans under equal the all-resident logits, bit for
//! bit, for a prompt and the decode steps after it.

use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flashstream::formats::{GgufModel, ModelConfig};
use flashstream::loader::{
    open_backend, BackendOptions, FileSource, IoKind, PreadBackend, ReadSource,
};
use flashstream::runtime::memory::{runtime_needs, NeedsOptions};
use flashstream::runtime::model::{LogitsWanted, Model, ModelOptions};
use flashstream::scheduler::testing::{Faults, ScrambledPread};
use flashstream::scheduler::{
    Plan, PlanRequest, ResidentSource, SchedulerError, StreamingSource, UnitId, UnitTable,
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
            ..NeedsOptions::default()
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
        // Dense layers stream as sub-layer pieces (matrices), with their small cores pinned.
        if config.moe.is_none() {
            assert!(
                plan.cycle.iter().any(|u| matches!(u, UnitId::Piece { .. })),
                "{}: {:?}",
                path.display(),
                plan.cycle
            );
        }
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
        // The runtime leases layer pieces and head rows in exactly the plan's cycle order.
        assert_eq!(st.ring_skips, 0, "{}: {st:?}", path.display());
        if config.moe.is_some() {
            assert!(st.expert_misses > 0, "{st:?}");
        }
    }
}

/// The syscall layer under the real pread backend, with faults: every third read returns at
/// most a few KiB (a short read), every fifth fails with EINTR, every seventh with EAGAIN; and
/// from `eio_after` reads on, every read fails with EIO.
struct Faulty {
    inner: FileSource,
    n: AtomicU64,
    eio_after: u64,
}

impl ReadSource for Faulty {
    fn path(&self) -> &std::path::Path {
        self.inner.path()
    }
    fn read_alignment(&self) -> usize {
        self.inner.read_alignment()
    }
    fn read_at(&self, buf: &mut [MaybeUninit<u8>], offset: u64) -> std::io::Result<usize> {
        let i = self.n.fetch_add(1, Ordering::Relaxed);
        if i >= self.eio_after {
            return Err(std::io::Error::from_raw_os_error(libc_eio()));
        }
        if i % 5 == 4 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if i % 7 == 6 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        if i % 3 == 2 && buf.len() > 8192 {
            return self.inner.read_at(&mut buf[..8192], offset);
        }
        self.inner.read_at(buf, offset)
    }
    fn current_len(&self) -> std::io::Result<u64> {
        self.inner.current_len()
    }
    fn check_unchanged(&self) -> Result<(), String> {
        self.inner.check_unchanged()
    }
}

fn libc_eio() -> i32 {
    5
}

fn faulty_backend(gguf: &GgufModel, eio_after: u64) -> PreadBackend {
    let sources: Vec<Arc<dyn ReadSource>> = gguf
        .files
        .iter()
        .map(|f| {
            Arc::new(Faulty {
                inner: FileSource::open(&f.path, false).unwrap(),
                n: AtomicU64::new(0),
                eio_after,
            }) as Arc<dyn ReadSource>
        })
        .collect();
    PreadBackend::from_sources(sources, 3, 4096).unwrap()
}

/// Short reads, EINTR and EAGAIN under the real pread backend change nothing; EIO is a clear
/// error from `eval`, never logits computed from half-read weights.
#[test]
fn injected_faults_are_retried_or_reported_never_wrong_numbers() {
    let opts = ModelOptions {
        threads: 2,
        ..ModelOptions::default()
    };
    let path = root().join("testdata/models/rand-qwen3-q5km.gguf");
    let gguf = GgufModel::open(&path).unwrap();
    let config = ModelConfig::from_model(&gguf).unwrap();
    let steps: [&[u32]; 2] = [&[1, 2, 3, 4], &[5]];
    let want = logits(
        &Model::new(&gguf, Box::new(ResidentSource::load(&gguf).unwrap()), &opts).unwrap(),
        &steps,
    );
    let plan = smallest_plan(&gguf, &config, 4);
    let source = StreamingSource::with_backend(
        &gguf,
        plan.clone(),
        Box::new(faulty_backend(&gguf, u64::MAX)),
        64 << 10,
    )
    .unwrap();
    let got = logits(&Model::new(&gguf, Box::new(source), &opts).unwrap(), &steps);
    assert!(
        want.iter()
            .flatten()
            .zip(got.iter().flatten())
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "retried faults must not change the logits"
    );

    // EIO after the pinned load: the first pass through the ring fails, with the OS error.
    let source =
        StreamingSource::with_backend(&gguf, plan, Box::new(faulty_backend(&gguf, 200)), 64 << 10);
    let err = match source {
        // Failed already while loading the pinned units: also a clear error.
        Err(e) => Some(e.to_string()),
        Ok(source) => {
            let model = Model::new(&gguf, Box::new(source), &opts).unwrap();
            let mut s = model.session(64).unwrap();
            let mut err = None;
            for _ in 0..20 {
                if let Err(e) = s.eval(&[1, 2], LogitsWanted::Last) {
                    err = Some(e.to_string());
                    break;
                }
            }
            err
        }
    };
    let msg = err.expect("EIO must surface");
    assert!(msg.contains("rand-qwen3-q5km.gguf"), "{msg}");
    assert!(
        msg.contains("Input/output error") || msg.contains("os error 5"),
        "{msg}"
    );
}

/// Every real backend: a file truncated while a streaming model runs is an error naming the
/// file, not garbage.
#[test]
fn truncating_the_file_while_streaming_is_an_error_on_every_backend() {
    let opts = ModelOptions {
        threads: 2,
        ..ModelOptions::default()
    };
    for kind in [IoKind::Uring, IoKind::Pread, IoKind::Mmap] {
        let dir = std::env::temp_dir().join(format!("fs-trunc-{}-{kind}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::copy(root().join("testdata/models/rand-llama-q8_0.gguf"), &path).unwrap();
        let gguf = GgufModel::open(&path).unwrap();
        let config = ModelConfig::from_model(&gguf).unwrap();
        let backend = match open_backend(
            &gguf,
            &BackendOptions {
                kind,
                queue_depth: None,
            },
        ) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{kind} unavailable here ({e}); skipped");
                continue;
            }
        };
        let plan = smallest_plan(&gguf, &config, 2);
        let source = StreamingSource::with_backend(&gguf, plan, backend, 64 << 10).unwrap();
        let model = Model::new(&gguf, Box::new(source), &opts).unwrap();
        let mut s = model.session(64).unwrap();
        s.eval(&[1, 2], LogitsWanted::Last).unwrap();
        let half = std::fs::metadata(&path).unwrap().len() / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(half)
            .unwrap();
        let mut err = None;
        for _ in 0..10 {
            if let Err(e) = s.eval(&[3], LogitsWanted::Last) {
                err = Some(e);
                break;
            }
        }
        let msg = err
            .unwrap_or_else(|| panic!("{kind}: truncation must surface"))
            .to_string();
        assert!(
            msg.contains("truncated") || msg.contains("changed"),
            "{kind}: {msg}"
        );
        drop(s);
        drop(model);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
