//! What the fuzz targets do with an input, shared by `gguf_read`, `gguf_split` and
//! `gguf_struct` (whose input is a recipe for a file, see [`structured`]).
//!
//! Each input is tried two ways:
//! - **whole files** ([`whole_files`]): the bytes are the complete file(s), parsed with
//!   [`GgufModel::from_split_bytes`]; a model that parses is also written back with the
//!   [`GgufWriter`] and read again (the round trip must be exact);
//! - **heads of files** ([`heads_of_files`]): the bytes are only the start of each file, whose
//!   stated length is [`VIRTUAL_TAIL`] bytes more, as when the runtime reads just the header of
//!   a model on flash. This reaches the config and unit code with real models' tensor tables
//!   (the seeds hold their headers, not gigabytes of weights).
//!
//! A model that parses either way goes through what consumes its untrusted metadata and tensor
//! table: [`ModelConfig::from_model`] and [`UnitTable::from_model`]. Only panics count as
//! findings: errors are the expected answer to most inputs. The `assert!`s below are invariants
//! that hold for every model the reader accepts.

#![warn(missing_docs)]

pub mod structured;

use std::collections::HashSet;
use std::path::PathBuf;

use flashstream_formats::gguf::{parse_header, split_info, GgufWriter, Limits};
use flashstream_formats::{GgufModel, ModelConfig};
use flashstream_scheduler::UnitTable;

/// Bytes a file is said to have beyond the input, in [`heads_of_files`].
pub const VIRTUAL_TAIL: u64 = 4 << 30;

/// Most parts [`split_parts`] cuts an input into.
pub const MAX_PARTS: usize = 8;

/// Limits for [`heads_of_files`]. The reader never allocates more than a few times the bytes
/// that are *said* to be left, so with a 4 GiB virtual tail the default limits would let one
/// array reserve gigabytes (the fuzzer's memory limit would call that a crash). These keep every
/// reservation small while still covering real models' headers once the seeder shrinks their
/// tokenizer arrays.
pub fn head_limits() -> Limits {
    Limits {
        max_string_len: 1 << 16,
        max_array_len: 1 << 16,
        max_array_depth: 8,
        max_kv: 1 << 12,
        max_tensors: 1 << 14,
        max_name_len: 1024,
    }
}

/// Cuts `data` before every occurrence of the magic `GGUF` after its start: the parts of a split
/// model, concatenated, come apart again. At most [`MAX_PARTS`] parts (the rest stays in the
/// last).
pub fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut cuts = vec![0];
    let mut i = 1;
    while i + 4 <= data.len() && cuts.len() < MAX_PARTS {
        if &data[i..i + 4] == b"GGUF" {
            cuts.push(i);
            i += 4;
        } else {
            i += 1;
        }
    }
    cuts.push(data.len());
    cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Parses `parts` as complete files; on success checks the model and the write/read round trip.
/// Returns whether it parsed.
pub fn whole_files(parts: &[&[u8]]) -> bool {
    let Ok(model) = GgufModel::from_split_bytes(parts) else {
        return false;
    };
    assert_eq!(model.files.len(), parts.len());
    for (f, p) in model.files.iter().zip(parts) {
        assert_eq!(f.len, p.len() as u64);
    }
    exercise(&model);
    round_trip(&model, parts);
    true
}

/// Parses `parts` as the heads of files [`VIRTUAL_TAIL`] bytes longer (see the crate docs) and
/// checks the model. Returns whether it parsed.
pub fn heads_of_files(parts: &[&[u8]]) -> bool {
    let limits = head_limits();
    let mut headers = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let len = p.len() as u64 + VIRTUAL_TAIL;
        match parse_header(*p, len, &limits) {
            Ok(h) => headers.push((PathBuf::from(format!("<head {i}>")), len, h)),
            Err(_) => return false,
        }
    }
    let Ok(model) = GgufModel::from_headers(headers) else {
        return false;
    };
    exercise(&model);
    true
}

