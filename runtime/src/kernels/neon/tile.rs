//! The NEON batch (tile) kernels: [`DotBlockFn`]s that dot a block of weight rows with every
//! activation row of a batch, unpacking each weight block once for several activation rows.
//!
//! - 32-weight block types: one weight row against tiles of four activation rows
//!   ([`block32::b32_tile`], the same function as the one-row kernel), weight rows taken in
//!   groups of eight so a group and a tile stay in L1. `sdot` where the CPU has dotprod.
//!   There is no `smmla` build: the one-row kernel scales each of `sdot`'s four i32 lanes
//!   separately, so a bit-exact `smmla` version would need the activations re-laid-out per
//!   lane, which costs as much as it saves unless done once per matmul.
//! - K-quants: each weight row is unpacked once per call ([`ktile::KUnpacked`]) and run against
//!   tiles of four activation rows (`sdot` or plain NEON), or, with i8mm, weight rows in pairs
//!   (interleaved once per call, [`ktile::KPair`]) against pairs of activation rows with
//!   `smmla`.
//!
//! Every result equals the one-row kernel's of the same level (plain NEON, or `sdot` for the
//! dotprod and i8mm builds) bit for bit.

use super::block32::{b32_tile, W32};
use super::ktile::{k_tile, k_tile_mm, KPair, KQuant, KUnpacked};
use super::*;
use crate::kernels::DotBlockFn;

/// A build of the tile kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileIsa {
    /// Plain NEON (`smull` + `sadalp`).
    Neon,
    /// `sdot` (ARMv8.2 dotprod).
    Dotprod,
    /// `smmla` (ARMv8.6 i8mm) for the K-quants, `sdot` for the rest.
    I8mm,
}

impl TileIsa {
    /// Whether this CPU runs this build.
    pub fn is_available(self) -> bool {
        match self {
            TileIsa::Neon => true,
            TileIsa::Dotprod => has_dotprod(),
            TileIsa::I8mm => has_dotprod() && has_i8mm(),
        }
    }

    /// The best build of this CPU: plain NEON if `dotprod` is false, else the best with `sdot`.
    pub fn detect(dotprod: bool) -> TileIsa {
        [TileIsa::I8mm, TileIsa::Dotprod]
            .into_iter()
            .find(|i| dotprod && i.is_available())
            .unwrap_or(TileIsa::Neon)
    }
}

/// Whether this CPU has the int8 matrix-multiply extension (`smmla`).
pub fn has_i8mm() -> bool {
    std::arch::is_aarch64_feature_detected!("i8mm")
}

const NEON: u8 = 0;
const DOTPROD: u8 = 1;
const I8MM: u8 = 2;

/// The tile kernel of build `isa` for weight type `ty` (see [`DotBlockFn`]; one weight row is
/// the `DotActRowsFn` contract), or `None` if there is none or this CPU lacks the build.
pub fn tile_rows_fn(isa: TileIsa, ty: GgmlType) -> Option<DotBlockFn> {
    if !isa.is_available() {
        return None;
    }
    macro_rules! b32 {
        ($w:ty) => {
            match isa {
                TileIsa::Neon => b32_entry::<$w, NEON> as DotBlockFn,
                TileIsa::Dotprod | TileIsa::I8mm => b32_entry::<$w, DOTPROD>,
            }
        };
    }
    macro_rules! kq {
        ($w:ty) => {
            match isa {
                TileIsa::Neon => k_entry::<$w, NEON> as DotBlockFn,
                TileIsa::Dotprod => k_entry::<$w, DOTPROD>,
                TileIsa::I8mm => k_entry::<$w, I8MM>,
            }
        };
    }
    Some(match ty {
        GgmlType::Q4_0 => b32!(BlockQ4_0),
        GgmlType::Q4_1 => b32!(BlockQ4_1),
        GgmlType::Q5_0 => b32!(BlockQ5_0),
        GgmlType::Q5_1 => b32!(BlockQ5_1),
        GgmlType::Q8_0 => b32!(BlockQ8_0),
        GgmlType::IQ4_NL => b32!(BlockIQ4NL),
        GgmlType::MXFP4 => b32!(BlockMXFP4),
        GgmlType::Q2_K => kq!(BlockQ2K),
        GgmlType::Q3_K => kq!(BlockQ3K),
        GgmlType::Q4_K => kq!(BlockQ4K),
        GgmlType::Q5_K => kq!(BlockQ5K),
        GgmlType::Q6_K => kq!(BlockQ6K),
        GgmlType::IQ4_XS => kq!(BlockIQ4XS),
        _ => return None,
    })
}

/// The checked shape of a call: `m` weight rows of `w_row` bytes, activation rows of `a_row`
/// bytes.
struct Batch {
    m: usize,
    w_row: usize,
    a_row: usize,
}

