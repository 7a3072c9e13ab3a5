//! (One file past 800 lines: the tile kernel family, its unpacking and its builds, reads best
//! whole.)
//!
//! Batch kernels for the 32-weight block types: one weight row against many activation rows
//! (rows laid out by `quantize_rows`, whose raw blocks and f32 scale tables they read), with
//! the weight row unpacked once per call and reused for a tile of four activation rows.
//!
//! The 32-weight types follow llama.cpp's x86 float order (that of the one-row kernels,
//! `blocks32!`): per block, the 8 lane sums of 4 products are exact integers (signed weights
//! as `|q| · sign(y, q)`, Q4_1/Q5_1 as unsigned quants times `y`), converted to f32 and added
//! with one FMA of `d_x · d_y`; mins are summed block by block in a scalar. Every result equals
//! the one-row kernel's bit for bit (tested). The K-quant tiles below unpack their 256-weight
//! blocks the same way for the K-quant one-row order.
//!
//! Three builds of one source: AVX-VNNI (`vpdpbusd`, VEX), AVX-512 VNNI on 256-bit vectors
//! (EVEX, which also gives the compiler 32 vector registers), and plain AVX2, where the
//! dot-product instruction is `maddubs` + `madd` + `add`; `maddubs` saturates its pair sums,
//! so that build is offered only for the types whose unsigned weights stay below 32
//! (Q4_0, Q4_1, Q5_0, Q5_1).

use core::arch::x86_64::*;
use std::cell::RefCell;

use flashstream_formats::blocks::{
    BlockIQ4NL, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K,
    BlockQ8_0, BlockQ8_1, F16Le, QuantBlock, IQ4NL_VALUES,
};
use flashstream_formats::GgmlType;

use super::{
    bits32, blocks_of, bsums, h2f, hsum_ps, k4_accumulate, k4_result, k4_scales_mins_pairs,
    load256, nibbles32, scale8, scale_pair, split_scales16, unpack_q4_k, unpack_q5_k, unpack_q6_k,
};
use crate::kernels::{act_scale_tables, DotActRowsFn};
use crate::pool::SendPtr;

/// Which build of the tile kernels to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileIsa {
    /// AVX2 with `maddubs` + `madd` in place of a dot-product instruction.
    Avx2,
    /// AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX encoded).
    AvxVnni,
    /// AVX-512 VNNI with AVX-512VL (`vpdpbusd` on 256-bit vectors, EVEX encoded).
    Avx512Vnni,
}

impl TileIsa {
    /// Whether this CPU runs this build.
    pub fn is_available(self) -> bool {
        let base = crate::kernels::Isa::Avx2.is_available();
        base && match self {
            TileIsa::Avx2 => true,
            TileIsa::AvxVnni => std::arch::is_x86_feature_detected!("avxvnni"),
            TileIsa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
        }
    }

    /// The best build this CPU runs (VNNI first).
    pub fn detect() -> Option<TileIsa> {
        [TileIsa::Avx512Vnni, TileIsa::AvxVnni, TileIsa::Avx2]
            .into_iter()
            .find(|i| i.is_available())
    }
}

/// One weight row unpacked for the tile kernels.
#[derive(Default)]
struct Prepped {
    /// Per block in natural order: `|q|` and `q` (signed types), or the unsigned quants.
    w: Vec<__m256i>,
    /// Per block, the f32 scale.
    dx: Vec<f32>,
    /// Per block, the f32 min (types with mins only).
    mx: Vec<f32>,
}

thread_local! {
    static PREPPED: RefCell<Vec<Prepped>> = RefCell::default();
}

/// A weight block type as the tile kernels see it.
pub(super) trait TileBlock: QuantBlock {
    /// The paired activation block.
    type Act: QuantBlock;
    /// `log2` of the offset added to make the weights unsigned (0: none).
    const SHIFT: i32;
    /// Whether the type has mins (`Σ m_x · s_y` is added).
    const MINS: bool;
    /// The 32 weights as unsigned bytes `q + offset`, in natural order.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn unsigned(&self) -> __m256i;
    /// The f16 scale and min (0 without mins).
    fn scale_min(&self) -> (F16Le, F16Le);
}