/// The tensor data of `model`, tensor by tensor, from the files' bytes.
fn tensor_data<'a>(model: &GgufModel, parts: &[&'a [u8]]) -> Vec<&'a [u8]> {
    model
        .tensors
        .iter()
        .map(|t| {
            let start = usize::try_from(t.offset).unwrap();
            let end = usize::try_from(t.offset + t.n_bytes).unwrap();
            &parts[t.file][start..end]
        })
        .collect()
}

/// Read → write → read gives the same tensor table and bytes, and writing the second reading
/// again gives the same file (metadata included, NaNs too, which `==` on values would not say).
fn round_trip(model: &GgufModel, parts: &[&[u8]]) {
    let data = tensor_data(model, parts);
    let written = GgufWriter::from_model(model)
        .and_then(|w| w.to_bytes(&data))
        .unwrap_or_else(|e| panic!("the writer refuses a model the reader accepted: {e}"));
    let again = GgufModel::from_bytes(&written)
        .unwrap_or_else(|e| panic!("the reader refuses what the writer wrote: {e}"));
    assert_eq!(again.tensors.len(), model.tensors.len());
    for (a, b) in again.tensors.iter().zip(&model.tensors) {
        assert_eq!(
            (&a.name, a.ty, &a.shape, a.n_bytes),
            (&b.name, b.ty, &b.shape, b.n_bytes)
        );
    }
    let data_again = tensor_data(&again, &[&written]);
    assert_eq!(data_again, data);
    let keys = |m: &GgufModel| -> Vec<String> {
        m.metadata
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| !k.starts_with("split."))
            .collect()
    };
    assert_eq!(keys(&again), keys(model));
    let rewritten = GgufWriter::from_model(&again)
        .and_then(|w| w.to_bytes(&data_again))
        .expect("the writer refuses a model it wrote");
    assert!(rewritten == written, "writing is not idempotent");
}

/// What the runtime does with a parsed model's table and metadata, with invariants.
pub fn exercise(model: &GgufModel) {
    let mut total = 0u64;
    let mut layers = HashSet::new();
    for t in &model.tensors {
        let found = model
            .tensor(&t.name)
            .expect("a tensor is not found by its name");
        assert!(std::ptr::eq(found, t));
        let file = &model.files[t.file];
        assert!(t.offset >= file.data_offset);
        assert!(t.offset + t.n_bytes <= file.len);
        assert_eq!(t.offset % file.alignment, 0);
        assert_eq!(t.row_bytes() * t.n_rows(), t.n_bytes);
        assert_eq!(t.row_len() * t.n_rows(), t.n_elements());
        if let Some(l) = t.layer() {
            layers.insert(l);
        }
        total += t.n_bytes;
    }
    assert_eq!(model.total_tensor_bytes(), total);
    assert_eq!(model.tensors_in_layer_order().len(), model.tensors.len());
    let in_layers: usize = layers.iter().map(|&l| model.layer_tensors(l).count()).sum();
    assert_eq!(
        in_layers,
        model.tensors.iter().filter(|t| t.layer().is_some()).count()
    );
    let _ = model.architecture();
    let _ = split_info(&model.metadata);

    if let Ok(cfg) = ModelConfig::from_model(model) {
        let embd = model
            .tensor("token_embd.weight")
            .expect("config without embedding");
        assert_eq!(Some(cfg.n_vocab as u64), embd.shape.get(1).copied());
        assert!(cfg.n_layer > 0 && cfg.n_embd > 0 && cfg.n_head > 0 && cfg.n_head_kv > 0);
        let _ = cfg.kv_bytes_per_token(2);
        for il in 0..cfg.n_layer {
            let _ = cfg.is_swa_layer(il);
        }
    }

    if let Ok(units) = UnitTable::from_model(model) {
        let mut sum = 0u64;
        for (i, u) in units.iter().enumerate() {
            assert_eq!(units.position(u.id), Some(i));
            assert!(units.get(u.id).is_some());
            for p in &u.parts {
                assert!(p.file < model.files.len());
                assert!(p.offset + p.len <= model.files[p.file].len);
                assert!(u.part_index(&p.name).is_some());
            }
            sum += u.bytes();
        }
        assert_eq!(sum, units.total_bytes());
        assert_eq!(units.total_bytes(), total);
        assert!(units.n_layer() >= layers.len());
    }
}
