//! Units: what is read in one go, and where each tensor's bytes lie inside one.
//!
//! A dense model's unit is a layer (all `blk.N.*` tensors). In a MoE model a layer's
//! always-needed part (attention, norms, router, shared expert) is one unit and each expert
//! (its slices of the fused `ffn_{gate,up,down}_exps` tensors, or its own
//! `blk.N.ffn_{gate,up,down}.E.weight` tensors) is another. The output head (`output.weight`)
//! is one unit; the token embedding is its own unit, from which single rows can also be read;
//! every other tensor outside the layers (`output_norm`, `rope_freqs`, ...) is small, used at
//! any time, and lives in the [`UnitId::Globals`] unit, which is always resident. Tensor names
//! and which roles are sliced per expert come from [`flashstream_formats::tensor_names`].
//!
//! NextN / multi-token-prediction layers after the trunk (GLM-4.5, DeepSeek-V3:
//! `nextn_predict_layers`, see [`first_nextn_layer`]) are not run, so their tensors are in no
//! unit: never read, never counted.

use std::collections::HashMap;

use flashstream_formats::config::first_nextn_layer;
use flashstream_formats::tensor_names::{
    is_fused_expert, parse_per_expert, piece_index, PIECE_ROLES,
};
use flashstream_formats::{GgmlType, GgufModel, TensorRole};

use crate::SchedulerError;

/// Identifies a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitId {
    /// `token_embd.weight`.
    Embedding,
    /// Layer `N`'s tensors (for MoE, all but the experts; for a dense layer split into
    /// pieces, its core: everything but the [`UnitId::Piece`] matrices).
    Layer(usize),
    /// One weight matrix of a dense layer, streamed on its own (a sub-layer piece).
    Piece {
        /// Layer index.
        layer: usize,
        /// The matrix's index in [`PIECE_ROLES`], which is also its use order in the layer.
        piece: usize,
    },
    /// One expert of one layer.
    Expert {
        /// Layer index.
        layer: usize,
        /// Expert index.
        expert: usize,
    },
    /// The output projection `output.weight` (tied models have none: they use the embedding).
    Head,
    /// A range of rows of an output matrix too large for one ring slot (`output.weight`, or
    /// the embedding of a tied model, which then has no [`UnitId::Embedding`] unit).
    HeadRows(usize),
    /// Small tensors outside the layers, used at any time: `output_norm`, `rope_freqs`, ...
    Globals,
}

impl std::fmt::Display for UnitId {
    /// `token_embd`, `blk.3`, `blk.3.ffn_up`, `blk.3 expert 17`, `output`, `output rows 2`,
    /// `globals`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            UnitId::Embedding => f.write_str("token_embd"),
            UnitId::Layer(l) => write!(f, "blk.{l}"),
            UnitId::Piece { layer, piece } => match PIECE_ROLES.get(piece) {
                Some(r) => write!(f, "blk.{layer}.{}", r.base_name()),
                None => write!(f, "blk.{layer} piece {piece}"),
            },
            UnitId::Expert { layer, expert } => write!(f, "blk.{layer} expert {expert}"),
            UnitId::Head => f.write_str("output"),
            UnitId::HeadRows(k) => write!(f, "output rows {k}"),
            UnitId::Globals => f.write_str("globals"),
        }
    }
}

/// One tensor, or one expert's slice of a fused expert tensor, inside a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The tensor's name (for a slice: the fused tensor's name).
    pub name: String,
    /// Element type.
    pub ty: GgmlType,
    /// Shape of this part in GGUF order (a slice drops the expert dimension).
    pub shape: Vec<u64>,
    /// File index.
    pub file: usize,
    /// Absolute offset in that file.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

/// A unit: its parts, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Its id.
    pub id: UnitId,
    /// Its parts.
    pub parts: Vec<Part>,
}

