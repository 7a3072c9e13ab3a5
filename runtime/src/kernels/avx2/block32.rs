//! The 32-weight block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) against Q8_0 / Q8_1: one-row
//! and four-row kernels, with and without the activation's f32 scale tables.

use super::*;

/// Dot-product loop over the blocks of a 32-weight type, in ggml's x86 order.
///
/// `$isum` (with `$bx`, `$by` bound to a block pair) yields the block's exact integer dot as
/// 8 partial i32 sums, lane `j` holding the products of weights `4j..4j+4` (what `maddubs` +
/// `madd` or `vpdpbusd` give). Per block, those 8 sums are converted to f32 and one FMA adds
/// `f32(d_x) · f32(d_y) · sums` into a single 8-lane accumulator, summed at the end; with
/// `mins`, `Σ m_x · s_y` (Q4_1/Q5_1 against Q8_1) is summed block by block in a scalar and
/// added last. This is the float order of ggml's AVX2 `ggml_vec_dot_*` and of llamafile's
/// `tinyBLAS_Q0_AVX` (llama.cpp's x86 build), so results match llama.cpp's bit for bit.
/// The scales of four blocks are converted at once.
macro_rules! blocks32 {
    ($x:expr, $y:expr, |$bx:ident, $by:ident| $isum:expr) => {
        blocks32!(@ $x, $y, |$bx, $by| $isum, false)
    };
    ($x:expr, $y:expr, |$bx:ident, $by:ident| $isum:expr, mins) => {
        blocks32!(@ $x, $y, |$bx, $by| $isum, true)
    };
    (@ $x:expr, $y:expr, |$bx:ident, $by:ident| $isum:expr, $mins:tt) => {{
        let (x, y) = ($x, $y);
        if x.len() != y.len() {
            return f32::NAN;
        }
        let mut acc = _mm256_setzero_ps();
        #[allow(unused_mut)] // only the `mins` variant adds to it
        let mut acc_m = 0.0f32;
        let (xq, yq) = (x.chunks_exact(4), y.chunks_exact(4));
        let (xr, yr) = (xq.remainder(), yq.remainder());
        for (x4, y4) in xq.zip(yq) {
            blocks32!(@group x4, y4, |$bx, $by| $isum, $mins, acc, acc_m);
        }
        for ($bx, $by) in xr.iter().zip(yr) {
            let d = h2f($bx.d) * h2f($by.d);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps($isum), acc);
            blocks32!(@min1 $mins, acc_m, $bx, $by);
        }
        hsum_ps(acc) + acc_m
    }};
    // Four blocks into the accumulators.
    (@group $x4:ident, $y4:ident, |$bx:ident, $by:ident| $isum:expr, $mins:tt,
     $acc:expr, $acc_m:expr) => {{
        let d = lanes4(mul_f16x4(
            pack4([$x4[0].d, $x4[1].d, $x4[2].d, $x4[3].d]),
            pack4([$y4[0].d, $y4[1].d, $y4[2].d, $y4[3].d]),
        ));
        #[allow(unused_variables)] // only the `mins` variant uses it
        let m = blocks32!(@m4 $mins, $x4, $y4);
        for k in 0..4 {
            let ($bx, $by) = ($x4.get_unchecked(k), $y4.get_unchecked(k));
            $acc = _mm256_fmadd_ps(_mm256_set1_ps(d[k]), _mm256_cvtepi32_ps($isum), $acc);
            blocks32!(@add $mins, $acc_m, m[k]);
        }
    }};
    // The four products m_x · s_y of a group (`()` without mins).
    (@m4 false, $x4:ident, $y4:ident) => { () };
    (@m4 true, $x4:ident, $y4:ident) => {
        lanes4(mul_f16x4(
            pack4([$x4[0].m, $x4[1].m, $x4[2].m, $x4[3].m]),
            pack4([$y4[0].s, $y4[1].s, $y4[2].s, $y4[3].s]),
        ))
    };
    (@add false, $t:expr, $v:expr) => {};
    (@add true, $t:expr, $v:expr) => {
        $t += $v;
    };
    (@min1 false, $t:expr, $bx:ident, $by:ident) => {};
    (@min1 true, $t:expr, $bx:ident, $by:ident) => {
        $t += h2f($bx.m) * h2f($by.s);
    };
}

