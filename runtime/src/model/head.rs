//! The output head: the final norm, the output matrix (one unit, or row ranges streamed one
//! at a time) and the final soft-cap.

use flashstream_scheduler::UnitId;

use super::{f32s, linear, rms_rows, Scratch};
use crate::model::{Model, RuntimeError};
use crate::ops;

/// The output norm, head and final soft-cap on the rows of `s.x` from `first` on; the logits
/// (one row of `n_vocab` per input row) are left in `s.tmp`.
pub(in crate::model) fn output_head(
    m: &Model,
    s: &mut Scratch,
    first: usize,
) -> Result<(), RuntimeError> {
    let c = &m.config;
    let rows = &s.x[first * c.n_embd..];
    let n_out = rows.len() / c.n_embd;
    {
        let globals = m.source.lease(UnitId::Globals)?;
        rms_rows(rows, f32s(&globals, &m.output_norm)?, c.rms_eps, &mut s.cur);
    }
    if m.output_rows.is_empty() {
        let head = m.source.lease(m.output.unit)?;
        linear(
            m, &mut s.xq, &head, &m.output, &s.cur, n_out, false, &mut s.tmp,
        )?;
    } else {
        // The head in row ranges, one lease at a time; each range's logits go to their
        // columns of every output row (each logit is one row's dot product, so the split
        // changes no value).
        let n_vocab = m.output.rows();
        s.tmp.resize(n_out * n_vocab, 0.0);
        let mut col = 0;
        for (i, w) in m.output_rows.iter().enumerate() {
            let piece = m.source.lease(w.unit)?;
            linear(m, &mut s.xq, &piece, w, &s.cur, n_out, i > 0, &mut s.out)?;
            drop(piece);
            let r = w.rows();
            for (dst, src) in s.tmp.chunks_exact_mut(n_vocab).zip(s.out.chunks_exact(r)) {
                dst[col..col + r].copy_from_slice(src);
            }
            col += r;
        }
    }
    if let Some(cap) = c.final_softcap {
        ops::softcap(&mut s.tmp, cap);
    }
    Ok(())
}
