//! The KV cache: keys and values of every past position, per layer, sized once from the
//! context length. Keys and values are stored as f16 (llama.cpp's default) or, by choice, as
//! Q8_0 / Q4_0 blocks ([`KvType`]), quantized as llama.cpp's CPU backend quantizes rows it
//! writes into a quantized cache.

use flashstream_formats::{GgmlType, ModelConfig};
use half::f16;

use crate::kernels::scalar;

/// The storage type of a KV cache's keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvType {
    /// f16 (the default).
    #[default]
    F16,
    /// Q8_0 blocks of 32 (34 bytes a block).
    Q8_0,
    /// Q4_0 blocks of 32 (18 bytes a block).
    Q4_0,
}

impl KvType {
    /// Every type, in the order the flags list them.
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// The name the flags use (`f16`, `q8_0`, `q4_0`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The type named `s` (as [`KvType::name`] writes it, any case).
    pub fn parse(s: &str) -> Option<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// The GGML type of the stored rows.
    pub fn ggml(self) -> GgmlType {
        match self {
            KvType::F16 => GgmlType::F16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Bytes of a row of `n` values; `None` if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        match self {
            KvType::F16 => Some(2 * n),
            KvType::Q8_0 | KvType::Q4_0 => {
                if n.is_multiple_of(32) {
                    Some(n / 32 * if self == KvType::Q8_0 { 34 } else { 18 })
                } else {
                    None
                }
            }
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The key and value storage types of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KvTypes {
    /// Keys.
    pub k: KvType,
    /// Values.
    pub v: KvType,
}

impl KvTypes {
    /// Keys and values of type `t`.
    pub fn both(t: KvType) -> Self {
        KvTypes { k: t, v: t }
    }

    /// Whether both are f16 (the cache llama.cpp's tiled attention kernel reads).
    pub fn is_f16(self) -> bool {
        self.k == KvType::F16 && self.v == KvType::F16
    }
}

impl std::fmt::Display for KvTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.k == self.v {
            write!(f, "{}", self.k)
        } else {
            write!(f, "K {} / V {}", self.k, self.v)
        }
    }
}

/// Whether a model with config `c` can keep its KV cache as `t`: f16 always; a quantized
/// type needs head dimensions that are whole 32-value blocks and an architecture whose cache
/// this runtime stores as llama.cpp does (not MLA's latent cache). The error names the flag.
pub fn check_kv_types(c: &ModelConfig, t: KvTypes) -> Result<(), String> {
    if t.is_f16() {
        return Ok(());
    }
    if c.mla.is_some() {
        return Err(format!(
            "--kv-type {t} is not supported for {} (MLA: its cache holds the compressed latent \
             and rope key, which llama.cpp keeps in the K type and reads back as V); use \
             --kv-type f16",
            c.arch
        ));
    }
    for (which, ty, dim) in [("k", t.k, c.head_dim_k), ("v", t.v, c.head_dim_v)] {
        if ty.row_bytes(dim).is_none() {
            return Err(format!(
                "--kv-type-{which} {ty} needs a head dimension that is a multiple of 32, \
                 but {} has {dim}; use --kv-type-{which} f16",
                c.arch
            ));
        }
    }
    Ok(())
}

/// The rows of one layer (from some position on) as stored.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// f16 values, `row` values a position.
    F16(&'a [f16]),
    /// Quantized blocks of `ty` (Q8_0 or Q4_0), one row of `row_bytes` a position.
    Quant {
        /// The block type.
        ty: GgmlType,
        /// The bytes.
        data: &'a [u8],
        /// Bytes of one position's row (every KV head).
        row_bytes: usize,
    },
}

/// One plane (keys or values) of every layer.
#[derive(Debug)]
enum Plane {
    F16(Vec<f16>),
    Quant { ty: KvType, data: Vec<u8> },
}

impl Plane {
    fn new(ty: KvType, n: usize, row_values: usize) -> Option<Plane> {
        match ty {
            KvType::F16 => {
                let mut v = Vec::new();
                v.try_reserve_exact(n.checked_mul(row_values)?).ok()?;
                v.resize(n * row_values, f16::ZERO);
                Some(Plane::F16(v))
            }
            _ => {
                let len = n.checked_mul(ty.row_bytes(row_values)?)?;
                let mut v = Vec::new();
                v.try_reserve_exact(len).ok()?;
                v.resize(len, 0u8);
                Some(Plane::Quant { ty, data: v })
            }
        }
    }
}

/// Keys and values for `n_ctx` positions of `n_layer` layers.
#[derive(Debug)]
pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    k_dim: usize,
    v_dim: usize,
    types: KvTypes,
    k: Plane,
    v: Plane,
}

/// Bytes of `n` rows of `dim` values of `t` (0 for an empty row); `None` if `dim` is not a
/// whole number of blocks.
fn plane_bytes(t: KvType, n: u64, dim: usize) -> Option<u64> {
    Some(n * t.row_bytes(dim)? as u64)
}

impl KvCache {
    /// Bytes an f16 cache of these dimensions takes.
    pub fn bytes_for(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> u64 {
        Self::bytes_for_types(n_layer, n_ctx, k_dim, v_dim, KvTypes::default()).unwrap_or(0)
    }

    /// Bytes a cache of these dimensions and types takes; `None` if a quantized row is not a
    /// whole number of 32-value blocks.
    pub fn bytes_for_types(
        n_layer: usize,
        n_ctx: usize,
        k_dim: usize,
        v_dim: usize,
        types: KvTypes,
    ) -> Option<u64> {
        let n = n_layer as u64 * n_ctx as u64;
        Some(plane_bytes(types.k, n, k_dim)? + plane_bytes(types.v, n, v_dim)?)
    }

    /// An empty f16 cache; `None` if the size overflows or cannot be allocated.
    pub fn new(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> Option<Self> {
        Self::with_types(n_layer, n_ctx, k_dim, v_dim, KvTypes::default())
    }

    /// An empty cache of these types; `None` if the size overflows, cannot be allocated, or a
    /// quantized row is not a whole number of blocks.
    pub fn with_types(
        n_layer: usize,
        n_ctx: usize,
        k_dim: usize,
        v_dim: usize,
        types: KvTypes,
    ) -> Option<Self> {
        let n = n_layer.checked_mul(n_ctx)?;
        Some(KvCache {
            n_layer,
            n_ctx,
            k_dim,
            v_dim,
            types,
            k: Plane::new(types.k, n, k_dim)?,
            v: Plane::new(types.v, n, v_dim)?,
        })
    }

    /// Bytes the cache holds (keys and values).
    pub fn allocated_bytes(&self) -> u64 {
        let b = |p: &Plane| match p {
            Plane::F16(v) => v.capacity() as u64 * 2,
            Plane::Quant { data, .. } => data.capacity() as u64,
        };
        b(&self.k) + b(&self.v)
    }

    /// The storage types.
    pub fn types(&self) -> KvTypes {
        self.types
    }

    /// Positions it can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Layers.
    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Stores the key and value rows of position `pos` in layer `il`.
    pub fn store(&mut self, il: usize, pos: usize, k: &[f32], v: &[f32]) {
        let row = il * self.n_ctx + pos;
        store_row(&mut self.k, row, self.k_dim, k);
        store_row(&mut self.v, row, self.v_dim, v);
    }

    /// The keys of layer `il`, one row of `k_dim` values per position.
    pub fn keys(&self, il: usize) -> KvRows<'_> {
        layer_rows(&self.k, il, self.n_ctx, self.k_dim)
    }

    /// The values of layer `il`, one row of `v_dim` values per position.
    pub fn values(&self, il: usize) -> KvRows<'_> {
        layer_rows(&self.v, il, self.n_ctx, self.v_dim)
    }
}

fn store_row(p: &mut Plane, row: usize, dim: usize, x: &[f32]) {
    match p {
        Plane::F16(d) => {
            for (d, &s) in d[row * dim..(row + 1) * dim].iter_mut().zip(x) {
                *d = f16::from_f32(s);
            }
        }
        Plane::Quant { ty, data } => {
            let rb = ty.row_bytes(dim).unwrap_or(0);
            let out = &mut data[row * rb..(row + 1) * rb];
            let x = &x[..dim.min(x.len())];
            match ty {
                KvType::Q8_0 => {
                    // ggml's x86 quantize_row_q8_0, the CPU type's from_float.
                    let _ = scalar::quantize_row(GgmlType::Q8_0, x, out);
                }
                _ => quantize_row_q4_0(x, out),
            }
        }
    }
}

fn layer_rows(p: &Plane, il: usize, n_ctx: usize, dim: usize) -> KvRows<'_> {
    match p {
        Plane::F16(d) => KvRows::F16(&d[il * n_ctx * dim..(il + 1) * n_ctx * dim]),
        Plane::Quant { ty, data } => {
            let rb = ty.row_bytes(dim).unwrap_or(0);
            KvRows::Quant {
                ty: ty.ggml(),
                data: &data[il * n_ctx * rb..(il + 1) * n_ctx * rb],
                row_bytes: rb,
            }
        }
    }
}