impl Unit {
    /// Total bytes of its parts.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.len).sum()
    }

    /// Index of the part called `name`.
    pub fn part_index(&self, name: &str) -> Option<usize> {
        self.parts.iter().position(|p| p.name == name)
    }
}

/// Every unit of a model.
#[derive(Debug, Clone, Default)]
pub struct UnitTable {
    units: Vec<Unit>,
    index: HashMap<UnitId, usize>,
    n_layer: usize,
    n_expert: usize,
}

/// Most experts per layer a model may have. Real models have at most a few hundred; without a
/// cap, a hostile tensor table declaring a fused expert tensor of millions of tiny experts
/// would make millions of units.
pub const MAX_EXPERTS: usize = 1 << 16;

/// `index + 1`, the count an index in a tensor name implies; an error for `usize::MAX`.
fn index_end(name: &str, what: &str, index: usize) -> Result<usize, SchedulerError> {
    index.checked_add(1).ok_or_else(|| {
        SchedulerError::BadModel(format!("{name}: {what} index {index} is too large"))
    })
}

/// The expert count `n` a tensor implies, if at most [`MAX_EXPERTS`].
fn expert_count(name: &str, n: u64) -> Result<usize, SchedulerError> {
    match usize::try_from(n) {
        Ok(n) if n <= MAX_EXPERTS => Ok(n),
        _ => Err(SchedulerError::BadModel(format!(
            "{name}: {n} experts per layer exceed the limit of {MAX_EXPERTS}"
        ))),
    }
}

/// A dense layer is split when its core (what is left after taking out the matrices) is at
/// most this fraction of the layer: the core is then pinned, and small.
const CORE_SHARE_DIVISOR: u64 = 8;

/// Splits every dense layer (one without experts) whose core is small into its core and one
/// [`UnitId::Piece`] per matrix of [`PIECE_ROLES`].
fn split_dense_layers(units: &mut Vec<Unit>) {
    // A set, not a table by layer: hostile files declare layer indices up to usize::MAX.
    let with_experts: std::collections::HashSet<usize> = units
        .iter()
        .filter_map(|u| match u.id {
            UnitId::Expert { layer, .. } => Some(layer),
            _ => None,
        })
        .collect();
    let mut pieces = Vec::new();
    for u in units.iter_mut() {
        let UnitId::Layer(layer) = u.id else { continue };
        if with_experts.contains(&layer) {
            continue;
        }
        let total = u.bytes();
        let is_piece = |p: &Part| p.shape.len() == 2 && piece_index(&p.name, layer).is_some();
        let core: u64 = u.parts.iter().filter(|p| !is_piece(p)).map(|p| p.len).sum();
        let n_pieces = u.parts.iter().filter(|p| is_piece(p)).count();
        if n_pieces == 0 || core == 0 || core.saturating_mul(CORE_SHARE_DIVISOR) > total {
            continue;
        }
        let (taken, kept): (Vec<Part>, Vec<Part>) =
            std::mem::take(&mut u.parts).into_iter().partition(is_piece);
        u.parts = kept;
        for p in taken {
            if let Some(piece) = piece_index(&p.name, layer) {
                pieces.push(Unit {
                    id: UnitId::Piece { layer, piece },
                    parts: vec![p],
                });
            }
        }
    }
    units.extend(pieces);
}