/// Checks the buffers of a [`DotBlockFn`] call for weight type `wt` (activations `act`): whole
/// weight rows, `n_tok` activation rows `a_stride` apart inside `a`, every result position
/// inside `out`. On failure, writes NaN to every result position that is inside `out`.
#[allow(clippy::too_many_arguments)]
fn check(
    wt: GgmlType,
    act: GgmlType,
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
) -> Option<Batch> {
    let w_row = wt.row_bytes(n as u64).map_or(0, |b| b as usize);
    let a_row = act.row_bytes(n as u64).map_or(usize::MAX, |b| b as usize);
    let whole = n.is_multiple_of(wt.block_size())
        && w_row > 0
        && !w.is_empty()
        && w.len().is_multiple_of(w_row);
    let m = if whole { w.len() / w_row } else { 1 };
    let fits = whole
        && n_tok > 0
        && (n_tok - 1)
            .checked_mul(a_stride)
            .and_then(|v| v.checked_add(a_row))
            .is_some_and(|e| e <= a.len())
        && (n_tok - 1)
            .checked_mul(out_stride)
            .and_then(|v| v.checked_add(m - 1))
            .is_some_and(|last| last < out.len())
        && (m == 1 || out_stride >= m);
    if fits {
        return Some(Batch { m, w_row, a_row });
    }
    for t in 0..n_tok {
        for r in 0..m {
            let at = t.checked_mul(out_stride).and_then(|v| v.checked_add(r));
            if let Some(o) = at.and_then(|i| out.get_mut(i)) {
                *o = f32::NAN;
            }
        }
    }
    None
}

/// The activation rows as blocks, or `None` if one is not aligned for them.
fn act_rows<A: QuantBlock>(
    n: usize,
    a: &[u8],
    a_stride: usize,
    a_row: usize,
    n_tok: usize,
) -> Option<Vec<&[A]>> {
    (0..n_tok)
        .map(|t| row::<A>(&a[t * a_stride..t * a_stride + a_row], n))
        .collect()
}

/// Every result through the one-row kernel of the same level (for activation rows the tile
/// kernels cannot borrow as blocks: the one-row entry copes with them).
#[cold]
#[allow(clippy::too_many_arguments)]
fn one_row_each(
    ty: GgmlType,
    sdot: bool,
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    b: &Batch,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let dot = dot_fn(ty, sdot).unwrap_or(|_, _, _| f32::NAN);
    for t in 0..n_tok {
        let at = &a[t * a_stride..t * a_stride + b.a_row];
        for r in 0..b.m {
            out[t * out_stride + r] = dot(n, &w[r * b.w_row..(r + 1) * b.w_row], at);
        }
    }
}

/// Weight rows per group in the 32-weight block driver.
const ROW_GROUP: usize = 8;

/// The 32-weight block driver: groups of [`ROW_GROUP`] weight rows, each against tiles of four
/// activation rows, then the remaining rows one at a time.
///
/// # Safety
/// The CPU must run `D`'s instructions; every `ys[t]` holds `n / 32` blocks.
#[inline(always)]
unsafe fn b32_drive<D: I8Dot, W: W32>(
    n: usize,
    w: &[u8],
    b: &Batch,
    ys: &[&[W::A]],
    out: &mut [f32],
    os: usize,
) {
    let xr = |r: usize| row::<W>(&w[r * b.w_row..(r + 1) * b.w_row], n).unwrap_or_default();
    let n_tok = ys.len();
    for r0 in (0..b.m).step_by(ROW_GROUP) {
        let r1 = (r0 + ROW_GROUP).min(b.m);
        let mut t = 0;
        while t + 4 <= n_tok {
            let y4 = [ys[t], ys[t + 1], ys[t + 2], ys[t + 3]];
            for r in r0..r1 {
                let v = b32_tile::<D, W, 4>(xr(r), y4);
                for (j, v) in v.into_iter().enumerate() {
                    out[(t + j) * os + r] = v;
                }
            }
            t += 4;
        }
        for t in t..n_tok {
            for r in r0..r1 {
                out[t * os + r] = b32_tile::<D, W, 1>(xr(r), [ys[t]])[0];
            }
        }
    }
}

#[target_feature(enable = "dotprod")]
unsafe fn b32_sdot<W: W32>(
    n: usize,
    w: &[u8],
    b: &Batch,
    ys: &[&[W::A]],
    out: &mut [f32],
    os: usize,
) {
    b32_drive::<Sdot, W>(n, w, b, ys, out, os)
}

/// The [`DotBlockFn`] of a 32-weight block type, plain NEON (`ISA == NEON`) or `sdot`.
fn b32_entry<W: W32, const ISA: u8>(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let (wt, at) = (W::TYPE, <W::A as QuantBlock>::TYPE);
    let Some(b) = check(wt, at, n, w, a, a_stride, n_tok, out, out_stride) else {
        return;
    };
    let sdot = ISA != NEON && has_dotprod();
    let Some(ys) = act_rows::<W::A>(n, a, a_stride, b.a_row, n_tok) else {
        return one_row_each(wt, sdot, n, w, a, a_stride, &b, n_tok, out, out_stride);
    };
    if sdot {
        // SAFETY: dotprod detected just now; every activation row holds n / 32 blocks, and
        // every result position was checked to be inside `out`.
        unsafe { b32_sdot::<W>(n, w, &b, &ys, out, out_stride) }
    } else {
        // SAFETY: plain NEON is baseline; as above.
        unsafe { b32_drive::<Mull, W>(n, w, &b, &ys, out, out_stride) }
    }
}