const F16_ZERO: F16Le = F16Le([0, 0]);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_bits(qh: [u8; 4], qs: *const u8) -> __m256i {
    let hb = _mm256_and_si256(bits32(u32::from_le_bytes(qh)), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles32(qs), hb)
}

impl TileBlock for BlockQ4_0 {
    type Act = BlockQ8_0;
    const SHIFT: i32 = 3;
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        nibbles32(self.qs.as_ptr())
    }
    fn scale_min(&self) -> (F16Le, F16Le) {
        (self.d, F16_ZERO)
    }
}

impl TileBlock for BlockQ4_1 {
    type Act = BlockQ8_1;
    const SHIFT: i32 = 0;
    const MINS: bool = true;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        nibbles32(self.qs.as_ptr())
    }
    fn scale_min(&self) -> (F16Le, F16Le) {
        (self.d, self.m)
    }
}

impl TileBlock for BlockQ5_0 {
    type Act = BlockQ8_0;
    const SHIFT: i32 = 4;
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        q5_bits(self.qh, self.qs.as_ptr())
    }
    fn scale_min(&self) -> (F16Le, F16Le) {
        (self.d, F16_ZERO)
    }
}

impl TileBlock for BlockQ5_1 {
    type Act = BlockQ8_1;
    const SHIFT: i32 = 0;
    const MINS: bool = true;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        q5_bits(self.qh, self.qs.as_ptr())
    }
    fn scale_min(&self) -> (F16Le, F16Le) {
        (self.d, self.m)
    }
}

impl TileBlock for BlockQ8_0 {
    type Act = BlockQ8_0;
    const SHIFT: i32 = 7;
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        let q = _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i);
        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
    }
    fn scale_min(&self) -> (F16Le, F16Le) {
        (self.d, F16_ZERO)
    }
}

impl TileBlock for BlockIQ4NL {
    type Act = BlockQ8_0;
    const SHIFT: i32 = 7;
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn unsigned(&self) -> __m256i {
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr() as *const __m128i));
        let q = _mm256_shuffle_epi8(table, nibbles32(self.qs.as_ptr()));
        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
    }
    fn scale_min(&self) -> (F16Le, F16Le) {
        (self.d, F16_ZERO)
    }
}

/// Unpacks the weight row `x` into `p`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prep<WB: TileBlock>(x: &[WB], p: &mut Prepped) {
    p.w.clear();
    p.dx.clear();
    p.mx.clear();
    for b in x {
        let u = b.unsigned();
        if WB::SHIFT > 0 {
            let q = _mm256_sub_epi8(u, _mm256_set1_epi8((1u8 << WB::SHIFT) as i8));
            p.w.extend_from_slice(&[_mm256_abs_epi8(q), q]);
        } else {
            p.w.push(u);
        }
        let (d, m) = b.scale_min();
        p.dx.push(h2f(d));
        if WB::MINS {
            p.mx.push(h2f(m));
        }
    }
}

/// The activation side of one tile row: pointers into a row laid out by `quantize_rows`.
#[derive(Clone, Copy)]
struct ActRow {
    /// The f32 scale table (`n / 32` values).
    dy: *const f32,
    /// The f32 `s` table (types with mins; else dangling, unread).
    sy: *const f32,
    /// The row's raw blocks.
    blocks: *const u8,
}

/// The tile kernel: `C` activation rows against one prepped weight row, in one of the three
/// builds (`$feat`: the target features, `$dp`: `s + Σ4 u·y` per 32-bit lane). Per block and
/// row, the 8 lane sums of 4 products (exact integers) are converted and added with one FMA
/// of `d_x · d_y` into the row's accumulator; mins are summed in a scalar: the float steps of
/// the one-row kernels ([`blocks32!`](super::block32)), so each result equals theirs bit for bit.
macro_rules! tile_kernel {
    ($name:ident, $feat:literal, |$s:ident, $u:ident, $y:ident| $dp:expr) => {
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $name<WB: TileBlock, const C: usize>(
            p: &Prepped,
            rows: [ActRow; C],
            out: [*mut f32; C],
        ) {
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dp($s: __m256i, $u: __m256i, $y: __m256i) -> __m256i {
                $dp
            }
            let per = if WB::SHIFT > 0 { 2 } else { 1 };
            let ab = <WB::Act as QuantBlock>::TYPE.block_bytes();
            let zero = _mm256_setzero_si256();
            let mut acc = [_mm256_setzero_ps(); C];
            let mut acc_m = [0.0f32; C];
            for (b, &dx) in p.dx.iter().enumerate() {
                let w = p.w.as_ptr().add(per * b);
                for t in 0..C {
                    let y =
                        _mm256_loadu_si256(rows[t].blocks.add(b * ab + ab - 32) as *const __m256i);
                    let s = if WB::SHIFT > 0 {
                        dp(zero, *w, _mm256_sign_epi8(y, *w.add(1)))
                    } else {
                        dp(zero, *w, y)
                    };
                    let d = dx * *rows[t].dy.add(b);
                    acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s), acc[t]);
                    if WB::MINS {
                        acc_m[t] += *p.mx.get_unchecked(b) * *rows[t].sy.add(b);
                    }
                }
            }
            for t in 0..C {
                *out[t] = hsum_ps(acc[t]) + acc_m[t];
            }
        }
    };
}

