//! The mixture-of-experts FFN of a [`Session`]: routing each row, running each selected expert
//! once for all the rows routed to it, the shared expert, and the prediction that prefetches
//! the next layer's experts while this one computes.

use super::*;

impl Session<'_> {
    /// Applies layer `il + 1`'s FFN norm and router to the residual stream as it enters
    /// layer `il`'s FFN, and prefetches the top experts it picks for each row. Only when that
    /// layer is resident (leasing a streamed layer early would disturb the ring's order).
    fn predict_next(
        &mut self,
        s: &mut Scratch,
        il: usize,
        n: usize,
        k_used: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let next = il + 1;
        if next >= c.n_layer
            || m.source.all_resident()
            || !m.source.is_resident(UnitId::Layer(next))
        {
            return Ok(());
        }
        let lw = &m.layers[next];
        let (Some(norm), Some(router), Some(moe)) = (
            lw.get(Role::FfnNorm),
            lw.get(Role::FfnRouter),
            c.moe.as_ref(),
        ) else {
            return Ok(());
        };
        let lease = m.source.lease(UnitId::Layer(next))?;
        let bias = match lw.get(Role::FfnExpProbsB) {
            Some(b) => Some(f32s(&lease, b)?),
            None => None,
        };
        rms_rows(&s.x, f32s(&lease, norm)?, c.rms_eps, &mut s.tmp);
        linear(
            m,
            &mut s.xq,
            &lease,
            router,
            &s.tmp,
            n,
            false,
            &mut s.router,
        )?;
        if let Some(b) = lw.get(Role::FfnRouterBias) {
            add_bias(&mut s.router, f32s(&lease, b)?);
        }
        let ne = router.rows();
        // The prediction routes as the layer will (same function), when the shapes agree.
        if ne != moe.n_expert || k_used != moe.n_expert_used.min(ne) {
            return Ok(());
        }
        let mut chosen = vec![false; ne];
        let mut rs = RouteScratch::default();
        let mut pick = Vec::with_capacity(k_used);
        for t in 0..n {
            route(
                &mut s.router[t * ne..(t + 1) * ne],
                bias,
                moe,
                &mut rs,
                &mut pick,
            );
            for &(x, _) in &pick {
                chosen[x] = true;
            }
        }
        let pred: Vec<usize> = (0..ne).filter(|&x| chosen[x]).collect();
        let ids: Vec<UnitId> = pred
            .iter()
            .map(|&x| UnitId::Expert {
                layer: next,
                expert: x,
            })
            .collect();
        m.source.prefetch(&ids);
        self.predicted = Some((next, pred));
        Ok(())
    }

    /// Mixture-of-experts FFN of `s.cur` into `s.out`: route each row (softmax over the
    /// router logits, top-k, optionally renormalised), run each selected expert on the rows
    /// routed to it (one pass over that expert's weights for all of them), sum the weighted
    /// outputs; add the shared expert (scaled by its sigmoid gate) where there is one.
    pub(super) fn moe_ffn(
        &mut self,
        s: &mut Scratch,
        il: usize,
        lease: &Lease<'_>,
        n: usize,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let c = &m.config;
        let moe = c
            .moe
            .ok_or_else(|| RuntimeError::Invalid("not a MoE model".into()))?;
        let lw = &m.layers[il];
        let req = |r: Role| m.layer_weight(il, r);
        let e = c.n_embd;
        linear(
            m,
            &mut s.xq,
            lease,
            req(Role::FfnRouter)?,
            &s.cur,
            n,
            false,
            &mut s.router,
        )?;
        let ne = moe.n_expert;
        if let Some(b) = lw.get(Role::FfnRouterBias) {
            add_bias(&mut s.router, f32s(lease, b)?);
        }
        let k_used = moe.n_expert_used.min(ne);
        if s.router.len() != n * ne {
            return Err(RuntimeError::BadTensor {
                name: Role::FfnRouter.name(il),
                reason: format!(
                    "gives {} logits for {n} rows of {ne} experts",
                    s.router.len()
                ),
            });
        }
        // Per row: the selected experts in order of weight, and their weights.
        let mut picks: Vec<Vec<(usize, f32)>> = Vec::with_capacity(n);
        let bias = match lw.get(Role::FfnExpProbsB) {
            Some(w) => Some(f32s(lease, w)?),
            None => None,
        };
        let mut rs = RouteScratch::default();
        for t in 0..n {
            let p = &mut s.router[t * ne..(t + 1) * ne];
            let mut row = Vec::with_capacity(k_used);
            route(p, bias, &moe, &mut rs, &mut row);
            picks.push(row);
        }
        // Per expert: the rows routed to it and the rank of the expert in each row's pick.
        let mut routed: Vec<Vec<(usize, usize)>> = vec![Vec::new(); ne];
        for (t, row) in picks.iter().enumerate() {
            for (rank, &(ex, _)) in row.iter().enumerate() {
                routed[ex].push((t, rank));
            }
        }
        // Ask for every routed expert at once (their reads go out together), then guess the
        // next layer's and prefetch them while these compute.
        let actual: Vec<usize> = (0..ne).filter(|&x| !routed[x].is_empty()).collect();
        if let Some((pl, pred)) = self.predicted.take() {
            if pl == il {
                let p = &m.prediction;
                let hit = pred.iter().filter(|x| !routed[**x].is_empty()).count() as u64;
                p.predicted.fetch_add(pred.len() as u64, Ordering::Relaxed);
                p.correct.fetch_add(hit, Ordering::Relaxed);
                p.actual.fetch_add(actual.len() as u64, Ordering::Relaxed);
            }
        }
        let ids: Vec<UnitId> = actual
            .iter()
            .map(|&x| UnitId::Expert {
                layer: il,
                expert: x,
            })
            .collect();
        m.source.will_need(&ids);
        if m.predict_experts.load(Ordering::Relaxed) {
            self.predict_next(s, il, n, k_used)?;
        }
        // Expert outputs per (row, rank), summed in rank order afterwards as llama.cpp does.
        let mut per_rank = vec![0f32; n * k_used * e];
        let gate_w = req(Role::FfnGateExps)?;
        let up_w = req(Role::FfnUpExps)?;
        let down_w = req(Role::FfnDownExps)?;
        for (ex, rows) in routed.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let el = m.source.lease(UnitId::Expert {
                layer: il,
                expert: ex,
            })?;
            let part = |(w, role): (&WeightRef, Role)| -> Result<WeightRef, RuntimeError> {
                let name = expert_part_name(w, role, il, ex);
                let idx =
                    el.unit()
                        .part_index(&name)
                        .ok_or_else(|| RuntimeError::MissingTensor {
                            arch: c.arch,
                            name: name.clone(),
                        })?;
                Ok(WeightRef {
                    part: idx,
                    unit: el.unit().id,
                    name,
                    ..w.clone()
                })
            };
            let (gw, uw, dw) = (
                part((gate_w, Role::FfnGateExps))?,
                part((up_w, Role::FfnUpExps))?,
                part((down_w, Role::FfnDownExps))?,
            );
            // Per-expert biases (gpt-oss): slices of the fused bias tensors in the unit.
            let bias = |role: Role, len: usize| -> Result<Option<&[f32]>, RuntimeError> {
                if lw.get(role).is_none() {
                    return Ok(None);
                }
                let name = role.name(il);
                let idx =
                    el.unit()
                        .part_index(&name)
                        .ok_or_else(|| RuntimeError::MissingTensor {
                            arch: c.arch,
                            name: name.clone(),
                        })?;
                let v: &[f32] = bytemuck::try_cast_slice(el.part(idx)).map_err(|_| {
                    RuntimeError::BadTensor {
                        name: name.clone(),
                        reason: "F32 data is not 4-byte aligned in memory".into(),
                    }
                })?;
                if v.len() != len {
                    return Err(RuntimeError::BadTensor {
                        name,
                        reason: format!("expected {len} F32 values per expert, found {}", v.len()),
                    });
                }
                Ok(Some(v))
            };
            let biases = match (
                bias(Role::FfnGateExpsBias, moe.n_ff_expert)?,
                bias(Role::FfnUpExpsBias, moe.n_ff_expert)?,
                bias(Role::FfnDownExpsBias, e)?,
            ) {
                (Some(g), Some(u), Some(d)) => Some((g, u, d)),
                _ => None,
            };
            s.xe.clear();
            for &(t, _) in rows {
                s.xe.extend_from_slice(&s.cur[t * e..(t + 1) * e]);
            }
            ffn_biased(
                m,
                &mut s.xq,
                &el,
                (&gw, &uw, &dw),
                biases,
                &s.xe,
                rows.len(),
                &mut s.gate,
                &mut s.up,
                &mut s.down,
            )?;
            for (r, &(t, rank)) in rows.iter().enumerate() {
                let wgt = picks[t][rank].1;
                let dst = &mut per_rank[(t * k_used + rank) * e..(t * k_used + rank + 1) * e];
                for (o, &v) in dst.iter_mut().zip(&s.down[r * e..(r + 1) * e]) {
                    *o = v * wgt;
                }
            }
        }
        s.out.clear();
        s.out.resize(n * e, 0.0);
        for t in 0..n {
            let dst = &mut s.out[t * e..(t + 1) * e];
            for rank in 0..k_used {
                let src = &per_rank[(t * k_used + rank) * e..(t * k_used + rank + 1) * e];
                ops::add_assign(dst, src);
            }
        }
        // Shared expert (Qwen2-MoE), scaled by a sigmoid gate.
        if let (Some(g), Some(u), Some(d)) = (
            lw.get(Role::FfnGateShexp),
            lw.get(Role::FfnUpShexp),
            lw.get(Role::FfnDownShexp),
        ) {
            dense_ffn(
                m,
                &mut s.xq,
                lease,
                (g, u, d),
                &s.cur,
                n,
                &mut s.gate,
                &mut s.up,
                &mut s.down,
            )?;
            let gates: Option<Vec<f32>> = match lw.get(Role::FfnRouterShexp) {
                Some(w) => {
                    let mut g = Vec::new();
                    linear(m, &mut s.xq, lease, w, &s.cur, n, false, &mut g)?;
                    Some(g.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect())
                }
                None => None,
            };
            for t in 0..n {
                let gate = gates.as_ref().map_or(1.0, |g| g[t]);
                for (o, &v) in s.out[t * e..(t + 1) * e]
                    .iter_mut()
                    .zip(&s.down[t * e..(t + 1) * e])
                {
                    *o += v * gate;
                }
            }
        }
        Ok(())
    }
}

/// The part name of expert `ex` for the weight of expert role `role`: the fused tensor's
/// name, or the older per-expert tensor's.
fn expert_part_name(w: &WeightRef, role: Role, il: usize, ex: usize) -> String {
    if w.name == role.name(il) {
        w.name.clone()
    } else {
        role.per_expert_name(il, ex)
            .unwrap_or_else(|| w.name.clone())
    }
}