/// Quantizes `x` (whole blocks of 32) into Q4_0 blocks in `out`, as ggml's
/// `quantize_row_q4_0_ref` (the CPU type's `from_float`): per block the value of largest
/// magnitude `max` gives `d = max / -8`, each quant is `min(15, trunc(x · (1/d) + 8.5))`
/// (the inverse from the unrounded `d`), stored low nibbles first.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(32).zip(out.chunks_exact_mut(18)) {
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..16 {
            let q = |v: f32| (v.mul_add(id, 8.5) as i8).min(15) as u8;
            ob[2 + j] = q(xb[j]) | (q(xb[16 + j]) << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_round_trip_is_close_and_layout_is_ggml() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let mut b = vec![0u8; 36];
        quantize_row_q4_0(&x, &mut b);
        let mut y = vec![0f32; 64];
        scalar::dequantize_row(GgmlType::Q4_0, &b, &mut y).unwrap();
        // Largest magnitude 11 (|d| = 11/8): every value within d/2, but the opposite
        // extreme, which quant 15 (not 16) holds, within 1.5 d.
        for (a, b) in x.iter().zip(&y) {
            let tol = if a.abs() == 11.0 {
                33.0 / 16.0
            } else {
                11.0 / 16.0
            };
            assert!((a - b).abs() <= tol + 1e-6, "{a} vs {b}");
        }
        // The value of largest magnitude maps to quant 0 (-8 · d).
        let i = x[..32]
            .iter()
            .position(|v| v.abs() == 11.0)
            .expect("an 11 in the first block");
        assert_eq!(y[i], x[i]);
    }

    #[test]
    fn allocated_bytes_equal_counted_bytes() {
        for k in KvType::ALL {
            for v in KvType::ALL {
                let t = KvTypes { k, v };
                let c = KvCache::with_types(3, 17, 128, 64, t).unwrap();
                assert_eq!(
                    Some(c.allocated_bytes()),
                    KvCache::bytes_for_types(3, 17, 128, 64, t)
                );
            }
        }
        assert!(KvCache::with_types(1, 4, 48, 64, KvTypes::both(KvType::Q8_0)).is_none());
        assert_eq!(KvType::parse("Q4_0"), Some(KvType::Q4_0));
        assert_eq!(KvType::parse("q5_1"), None);
    }
}