tile_kernel!(tile_avx2, "avx2,fma,f16c", |s, u, y| _mm256_add_epi32(
    s,
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1))
));
tile_kernel!(tile_avxvnni, "avx2,fma,f16c,avxvnni", |s, u, y| {
    _mm256_dpbusd_avx_epi32(s, u, y)
});
tile_kernel!(
    tile_avx512vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    |s, u, y| _mm256_dpbusd_epi32(s, u, y)
);

/// Weight rows unpacked at a time: their unpacked form (~1.2 bytes per weight) and a tile of
/// four activation rows stay in L1 while the tile runs against each of them.
const ROW_BLOCK: usize = 16;

/// The blocked loop shared by both kernel families: for each block of up to [`ROW_BLOCK`]
/// weight rows, `prep(r, slot)` unpacks row `r`, then every tile of four activation rows
/// (`tile4(slot, t, r)` for rows `t..t + 4`), and one by one the rest (`tile1`), runs against
/// each unpacked row.
pub(super) fn blocked<P: Default>(
    prepped: &'static std::thread::LocalKey<RefCell<Vec<P>>>,
    m: usize,
    n_tok: usize,
    prep: impl Fn(usize, &mut P),
    tile4: impl Fn(&P, usize, usize),
    tile1: impl Fn(&P, usize, usize),
) {
    prepped.with(|ps| {
        let mut ps = ps.borrow_mut();
        if ps.len() < ROW_BLOCK {
            ps.resize_with(ROW_BLOCK, P::default);
        }
        for r0 in (0..m).step_by(ROW_BLOCK) {
            let rb = ROW_BLOCK.min(m - r0);
            for (i, slot) in ps[..rb].iter_mut().enumerate() {
                prep(r0 + i, slot);
            }
            let mut t = 0;
            while t + 4 <= n_tok {
                for (i, slot) in ps[..rb].iter().enumerate() {
                    tile4(slot, t, r0 + i);
                }
                t += 4;
            }
            while t < n_tok {
                for (i, slot) in ps[..rb].iter().enumerate() {
                    tile1(slot, t, r0 + i);
                }
                t += 1;
            }
        }
    });
}

/// Whether `n_tok` activation rows of `row_end` bytes, `a_stride` apart and aligned to `align`
/// bytes, lie inside `a`, and the results of `m` weight rows (`out[t * out_stride + r]`, with
/// `out_stride >= m` when `m > 1`) inside `out`.
#[allow(clippy::too_many_arguments)]
pub(super) fn batch_fits(
    a: &[u8],
    a_stride: usize,
    row_end: usize,
    align: usize,
    n_tok: usize,
    out: &[f32],
    out_stride: usize,
    m: usize,
) -> bool {
    n_tok > 0
        && m > 0
        && a_stride.is_multiple_of(align)
        && (a.as_ptr() as usize).is_multiple_of(align)
        && (n_tok - 1)
            .checked_mul(a_stride)
            .and_then(|v| v.checked_add(row_end))
            .is_some_and(|e| e <= a.len())
        && (n_tok - 1)
            .checked_mul(out_stride)
            .and_then(|v| v.checked_add(m - 1))
            .is_some_and(|last| last < out.len())
        && (m == 1 || out_stride >= m)
}

