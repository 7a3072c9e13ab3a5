//! The fast batch kernels for the 32-weight block types ([`Numerics::Fast`], opt-in):
//! what [`super::tile`]'s kernels compute, with fewer float steps per weight and so a different
//! rounding.
//!
//! Four blocks form a group. The activation rows carry a packed copy of their quants
//! ([`act_packed_layout`]) in which one dot-product instruction per vector yields, lane
//! `4h + k`, the exact integer sum of half `h` of block `k` (the negated half sums of `y`,
//! shifted, start the accumulator for types whose weights are offset to unsigned); the weight
//! row is transposed to match once per call. Per group and activation row, the 8 half-block
//! sums are converted and added with one FMA of the four blocks' `d_x · d_y` (each twice) into
//! one accumulator, mins with one multiply-add of four; leftover blocks are summed in a scalar.
//! That is one conversion and one FMA per four blocks where llama.cpp's order (the one-row
//! kernels and [`super::tile`]) takes one per block: about twice the prompt throughput, and
//! results that differ from the one-row kernels' in the last bits (tested within 1e-5 of the
//! output scale).
//!
//! [`Numerics::Fast`]: crate::kernels::Numerics::Fast

use core::arch::x86_64::*;
use std::cell::RefCell;

use flashstream_formats::blocks::{
    BlockIQ4NL, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantBlock,
};
use flashstream_formats::GgmlType;

use super::tile::{
    batch_fits, blocked, fallback_rows, run_tile, tile_family, whole_rows, TileBlock, TileIsa,
};
use super::{blocks_of, h2f, hsum_epi32, hsum_ps};
use crate::kernels::{act_packed_layout, act_scale_tables, DotActRowsFn, PACKED_GROUP_BYTES};
use crate::pool::SendPtr;

/// One weight row unpacked for the tile kernels.
#[derive(Default)]
struct Prepped {
    /// Per whole group, four vectors in the packed order; then the leftover blocks, each one
    /// vector in natural order.
    w: Vec<__m256i>,
    /// Per group, the four blocks' f32 scales twice (lanes `k` and `4 + k`).
    dx: Vec<__m256>,
    /// Per group, the four blocks' f32 mins (types with mins only).
    mx: Vec<__m128>,
    /// Scales and mins of the leftover blocks.
    tail_d: Vec<f32>,
    tail_m: Vec<f32>,
}

thread_local! {
    static PREPPED: RefCell<Vec<Prepped>> = RefCell::default();
}

/// The four vectors of a group in packed order from the four blocks' natural-order vectors:
/// a 4x4 transpose of 32-bit lanes within each 128-bit half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn transpose4(u: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(u[0], u[1]);
    let t1 = _mm256_unpacklo_epi32(u[2], u[3]);
    let t2 = _mm256_unpackhi_epi32(u[0], u[1]);
    let t3 = _mm256_unpackhi_epi32(u[2], u[3]);
    [
        _mm256_unpacklo_epi64(t0, t1),
        _mm256_unpackhi_epi64(t0, t1),
        _mm256_unpacklo_epi64(t2, t3),
        _mm256_unpackhi_epi64(t2, t3),
    ]
}

/// Unpacks the weight row `x` into `p`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prep<WB: TileBlock>(x: &[WB], p: &mut Prepped) {
    let groups = x.len() / 4;
    p.w.clear();
    p.dx.clear();
    p.mx.clear();
    p.tail_d.clear();
    p.tail_m.clear();
    for x4 in x.chunks_exact(4) {
        let u = [
            x4[0].unsigned(),
            x4[1].unsigned(),
            x4[2].unsigned(),
            x4[3].unsigned(),
        ];
        p.w.extend_from_slice(&transpose4(u));
        let sm = [
            x4[0].scale_min(),
            x4[1].scale_min(),
            x4[2].scale_min(),
            x4[3].scale_min(),
        ];
        let d = _mm256_castps256_ps128(_mm256_cvtph_ps(_mm_set_epi64x(
            0,
            super::pack4(sm.map(|s| s.0)) as i64,
        )));
        p.dx.push(_mm256_set_m128(d, d));
        if WB::MINS {
            p.mx.push(_mm256_castps256_ps128(_mm256_cvtph_ps(_mm_set_epi64x(
                0,
                super::pack4(sm.map(|s| s.1)) as i64,
            ))));
        }
    }
    for b in &x[groups * 4..] {
        p.w.push(b.unsigned());
        let (d, m) = b.scale_min();
        p.tail_d.push(h2f(d));
        p.tail_m.push(h2f(m));
    }
}

/// The activation side of one tile row: pointers into a row laid out by `quantize_rows`.
#[derive(Clone, Copy)]
struct ActRow {
    /// The packed groups.
    packed: *const u8,
    /// The f32 scale table (`n / 32` values).
    dy: *const f32,
    /// The f32 `s` table (types with mins; else dangling, unread).
    sy: *const f32,
    /// The row's raw blocks (for the leftover blocks).
    blocks: *const u8,
}

