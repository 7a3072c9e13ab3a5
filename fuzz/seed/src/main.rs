//! Writes the seed corpora of the fuzz targets from GGUF models, so that the fuzzer starts from
//! the structure of real files.
//!
//! Usage: `flashstream-fuzz-seed READ_DIR SPLIT_DIR MODEL.gguf...`
//!
//! For each model, into `READ_DIR` (the `gguf_read` corpus):
//! - `NAME.head.gguf`: its first 64 KiB as they are (a small model's whole header and some
//!   data; a large model's header up to where its tokenizer arrays are cut);
//! - `NAME.header.gguf`: its header, re-written with every metadata array cut to 64 elements,
//!   long strings cut to 4 KiB and the vocabulary dimension of `token_embd`/`output` cut to
//!   match. The full tensor table is kept: the fuzz targets read it as the head of a file with
//!   room for the tensors, so the config and unit code see a real model's table;
//! - `NAME.tiny.gguf`: a complete file with the same (cut) metadata and the tensors outside the
//!   layers and of layers 0 and 1, each cut to one row of one block (fused expert tensors keep
//!   two experts), with pseudo-random data.
//!
//! Into `SPLIT_DIR` (the `gguf_split` corpus): the tiny file, the header cut into 2 parts and
//! the tiny file cut into 3 parts (with `split.*` keys), each split model's parts concatenated.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use flashstream_formats::gguf::{SPLIT_COUNT_KEY, SPLIT_NO_KEY, SPLIT_TENSORS_COUNT_KEY};
use flashstream_formats::{Array, GgufModel, Metadata, TensorInfo, Value};

type Res<T> = Result<T, Box<dyn Error>>;

const HEAD_BYTES: usize = 64 << 10;
const MAX_ARRAY: usize = 64;
const MAX_STRING: usize = 4096;

fn main() -> Res<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [read_dir, split_dir, models @ ..] = args.as_slice() else {
        return Err("usage: flashstream-fuzz-seed READ_DIR SPLIT_DIR MODEL.gguf...".into());
    };
    fs::create_dir_all(read_dir)?;
    fs::create_dir_all(split_dir)?;
    for path in models {
        seed(path, read_dir, split_dir).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn seed(path: &Path, read_dir: &Path, split_dir: &Path) -> Res<()> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("model path has no file name")?;
    let model = GgufModel::open(path)?;
    let out = |dir: &Path, kind: &str, bytes: &[u8]| -> Res<()> {
        let p = dir.join(format!("{stem}.{kind}.gguf"));
        fs::write(&p, bytes)?;
        println!("{:>8} bytes  {}", bytes.len(), p.display());
        Ok(())
    };

    let mut head = vec![0u8; HEAD_BYTES];
    let n = read_prefix(path, &mut head)?;
    out(read_dir, "head", &head[..n])?;

    let (metadata, vocab) = cut_metadata(&model.metadata);
    let tensors: Vec<TensorInfo> = model
        .tensors
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if let Some(v) = vocab {
                let is_vocab = t.name == "token_embd.weight" || t.name == "output.weight";
                if is_vocab && t.shape.len() == 2 {
                    t.shape[1] = v;
                }
            }
            t
        })
        .collect();
    let header = header_only(&metadata, &tensors)?;
    out(read_dir, "header", &header)?;

    let tiny_tensors: Vec<TensorInfo> = tensors
        .iter()
        .filter(|t| t.layer().is_none_or(|l| l < 2))
        .map(|t| {
            let mut t = t.clone();
            let fused = t.name.contains("_exps.") && t.shape.len() == 3;
            for (i, d) in t.shape.iter_mut().enumerate() {
                *d = match i {
                    0 => t.ty.block_size() as u64,
                    2 if fused => 2,
                    _ => 1,
                };
            }
            t
        })
        .collect();
    let tiny = complete(&metadata, &tiny_tensors, None)?;
    out(read_dir, "tiny", &tiny)?;
    out(split_dir, "tiny", &tiny)?;

    let header_split = split(&metadata, &tensors, 2, false)?;
    out(split_dir, "header-split2", &header_split)?;
    let tiny_split = split(&metadata, &tiny_tensors, 3, true)?;
    out(split_dir, "tiny-split3", &tiny_split)?;
    Ok(())
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> Res<usize> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The metadata with arrays cut to [`MAX_ARRAY`] elements and strings to [`MAX_STRING`] bytes;
/// also the new vocabulary size if the token list was cut.
fn cut_metadata(md: &Metadata) -> (Metadata, Option<u64>) {
    let mut out = Metadata::new();
    let mut vocab = None;
    let arch = md.get("general.architecture").and_then(Value::as_str);
    for (key, value) in md.iter() {
        let value = match value {
            Value::Array(a) if a.len() > MAX_ARRAY => {
                if key == "tokenizer.ggml.tokens" {
                    vocab = Some(MAX_ARRAY as u64);
                }
                Value::Array(cut_array(a, MAX_ARRAY))
            }
            Value::String(s) if s.len() > MAX_STRING => Value::String(cut_str(s)),
            v => v.clone(),
        };
        out.set(key, value);
    }
    if let (Some(v), Some(arch)) = (vocab, arch) {
        let key = format!("{arch}.vocab_size");
        if out.get(&key).is_some() {
            out.set(key, Value::U32(v as u32));
        }
    }
    (out, vocab)
}