/// Calls the build `$isa` of a tile kernel (its AVX2, AVX-VNNI and AVX-512 VNNI versions) for
/// `$c` activation rows.
macro_rules! run_tile {
    ($isa:expr, $avx2:ident, $vnni:ident, $z:ident, <$wb:ty, $c:literal>($($arg:expr),*)) => {
        match $isa {
            TileIsa::Avx2 => $avx2::<$wb, $c>($($arg),*),
            TileIsa::AvxVnni => $vnni::<$wb, $c>($($arg),*),
            TileIsa::Avx512Vnni => $z::<$wb, $c>($($arg),*),
        }
    };
}
pub(super) use run_tile;

/// A family of tile kernels from one list: for each `build { wrapper => block type, one-row
/// dispatch module; }`, a [`DotActRowsFn`] `wrapper` that runs `$rows::<block type>` in that
/// build with the one-row batch kernel as its fallback; and `$lookup(isa, ty)`, the wrapper for
/// a build and weight type, or `None`.
macro_rules! tile_family {
    ($lookup:ident, $rows:ident, $($isa:ident { $($wrapper:ident => $wb:ty, $fb:ident;)* })*) => {
        $($(
            fn $wrapper(
                n: usize,
                w: &[u8],
                a: &[u8],
                a_stride: usize,
                n_tok: usize,
                out: &mut [f32],
                out_stride: usize,
            ) {
                $rows::<$wb>(
                    TileIsa::$isa,
                    n,
                    w,
                    a,
                    a_stride,
                    n_tok,
                    out,
                    out_stride,
                    super::dispatch::$fb::dot_rows,
                )
            }
        )*)*

        /// The wrapper of this family for build `isa` and weight type `ty`, or `None`.
        fn $lookup(isa: TileIsa, ty: GgmlType) -> Option<DotActRowsFn> {
            $($(
                if isa == TileIsa::$isa && ty == <$wb as QuantBlock>::TYPE {
                    return Some($wrapper);
                }
            )*)*
            None
        }
    };
}
pub(super) use tile_family;

/// Whether `w` is whole rows of `n` weights of `ty`: their number.
pub(super) fn whole_rows(ty: GgmlType, n: usize, w: &[u8]) -> Option<usize> {
    let row = ty.row_bytes(n as u64)? as usize;
    (n.is_multiple_of(ty.block_size()) && row > 0 && !w.is_empty() && w.len().is_multiple_of(row))
        .then(|| w.len() / row)
}

/// Runs the unpacked one-row batch kernel `fallback` for each of the `m` weight rows in `w`
/// (results as [`DotBlockFn`](crate::kernels::DotBlockFn) lays them out), or once on all of
/// `w` when it is not whole rows (so that the kernel reports the bad length with NaN).
#[allow(clippy::too_many_arguments)]
pub(super) fn fallback_rows(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
    fallback: DotActRowsFn,
) {
    match (whole_rows(ty, n, w), ty.row_bytes(n as u64)) {
        (Some(m), Some(row)) if m > 1 => {
            for r in 0..m.min(out.len()) {
                let wr = &w[r * row as usize..(r + 1) * row as usize];
                fallback(n, wr, a, a_stride, n_tok, &mut out[r..], out_stride);
            }
        }
        _ => fallback(n, w, a, a_stride, n_tok, out, out_stride),
    }
}

