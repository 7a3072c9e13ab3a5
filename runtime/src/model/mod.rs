//! Transformer forward pass over weights leased from a [`WeightSource`].
//!
//! [`Model`] validates a model's tensors against its architecture's row of the tensor table
//! ([`flashstream_formats::tensor_names`]) once, and
//! remembers where each weight lives (unit and part); [`Session`] holds a KV cache and runs
//! [`Session::eval`]: all the tokens given are processed together, layer by layer (a prompt is
//! one matrix per weight, so a streamed layer is read once for the whole prompt), and logits
//! come back for the last position or for all of them.

pub mod attn;
pub mod attn_quant;
mod forward;
pub mod kv;
pub mod multi;
mod routing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use flashstream_formats::tensor_names::{arch_tensors, piece_index, Need};
pub use flashstream_formats::TensorRole as Role;
use flashstream_formats::{Architecture, GgmlType, GgufModel, ModelConfig};
use flashstream_scheduler::trace::ArgValue;
use flashstream_scheduler::{Trace, Track, UnitId, WeightSource};

use crate::kernels::{Isa, KernelError, Numerics};
use crate::pool::WorkerPool;
pub use forward::{LogitsWanted, RecurrentState, Session};
pub use multi::{MultiPass, RowLogits, SeqInput};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The model file is malformed or its config invalid.
    #[error(transparent)]
    Format(#[from] flashstream_formats::FormatError),
    /// Weights could not be provided.
    #[error(transparent)]
    Scheduler(#[from] flashstream_scheduler::SchedulerError),
    /// A kernel refused its inputs.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A tensor the architecture needs is absent.
    #[error("{arch} model is missing tensor {name:?}")]
    MissingTensor {
        /// The architecture.
        arch: Architecture,
        /// The tensor.
        name: String,
    },
    /// A tensor has a type or shape the runtime cannot use.
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The context is full.
    #[error("context full: {needed} positions needed but the context holds {n_ctx} (raise --ctx, at most the model's {n_ctx_train})")]
    ContextFull {
        /// Positions needed.
        needed: usize,
        /// Context size.
        n_ctx: usize,
        /// The model's training context.
        n_ctx_train: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {n_vocab}")]
    BadToken {
        /// The token.
        token: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// Memory for the KV cache or activations could not be had.
    #[error("cannot allocate {what}")]
    OutOfMemory {
        /// For what.
        what: String,
    },
    /// Invalid options.
    #[error("{0}")]
    Invalid(String),
    /// Worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// Where a weight is: unit, part index in it, type and shape.
#[derive(Debug, Clone)]
pub(crate) struct WeightRef {
    pub unit: UnitId,
    pub part: usize,
    pub ty: GgmlType,
    pub shape: Vec<u64>,
    pub name: String,
}

impl WeightRef {
    /// Row length.
    pub fn k(&self) -> usize {
        self.shape.first().copied().unwrap_or(1) as usize
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.shape.iter().skip(1).product::<u64>() as usize
    }
}

/// The weights of one layer, by role.
#[derive(Debug, Default)]
pub(crate) struct LayerWeights {
    pub w: HashMap<Role, WeightRef>,
}

impl LayerWeights {
    pub fn get(&self, r: Role) -> Option<&WeightRef> {
        self.w.get(&r)
    }
}

/// Options for loading a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Threads for kernels (the caller's thread counts as one).
    pub threads: usize,
    /// Instruction set; `None` picks the best this CPU has.
    pub isa: Option<Isa>,
    /// Most tokens [`Session::eval`] sends through the layers at once; longer inputs are
    /// processed in chunks of this size (bounding activation memory).
    pub max_batch: usize,
    /// MoE models: while a layer computes, apply the next layer's router to its hidden state
    /// and prefetch the experts it picks (used only when the next layer's router is resident).
    pub predict_experts: bool,
    /// Storage types of every session's KV cache (f16 by default).
    pub kv_types: kv::KvTypes,
    /// How batched matmuls round ([`Numerics::Llama`] by default).
    pub numerics: Numerics,
    /// Records each pass and each layer's compute (off by default; the runtime only records,
    /// the caller writes the events out).
    pub trace: Trace,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            isa: None,
            max_batch: 512,
            predict_experts: true,
            kv_types: kv::KvTypes::default(),
            numerics: Numerics::default(),
            trace: Trace::off(),
        }
    }
}

/// A loaded model: config, where every weight lives, kernels and threads.
pub struct Model {
    config: ModelConfig,
    source: Box<dyn WeightSource>,
    layers: Vec<LayerWeights>,
    embd: WeightRef,
    output_norm: WeightRef,
    output: WeightRef,
    /// The output matrix's row ranges when it is streamed in pieces (empty: one unit).
    output_rows: Vec<WeightRef>,
    rope_freqs: Option<WeightRef>,
    isa: Isa,
    numerics: Numerics,
    kv_types: kv::KvTypes,
    pool: WorkerPool,
    max_batch: usize,
    /// Forward passes run one at a time (they share the pool and the source's ring order).
    eval_lock: parking_lot::Mutex<()>,
    /// Whether MoE layers predict the next layer's experts and prefetch them.
    predict_experts: AtomicBool,
    prediction: PredictionCounters,
    /// Where passes and layer compute are recorded (see [`ModelOptions::trace`]).
    pub(crate) trace: Trace,
}

/// Counters of next-layer expert prediction (MoE models).
#[derive(Debug, Default)]
pub(crate) struct PredictionCounters {
    pub predicted: AtomicU64,
    pub correct: AtomicU64,
    pub actual: AtomicU64,
}

/// How well next-layer expert predictions matched the experts then routed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PredictionStats {
    /// Experts predicted (per layer, the union over the batch's tokens), summed.
    pub predicted: u64,
    /// Predicted experts that were then routed to.
    pub correct: u64,
    /// Experts routed to in layers that had a prediction.
    pub actual: u64,
}