/// The K-quant driver: with `MM`, weight rows in pairs against pairs of activation rows with
/// `smmla` (a last odd activation row with `D`); then (and without `MM`, every row) one
/// weight row against tiles of four activation rows with `D`.
///
/// # Safety
/// The CPU must run `D`'s instructions, and have i8mm if `MM`; every `ys[t]` holds `n / 256`
/// blocks.
#[inline(always)]
unsafe fn k_drive<D: I8Dot, K: KQuant, const MM: bool>(
    n: usize,
    w: &[u8],
    b: &Batch,
    ys: &[&[BlockQ8K]],
    out: &mut [f32],
    os: usize,
) {
    let nb = n / QK_K;
    let n_tok = ys.len();
    let mut un = vec![KUnpacked::ZERO; 2 * nb];
    let unpack = |r: usize, dst: &mut [KUnpacked]| {
        let x = row::<K>(&w[r * b.w_row..(r + 1) * b.w_row], n).unwrap_or_default();
        for (xb, u) in x.iter().zip(dst) {
            // SAFETY: baseline NEON.
            unsafe { xb.unpack(u) };
        }
    };
    let mut r = 0;
    if MM {
        let mut pairs = vec![KPair::ZERO; nb];
        while r + 2 <= b.m {
            let (u0, u1) = un.split_at_mut(nb);
            unpack(r, u0);
            unpack(r + 1, u1);
            for ((p, x0), x1) in pairs.iter_mut().zip(&*u0).zip(&*u1) {
                p.set(x0, x1);
            }
            let mut t = 0;
            while t + 2 <= n_tok {
                let v = k_tile_mm::<K>(u0, u1, &pairs, ys[t], ys[t + 1]);
                out[t * os + r] = v[0];
                out[(t + 1) * os + r] = v[1];
                out[t * os + r + 1] = v[2];
                out[(t + 1) * os + r + 1] = v[3];
                t += 2;
            }
            if t < n_tok {
                out[t * os + r] = k_tile::<D, K, 1>(u0, [ys[t]])[0];
                out[t * os + r + 1] = k_tile::<D, K, 1>(u1, [ys[t]])[0];
            }
            r += 2;
        }
    }
    let u = &mut un[..nb];
    while r < b.m {
        unpack(r, u);
        let mut t = 0;
        while t + 4 <= n_tok {
            let v = k_tile::<D, K, 4>(u, [ys[t], ys[t + 1], ys[t + 2], ys[t + 3]]);
            for (j, v) in v.into_iter().enumerate() {
                out[(t + j) * os + r] = v;
            }
            t += 4;
        }
        for t in t..n_tok {
            out[t * os + r] = k_tile::<D, K, 1>(u, [ys[t]])[0];
        }
        r += 1;
    }
}

#[target_feature(enable = "dotprod")]
unsafe fn k_sdot<K: KQuant>(
    n: usize,
    w: &[u8],
    b: &Batch,
    ys: &[&[BlockQ8K]],
    out: &mut [f32],
    os: usize,
) {
    k_drive::<Sdot, K, false>(n, w, b, ys, out, os)
}

#[target_feature(enable = "dotprod,i8mm")]
unsafe fn k_smmla<K: KQuant>(
    n: usize,
    w: &[u8],
    b: &Batch,
    ys: &[&[BlockQ8K]],
    out: &mut [f32],
    os: usize,
) {
    k_drive::<Sdot, K, true>(n, w, b, ys, out, os)
}

/// The [`DotBlockFn`] of a K-quant: plain NEON, `sdot`, or `smmla` (+ `sdot`) by `ISA`, each
/// falling back a level if the CPU lacks it.
fn k_entry<K: KQuant, const ISA: u8>(
    n: usize,
    w: &[u8],
    a: &[u8],
    a_stride: usize,
    n_tok: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let wt = K::TYPE;
    let Some(b) = check(
        wt,
        GgmlType::Q8_K,
        n,
        w,
        a,
        a_stride,
        n_tok,
        out,
        out_stride,
    ) else {
        return;
    };
    let sdot = ISA != NEON && has_dotprod();
    let Some(ys) = act_rows::<BlockQ8K>(n, a, a_stride, b.a_row, n_tok) else {
        return one_row_each(wt, sdot, n, w, a, a_stride, &b, n_tok, out, out_stride);
    };
    // SAFETY (all three): the features are detected just now (plain NEON is baseline); every
    // activation row holds n / 256 blocks and every result position is inside `out`.
    if ISA == I8MM && sdot && has_i8mm() {
        unsafe { k_smmla::<K>(n, w, &b, &ys, out, out_stride) }
    } else if sdot {
        unsafe { k_sdot::<K>(n, w, &b, &ys, out, out_stride) }
    } else {
        unsafe { k_drive::<Mull, K, false>(n, w, &b, &ys, out, out_stride) }
    }
}