fn cut_str(s: &str) -> String {
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn cut_array(a: &Array, n: usize) -> Array {
    fn first<T: Clone>(v: &[T], n: usize) -> Vec<T> {
        v[..v.len().min(n)].to_vec()
    }
    match a {
        Array::U8(v) => Array::U8(first(v, n)),
        Array::I8(v) => Array::I8(first(v, n)),
        Array::U16(v) => Array::U16(first(v, n)),
        Array::I16(v) => Array::I16(first(v, n)),
        Array::U32(v) => Array::U32(first(v, n)),
        Array::I32(v) => Array::I32(first(v, n)),
        Array::F32(v) => Array::F32(first(v, n)),
        Array::Bool(v) => Array::Bool(first(v, n)),
        Array::String(v) => Array::String(first(v, n)),
        Array::Array(v) => Array::Array(first(v, n)),
        Array::U64(v) => Array::U64(first(v, n)),
        Array::I64(v) => Array::I64(first(v, n)),
        Array::F64(v) => Array::F64(first(v, n)),
    }
}

fn writer(
    metadata: &Metadata,
    tensors: &[TensorInfo],
) -> Res<flashstream_formats::gguf::GgufWriter> {
    let mut w = flashstream_formats::gguf::GgufWriter::new();
    w.copy_metadata(metadata)?;
    for t in tensors {
        w.add_tensor(t.name.clone(), t.ty, &t.shape)?;
    }
    Ok(w)
}

/// The header (padded to the alignment) of a file holding `tensors`, without their data.
fn header_only(metadata: &Metadata, tensors: &[TensorInfo]) -> Res<Vec<u8>> {
    let mut bytes = Vec::new();
    // The data writer is dropped unused: only the header is wanted.
    writer(metadata, tensors)?.write_header(&mut bytes)?;
    Ok(bytes)
}

/// A whole file with pseudo-random tensor data; `split` = (part, count, total tensors).
fn complete(
    metadata: &Metadata,
    tensors: &[TensorInfo],
    split: Option<(u16, u16, usize)>,
) -> Res<Vec<u8>> {
    let mut w = writer(metadata, tensors)?;
    if let Some((no, count, total)) = split {
        w.set(SPLIT_NO_KEY, Value::U16(no))?;
        w.set(SPLIT_COUNT_KEY, Value::U16(count))?;
        w.set(SPLIT_TENSORS_COUNT_KEY, Value::I32(i32::try_from(total)?))?;
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<Vec<u8>> = w
        .layout()?
        .0
        .iter()
        .map(|t| {
            (0..t.n_bytes)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    Ok(w.to_bytes(&refs)?)
}

/// `count` parts (the model's metadata in the first), concatenated; whole files or headers.
fn split(metadata: &Metadata, tensors: &[TensorInfo], count: u16, whole: bool) -> Res<Vec<u8>> {
    let per = tensors.len().div_ceil(usize::from(count)).max(1);
    let mut out = Vec::new();
    for no in 0..count {
        let start = (usize::from(no) * per).min(tensors.len());
        let end = (start + per).min(tensors.len());
        let part = &tensors[start..end];
        let md = if no == 0 {
            metadata.clone()
        } else {
            Metadata::new()
        };
        if whole {
            out.extend(complete(&md, part, Some((no, count, tensors.len())))?);
        } else {
            let mut md = md;
            md.set(SPLIT_NO_KEY, Value::U16(no));
            md.set(SPLIT_COUNT_KEY, Value::U16(count));
            md.set(
                SPLIT_TENSORS_COUNT_KEY,
                Value::I32(i32::try_from(tensors.len())?),
            );
            out.extend(header_only(&md, part)?);
        }
    }
    Ok(out)
}