impl PredictionStats {
    /// Share of routed experts that had been predicted (recall).
    pub fn accuracy(&self) -> f64 {
        if self.actual == 0 {
            0.0
        } else {
            self.correct as f64 / self.actual as f64
        }
    }

    /// Share of predictions that were routed to (precision).
    pub fn precision(&self) -> f64 {
        if self.predicted == 0 {
            0.0
        } else {
            self.correct as f64 / self.predicted as f64
        }
    }

    /// The counts accumulated since `earlier`.
    pub fn since(&self, earlier: &PredictionStats) -> PredictionStats {
        PredictionStats {
            predicted: self.predicted.saturating_sub(earlier.predicted),
            correct: self.correct.saturating_sub(earlier.correct),
            actual: self.actual.saturating_sub(earlier.actual),
        }
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("arch", &self.config.arch)
            .field("isa", &self.isa)
            .field("threads", &self.pool.n_threads())
            .finish()
    }
}

fn find(
    source: &dyn WeightSource,
    arch: Architecture,
    unit: UnitId,
    name: &str,
) -> Result<Option<WeightRef>, RuntimeError> {
    let Some(u) = source.units().get(unit) else {
        return Ok(None);
    };
    let Some(part) = u.part_index(name) else {
        return Ok(None);
    };
    let p = &u.parts[part];
    if !p.ty.is_supported_for_compute() {
        return Err(RuntimeError::BadTensor {
            name: name.to_string(),
            reason: format!(
                "type {} is not supported for computation ({arch} model)",
                p.ty
            ),
        });
    }
    Ok(Some(WeightRef {
        unit,
        part,
        ty: p.ty,
        shape: p.shape.clone(),
        name: name.to_string(),
    }))
}

impl Model {
    /// Layer `il`'s tensor of `role`, or `MissingTensor` naming it.
    pub(super) fn layer_weight(&self, il: usize, role: Role) -> Result<&WeightRef, RuntimeError> {
        self.layers[il]
            .get(role)
            .ok_or_else(|| RuntimeError::MissingTensor {
                arch: self.config.arch,
                name: role.name(il),
            })
    }