/// [`blocks32!`] for one weight row and four activation rows: for each activation row the
/// same steps of [`blocks32!`] in the same order (so each result equals the one-row kernel's
/// bit for bit), while each weight block is loaded and unpacked once for all four.
macro_rules! blocks32x4 {
    ($x:expr, $ys:expr, |$bx:ident, $by:ident| $isum:expr) => {
        blocks32x4!(@ $x, $ys, |$bx, $by| $isum, false)
    };
    ($x:expr, $ys:expr, |$bx:ident, $by:ident| $isum:expr, mins) => {
        blocks32x4!(@ $x, $ys, |$bx, $by| $isum, true)
    };
    (@ $x:expr, $ys:expr, |$bx:ident, $by:ident| $isum:expr, $mins:tt) => {{
        let (x, ys) = ($x, $ys);
        if ys.iter().any(|y| y.len() != x.len()) {
            return [f32::NAN; 4];
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        #[allow(unused_mut)] // only the `mins` variant adds to it
        let mut acc_m = [0.0f32; 4];
        let nq = x.len() / 4 * 4;
        let mut i = 0;
        while i < nq {
            let x4 = x.get_unchecked(i..i + 4);
            for t in 0..4 {
                let y4 = ys[t].get_unchecked(i..i + 4);
                blocks32!(@group x4, y4, |$bx, $by| $isum, $mins, acc[t], acc_m[t]);
            }
            i += 4;
        }
        let mut out = [0f32; 4];
        for t in 0..4 {
            for ($bx, $by) in x[nq..].iter().zip(&ys[t][nq..]) {
                let d = h2f($bx.d) * h2f($by.d);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps($isum), acc[t]);
                blocks32!(@min1 $mins, acc_m[t], $bx, $by);
            }
            out[t] = hsum_ps(acc[t]) + acc_m[t];
        }
        out
    }};
}

/// [`blocks32x4!`] with the activation rows' block scales already in f32 (`$dy`, and `$sy`
/// for the `mins` variant: the tables [`quantize_rows`](crate::kernels::matvec::quantize_rows) lays
/// out after each row's blocks). The same values in the same order as [`blocks32!`] per row
/// (`f32(d_x) · f32(d_y)` is what the F16C conversion of both gives), so each result equals
/// the one-row kernel's bit for bit; the weight scales are converted once per group for all
/// four rows and the activation scales once per matmul.
macro_rules! blocks32x4t {
    ($nr:literal; $x:expr, $ys:expr, $dy:expr, $sy:expr, |$bx:ident| $prep:expr, |$w:ident, $by:ident| $dot:expr) => {
        blocks32x4t!(@ $nr; $x, $ys, $dy, $sy, |$bx| $prep, |$w, $by| $dot, false)
    };
    ($nr:literal; $x:expr, $ys:expr, $dy:expr, $sy:expr, |$bx:ident| $prep:expr, |$w:ident, $by:ident| $dot:expr, mins) => {
        blocks32x4t!(@ $nr; $x, $ys, $dy, $sy, |$bx| $prep, |$w, $by| $dot, true)
    };
    (@ $nr:literal; $x:expr, $ys:expr, $dy:expr, $sy:expr, |$bx:ident| $prep:expr, |$w:ident, $by:ident| $dot:expr, $mins:tt) => {{
        let (x, ys, dy, sy) = ($x, $ys, $dy, $sy);
        if ys.iter().any(|y| y.len() != x.len())
            || dy.iter().any(|d| d.len() != x.len())
            || ($mins && sy.iter().any(|d| d.len() != x.len()))
        {
            return [f32::NAN; $nr];
        }
        let mut acc = [_mm256_setzero_ps(); $nr];
        #[allow(unused_mut)] // only the `mins` variant adds to it
        let mut acc_m = [0.0f32; $nr];
        let nq = x.len() / 4 * 4;
        let mut i = 0;
        while i < nq {
            let x4 = x.get_unchecked(i..i + 4);
            let dx = _mm256_castps256_ps128(_mm256_cvtph_ps(_mm_set_epi64x(
                0,
                pack4([x4[0].d, x4[1].d, x4[2].d, x4[3].d]) as i64,
            )));
            #[allow(unused_variables)] // only the `mins` variant uses it
            let mx = blocks32x4t!(@mx $mins, x4);
            // Each weight block unpacked once, for all four rows.
            let wk = [
                { let $bx = x4.get_unchecked(0); $prep },
                { let $bx = x4.get_unchecked(1); $prep },
                { let $bx = x4.get_unchecked(2); $prep },
                { let $bx = x4.get_unchecked(3); $prep },
            ];
            for t in 0..$nr {
                let y4 = ys[t].get_unchecked(i..i + 4);
                let d = lanes4(_mm_mul_ps(dx, _mm_loadu_ps(dy[t].as_ptr().add(i))));
                #[allow(unused_variables)] // only the `mins` variant uses it
                let m = blocks32x4t!(@m4 $mins, mx, sy[t], i);
                for k in 0..4 {
                    let ($w, $by) = (wk[k], y4.get_unchecked(k));
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d[k]),
                        _mm256_cvtepi32_ps($dot),
                        acc[t],
                    );
                    blocks32!(@add $mins, acc_m[t], m[k]);
                }
            }
            i += 4;
        }
        let mut out = [0f32; $nr];
        for t in 0..$nr {
            for (j, ($bx, $by)) in x[nq..].iter().zip(&ys[t][nq..]).enumerate() {
                let $w = $prep;
                let d = h2f($bx.d) * dy[t][nq + j];
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps($dot), acc[t]);
                blocks32x4t!(@min1 $mins, acc_m[t], $bx, sy[t][nq + j]);
            }
            out[t] = hsum_ps(acc[t]) + acc_m[t];
        }
        out
    }};
    (@mx false, $x4:ident) => { () };
    (@mx true, $x4:ident) => {
        _mm256_castps256_ps128(_mm256_cvtph_ps(_mm_set_epi64x(
            0,
            pack4([$x4[0].m, $x4[1].m, $x4[2].m, $x4[3].m]) as i64,
        )))
    };
    // The four products m_x · s_y of a group from the f32 `s` table (`()` without mins).
    (@m4 false, $mx:ident, $sy:expr, $i:ident) => { () };
    (@m4 true, $mx:ident, $sy:expr, $i:ident) => {
        lanes4(_mm_mul_ps($mx, _mm_loadu_ps($sy.as_ptr().add($i))))
    };
    (@min1 false, $t:expr, $bx:ident, $s:expr) => {};
    (@min1 true, $t:expr, $bx:ident, $s:expr) => {
        $t += h2f($bx.m) * $s;
    };
}

