//! `mkmodel`'s writer: random but well-scaled tensor data for every weight type, the byte-level
//! vocabulary, and the GGUF file written chunk by chunk on a second thread, then flushed and
//! dropped from the page cache.

use std::path::Path;
use std::sync::mpsc;

use anyhow::Context;

use flashstream::formats::gguf::GgufWriter;
use flashstream::formats::{Array, GgmlType, TensorRole, Value};
use flashstream::runtime::kernels::testutil::Rng;

use crate::progress::Bar;

/// Where a block keeps its f16 scale(s), and the scale that gives weights of standard
/// deviation about `1/sqrt(k)` when every other byte is random.
pub(super) struct BlockRecipe {
    pub(super) bytes: usize,
    /// (offset of an f16 field, value = factor / sqrt(k)).
    pub(super) fields: &'static [(usize, f32)],
}

pub(super) fn recipe(ty: GgmlType) -> Option<BlockRecipe> {
    // Standard deviations of random codes: a 4-bit nibble minus 8 ~ 4.6, an int8 ~ 73.6, a
    // 6-bit code minus 32 ~ 18.5; K-quant sub-block scales (6 bit) ~ 36 on average.
    Some(match ty {
        GgmlType::Q4_0 => BlockRecipe {
            bytes: 18,
            fields: &[(0, 1.0 / 4.6)],
        },
        GgmlType::Q8_0 => BlockRecipe {
            bytes: 34,
            fields: &[(0, 1.0 / 73.6)],
        },
        // d, 4 bytes of fifth bits, 16 of nibbles: w = d*(q - 16), q ~ U(0,31) ~ 9.2.
        GgmlType::Q5_0 => BlockRecipe {
            bytes: 22,
            fields: &[(0, 1.0 / 9.2)],
        },
        // d, then dmin: w = d*sc*q - dmin*m with q ~ U(0,15), sc, m ~ U(0,63).
        GgmlType::Q4_K => BlockRecipe {
            bytes: 144,
            fields: &[(0, 1.0 / (4.6 * 36.0)), (2, 7.5 / (4.6 * 36.0))],
        },
        // ql, qh, int8 scales, then d at 208.
        GgmlType::Q6_K => BlockRecipe {
            bytes: 210,
            fields: &[(208, 1.0 / (18.5 * 73.6))],
        },
        _ => return None,
    })
}

/// Generates the bytes of a random `ty` tensor of `n` weights with rows of `k`, chunk by chunk.
pub(super) fn random_tensor(
    ty: GgmlType,
    k: usize,
    n: u64,
    gain: f32,
    rng: &mut Rng,
    chunk: usize,
    mut emit: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let scale = gain / (k as f32).sqrt();
    match ty {
        GgmlType::F32 | GgmlType::F16 => {
            let width = if ty == GgmlType::F32 { 4 } else { 2 };
            let mut left = n;
            let mut buf = vec![0u8; chunk / width * width];
            while left > 0 {
                let m = (left as usize).min(buf.len() / width);
                for v in buf[..m * width].chunks_exact_mut(width) {
                    // Uniform with standard deviation `scale`.
                    let x = rng.sym() * scale * 1.732;
                    if width == 4 {
                        v.copy_from_slice(&x.to_le_bytes());
                    } else {
                        v.copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
                    }
                }
                emit(&buf[..m * width])?;
                left -= m as u64;
            }
        }
        GgmlType::MXFP4 => {
            // A shared power-of-two scale byte (E8M0, `2^(e-128)` per code unit as ggml reads
            // it), then 32 random 4-bit E2M1 codes (values 0..±12 in code units, standard
            // deviation about 5.85).
            let d = scale / 5.85;
            let e = (d.log2().round() + 128.0).clamp(1.0, 254.0) as u8;
            let per_chunk = (chunk / 17).max(1);
            let mut buf = vec![0u8; per_chunk * 17];
            let mut left = n / 32;
            while left > 0 {
                let m = (left as usize).min(per_chunk);
                let b = &mut buf[..m * 17];
                rng.fill(b);
                for blk in b.chunks_exact_mut(17) {
                    blk[0] = e;
                }
                emit(b)?;
                left -= m as u64;
            }
        }
        _ => {
            let r = recipe(ty).context("no random recipe for this type")?;
            let per_block = ty.block_size() as u64;
            let blocks = n / per_block;
            let mut left = blocks;
            let per_chunk = (chunk / r.bytes).max(1);
            let mut buf = vec![0u8; per_chunk * r.bytes];
            let fields: Vec<(usize, [u8; 2])> = r
                .fields
                .iter()
                .map(|&(o, f)| (o, half::f16::from_f32(f * scale).to_le_bytes()))
                .collect();
            while left > 0 {
                let m = (left as usize).min(per_chunk);
                let b = &mut buf[..m * r.bytes];
                rng.fill(b);
                for blk in b.chunks_exact_mut(r.bytes) {
                    for (o, v) in &fields {
                        blk[*o..*o + 2].copy_from_slice(v);
                    }
                    if ty == GgmlType::Q4_0 {
                        // Nibble 0 (weight -8d) becomes 8 (weight 0): codes symmetric
                        // around zero, so matrices have no common-mode bias.
                        for q in &mut blk[2..] {
                            if *q & 0x0f == 0 {
                                *q |= 0x08;
                            }
                            if *q & 0xf0 == 0 {
                                *q |= 0x80;
                            }
                        }
                    }
                }
                emit(b)?;
                left -= m as u64;
            }
        }
    }
    Ok(())
}

