//! The speculative sampling rule: a drafted token `d`, drawn from the drafter's distribution
//! `q`, is kept with probability `min(1, p(d) / q(d))` under the target's distribution `p`;
//! when it is not, the token is drawn from `max(0, p - q)` renormalised. The tokens this
//! emits are distributed exactly as `p` (Leviathan et al. 2023, Chen et al. 2023). A
//! drafter that proposes one token for certain (prompt lookup) has `q = 1` on it: the rule
//! keeps `d` with probability `p(d)` and otherwise draws from `p` without `d`.

use crate::sampler::draw;

/// What the rule decided for one drafted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The drafted token is kept.
    Accept,
    /// It is rejected; this token (drawn from the residual) is emitted instead.
    Reject(u32),
}

fn prob(dist: &[(u32, f64)], t: u32) -> f64 {
    dist.iter().find(|e| e.0 == t).map_or(0.0, |e| e.1)
}

/// Applies the rule to drafted token `d`: `p` is the target's distribution, `q` the
/// drafter's (`None`: all of its mass on `d`), `uniform` gives draws in `[0, 1)` (called
/// once for the test when `p(d) / q(d)` is strictly between 0 and 1, once more to draw a
/// replacement).
pub fn verify(
    p: &[(u32, f64)],
    q: Option<&[(u32, f64)]>,
    d: u32,
    mut uniform: impl FnMut() -> f64,
) -> Verdict {
    let pd = prob(p, d);
    let qd = q.map_or(1.0, |q| prob(q, d));
    if pd > 0.0 {
        let ratio = if qd > 0.0 { pd / qd } else { f64::INFINITY };
        if ratio >= 1.0 || uniform() < ratio {
            return Verdict::Accept;
        }
    }
    let residual: Vec<(u32, f64)> = p
        .iter()
        .map(|&(t, pt)| {
            let qt = match q {
                Some(q) => prob(q, t),
                None if t == d => 1.0,
                None => 0.0,
            };
            (t, (pt - qt).max(0.0))
        })
        .collect();
    // An empty residual only happens through rounding (p == q leaves nothing to reject):
    // then `p` itself is the answer.
    let r = uniform();
    let t = draw(&residual, r).or_else(|| draw(p, r)).unwrap_or(d);
    Verdict::Reject(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 as a test generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Pearson's chi-square statistic of `counts` against `p` (over `p`'s support; a count
    /// outside it is reported as infinite).
    fn chi2(counts: &[u64], p: &[(u32, f64)], n: u64) -> f64 {
        let mut x = 0.0;
        for (t, &c) in counts.iter().enumerate() {
            let e = prob(p, t as u32) * n as f64;
            if e == 0.0 {
                if c > 0 {
                    return f64::INFINITY;
                }
                continue;
            }
            x += (c as f64 - e).powi(2) / e;
        }
        x
    }

    /// Emits one token per trial the way speculative decoding does: `d` drawn from `q` (or
    /// fixed, for a point-mass drafter), then the rule.
    fn emitted(
        p: &[(u32, f64)],
        q: Option<&[(u32, f64)]>,
        fixed: u32,
        n: u64,
        seed: u64,
        rule: impl Fn(&[(u32, f64)], Option<&[(u32, f64)]>, u32, &mut Rng) -> Verdict,
    ) -> Vec<u64> {
        let mut rng = Rng(seed);
        let mut counts = vec![0u64; 8];
        for _ in 0..n {
            let d = match q {
                Some(q) => {
                    let r = rng.next();
                    draw(q, r).unwrap()
                }
                None => fixed,
            };
            let t = match rule(p, q, d, &mut rng) {
                Verdict::Accept => d,
                Verdict::Reject(t) => t,
            };
            counts[t as usize] += 1;
        }
        counts
    }

    fn the_rule(p: &[(u32, f64)], q: Option<&[(u32, f64)]>, d: u32, rng: &mut Rng) -> Verdict {
        verify(p, q, d, || rng.next())
    }

    // 5 degrees of freedom: P(chi2 > 40) ~ 1e-7, so a right rule passes for any seed; a
    // wrong one lands in the thousands at this many trials.
    const BOUND: f64 = 40.0;
    const N: u64 = 200_000;

    fn target() -> Vec<(u32, f64)> {
        vec![
            (2, 0.35),
            (0, 0.25),
            (5, 0.2),
            (1, 0.1),
            (3, 0.06),
            (4, 0.04),
        ]
    }

    #[test]
    fn emitted_tokens_follow_the_target_with_a_draft_distribution() {
        let p = target();
        // A drafter that disagrees: mass where p has little, some outside p's support.
        let q = vec![(4, 0.3), (1, 0.25), (2, 0.2), (6, 0.15), (0, 0.1)];
        let c = emitted(&p, Some(&q), 0, N, 7, the_rule);
        let x = chi2(&c, &p, N);
        assert!(x < BOUND, "chi2 {x}, counts {c:?}");
        // The same check fails for rules that are close but wrong.
        let always = emitted(&p, Some(&q), 0, N, 7, |_, _, _, _| Verdict::Accept);
        assert!(chi2(&always, &p, N) > 100.0 * BOUND);
        let no_residual = emitted(&p, Some(&q), 0, N, 7, |p, q, d, rng| {
            match verify(p, q, d, || rng.next()) {
                Verdict::Accept => Verdict::Accept,
                // Resampling from p instead of the residual.
                Verdict::Reject(_) => Verdict::Reject(draw(p, rng.next()).unwrap()),
            }
        });
        assert!(chi2(&no_residual, &p, N) > 10.0 * BOUND);
    }

    #[test]
    fn emitted_tokens_follow_the_target_with_a_point_mass_drafter() {
        let p = target();
        for (fixed, seed) in [(2u32, 1u64), (4, 2), (7, 3)] {
            let c = emitted(&p, None, fixed, N, seed, the_rule);
            let x = chi2(&c, &p, N);
            assert!(x < BOUND, "drafted {fixed}: chi2 {x}, counts {c:?}");
        }
        // Accepting a point-mass draft outright would skew towards it.
        let greedy_accept = emitted(&p, None, 4, N, 9, |_, _, _, _| Verdict::Accept);
        assert!(chi2(&greedy_accept, &p, N) > 100.0 * BOUND);
    }

    #[test]
    fn greedy_target_accepts_exactly_its_token() {
        let p = vec![(3, 1.0)];
        let never = || -> f64 { panic!("no draw needed when greedy") };
        assert_eq!(verify(&p, None, 3, never), Verdict::Accept);
        let mut r = Rng(1);
        assert_eq!(verify(&p, None, 2, || r.next()), Verdict::Reject(3));
        let q = vec![(2, 0.5), (3, 0.5)];
        assert_eq!(verify(&p, Some(&q), 3, never), Verdict::Accept);
        assert_eq!(verify(&p, Some(&q), 2, || r.next()), Verdict::Reject(3));
    }
}