/// A 32-weight block kernel as a one-row function (`blocks32!`) and a four-row one
/// (`blocks32x4!`) from one integer-dot expression.
macro_rules! kernel32 {
    (
        $(#[$doc:meta])* $name:ident, $name4:ident, $name4t:ident, $name1t:ident($wb:ty, $ab:ty)
        [$($setup:stmt;)*] |$bx:ident, $by:ident| $isum:expr,
        prep |$pbx:ident| $prep:expr, dot |$w:ident, $pby:ident| $dot:expr $(, $mins:ident)?
    ) => {
        $(#[$doc])*
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(x: &[$wb], y: &[$ab]) -> f32 {
            $($setup)*
            blocks32!(x, y, |$bx, $by| $isum $(, $mins)?)
        }

        #[doc = concat!("[`", stringify!($name), "`] of one weight row with four activation rows; each result equals the one-row kernel's bit for bit.")]
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name4(x: &[$wb], y: [&[$ab]; 4]) -> [f32; 4] {
            $($setup)*
            blocks32x4!(x, y, |$bx, $by| $isum $(, $mins)?)
        }

        #[doc = concat!("[`", stringify!($name4), "`] with the activation block scales as f32 tables (`dy`, and `sy` for the types with mins; see `blocks32x4t!`); each result equals the one-row kernel's bit for bit.")]
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name4t(
            x: &[$wb],
            y: [&[$ab]; 4],
            dy: [&[f32]; 4],
            sy: [&[f32]; 4],
        ) -> [f32; 4] {
            $($setup)*
            blocks32x4t!(4; x, y, dy, sy, |$pbx| $prep, |$w, $pby| $dot $(, $mins)?)
        }

        #[doc = concat!("[`", stringify!($name), "`] with the activation block scales as f32 tables (see `blocks32x4t!`); the result equals the one-row kernel's bit for bit.")]
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name1t(x: &[$wb], y: &[$ab], dy: &[f32], sy: &[f32]) -> f32 {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn one(
                x: &[$wb],
                y: [&[$ab]; 1],
                dy: [&[f32]; 1],
                sy: [&[f32]; 1],
            ) -> [f32; 1] {
                $($setup)*
                blocks32x4t!(1; x, y, dy, sy, |$pbx| $prep, |$w, $pby| $dot $(, $mins)?)
            }
            one(x, [y], [dy], [sy])[0]
        }
    };
}

kernel32! {
    /// Q4_0 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q4_0_q8_0, vec_dot4_q4_0_q8_0, vec_dot4t_q4_0_q8_0, vec_dot1t_q4_0_q8_0(BlockQ4_0, BlockQ8_0)
    [let eight = _mm256_set1_epi8(8);]
    |bx, by| {
        // Σ (q - 8) · y = Σ q · y - Σ 8 · y, both exact in i16 pairs (q ≤ 15, |y| ≤ 127).
        let qy = load256(by.qs.as_ptr() as *const u8);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(nibbles32(bx.qs.as_ptr()), qy),
            _mm256_maddubs_epi16(eight, qy),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    },
    prep |bx| {
        let q = _mm256_sub_epi8(nibbles32(bx.qs.as_ptr()), eight);
        (_mm256_sign_epi8(q, q), q)
    },
    dot |w, by| dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1)
    )
}

