//! A structure-aware input for the `gguf_struct` target: the fuzzer's bytes are a recipe (which
//! keys, value types, numbers, tensor names, shapes and types) from which a GGUF file is
//! built with correct length prefixes and, mostly, valid offsets and data. Byte-level mutation
//! of a real file rarely gets past a length prefix; this reaches the checks behind them: huge
//! layer or expert numbers in tensor names, hyperparameters at their limits, shapes that almost
//! match the config, extreme alignments. Now and then a count, a length or an offset is left
//! raw, so inconsistent files are built too.

use flashstream_formats::GgmlType;

/// Reads the recipe; once the bytes run out every read is 0.
struct Recipe<'a> {
    data: &'a [u8],
}

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A value in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    /// True about once in `n`.
    fn one_in(&mut self, n: u8) -> bool {
        self.byte().is_multiple_of(n)
    }

    fn pick<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items[self.below(items.len())]
    }

    /// A number likely to matter: small ones, the sizes the shapes use, powers of two and the
    /// edges of the integer types.
    fn number(&mut self) -> u64 {
        match self.below(8) {
            0..=2 => SIZES[self.below(SIZES.len())],
            3 => u64::from(self.byte()),
            4 => 1u64 << self.below(64),
            5 => (1u64 << self.below(64)).wrapping_sub(1),
            6 => [
                u64::MAX,
                u64::MAX - 1,
                i64::MAX as u64,
                1 << 31,
                (1 << 31) + 1,
            ][self.below(5)],
            _ => self.u64(),
        }
    }

    /// A count: `real` most of the time, something else sometimes.
    fn count(&mut self, real: usize) -> u64 {
        if self.one_in(16) {
            self.number()
        } else {
            real as u64
        }
    }
}

/// Dimensions and hyperparameters are drawn from the same small set, so that shapes and config
/// keys agree often enough for the config to validate.
const SIZES: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

const ARCHS: [&str; 7] = [
    "llama", "qwen2", "qwen3", "gemma3", "qwen2moe", "qwen3moe", "bert",
];

const ARCH_KEYS: [&str; 24] = [
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "feed_forward_length",
    "context_length",
    "attention.layer_norm_rms_epsilon",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
    "expert_shared_feed_forward_length",
    "expert_weights_norm",
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "vocab_size",
    "attn_logit_softcapping",
    "final_logit_softcapping",
];

const GENERAL_KEYS: [&str; 8] = [
    "general.architecture",
    "general.name",
    "general.alignment",
    "split.no",
    "split.count",
    "split.tensors.count",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
];

const STRINGS: [&str; 8] = [
    "llama",
    "qwen3moe",
    "gemma3",
    "yarn",
    "linear",
    "none",
    "",
    "\u{1F600}",
];

const LAYER_TENSORS: [&str; 14] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "attn_norm",
    "ffn_up",
    "ffn_down",
    "ffn_gate",
    "ffn_norm",
    "ffn_gate_inp",
    "ffn_up_exps",
    "ffn_gate_exps",
    "ffn_down_exps",
    "ffn_up_shexp",
];