/// The [`DotBlockFn`](crate::kernels::DotBlockFn) body for weight type `WB` on `isa`: checks
/// the buffers, falls back to the one-row batch kernel `fallback` (same results) when the rows
/// do not carry the f32 scale tables or anything does not fit, else unpacks the weight rows (a
/// block at a time) and runs tiles of four activation rows against them. One weight row is the [`DotActRowsFn`] contract.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows_with<WB: TileBlock>(
    isa: TileIsa,
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
    fallback: DotActRowsFn,
) {
    let act = <WB::Act as QuantBlock>::TYPE;
    let nb = n / 32;
    let layout = (|| {
        let m = whole_rows(WB::TYPE, n, w)?;
        let (t_off, n_tables) = act_scale_tables(act, n)?;
        let end = t_off + n_tables * nb * 4;
        let ok = a_stride >= end && batch_fits(a, a_stride, end, 4, n_tok, out, out_stride, m);
        ok.then_some((m, t_off, n_tables))
    })();
    let Some((m, t_off, n_tables)) = layout else {
        return fallback_rows(
            WB::TYPE,
            n,
            w,
            a,
            a_stride,
            n_tok,
            out,
            out_stride,
            fallback,
        );
    };
    let x = blocks_of::<WB>(w);
    let base = a.as_ptr();
    let row = |t: usize| {
        // SAFETY: every offset is inside row `t`, which is inside `a` (checked above).
        unsafe {
            let r = base.add(t * a_stride);
            ActRow {
                dy: r.add(t_off) as *const f32,
                sy: if n_tables > 1 {
                    r.add(t_off + nb * 4) as *const f32
                } else {
                    r.add(t_off) as *const f32
                },
                blocks: r,
            }
        }
    };
    let o = SendPtr(out.as_mut_ptr());
    // SAFETY (all three closures): `isa` was detected on this CPU by `tile_rows_fn`; every
    // pointer is in bounds (checked above) and the outputs `t * out_stride + r` are distinct
    // elements of `out` (`out_stride >= m` when there are several rows).
    blocked(
        &PREPPED,
        m,
        n_tok,
        |r, slot| unsafe { prep(&x[r * nb..(r + 1) * nb], slot) },
        |p, t, r| unsafe {
            let rows = [row(t), row(t + 1), row(t + 2), row(t + 3)];
            let outs = [0, 1, 2, 3].map(|j| o.at((t + j) * out_stride + r));
            run_tile!(isa, tile_avx2, tile_avxvnni, tile_avx512vnni, <WB, 4>(p, rows, outs))
        },
        |p, t, r| unsafe {
            let (rows, outs) = ([row(t)], [o.at(t * out_stride + r)]);
            run_tile!(isa, tile_avx2, tile_avxvnni, tile_avx512vnni, <WB, 1>(p, rows, outs))
        },
    );
}

tile_family! {
    tile32_lookup, rows_with,
    Avx2 {
    t2_q4_0 => BlockQ4_0, q4_0;
    t2_q4_1 => BlockQ4_1, q4_1;
    t2_q5_0 => BlockQ5_0, q5_0;
    t2_q5_1 => BlockQ5_1, q5_1;
    }
    AvxVnni {
    tv_q4_0 => BlockQ4_0, q4_0;
    tv_q4_1 => BlockQ4_1, q4_1;
    tv_q5_0 => BlockQ5_0, q5_0;
    tv_q5_1 => BlockQ5_1, q5_1;
    tv_q8_0 => BlockQ8_0, q8_0;
    tv_iq4_nl => BlockIQ4NL, iq4_nl;
    }
    Avx512Vnni {
    tz_q4_0 => BlockQ4_0, q4_0;
    tz_q4_1 => BlockQ4_1, q4_1;
    tz_q5_0 => BlockQ5_0, q5_0;
    tz_q5_1 => BlockQ5_1, q5_1;
    tz_q8_0 => BlockQ8_0, q8_0;
    tz_iq4_nl => BlockIQ4NL, iq4_nl;
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants (Q4_K, Q5_K, Q6_K against Q8_K)
// ---------------------------------------------------------------------------------------------

/// One K-quant weight row unpacked for the tile kernels, per super-block.
#[derive(Default)]
struct KPrepped {
    /// 8 vectors of unsigned weights, vector `c` the weights `32c..32c + 32`.
    q: Vec<__m256i>,
    /// 8 vectors of i16 scales, vector `c` lined up with the 16 pair sums of vector `c`.
    sv: Vec<__m256i>,
    /// The i16 factors of the 16 bsums: each min twice (Q4_K, Q5_K) or the 16 scales (Q6_K).
    corr: Vec<__m256i>,
    /// f32 `d` and `dmin` (0 for Q6_K).
    d: Vec<f32>,
    dmin: Vec<f32>,
}

thread_local! {
    static KPREPPED: RefCell<Vec<KPrepped>> = RefCell::default();
}

/// A K-quant block as the tile kernels see it.
trait KTileBlock: QuantBlock {
    /// Q4_K and Q5_K subtract `dmin · Σ min · bsum`; Q6_K subtracts `32 · Σ scale · bsum`
    /// from the integer sum.
    const MINS: bool;
    /// Unpacked weights, scale vectors, bsum factors, `d`, `dmin`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    unsafe fn kprep(&self) -> ([__m256i; 8], [__m256i; 8], __m256i, f32, f32);
}

/// The scale vectors of a Q4_K/Q5_K block and its mins for the bsums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_sv(scales: &[u8; 12]) -> ([__m256i; 8], __m256i) {
    let (s, mn_pairs) = k4_scales_mins_pairs(scales);
    let mut sv = [_mm256_setzero_si256(); 8];
    for (c, v) in sv.iter_mut().enumerate() {
        *v = scale8(s, c);
    }
    (sv, mn_pairs)
}

impl KTileBlock for BlockQ4K {
    const MINS: bool = true;
    #[inline(always)]
    unsafe fn kprep(&self) -> ([__m256i; 8], [__m256i; 8], __m256i, f32, f32) {
        let (sv, corr) = k4_sv(&self.scales);
        (unpack_q4_k(self), sv, corr, h2f(self.d), h2f(self.dmin))
    }
}

impl KTileBlock for BlockQ5K {
    const MINS: bool = true;
    #[inline(always)]
    unsafe fn kprep(&self) -> ([__m256i; 8], [__m256i; 8], __m256i, f32, f32) {
        let (sv, corr) = k4_sv(&self.scales);
        (unpack_q5_k(self), sv, corr, h2f(self.d), h2f(self.dmin))
    }
}

impl KTileBlock for BlockQ6K {
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn kprep(&self) -> ([__m256i; 8], [__m256i; 8], __m256i, f32, f32) {
        let sc = _mm_loadu_si128(self.scales.as_ptr() as *const __m128i);
        let (s_lo, s_hi) = split_scales16(sc);
        let mut sv = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            sv[j] = scale_pair(s_lo, j);
            sv[4 + j] = scale_pair(s_hi, j);
        }
        (
            unpack_q6_k(self),
            sv,
            _mm256_cvtepi8_epi16(sc),
            h2f(self.d),
            0.0,
        )
    }
}

