//! Deterministic random weights and activations for tests and benchmarks, and the one
//! deterministic generator ([`Rng`]) the tests, benchmarks and `mkmodel` share.
//!
//! Weight blocks get random quant bytes and small random scales (never NaN or infinite), so
//! every bit pattern of the quants is exercised while the values stay finite.

use flashstream_formats::GgmlType;

/// A small deterministic generator (xorshift64*), so tests need no RNG crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The generator of stream `stream` of `seed` (SplitMix64 of the pair, so streams are
    /// independent): what `mkmodel` fills each tensor from.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        let mut z = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(stream.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(0x94D0_49BB_1331_11EB);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// Uniform in `[-1, 1)`.
    pub fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Offsets of the f16 scale fields in a block of `ty` (`d`, and `m`/`dmin` where present).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4_NL => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::IQ4_XS => &[0],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// `n` random weights of type `ty`, as raw bytes (`n` must be a whole number of blocks).
///
/// # Panics
/// If `n` is not a whole number of blocks of `ty` (a test bug, not user input).
pub fn random_weights(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let bytes = ty
        .row_bytes(n as u64)
        .expect("n must be a whole number of blocks") as usize;
    let mut out = vec![0u8; bytes];
    match ty {
        GgmlType::F32 => {
            for c in out.chunks_mut(4) {
                c.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in out.chunks_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in out.chunks_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
            }
        }
        _ => {
            rng.fill(&mut out);
            let bb = ty.block_bytes();
            for block in out.chunks_mut(bb) {
                for (k, &off) in f16_fields(ty).iter().enumerate() {
                    // d may be negative; mins are stored positive as llama.cpp's quantizers do.
                    let v = if k == 0 {
                        rng.uniform(-0.05, 0.05)
                    } else {
                        rng.uniform(0.0, 0.05)
                    };
                    block[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
                if ty == GgmlType::MXFP4 {
                    // The E8M0 exponent byte: half scales 2^-12 ..= 2^4, as real MXFP4
                    // tensors have (a random byte would reach 2^127 and overflow the dots).
                    block[0] = 116 + (rng.next_u64() % 17) as u8;
                }
            }
        }
    }
    out
}

/// `n` random activations, roughly normal-sized with a few outliers as real hidden states have.
pub fn random_activations(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0xA5A5_A5A5);
    (0..n)
        .map(|i| {
            let v = rng.uniform(-1.0, 1.0);
            if i % 97 == 13 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}