/// The tile kernel: `C` activation rows against one prepped weight row, in one of the three
/// builds (`$feat`: the target features, `$dp`: `s + Σ4 u·y` per 32-bit lane).
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
            let groups = p.dx.len();
            let mut acc = [_mm256_setzero_ps(); C];
            let mut acc_m = [_mm_setzero_ps(); C];
            for g in 0..groups {
                let w = p.w.as_ptr().add(4 * g);
                let (w0, w1, w2, w3) = (*w, *w.add(1), *w.add(2), *w.add(3));
                let dx = *p.dx.as_ptr().add(g);
                for t in 0..C {
                    let a = rows[t].packed.add(g * PACKED_GROUP_BYTES);
                    let av = a as *const __m256i;
                    let mut s = if WB::SHIFT > 0 {
                        // The negated half sums times the offset.
                        _mm256_sllv_epi32(
                            _mm256_load_si256(av.add(4)),
                            _mm256_set1_epi32(WB::SHIFT),
                        )
                    } else {
                        _mm256_setzero_si256()
                    };
                    s = dp(s, w0, _mm256_load_si256(av));
                    s = dp(s, w1, _mm256_load_si256(av.add(1)));
                    s = dp(s, w2, _mm256_load_si256(av.add(2)));
                    s = dp(s, w3, _mm256_load_si256(av.add(3)));
                    let dy = _mm_loadu_ps(rows[t].dy.add(4 * g));
                    let d = _mm256_mul_ps(dx, _mm256_set_m128(dy, dy));
                    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
                    if WB::MINS {
                        let mx = *p.mx.as_ptr().add(g);
                        let sy = _mm_loadu_ps(rows[t].sy.add(4 * g));
                        acc_m[t] = _mm_add_ps(acc_m[t], _mm_mul_ps(mx, sy));
                    }
                }
            }
            let ab = <WB::Act as QuantBlock>::TYPE.block_bytes();
            for t in 0..C {
                let mut tail = 0.0f32;
                for (j, &dxj) in p.tail_d.iter().enumerate() {
                    let b = 4 * groups + j;
                    let y =
                        _mm256_loadu_si256(rows[t].blocks.add(b * ab + ab - 32) as *const __m256i);
                    let uy = hsum_epi32(dp(
                        _mm256_setzero_si256(),
                        *p.w.as_ptr().add(4 * groups + j),
                        y,
                    ));
                    let isum = if WB::SHIFT > 0 {
                        let sum_y = hsum_epi32(dp(_mm256_setzero_si256(), _mm256_set1_epi8(1), y));
                        uy - (sum_y << WB::SHIFT)
                    } else {
                        uy
                    };
                    tail += dxj * *rows[t].dy.add(b) * isum as f32;
                    if WB::MINS {
                        tail += p.tail_m[j] * *rows[t].sy.add(b);
                    }
                }
                let m = _mm_add_ps(acc_m[t], _mm_movehl_ps(acc_m[t], acc_m[t]));
                let m = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
                *out[t] = hsum_ps(acc[t]) + m + tail;
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

/// The [`DotBlockFn`](crate::kernels::DotBlockFn) body for weight type `WB` on `isa`: checks
/// the buffers, falls back to the unpacked batch kernel `fallback` (same results) when the rows
/// do not carry the packed layout, else unpacks the weight rows (a block at a time) and runs
/// tiles of four activation rows against them. One weight row is the [`DotActRowsFn`] contract.
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
        let (p_off, groups) = act_packed_layout(act, n)?;
        let (t_off, n_tables) = act_scale_tables(act, n)?;
        let end = p_off + groups * PACKED_GROUP_BYTES;
        let ok = a_stride >= end && batch_fits(a, a_stride, end, 32, n_tok, out, out_stride, m);
        ok.then_some((m, p_off, t_off, n_tables))
    })();
    let Some((m, p_off, t_off, n_tables)) = layout else {
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
                packed: r.add(p_off),
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
    fast_lookup, rows_with,
    Avx2 {
    f2_q4_0 => BlockQ4_0, q4_0;
    f2_q4_1 => BlockQ4_1, q4_1;
    f2_q5_0 => BlockQ5_0, q5_0;
    f2_q5_1 => BlockQ5_1, q5_1;
    }
    AvxVnni {
    fv_q4_0 => BlockQ4_0, q4_0;
    fv_q4_1 => BlockQ4_1, q4_1;
    fv_q5_0 => BlockQ5_0, q5_0;
    fv_q5_1 => BlockQ5_1, q5_1;
    fv_q8_0 => BlockQ8_0, q8_0;
    fv_iq4_nl => BlockIQ4NL, iq4_nl;
    }
    Avx512Vnni {
    fz_q4_0 => BlockQ4_0, q4_0;
    fz_q4_1 => BlockQ4_1, q4_1;
    fz_q5_0 => BlockQ5_0, q5_0;
    fz_q5_1 => BlockQ5_1, q5_1;
    fz_q8_0 => BlockQ8_0, q8_0;
    fz_iq4_nl => BlockIQ4NL, iq4_nl;
    }
}

/// The fast tile kernel of build `isa` for the 32-weight type `ty`, or `None` (other types, or
/// a build this CPU lacks). Its activation rows need [`act_packed_layout`]'s packed copy
/// (`quantize_rows` of a kernel with `packed_act`); without it, it falls back to the one-row
/// kernels.
pub fn fast_tile_rows_fn(isa: TileIsa, ty: GgmlType) -> Option<DotActRowsFn> {
    if !isa.is_available() {
        return None;
    }
    fast_lookup(isa, ty)
}