kernel32! {
    /// Q4_1 · Q8_1 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q4_1_q8_1, vec_dot4_q4_1_q8_1, vec_dot4t_q4_1_q8_1, vec_dot1t_q4_1_q8_1(BlockQ4_1, BlockQ8_1)
    []
    |bx, by| dot_u8i8(
        nibbles32(bx.qs.as_ptr()),
        load256(by.qs.as_ptr() as *const u8)
    ),
    prep |bx| nibbles32(bx.qs.as_ptr()),
    dot |w, by| dot_u8i8(w, load256(by.qs.as_ptr() as *const u8)),
    mins
}

kernel32! {
    /// Q5_0 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q5_0_q8_0, vec_dot4_q5_0_q8_0, vec_dot4t_q5_0_q8_0, vec_dot1t_q5_0_q8_0(BlockQ5_0, BlockQ8_0)
    [let sixteen = _mm256_set1_epi8(0x10);]
    |bx, by| {
        // Σ (q - 16) · y = Σ q · y - Σ 16 · y with q = nibble | fifth bit << 4 in 0..32.
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        let qx = _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb);
        let qy = load256(by.qs.as_ptr() as *const u8);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(qx, qy),
            _mm256_maddubs_epi16(sixteen, qy),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    },
    prep |bx| {
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb)
    },
    dot |w, by| {
        let qy = load256(by.qs.as_ptr() as *const u8);
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(w, qy),
            _mm256_maddubs_epi16(sixteen, qy),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

kernel32! {
    /// Q5_1 · Q8_1 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q5_1_q8_1, vec_dot4_q5_1_q8_1, vec_dot4t_q5_1_q8_1, vec_dot1t_q5_1_q8_1(BlockQ5_1, BlockQ8_1)
    [let sixteen = _mm256_set1_epi8(0x10);]
    |bx, by| {
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        let qx = _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb);
        dot_u8i8(qx, load256(by.qs.as_ptr() as *const u8))
    },
    prep |bx| {
        let hb = _mm256_and_si256(bits32(u32::from_le_bytes(bx.qh)), sixteen);
        _mm256_or_si256(nibbles32(bx.qs.as_ptr()), hb)
    },
    dot |w, by| dot_u8i8(w, load256(by.qs.as_ptr() as *const u8)),
    mins
}

kernel32! {
    /// Q8_0 · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_q8_0_q8_0, vec_dot4_q8_0_q8_0, vec_dot4t_q8_0_q8_0, vec_dot1t_q8_0_q8_0(BlockQ8_0, BlockQ8_0)
    []
    |bx, by| dot_i8i8(
        load256(bx.qs.as_ptr() as *const u8),
        load256(by.qs.as_ptr() as *const u8)
    ),
    prep |bx| {
        let q = load256(bx.qs.as_ptr() as *const u8);
        (_mm256_sign_epi8(q, q), q)
    },
    dot |w, by| dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1)
    )
}

kernel32! {
    /// IQ4_NL · Q8_0 over `x.len()` blocks. Returns NaN if `x` and `y` differ in length.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    vec_dot_iq4_nl_q8_0, vec_dot4_iq4_nl_q8_0, vec_dot4t_iq4_nl_q8_0, vec_dot1t_iq4_nl_q8_0(BlockIQ4NL, BlockQ8_0)
    [let table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(IQ4NL_VALUES.as_ptr() as *const __m128i));]
    |bx, by| dot_i8i8(
        _mm256_shuffle_epi8(table, nibbles32(bx.qs.as_ptr())),
        load256(by.qs.as_ptr() as *const u8)
    ),
    prep |bx| {
        let q = _mm256_shuffle_epi8(table, nibbles32(bx.qs.as_ptr()));
        (_mm256_sign_epi8(q, q), q)
    },
    dot |w, by| dot_u8i8(
        w.0,
        _mm256_sign_epi8(load256(by.qs.as_ptr() as *const u8), w.1)
    )
}