/// Builds a GGUF file from the recipe in `data`.
pub fn build(data: &[u8]) -> Vec<u8> {
    let mut r = Recipe { data };
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    let version = if r.one_in(32) {
        r.u32()
    } else {
        3 - r.below(2) as u32
    };
    put_u32(&mut out, version);

    let arch = r.pick(&ARCHS);
    let n_tensors = r.below(24);
    let n_kv = r.below(24);
    let mut kvs = Vec::new();
    let mut alignment = 32u64;
    for i in 0..n_kv {
        let key = match (i, r.below(4)) {
            (0, _) => "general.architecture".to_string(),
            (_, 0) => r.pick(&GENERAL_KEYS).to_string(),
            (_, 3) if r.one_in(4) => format!("k{}", r.byte()),
            _ => format!("{arch}.{}", r.pick(&ARCH_KEYS)),
        };
        put_str(&mut kvs, key.as_bytes(), &mut r);
        if i == 0 {
            put_u32(&mut kvs, 8);
            put_str(&mut kvs, arch.as_bytes(), &mut r);
            continue;
        }
        let ty = if r.one_in(32) {
            r.u32()
        } else {
            r.below(13) as u32
        };
        put_u32(&mut kvs, ty);
        let before = kvs.len();
        value(&mut kvs, ty, &mut r, 0);
        if key == "general.alignment" && ty == 10 {
            let v = u64::from_le_bytes(kvs[before..before + 8].try_into().unwrap_or_default());
            if v.is_power_of_two() {
                alignment = v;
            }
        } else if key == "general.alignment" && ty == 4 {
            let v = u32::from_le_bytes(kvs[before..before + 4].try_into().unwrap_or_default());
            if v.is_power_of_two() {
                alignment = v.into();
            }
        }
    }
    put_u64(&mut out, r.count(n_tensors));
    put_u64(&mut out, r.count(n_kv));
    out.extend_from_slice(&kvs);

    // Tensor infos with offsets laid out one after another (data written below), unless the
    // recipe says otherwise.
    let step = alignment.min(4096);
    let mut data_len = 0u64;
    for _ in 0..n_tensors {
        let name = tensor_name(&mut r);
        put_str(&mut out, name.as_bytes(), &mut r);
        let n_dims = if r.one_in(32) { 5 } else { 1 + r.below(4) };
        let ty = if r.one_in(32) {
            GgmlType::from_id(r.u32()).ok()
        } else {
            Some(GgmlType::ALL[r.below(GgmlType::ALL.len())])
        };
        let mut shape = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            let dim = match (d, ty) {
                (0, Some(t)) if !r.one_in(8) => {
                    t.block_size() as u64 * SIZES[r.below(SIZES.len())].min(8)
                }
                _ if r.one_in(8) => r.number(),
                _ => SIZES[r.below(SIZES.len())],
            };
            shape.push(dim);
        }
        put_u32(&mut out, n_dims as u32);
        for &d in &shape {
            put_u64(&mut out, d);
        }
        put_u32(&mut out, ty.map_or_else(|| r.u32(), GgmlType::id));
        let offset = if r.one_in(16) { r.number() } else { data_len };
        put_u64(&mut out, offset);
        let bytes = ty
            .and_then(|t| t.row_bytes(shape[0]))
            .and_then(|rb| shape[1..].iter().try_fold(rb, |a, &d| a.checked_mul(d)))
            .unwrap_or(0);
        data_len = data_len.saturating_add(bytes).saturating_add(step - 1) & !(step - 1);
    }
    // Padding to the data section, then the data (capped; a cap short of the tensors makes a
    // file that ends early).
    while !(out.len() as u64).is_multiple_of(step) {
        out.push(0);
    }
    let tail = if r.one_in(8) {
        r.below(256) as u64
    } else {
        data_len
    };
    let tail = tail.min(1 << 20) as usize;
    let fill = r.byte();
    out.resize(out.len() + tail, fill);
    out
}

fn tensor_name(r: &mut Recipe<'_>) -> String {
    match r.below(8) {
        0 => "token_embd.weight".into(),
        1 => "output.weight".into(),
        2 => "output_norm.weight".into(),
        3 if r.one_in(2) => format!(
            "blk.{}.{}.{}.weight",
            layer(r),
            r.pick(&["ffn_up", "ffn_gate", "ffn_down"]),
            layer(r)
        ),
        _ => format!("blk.{}.{}.weight", layer(r), r.pick(&LAYER_TENSORS)),
    }
}

/// A layer or expert number: mostly small, sometimes at the edge of `usize`.
fn layer(r: &mut Recipe<'_>) -> u64 {
    if r.one_in(16) {
        r.number()
    } else {
        r.below(3) as u64
    }
}

fn value(out: &mut Vec<u8>, ty: u32, r: &mut Recipe<'_>, depth: u32) {
    match ty {
        0 | 1 | 7 => out.push(if ty == 7 { r.below(3) as u8 } else { r.byte() }),
        2 | 3 => out.extend_from_slice(&(r.number() as u16).to_le_bytes()),
        4 | 5 => put_u32(out, r.number() as u32),
        6 => {
            let f = [0.0f32, 1.0, -1.0, 1e-6, 1e4, f32::NAN, f32::INFINITY, 0.5][r.below(8)];
            put_u32(out, f.to_bits());
        }
        8 => {
            let s = if r.one_in(4) {
                format!("{}", r.number())
            } else {
                r.pick(&STRINGS).to_string()
            };
            put_str(out, s.as_bytes(), r);
        }
        9 => {
            let elem = if depth < 3 { r.below(13) as u32 } else { 4 };
            let n = r.below(8);
            put_u32(out, elem);
            put_u64(out, r.count(n));
            for _ in 0..n {
                value(out, elem, r, depth + 1);
            }
        }
        10 | 11 => put_u64(out, r.number()),
        12 => put_u64(out, [1.0f64, 0.0, 1e-5, f64::NAN][r.below(4)].to_bits()),
        _ => put_u64(out, r.number()),
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A length-prefixed string; the length is sometimes wrong.
fn put_str(out: &mut Vec<u8>, s: &[u8], r: &mut Recipe<'_>) {
    put_u64(out, r.count(s.len()));
    out.extend_from_slice(s);
}