    /// Validates `gguf` against its architecture and prepares to run it with weights from
    /// `source`.
    pub fn new(
        gguf: &GgufModel,
        source: Box<dyn WeightSource>,
        opts: &ModelOptions,
    ) -> Result<Self, RuntimeError> {
        if opts.max_batch == 0 {
            return Err(RuntimeError::Invalid(
                "max_batch must be at least 1 token".into(),
            ));
        }
        let config = ModelConfig::from_model(gguf)?;
        let arch = config.arch;
        let isa = match opts.isa {
            Some(i) if !i.is_available() => return Err(KernelError::IsaUnavailable(i).into()),
            Some(i) => i,
            None => Isa::detect(),
        };
        kv::check_kv_types(&config, opts.kv_types).map_err(RuntimeError::Invalid)?;
        let src = source.as_ref();
        let table = arch_tensors(arch);
        let mut layers = Vec::with_capacity(config.n_layer);
        for il in 0..config.n_layer {
            let mut lw = LayerWeights::default();
            for spec in table.layer_of(config.is_recurrent_layer(il), config.is_moe_layer(il)) {
                let role = spec.role;
                let name = spec.name(il);
                let found = if role.is_expert() {
                    let expert0 = UnitId::Expert {
                        layer: il,
                        expert: 0,
                    };
                    match find(src, arch, expert0, &name)? {
                        Some(w) => Some(w),
                        // Older files: one tensor per expert, blk.N.ffn_gate.E.weight.
                        None => match role.per_expert_name(il, 0) {
                            Some(n) => find(src, arch, expert0, &n)?,
                            None => None,
                        },
                    }
                } else {
                    // A matrix of a layer split into pieces is a unit of its own.
                    let piece =
                        piece_index(&name, il).map(|piece| UnitId::Piece { layer: il, piece });
                    match piece {
                        Some(id) if src.units().get(id).is_some() => find(src, arch, id, &name)?,
                        _ => find(src, arch, UnitId::Layer(il), &name)?,
                    }
                };
                match found {
                    Some(w) => {
                        lw.w.insert(role, w);
                    }
                    None if spec.need == Need::Required => {
                        return Err(RuntimeError::MissingTensor { arch, name })
                    }
                    None => {}
                }
            }
            layers.push(lw);
        }
        let need = |unit, role: Role| -> Result<WeightRef, RuntimeError> {
            let name = role.global_name();
            find(src, arch, unit, &name)?.ok_or(RuntimeError::MissingTensor { arch, name })
        };
        // An output matrix larger than the other per-token units is in row ranges; the whole
        // matrix's reference then names the first range's unit with the full shape.
        let mut output_rows = Vec::new();
        for u in src.units().head_rows() {
            let name = u.parts.first().map(|p| p.name.clone()).unwrap_or_default();
            output_rows.extend(find(src, arch, u.id, &name)?);
        }
        let whole = |rows: &[WeightRef]| {
            rows.first().map(|f| WeightRef {
                shape: vec![f.k() as u64, rows.iter().map(|w| w.rows() as u64).sum()],
                ..f.clone()
            })
        };
        let embd_name = Role::TokenEmbd.global_name();
        let embd = match find(src, arch, UnitId::Embedding, &embd_name)? {
            Some(e) => e,
            None => match whole(&output_rows) {
                Some(w) if w.name == embd_name => w,
                _ => {
                    return Err(RuntimeError::MissingTensor {
                        arch,
                        name: embd_name,
                    })
                }
            },
        };
        let output_norm = need(UnitId::Globals, Role::OutputNorm)?;
        let output = match find(src, arch, UnitId::Head, &Role::Output.global_name())? {
            Some(o) => o,
            None => whole(&output_rows).unwrap_or_else(|| embd.clone()),
        };
        let rope_freqs = find(src, arch, UnitId::Globals, &Role::RopeFreqs.global_name())?;
        let model = Model {
            pool: WorkerPool::new(opts.threads).map_err(RuntimeError::Threads)?,
            config,
            source,
            layers,
            embd,
            output_norm,
            output,
            output_rows,
            rope_freqs,
            isa,
            kv_types: opts.kv_types,
            numerics: opts.numerics,
            max_batch: opts.max_batch,
            eval_lock: parking_lot::Mutex::new(()),
            predict_experts: AtomicBool::new(opts.predict_experts),
            prediction: PredictionCounters::default(),
            trace: opts.trace.clone(),
        };
        model.check_small_tensors()?;
        Ok(model)
    }