/// Unpacks the K-quant weight row `x` into `p`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kprep<WB: KTileBlock>(x: &[WB], p: &mut KPrepped) {
    p.q.clear();
    p.sv.clear();
    p.corr.clear();
    p.d.clear();
    p.dmin.clear();
    for b in x {
        let (q, sv, corr, d, dmin) = b.kprep();
        p.q.extend_from_slice(&q);
        p.sv.extend_from_slice(&sv);
        p.corr.push(corr);
        p.d.push(d);
        p.dmin.push(dmin);
    }
}

/// The K-quant tile kernel: `C` activation rows against one prepped weight row, with the
/// integer and float steps of the one-row kernels (`$dpw`: `s + Σ2 a·b` over i16 pairs).
macro_rules! ktile_kernel {
    ($name:ident, $feat:literal, |$s:ident, $a:ident, $b:ident| $dpw:expr) => {
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn $name<WB: KTileBlock, const C: usize>(
            p: &KPrepped,
            y: [*const BlockQ8K; C],
            out: [*mut f32; C],
        ) {
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn dpw($s: __m256i, $a: __m256i, $b: __m256i) -> __m256i {
                $dpw
            }
            let mut acc = [_mm256_setzero_ps(); C];
            let mut acc4 = [(0.0f32, 0.0f32); C];
            for sb in 0..p.d.len() {
                let q = p.q.as_ptr().add(8 * sb);
                let sv = p.sv.as_ptr().add(8 * sb);
                let corr = *p.corr.as_ptr().add(sb);
                let (dx, dminx) = (*p.d.as_ptr().add(sb), *p.dmin.as_ptr().add(sb));
                for t in 0..C {
                    let by = &*y[t].add(sb);
                    let q8 = by.qs.as_ptr() as *const u8;
                    let mut sumi = _mm256_setzero_si256();
                    for c in 0..8 {
                        let pairs = _mm256_maddubs_epi16(*q.add(c), load256(q8.add(32 * c)));
                        sumi = dpw(sumi, pairs, *sv.add(c));
                    }
                    let msum = _mm256_madd_epi16(corr, bsums(by));
                    if WB::MINS {
                        k4_accumulate(sumi, msum, (by.d, dx, dminx), &mut acc4[t]);
                    } else {
                        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(msum));
                        let d = by.d * dx;
                        acc[t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
                    }
                }
            }
            for t in 0..C {
                *out[t] = if WB::MINS {
                    k4_result(acc4[t])
                } else {
                    hsum_ps(acc[t])
                };
            }
        }
    };
}