/// Splits the output matrix (`output.weight`, or a tied model's embedding) into
/// [`UnitId::HeadRows`] ranges when it is larger than every other per-token unit, so that
/// ring slots need not be as large as the head.
fn split_head(units: &mut Vec<Unit>, has_output: bool) {
    let cap = units
        .iter()
        .filter(|u| matches!(u.id, UnitId::Layer(_) | UnitId::Piece { .. }))
        .map(Unit::bytes)
        .max()
        .unwrap_or(0);
    let head_id = if has_output {
        UnitId::Head
    } else {
        UnitId::Embedding
    };
    let Some(i) = units.iter().position(|u| u.id == head_id) else {
        return;
    };
    let u = &units[i];
    let [p] = u.parts.as_slice() else { return };
    if cap == 0 || p.len <= cap || p.shape.len() != 2 {
        return;
    }
    let rows = p.shape[1];
    if rows < 2 || p.len % rows != 0 {
        return;
    }
    let row_bytes = p.len / rows;
    let n = p.len.div_ceil(cap).min(rows);
    let per = rows.div_ceil(n);
    let p = p.clone();
    units.remove(i);
    let mut first = 0;
    let mut k = 0;
    while first < rows {
        let r = per.min(rows - first);
        units.push(Unit {
            id: UnitId::HeadRows(k),
            parts: vec![Part {
                shape: vec![p.shape[0], r],
                offset: p.offset + first * row_bytes,
                len: r * row_bytes,
                ..p.clone()
            }],
        });
        first += r;
        k += 1;
    }
}

impl UnitTable {
    /// Groups the tensors of `model` into units.
    pub fn from_model(model: &GgufModel) -> Result<Self, SchedulerError> {
        let mut units: Vec<Unit> = Vec::new();
        let mut index: HashMap<UnitId, usize> = HashMap::new();
        let mut n_layer = 0;
        let mut n_expert = 0;
        let embd_name = TensorRole::TokenEmbd.global_name();
        let head_name = TensorRole::Output.global_name();
        let nextn_from = first_nextn_layer(&model.metadata);
        let mut push = |id: UnitId, part: Part, units: &mut Vec<Unit>| {
            let i = *index.entry(id).or_insert_with(|| {
                units.push(Unit {
                    id,
                    parts: Vec::new(),
                });
                units.len() - 1
            });
            units[i].parts.push(part);
        };
        for t in &model.tensors {
            let whole = Part {
                name: t.name.clone(),
                ty: t.ty,
                shape: t.shape.clone(),
                file: t.file,
                offset: t.offset,
                len: t.n_bytes,
            };
            match t.layer() {
                None if t.name == embd_name => push(UnitId::Embedding, whole, &mut units),
                None if t.name == head_name => push(UnitId::Head, whole, &mut units),
                None => push(UnitId::Globals, whole, &mut units),
                Some(layer) if nextn_from.is_some_and(|f| layer >= f) => {}
                Some(layer) => {
                    n_layer = n_layer.max(index_end(&t.name, "layer", layer)?);
                    if let Some(expert) = parse_per_expert(&t.name).map(|p| p.expert) {
                        let end = index_end(&t.name, "expert", expert)?;
                        n_expert = n_expert.max(expert_count(&t.name, end as u64)?);
                        push(UnitId::Expert { layer, expert }, whole, &mut units);
                    } else if is_fused_expert(&t.name, layer) && t.shape.len() >= 2 {
                        // Weights `[k, rows, n_expert]`, biases `[rows, n_expert]`: the last
                        // dimension counts the experts.
                        let n = t.shape[t.shape.len() - 1];
                        if n == 0 || t.n_bytes % n != 0 {
                            return Err(SchedulerError::BadModel(format!(
                                "{}: {} bytes do not split into {n} experts",
                                t.name, t.n_bytes
                            )));
                        }
                        n_expert = n_expert.max(expert_count(&t.name, n)?);
                        let each = t.n_bytes / n;
                        for e in 0..n {
                            push(
                                UnitId::Expert {
                                    layer,
                                    expert: e as usize,
                                },
                                Part {
                                    shape: t.shape[..t.shape.len() - 1].to_vec(),
                                    offset: t.offset + e * each,
                                    len: each,
                                    ..whole.clone()
                                },
                                &mut units,
                            );
                        }
                    } else {
                        push(UnitId::Layer(layer), whole, &mut units);
                    }
                }
            }
        }
        for u in &mut units {
            u.parts.sort_by_key(|p| (p.file, p.offset));
        }
        split_dense_layers(&mut units);
        split_head(&mut units, model.tensor(&head_name).is_some());
        units.sort_by_key(|u| u.id);
        let index = units.iter().enumerate().map(|(i, u)| (u.id, i)).collect();
        Ok(UnitTable {
            units,
            index,
            n_layer,
            n_expert,
        })
    }