    /// Norm weights and biases must be F32 vectors of the right length.
    fn check_small_tensors(&self) -> Result<(), RuntimeError> {
        let c = &self.config;
        let check = |w: &WeightRef, len: usize| -> Result<(), RuntimeError> {
            if w.ty != GgmlType::F32 || w.shape.iter().product::<u64>() != len as u64 {
                return Err(RuntimeError::BadTensor {
                    name: w.name.clone(),
                    reason: format!(
                        "expected F32 of {len} values, found {} of shape {:?}",
                        w.ty, w.shape
                    ),
                });
            }
            Ok(())
        };
        check(&self.output_norm, c.n_embd)?;
        for lw in &self.layers {
            for (role, len) in [
                (Role::AttnNorm, c.n_embd),
                (Role::FfnNorm, c.n_embd),
                (Role::PostAttnNorm, c.n_embd),
                (Role::PostFfwNorm, c.n_embd),
                (Role::AttnQNorm, c.head_dim_k),
                (Role::AttnKNorm, c.head_dim_k),
                (Role::AttnQBias, c.n_head * c.head_dim_k),
                (Role::AttnKBias, c.n_head_kv * c.head_dim_k),
                (Role::AttnVBias, c.n_head_kv * c.head_dim_v),
                (Role::AttnOutBias, c.n_embd),
                (Role::AttnSinks, c.n_head),
                (Role::FfnRouterBias, c.moe.map_or(0, |m| m.n_expert)),
            ] {
                if let Some(w) = lw.get(role) {
                    check(w, len)?;
                }
            }
            if let Some(w) = lw.get(Role::FfnRouterShexp) {
                check(w, c.n_embd)?;
            }
            if let Some(ssm) = &c.ssm {
                let ch = ssm.conv_channels();
                for (role, len) in [
                    (Role::SsmConv1d, ssm.d_conv * ch),
                    (Role::SsmDt, ssm.n_v_heads),
                    (Role::SsmA, ssm.n_v_heads),
                    (Role::SsmNorm, ssm.head_v_dim()),
                ] {
                    if let Some(w) = lw.get(role) {
                        check(w, len)?;
                    }
                }
            }
            if let Some(mla) = c.mla {
                if let (Some(w), Some(r)) = (lw.get(Role::AttnQANorm), mla.q_lora_rank) {
                    check(w, r)?;
                }
                if let Some(w) = lw.get(Role::AttnKvANorm) {
                    check(w, mla.kv_lora_rank)?;
                }
            }
            if let (Some(w), Some(moe)) = (lw.get(Role::FfnExpProbsB), c.moe) {
                check(w, moe.n_expert)?;
            }
        }
        if let Some(w) = &self.rope_freqs {
            check(w, c.rope.dims / 2)?;
        }
        Ok(())
    }

    /// The validated config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The instruction set the kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// How its batched matmuls round.
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }

    /// The storage types of its sessions' KV caches.
    pub fn kv_types(&self) -> kv::KvTypes {
        self.kv_types
    }

    /// Threads used by kernels.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Most tokens evaluated in one pass (see [`ModelOptions::max_batch`]).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Turns next-layer expert prediction on or off (MoE models; for measuring its effect).
    pub fn set_predict_experts(&self, on: bool) {
        self.predict_experts.store(on, Ordering::Relaxed);
    }

    /// Next-layer expert prediction counters so far.
    pub fn prediction_stats(&self) -> PredictionStats {
        let p = &self.prediction;
        PredictionStats {
            predicted: p.predicted.load(Ordering::Relaxed),
            correct: p.correct.load(Ordering::Relaxed),
            actual: p.actual.load(Ordering::Relaxed),
        }
    }

    /// The weight source.
    pub fn source(&self) -> &dyn WeightSource {
        self.source.as_ref()
    }

    /// A session with room for `n_ctx` positions (at most the model's training context).
    pub fn session(&self, n_ctx: usize) -> Result<Session<'_>, RuntimeError> {
        Session::new(self, n_ctx)
    }
}

/// Recording points of the forward passes (nothing but a branch when the trace is off).
impl Model {
    /// Trace: a pass of `n` rows from position `pos` (the first session's) that began at
    /// `start` has ended; `what` names it ("token 7", "prompt 0..64", "pass 3").
    pub(crate) fn trace_pass(
        &self,
        pass: u64,
        start: Option<std::time::Instant>,
        pos: usize,
        n: usize,
        what: impl FnOnce() -> String,
    ) {
        if !self.trace.is_on() {
            return;
        }
        // The source's byte counter at the end of the pass (reads run ahead across passes).
        let total = self.source.stats().bytes_read;
        self.trace.span(Track::Passes, "pass", start, what, || {
            vec![
                ("pass", ArgValue::Int(pass)),
                ("pos", ArgValue::Int(pos as u64)),
                ("n", ArgValue::Int(n as u64)),
                ("bytes_read_total", ArgValue::Int(total)),
            ]
        });
    }

    /// Trace: the compute of `unit` ("blk.3", "output") in pass `pass`, from `start` to now
    /// (a stall waiting for its lease lies inside it).
    pub(crate) fn trace_compute(
        &self,
        pass: u64,
        start: Option<std::time::Instant>,
        pos: usize,
        n: usize,
        unit: impl FnOnce() -> String,
    ) {
        self.trace.span(Track::Compute, "compute", start, unit, || {
            vec![
                ("pass", ArgValue::Int(pass)),
                ("pos", ArgValue::Int(pos as u64)),
                ("n", ArgValue::Int(n as u64)),
            ]
        });
    }
}