ktile_kernel!(ktile_avx2, "avx2,fma,f16c", |s, a, b| _mm256_add_epi32(
    s,
    _mm256_madd_epi16(a, b)
));
ktile_kernel!(ktile_avxvnni, "avx2,fma,f16c,avxvnni", |s, a, b| {
    _mm256_dpwssd_avx_epi32(s, a, b)
});
ktile_kernel!(
    ktile_avx512vnni,
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    |s, a, b| _mm256_dpwssd_epi32(s, a, b)
);

/// The [`DotBlockFn`](crate::kernels::DotBlockFn) body for K-quant type `WB` on `isa`: checks
/// the buffers (the unpacked batch kernel `fallback`, same results, when a row is misaligned
/// or anything does not fit), unpacks the weight rows a block at a time and runs tiles of four
/// activation rows against them.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn krows_with<WB: KTileBlock>(
    isa: TileIsa,
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
    fallback: DotActRowsFn,
) {
    let a_row = GgmlType::Q8_K.row_bytes(n as u64).map(|b| b as usize);
    let m = whole_rows(WB::TYPE, n, w).filter(|&m| {
        a_row.is_some_and(|a_row| batch_fits(a, a_stride, a_row, 4, n_tok, out, out_stride, m))
    });
    let Some(m) = m else {
        return fallback_rows(
            WB::TYPE,
            n,
            w,
            a,
            a_stride,
            n_tok,
            out,
            out_stride,
            fallback,
        );
    };
    let nb = n / 256;
    let x = blocks_of::<WB>(w);
    let base = a.as_ptr();
    // SAFETY: rows start 4-byte aligned (Q8_K's alignment) and lie inside `a` (checked).
    let row = |t: usize| unsafe { base.add(t * a_stride) as *const BlockQ8K };
    let o = SendPtr(out.as_mut_ptr());
    // SAFETY (all three closures): as in `rows_with`.
    blocked(
        &KPREPPED,
        m,
        n_tok,
        |r, slot| unsafe { kprep(&x[r * nb..(r + 1) * nb], slot) },
        |p, t, r| unsafe {
            let rows = [row(t), row(t + 1), row(t + 2), row(t + 3)];
            let outs = [0, 1, 2, 3].map(|j| o.at((t + j) * out_stride + r));
            run_tile!(isa, ktile_avx2, ktile_avxvnni, ktile_avx512vnni, <WB, 4>(p, rows, outs))
        },
        |p, t, r| unsafe {
            let (rows, outs) = ([row(t)], [o.at(t * out_stride + r)]);
            run_tile!(isa, ktile_avx2, ktile_avxvnni, ktile_avx512vnni, <WB, 1>(p, rows, outs))
        },
    );
}

tile_family! {
    ktile_lookup, krows_with,
    Avx2 {
        k2_q4_k => BlockQ4K, q4_k;
        k2_q5_k => BlockQ5K, q5_k;
        k2_q6_k => BlockQ6K, q6_k;
    }
    AvxVnni {
        kv_q4_k => BlockQ4K, q4_k;
        kv_q5_k => BlockQ5K, q5_k;
        kv_q6_k => BlockQ6K, q6_k;
    }
    Avx512Vnni {
        kz_q4_k => BlockQ4K, q4_k;
        kz_q5_k => BlockQ5K, q5_k;
        kz_q6_k => BlockQ6K, q6_k;
    }
}

/// The tile kernel for weight type `ty` in build `isa`, or `None` if this CPU lacks `isa` or
/// the build has none for `ty`. Same contract and results, bit for bit, as
/// [`dot_rows_fn`](super::dot_rows_fn)'s kernel; the rows come from `quantize_rows` (else it
/// runs the one-row kernel).
pub fn tile_rows_fn(isa: TileIsa, ty: GgmlType) -> Option<DotActRowsFn> {
    if !isa.is_available() {
        return None;
    }
    tile32_lookup(isa, ty).or_else(|| ktile_lookup(isa, ty))
}