/// GPT-2's byte-to-character map: printable bytes are themselves, the rest 256 + n.
pub(super) fn byte_token(b: u8) -> String {
    let printable = |c: u32| {
        (0x21..=0x7e).contains(&c) || (0xa1..=0xac).contains(&c) || (0xae..=0xff).contains(&c)
    };
    if printable(b as u32) {
        return char::from_u32(b as u32)
            .map(String::from)
            .unwrap_or_default();
    }
    let n = (0..b as u32).filter(|&c| !printable(c)).count() as u32;
    char::from_u32(256 + n)
        .map(String::from)
        .unwrap_or_default()
}

/// Tokenizer keys of a 257-token byte-level vocabulary.
pub(super) fn byte_vocab(w: &mut GgufWriter) -> anyhow::Result<()> {
    padded_byte_vocab(w, 257)
}

/// [`byte_vocab`] padded with unused tokens `<|pad_N|>` (type 5, never produced by the
/// tokenizer) to `n` tokens, for models shaped like a real one's vocabulary size.
pub(super) fn padded_byte_vocab(w: &mut GgufWriter, n: usize) -> anyhow::Result<()> {
    let mut tokens: Vec<String> = (0..=255u8).map(byte_token).collect();
    tokens.push("<|endoftext|>".into());
    let mut types = vec![1i32; 256];
    types.push(3);
    for i in tokens.len()..n {
        tokens.push(format!("<|pad_{i}|>"));
        types.push(5);
    }
    w.set("tokenizer.ggml.model", Value::String("gpt2".into()))?;
    w.set("tokenizer.ggml.pre", Value::String("default".into()))?;
    w.set("tokenizer.ggml.tokens", Value::Array(Array::String(tokens)))?;
    w.set("tokenizer.ggml.token_type", Value::Array(Array::I32(types)))?;
    w.set(
        "tokenizer.ggml.merges",
        Value::Array(Array::String(vec!["Ġ Ġ".into()])),
    )?;
    w.set("tokenizer.ggml.bos_token_id", Value::U32(256))?;
    w.set("tokenizer.ggml.eos_token_id", Value::U32(256))?;
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(false))?;
    Ok(())
}

/// One tensor to generate.
pub(super) struct Spec {
    pub(super) name: String,
    pub(super) role: TensorRole,
    pub(super) ty: GgmlType,
    pub(super) shape: Vec<u64>,
    /// Norm weights: all ones (plus a little noise) rather than random around zero.
    pub(super) norm: bool,
}