    /// Position of unit `id` in [`UnitTable::iter`] order.
    pub fn position(&self, id: UnitId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// The unit `id`.
    pub fn get(&self, id: UnitId) -> Option<&Unit> {
        self.index.get(&id).map(|&i| &self.units[i])
    }

    /// Every unit, ordered: Embedding, the layers (or their cores), the layer pieces (by
    /// layer, then use order), the experts (by layer, then expert), Head, its row ranges,
    /// Globals.
    pub fn iter(&self) -> impl Iterator<Item = &Unit> {
        self.units.iter()
    }

    /// When a tied model's embedding is split into [`UnitId::HeadRows`] units (it then has no
    /// [`UnitId::Embedding`] unit): the position of the first and the rows each holds.
    pub fn embedding_pieces(&self) -> Option<(usize, u64)> {
        let first = self.get(UnitId::HeadRows(0))?;
        let p = first.parts.first()?;
        (p.name == TensorRole::TokenEmbd.global_name())
            .then(|| Some((self.position(UnitId::HeadRows(0))?, *p.shape.get(1)?)))
            .flatten()
    }

    /// The [`UnitId::HeadRows`] units, in row order (none unless the output matrix is split).
    pub fn head_rows(&self) -> impl Iterator<Item = &Unit> {
        self.units
            .iter()
            .filter(|u| matches!(u.id, UnitId::HeadRows(_)))
    }

    /// The [`UnitId::Piece`] matrices of layer `layer`, in use order (none unless it is split).
    pub fn pieces(&self, layer: usize) -> impl Iterator<Item = &Unit> {
        self.units
            .iter()
            .filter(move |u| matches!(u.id, UnitId::Piece { layer: l, .. } if l == layer))
    }

    /// Number of layers.
    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Experts per layer (0 for dense models).
    pub fn n_expert(&self) -> usize {
        self.n_expert
    }

    /// Layers with experts (a model's leading dense layers have none).
    pub fn n_expert_layers(&self) -> usize {
        let mut layers: Vec<usize> = self
            .units
            .iter()
            .filter_map(|u| match u.id {
                UnitId::Expert { layer, .. } => Some(layer),
                _ => None,
            })
            .collect();
        layers.dedup();
        layers.len()
    }

    /// Total bytes of all units.
    pub fn total_bytes(&self) -> u64 {
        self.units.iter().map(Unit::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use flashstream_formats::gguf::GgufWriter;
    use flashstream_formats::{GgmlType, Value};

    use super::*;

    /// A model of one F32 tensor.
    fn model_with(name: &str, shape: &[u64]) -> GgufModel {
        let mut w = GgufWriter::new();
        w.add_tensor(name, GgmlType::F32, shape).unwrap();
        let data = vec![0; 4 * shape.iter().product::<u64>() as usize];
        GgufModel::from_bytes(&w.to_bytes(&[&data]).unwrap()).unwrap()
    }

    /// A unit's `Display` form names it in traces and plans.
    #[test]
    fn unit_names() {
        assert_eq!(UnitId::Layer(3).to_string(), "blk.3");
        assert_eq!(
            UnitId::Expert {
                layer: 3,
                expert: 17
            }
            .to_string(),
            "blk.3 expert 17"
        );
        assert_eq!(UnitId::Head.to_string(), "output");
    }

    /// Found by the `gguf_struct` fuzz target: `blk.<usize::MAX>.*` overflowed `layer + 1` (a
    /// panic with overflow checks on), and so did an expert index of `usize::MAX`.
    #[test]
    fn huge_layer_and_expert_indices_are_errors() {
        let max = usize::MAX;
        for (name, says) in [
            (format!("blk.{max}.attn_q.weight"), "too large"),
            (format!("blk.0.ffn_up.{max}.weight"), "too large"),
            (
                format!("blk.0.ffn_up.{MAX_EXPERTS}.weight"),
                "exceed the limit",
            ),
        ] {
            let e = UnitTable::from_model(&model_with(&name, &[1])).unwrap_err();
            assert!(
                matches!(&e, SchedulerError::BadModel(m) if m.contains(says)),
                "{e}"
            );
        }
        let name = format!("blk.{}.ffn_up.{}.weight", max - 1, MAX_EXPERTS - 1);
        let t = UnitTable::from_model(&model_with(&name, &[1])).unwrap();
        assert_eq!((t.n_layer(), t.n_expert()), (max, MAX_EXPERTS));
    }

    /// The NextN / MTP layers after the trunk (GLM-4.5's `nextn_predict_layers`) are in no
    /// unit: not read, not streamed, not counted in the plan.
    #[test]
    fn nextn_layers_are_skipped() {
        let build = |nextn: Option<u32>| {
            let mut w = GgufWriter::new();
            w.set("general.architecture", Value::String("glm4moe".into()))
                .unwrap();
            w.set("glm4moe.block_count", Value::U32(3)).unwrap();
            if let Some(n) = nextn {
                w.set("glm4moe.nextn_predict_layers", Value::U32(n))
                    .unwrap();
            }
            let names = [
                "blk.0.attn_q.weight",
                "blk.1.ffn_up_exps.weight",
                "blk.2.attn_q.weight",
                "blk.2.ffn_up_exps.weight",
                "blk.2.nextn.eh_proj.weight",
                "output_norm.weight",
            ];
            let mut data = Vec::new();
            for n in names {
                let shape: &[u64] = if n.contains("exps") { &[4, 1, 2] } else { &[4] };
                w.add_tensor(n, GgmlType::F32, shape).unwrap();
                data.push(vec![0u8; 4 * shape.iter().product::<u64>() as usize]);
            }
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let m = GgufModel::from_bytes(&w.to_bytes(&refs).unwrap()).unwrap();
            UnitTable::from_model(&m).unwrap()
        };
        let all = build(None);
        assert_eq!(all.n_layer(), 3);
        assert!(all.get(UnitId::Layer(2)).is_some());
        let trunk = build(Some(1));
        assert_eq!((trunk.n_layer(), trunk.n_expert()), (2, 2));
        assert!(trunk.get(UnitId::Layer(2)).is_none());
        assert!(trunk
            .get(UnitId::Expert {
                layer: 2,
                expert: 0
            })
            .is_none());
        assert!(trunk
            .get(UnitId::Expert {
                layer: 1,
                expert: 1
            })
            .is_some());
        assert!(trunk.get(UnitId::Globals).is_some());
        assert!(trunk
            .iter()
            .all(|u| u.parts.iter().all(|p| !p.name.starts_with("blk.2."))));
        let skipped = 4 * (4 + 8 + 4) as u64;
        assert_eq!(trunk.total_bytes() + skipped, all.total_bytes());
    }

    /// Found by the `gguf_struct` fuzz target: a fused expert tensor of 2^20 one-element
    /// experts made 2^20 units (with a larger count, minutes and gigabytes).
    #[test]
    fn fused_expert_count_is_capped() {
        let n = MAX_EXPERTS as u64;
        let ok =
            UnitTable::from_model(&model_with("blk.0.ffn_up_exps.weight", &[1, 1, n])).unwrap();
        assert_eq!(ok.n_expert(), MAX_EXPERTS);
        let e = UnitTable::from_model(&model_with("blk.0.ffn_up_exps.weight", &[1, 1, n + 1]))
            .unwrap_err();
        assert!(
            matches!(&e, SchedulerError::BadModel(m) if m.contains("exceed the limit")),
            "{e}"
        );
    }
}