impl Spec {
    /// The tensor of `role` in layer `il` (ignored for a global role).
    pub(super) fn new(role: TensorRole, il: usize, ty: GgmlType, shape: &[u64]) -> Self {
        Spec {
            name: role.name(il),
            role,
            ty,
            shape: shape.to_vec(),
            norm: false,
        }
    }
    pub(super) fn norm(role: TensorRole, il: usize, len: u64) -> Self {
        Spec {
            norm: true,
            ..Spec::new(role, il, GgmlType::F32, &[len])
        }
    }
    pub(super) fn bytes(&self) -> u64 {
        let rows: u64 = self.shape.iter().skip(1).product();
        self.ty.row_bytes(self.shape[0]).unwrap_or(0) * rows
    }
}

pub(super) const CHUNK: usize = 8 << 20;

/// Writes `specs` as random tensors under the metadata already in `w`.
pub(super) fn write_random(
    w: GgufWriter,
    specs: &[Spec],
    out: &Path,
    seed: u64,
) -> anyhow::Result<u64> {
    let mut data = w
        .create(out)
        .with_context(|| format!("creating {}", out.display()))?;
    let file_len = data.file_len();
    // A generator thread produces chunks; this thread writes them.
    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(2);
    let specs_ref = specs;
    // Weights of standard deviation gain/sqrt(row length): 1 for most matrices (unit-ish
    // activations); embedding rows of unit-size values; the projections that write into the
    // residual stream scaled by 1/sqrt(2 x layers) (as GPT-2's initialisation), so the
    // token-specific embedding is not drowned by the layers' outputs: otherwise every token's
    // hidden state converges to the same direction and a MoE routes all tokens alike.
    let layers = specs
        .iter()
        .filter(|s| s.role == TensorRole::AttnNorm)
        .count();
    let residual_gain = 1.0 / (2.0 * layers.max(1) as f32).sqrt();
    let gain = move |s: &Spec| -> f32 {
        match s.role {
            TensorRole::TokenEmbd => (s.shape[0] as f32).sqrt(),
            TensorRole::AttnOut
            | TensorRole::FfnDown
            | TensorRole::FfnDownExps
            | TensorRole::FfnDownShexp => residual_gain,
            _ => 1.0,
        }
    };
    let bar = Bar::bytes(
        &format!("writing {}", out.display()),
        specs.iter().map(Spec::bytes).sum(),
    );
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let gen = scope.spawn(move || -> anyhow::Result<()> {
            for (i, s) in specs_ref.iter().enumerate() {
                let mut rng = Rng::with_stream(seed, i as u64);
                let n: u64 = s.shape.iter().product();
                if s.norm {
                    // Qwen3.5's decay rate `ssm_a` is negative (-exp(A_log)).
                    let sign = if s.role == TensorRole::SsmA {
                        -1.0
                    } else {
                        1.0
                    };
                    let v: Vec<u8> = (0..n)
                        .flat_map(|_| (sign * (1.0 + 0.05 * rng.sym())).to_le_bytes())
                        .collect();
                    tx.send((i, v)).ok();
                    continue;
                }
                random_tensor(
                    s.ty,
                    s.shape[0] as usize,
                    n,
                    gain(s),
                    &mut rng,
                    CHUNK,
                    |b| {
                        tx.send((i, b.to_vec()))
                            .map_err(|_| anyhow::anyhow!("writer stopped"))
                    },
                )?;
            }
            Ok(())
        });
        for (i, chunk) in rx.iter() {
            data.write_chunk(&specs[i].name, &chunk)?;
            bar.inc(chunk.len() as u64);
        }
        gen.join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))??;
        Ok(())
    })?;
    finish_file(data.finish()?, out)?;
    Ok(file_len)
}

/// Flushes the file to disk and drops it from the page cache.
pub(super) fn finish_file(w: std::io::BufWriter<std::fs::File>, out: &Path) -> anyhow::Result<()> {
    let f = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", out.display(), e.error()))?;
    f.sync_all()
        .with_context(|| format!("flushing {}", out.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open fd; fadvise only drops clean cached pages.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    Ok(())
}
