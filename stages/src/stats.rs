//! Paired significance tests: two detectors scored on the same items (or two paired series of
//! per-run results). All tests are two-sided; `None` where the test is undefined.
//!
//! - [`delong`]: DeLong, DeLong & Clarke-Pearson (1988) test of `AUC_a = AUC_b` for two
//!   correlated ROC curves on the same items (label 1 = fake). With `V_a` the structural
//!   components (per fake `x_i`: `mean_j ψ(x_i, y_j)`; per real `y_j`: `mean_i ψ(x_i, y_j)`,
//!   `ψ = 1, ½, 0` for `>`, `=`, `<`), `Var(AUC_a − AUC_b) = var(V10_a − V10_b)/P +
//!   var(V01_a − V01_b)/Q` with sample variances (ddof = 1, as pROC and `np.cov`),
//!   `z = (AUC_a − AUC_b)/se`, `p = 2·(1 − Φ(|z|))`. Components come from midranks in
//!   O(N log N) (Sun & Xu 2014, the algorithm of `yandexdataschool/roc_comparison`). Needs ≥ 2
//!   fakes and ≥ 2 reals; `z`/`p` are `None` when `se = 0` (e.g. identical or both-perfect
//!   scores).
//! - [`paired_t`]: paired t test on `d = a − b`, `t = mean(d)/(sd(d)/√n)`, `df = n − 1` — scipy's
//!   `ttest_rel(a, b)`. `None` when `n < 2` or `sd(d) = 0` (scipy returns ±inf/NaN there).
//! - [`wilcoxon`]: Wilcoxon signed-rank test on `d = a − b` — scipy's `wilcoxon(a, b)` with its
//!   defaults (`zero_method="wilcox"`, `correction=False`, `method="auto"`, scipy ≥ 1.13):
//!   zero differences are dropped, `|d|` gets average ranks, `W+`/`W−` = rank sums of positive /
//!   negative `d`, statistic = `min(W+, W−)`. The p-value, with `n` = all pairs (zeros included):
//!   * `n ≤ 50`, no zero and no tie in `|d|` → exact null distribution of `W+`,
//!     `p = 2·min(P(W ≤ W+), P(W ≥ W+))` capped at 1;
//!   * else `n ≤ 13` → exact permutation test: every sign assignment of the non-zero ranks,
//!     same formula (scipy's `PermutationMethod`, which enumerates all 2ⁿ here);
//!   * else normal approximation `z = (W+ − m(m+1)/4)/σ`,
//!     `σ² = (m(m+1)(2m+1) − Σ(t³ − t)/2)/24` over the `m` non-zero pairs and tie groups `t`,
//!     no continuity correction.
//!
//!   `None` when the slices differ in length or every difference is zero (scipy: NaN).

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Average 1-based ranks (ties share their mean rank), as scipy's `rankdata(method="average")`.
fn midranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let j = (i..order.len())
            .find(|&j| x[order[j]] != x[order[i]])
            .unwrap_or(order.len());
        for &k in &order[i..j] {
            ranks[k] = (i + j + 1) as f64 / 2.0;
        }
        i = j;
    }
    ranks
}

/// Two-sided normal p-value `2·(1 − Φ(|z|))`.
fn normal_p(z: f64) -> f64 {
    2.0 * Normal::standard().sf(z.abs())
}

/// Sample variance (ddof = 1) of `x`, `x.len() ≥ 2`.
fn sample_var(x: &[f64]) -> f64 {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (x.len() - 1) as f64
}

/// Result of [`delong`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeLong {
    pub auc_a: f64,
    pub auc_b: f64,
    /// `auc_a − auc_b`.
    pub diff: f64,
    /// Standard error of `diff`.
    pub se: f64,
    /// `diff / se`; `None` when `se = 0`.
    pub z: Option<f64>,
    /// Two-sided; `None` when `se = 0`.
    pub p_value: Option<f64>,
}

/// AUC and structural components (per fake, per real) of one detector, from midranks.
fn components(pos: &[f64], neg: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let (m, n) = (pos.len() as f64, neg.len() as f64);
    let (tx, ty) = (midranks(pos), midranks(neg));
    let tz = midranks(&[pos, neg].concat());
    let (tz_pos, tz_neg) = tz.split_at(pos.len());
    let auc = tz_pos.iter().sum::<f64>() / (m * n) - (m + 1.0) / (2.0 * n);
    let v10 = tz_pos.iter().zip(&tx).map(|(z, x)| (z - x) / n).collect();
    let v01 = tz_neg.iter().zip(&ty).map(|(z, y)| 1.0 - (z - y) / m).collect();
    (auc, v10, v01)
}

/// DeLong test of two correlated AUCs (see the module doc). `None` for invalid input (length
/// mismatch, label not 0/1, non-finite score) or fewer than 2 fakes or 2 reals.
pub fn delong(scores_a: &[f64], scores_b: &[f64], labels: &[u8]) -> Option<DeLong> {
    let n = labels.len();
    if scores_a.len() != n || scores_b.len() != n || labels.iter().any(|&y| y > 1) {
        return None;
    }
    if !scores_a.iter().chain(scores_b).all(|s| s.is_finite()) {
        return None;
    }
    let split = |s: &[f64], c: u8| (0..n).filter(|&i| labels[i] == c).map(|i| s[i]).collect::<Vec<_>>();
    let (pos_a, neg_a, pos_b, neg_b) = (
        split(scores_a, 1),
        split(scores_a, 0),
        split(scores_b, 1),
        split(scores_b, 0),
    );
    if pos_a.len() < 2 || neg_a.len() < 2 {
        return None;
    }
    let (auc_a, v10_a, v01_a) = components(&pos_a, &neg_a);
    let (auc_b, v10_b, v01_b) = components(&pos_b, &neg_b);
    let diff_var = |a: &[f64], b: &[f64]| sample_var(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>());
    let var = diff_var(&v10_a, &v10_b) / pos_a.len() as f64 + diff_var(&v01_a, &v01_b) / neg_a.len() as f64;
    let (diff, se) = (auc_a - auc_b, var.sqrt());
    let z = (se > 0.0).then(|| diff / se);
    Some(DeLong {
        auc_a,
        auc_b,
        diff,
        se,
        z,
        p_value: z.map(normal_p),
    })
}

/// Result of [`paired_t`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TTest {
    pub t: f64,
    pub df: f64,
    /// Two-sided.
    pub p_value: f64,
    /// `mean(a − b)`.
    pub mean_diff: f64,
}

/// Paired two-sided t test on `a − b`, = scipy's `ttest_rel(a, b)`. `None` if the lengths differ,
/// `n < 2`, or the differences have zero (or NaN) spread.
pub fn paired_t(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len() as f64;
    let mean_diff = d.iter().sum::<f64>() / n;
    let sd = sample_var(&d).sqrt();
    if sd.is_nan() || sd == 0.0 {
        return None;
    }
    let (t, df) = (mean_diff / (sd / n.sqrt()), n - 1.0);
    let p_value = 2.0 * StudentsT::new(0.0, 1.0, df).ok()?.sf(t.abs());
    Some(TTest {
        t,
        df,
        p_value,
        mean_diff,
    })
}

/// How [`wilcoxon`] computed its p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WilcoxonMethod {
    /// Exact null distribution of `W+` (no zeros, no ties, `n ≤ 50`).
    Exact,
    /// All sign assignments of the observed ranks enumerated (zeros or ties, `n ≤ 13`).
    Permutation,
    /// Normal approximation with tie correction, no continuity correction.
    Asymptotic,
}

/// Result of [`wilcoxon`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Wilcoxon {
    /// `min(W+, W−)`.
    pub statistic: f64,
    /// Two-sided.
    pub p_value: f64,
    pub method: WilcoxonMethod,
}

/// Two-sided Wilcoxon signed-rank test on `a − b`, = scipy's `wilcoxon(a, b)` defaults (see the
/// module doc). `None` if the lengths differ, a difference is NaN or all differences are zero.
pub fn wilcoxon(a: &[f64], b: &[f64]) -> Option<Wilcoxon> {
    if a.len() != b.len() {
        return None;
    }
    let d_all: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    if d_all.iter().any(|d| d.is_nan()) {
        return None;
    }
    let d: Vec<f64> = d_all.iter().copied().filter(|&d| d != 0.0).collect();
    if d.is_empty() {
        return None;
    }
    let ranks = midranks(&d.iter().map(|d| d.abs()).collect::<Vec<_>>());
    let w_plus: f64 = d.iter().zip(&ranks).filter(|(d, _)| **d > 0.0).map(|(_, r)| r).sum();
    let w_minus: f64 = d.iter().zip(&ranks).filter(|(d, _)| **d < 0.0).map(|(_, r)| r).sum();
    let ties = tie_sizes(&ranks);
    let (method, p) = if d_all.len() <= 50 && d.len() == d_all.len() && ties.is_empty() {
        (WilcoxonMethod::Exact, exact_p(d.len(), w_plus))
    } else if d_all.len() <= 13 {
        (WilcoxonMethod::Permutation, permutation_p(&ranks, w_plus))
    } else {
        (WilcoxonMethod::Asymptotic, asymptotic_p(d.len(), &ties, w_plus))
    };
    Some(Wilcoxon {
        statistic: w_plus.min(w_minus),
        p_value: p.min(1.0),
        method,
    })
}

/// Sizes (> 1) of the tie groups among midranks.
fn tie_sizes(ranks: &[f64]) -> Vec<f64> {
    let mut sorted = ranks.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .chunk_by(|a, b| a == b)
        .filter(|g| g.len() > 1)
        .map(|g| g.len() as f64)
        .collect()
}

/// `2·min(P(W ≤ w), P(W ≥ w))` for an integer statistic of `m` untied ranks, from the exact
/// count of each `W` value over the 2^m sign assignments.
fn exact_p(m: usize, w: f64) -> f64 {
    let max = m * (m + 1) / 2;
    let mut count = vec![0u64; max + 1];
    count[0] = 1;
    for k in 1..=m {
        for s in (k..=max).rev() {
            count[s] += count[s - k];
        }
    }
    let w = w as usize;
    let le: u64 = count[..=w].iter().sum();
    let ge: u64 = count[w..].iter().sum();
    2.0 * le.min(ge) as f64 / (2.0f64).powi(m as i32)
}

/// `2·min(P(W ≤ w), P(W ≥ w))` over all 2^m sign assignments of `ranks` (midranks, m ≤ 13).
fn permutation_p(ranks: &[f64], w: f64) -> f64 {
    // Ranks are multiples of ½: sum doubled ranks as integers, so comparisons are exact.
    let twice: Vec<u64> = ranks.iter().map(|r| (2.0 * r) as u64).collect();
    let w2 = (2.0 * w) as u64;
    let (mut le, mut ge) = (0u64, 0u64);
    for mask in 0u64..(1 << ranks.len()) {
        let s: u64 = twice
            .iter()
            .enumerate()
            .filter(|(i, _)| mask >> i & 1 == 1)
            .map(|(_, r)| r)
            .sum();
        le += u64::from(s <= w2);
        ge += u64::from(s >= w2);
    }
    2.0 * le.min(ge) as f64 / (1u64 << ranks.len()) as f64
}

/// Normal-approximation p-value for `W+ = w` over `m` non-zero pairs with tie groups `ties`.
fn asymptotic_p(m: usize, ties: &[f64], w: f64) -> f64 {
    let m = m as f64;
    let tie_term: f64 = ties.iter().map(|t| t * t * t - t).sum();
    let se = ((m * (m + 1.0) * (2.0 * m + 1.0) - tie_term / 2.0) / 24.0).sqrt();
    normal_p((w - m * (m + 1.0) / 4.0) / se)
}

/// Holm's step-down adjustment of `p` (any order; returned in the same order): sorted
/// ascending, `p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j))` — the same values as
/// statsmodels' `multipletests(p, method="holm")`. Controls the family-wise error rate
/// across the comparisons of a study without assuming independence.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut idx: Vec<usize> = (0..m).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// AUC(b) − AUC(a) for two detectors scored on *different* items (other folds, other
/// held-out items), where no paired test applies: a percentile bootstrap resampling each
/// side's reals and fakes independently (`ChaCha8Rng::seed_from_u64(seed)`), and the
/// two-sided bootstrap p-value `min(1, 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`, floored at `1/resamples`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UnpairedDiff {
    pub diff: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub p_value: f64,
    pub resamples: usize,
}

pub fn unpaired_auc_diff(
    a: (&[f64], &[u8]),
    b: (&[f64], &[u8]),
    level: f64,
    resamples: usize,
    seed: u64,
) -> Option<UnpairedDiff> {
    use rand::{Rng, SeedableRng};
    let diff = crate::metrics::auc(b.0, b.1)? - crate::metrics::auc(a.0, a.1)?;
    if resamples == 0 || !(level > 0.0 && level < 1.0) {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let strata = |l: &[u8]| [0u8, 1].map(|c| (0..l.len()).filter(|&i| l[i] == c).collect::<Vec<usize>>());
    let (sa, sb) = (strata(a.1), strata(b.1));
    let draw = |side: (&[f64], &[u8]), st: &[Vec<usize>; 2], rng: &mut rand_chacha::ChaCha8Rng| {
        let (mut s, mut y) = (Vec::new(), Vec::new());
        for stratum in st {
            for _ in 0..stratum.len() {
                let i = stratum[rng.gen_range(0..stratum.len())];
                s.push(side.0[i]);
                y.push(side.1[i]);
            }
        }
        crate::metrics::auc(&s, &y)
    };
    let mut d: Vec<f64> = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        if let (Some(x), Some(z)) = (draw(a, &sa, &mut rng), draw(b, &sb, &mut rng)) {
            d.push(z - x);
        }
    }
    if d.is_empty() {
        return None;
    }
    d.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let h = p * (d.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        d[lo] + (h - lo as f64) * (d[hi] - d[lo])
    };
    let le = d.iter().filter(|x| **x <= 0.0).count() as f64 / d.len() as f64;
    let ge = d.iter().filter(|x| **x >= 0.0).count() as f64 / d.len() as f64;
    Some(UnpairedDiff {
        diff,
        ci_lo: q((1.0 - level) / 2.0),
        ci_hi: q((1.0 + level) / 2.0),
        p_value: (2.0 * le.min(ge)).clamp(1.0 / d.len() as f64, 1.0),
        resamples: d.len(),
    })
}

#[cfg(test)]
mod tests {
    //! Reference values: `reference_values.py` (next to this file), run with scikit-learn 1.9.1,
    //! scipy 1.17.1, numpy 2.4.6 (Python 3.11); pasted verbatim. Tolerance 1e-9 (relative above 1).
    //! `LONG_S`/`LONG_Y` and the tolerance are the metrics tests' (the same script's inputs).
    use super::*;
    use crate::metrics::tests::{assert_close, LONG_S, LONG_Y};

    // DeLong: classic O(mn) structural components == Sun & Xu fast midrank (to 1e-14);
    // p = 2 * scipy.stats.norm.sf(|z|). [auc_a, auc_b, diff, se, z, p]
    const LONG_S_B: [f64; 32] = [
        0.27, 0.72, 0.55, 0.4, 0.68, 0.37, 0.75, 0.42, 0.78, 0.57, 0.68, 0.54, 0.62, 0.29, 0.33, 0.66, 0.71, 0.49,
        0.32, 0.37, 0.68, 0.6, 0.63, 0.1, 0.85, 0.85, 0.26, 0.48, 0.38, 0.22, 0.46, 0.64,
    ];
    const DELONG_LONG: [f64; 6] = [
        0.7321428571428571,
        0.626984126984127,
        0.10515873015873012,
        0.09015108498358033,
        1.1664721525856645,
        0.24342360124287166,
    ];
    const TIES_S: [f64; 10] = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4, 0.65, 0.1];
    const TIES_S_B: [f64; 10] = [0.2, 0.3, 0.3, 0.6, 0.5, 0.6, 0.5, 0.5, 0.3, 0.2];
    const TIES_Y: [u8; 10] = [0, 0, 1, 1, 1, 1, 0, 0, 1, 0];
    const DELONG_TIES: [f64; 6] = [
        0.88,
        0.76,
        0.12,
        0.1442220510185596,
        0.8320502943378436,
        0.40538055645894233,
    ];
    // scipy.stats.ttest_rel(a, b): [t, df, p, mean(a - b)]
    const TA: [f64; 12] = [0.81, 0.84, 0.79, 0.88, 0.83, 0.86, 0.8, 0.85, 0.82, 0.87, 0.84, 0.83];
    const TB: [f64; 12] = [0.78, 0.82, 0.8, 0.84, 0.8, 0.85, 0.77, 0.83, 0.81, 0.83, 0.84, 0.8];
    const TTEST: [f64; 4] = [4.613548495611831, 11.0, 0.0007482017054482496, 0.020833333333333325];
    // scipy.stats.wilcoxon(a, b) (defaults: zero_method='wilcox', correction=False, method='auto'):
    // [statistic, pvalue]
    // EXACT: n = 10, zeros = 0, ties = False
    const W_EXACT_A: [f64; 10] = [1.83, 0.5, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.3, 2.01];
    #[allow(clippy::approx_constant)] // 3.14 is data, not π
    const W_EXACT_B: [f64; 10] = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29, 1.11];
    const W_EXACT: [f64; 2] = [5.0, 0.01953125];
    // EXACT30: n = 30, zeros = 0, ties = False
    const W_EXACT30_A: [f64; 30] = [
        -1.3189, 0.2755, -2.5258, 0.404, -0.8099, -0.6531, 0.6123, -0.0891, 1.0359, -1.5245, -1.1412, 0.2696, 0.4075,
        -0.0698, -0.2076, -0.8238, 0.7122, 0.8706, -1.6407, -0.7658, 0.426, -0.9248, 0.1591, -0.5704, 1.5316, -0.0603,
        1.8751, 0.2184, 0.7291, 0.129,
    ];
    const W_EXACT30_B: [f64; 30] = [
        -0.9406, 0.8937, -3.707, 0.8116, -1.1783, -3.3433, 0.1462, -1.7954, 0.9439, -3.0066, -1.1145, -0.0583, -0.3002,
        0.1263, -0.9069, -0.6485, -1.138, 0.6575, -1.1952, -1.0881, -0.3551, -1.1376, 0.5078, -0.5862, 0.3586, -1.8187,
        1.33, -1.4442, 0.2978, 1.5943,
    ];
    const W_EXACT30: [f64; 2] = [103.0, 0.006639536470174789];
    // PERM: n = 10, zeros = 1, ties = True
    const W_PERM_A: [f64; 10] = [3.0, 5.0, 2.0, 7.0, 4.0, 6.0, 8.0, 5.5, 1.0, 4.5];
    const W_PERM_B: [f64; 10] = [2.0, 3.0, 2.0, 5.0, 5.0, 4.0, 7.0, 3.5, 2.0, 2.5];
    const W_PERM: [f64; 2] = [5.0, 0.04296875];
    // PERM_TIES: n = 12, zeros = 0, ties = True
    const W_PERM_TIES_A: [f64; 12] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    const W_PERM_TIES_B: [f64; 12] = [0.0, 1.0, 2.5, 3.0, 4.5, 5.0, 8.0, 7.0, 8.5, 9.1, 10.0, 13.0];
    const W_PERM_TIES: [f64; 2] = [17.0, 0.080078125];
    // ASYMP: n = 20, zeros = 2, ties = True
    const W_ASYMP_A: [f64; 20] = [
        -0.5, 0.1, -0.1, -0.3, -0.8, 2.8, -0.2, 0.6, -1.2, 0.8, 0.4, -0.7, -1.6, -1.9, 0.1, -0.1, 0.4, 0.4, -0.1, 0.5,
    ];
    const W_ASYMP_B: [f64; 20] = [
        -1.3, 0.2, -0.6, -0.3, -0.1, 2.9, -0.3, 1.5, -1.5, 1.1, 1.3, -0.7, -1.8, -1.5, 0.5, -0.7, 1.7, -0.4, -0.2, 0.9,
    ];
    const W_ASYMP: [f64; 2] = [67.0, 0.42015087029959475];
    // ASYMP60: n = 60, zeros = 0, ties = False
    const W_ASYMP60_A: [f64; 60] = [
        -0.78601, -0.06058, -0.42494, 1.12574, 0.21289, 0.88703, 0.59247, 1.42024, -0.26764, 0.17694, 0.45433,
        -0.19131, -0.78824, -0.15818, 1.04773, 1.03071, 0.32271, 0.1382, -0.9251, 0.7725, 0.25777, 2.0648, 0.29028,
        -0.54264, -0.30292, -1.02494, 0.58068, -0.28883, -0.25342, -1.66532, -0.46029, 1.15391, -1.94024, -0.72257,
        0.27154, -1.39715, -0.75668, 1.18308, 0.48336, -0.99092, -0.17581, 0.90881, -0.78413, -0.80648, -1.20557,
        -0.06792, -0.68609, 1.33675, -0.18691, 0.12831, 1.10657, 0.20978, 2.1042, -0.72806, -1.37305, -0.11302,
        -1.33345, 0.55907, -0.68492, 0.50926,
    ];
    const W_ASYMP60_B: [f64; 60] = [
        -0.09114, -1.57052, 1.02659, -0.33573, 0.9905, 0.82335, 2.13265, 1.74603, 0.00273, 0.65661, -0.62269, 0.11943,
        -2.75668, -0.23735, -0.74234, 1.26881, -0.26391, 0.46275, -0.39101, 0.78182, 2.14659, 0.97416, 1.02491,
        0.87522, 1.561, -0.55159, -1.48566, 0.68494, -0.10859, -1.50028, 0.94063, 1.38699, -2.12976, -0.61546, 1.23638,
        -2.29731, -1.53929, 1.111, 0.96579, -0.21672, -1.41184, 1.72928, -1.2757, 0.57878, -1.80771, 0.08726, 0.42411,
        2.81354, 0.12415, 0.29141, 1.42393, 0.02339, 3.7497, -0.9731, 0.69404, 0.80396, -1.35469, -0.12304, -0.25138,
        0.48276,
    ];
    const W_ASYMP60: [f64; 2] = [656.0, 0.05656525484886841];

    #[track_caller]
    fn check_delong(d: DeLong, want: [f64; 6]) {
        let got = [d.auc_a, d.auc_b, d.diff, d.se, d.z.unwrap(), d.p_value.unwrap()];
        for (g, w) in got.into_iter().zip(want) {
            assert_close(g, w);
        }
    }

    #[test]
    fn midranks_average_ties() {
        assert_eq!(midranks(&[0.5, 0.1, 0.5, 0.9, 0.5]), [3.0, 1.0, 3.0, 5.0, 3.0]);
        assert_eq!(midranks(&[]), Vec::<f64>::new());
    }

    #[test]
    fn delong_matches_reference() {
        check_delong(delong(&LONG_S, &LONG_S_B, &LONG_Y).unwrap(), DELONG_LONG);
        check_delong(delong(&TIES_S, &TIES_S_B, &TIES_Y).unwrap(), DELONG_TIES);
        // Swapping the detectors flips the sign only.
        let (ab, ba) = (
            delong(&LONG_S, &LONG_S_B, &LONG_Y).unwrap(),
            delong(&LONG_S_B, &LONG_S, &LONG_Y).unwrap(),
        );
        assert_close(ba.diff, -ab.diff);
        assert_close(ba.se, ab.se);
        assert_close(ba.p_value.unwrap(), ab.p_value.unwrap());
    }

    #[test]
    fn delong_auc_agrees_with_metrics_auc() {
        let d = delong(&LONG_S, &LONG_S_B, &LONG_Y).unwrap();
        assert_close(d.auc_a, crate::metrics::auc(&LONG_S, &LONG_Y).unwrap());
        assert_close(d.auc_b, crate::metrics::auc(&LONG_S_B, &LONG_Y).unwrap());
    }

    #[test]
    fn delong_degenerate() {
        // Identical detectors: se = 0, no z.
        let d = delong(&LONG_S, &LONG_S, &LONG_Y).unwrap();
        assert_eq!((d.diff, d.se, d.z, d.p_value), (0.0, 0.0, None, None));
        assert!(delong(&[0.1, 0.2, 0.3], &[0.3, 0.2, 0.1], &[1, 1, 1]).is_none());
        assert!(delong(&[0.1, 0.2, 0.3], &[0.3, 0.2, 0.1], &[1, 0, 0]).is_none()); // one fake
        assert!(delong(&[0.1, 0.2], &[0.3], &[1, 0]).is_none());
        assert!(delong(&[], &[], &[]).is_none());
        assert!(delong(&[0.1, f64::NAN, 0.3, 0.4], &[0.1, 0.2, 0.3, 0.4], &[0, 0, 1, 1]).is_none());
    }

    #[test]
    fn paired_t_matches_scipy() {
        let t = paired_t(&TA, &TB).unwrap();
        for (g, w) in [t.t, t.df, t.p_value, t.mean_diff].into_iter().zip(TTEST) {
            assert_close(g, w);
        }
        assert!(paired_t(&[1.0], &[2.0]).is_none());
        assert!(paired_t(&[1.0, 2.0], &[1.0]).is_none());
        assert!(paired_t(&[1.0, 2.0], &[0.5, 1.5]).is_none()); // constant difference
        assert!(paired_t(&[], &[]).is_none());
    }

    #[track_caller]
    fn check_wilcoxon(a: &[f64], b: &[f64], want: [f64; 2], method: WilcoxonMethod) {
        let w = wilcoxon(a, b).unwrap();
        assert_eq!(w.method, method);
        assert_close(w.statistic, want[0]);
        assert_close(w.p_value, want[1]);
    }

    #[test]
    fn wilcoxon_matches_scipy() {
        check_wilcoxon(&W_EXACT_A, &W_EXACT_B, W_EXACT, WilcoxonMethod::Exact);
        check_wilcoxon(&W_EXACT30_A, &W_EXACT30_B, W_EXACT30, WilcoxonMethod::Exact);
        check_wilcoxon(&W_PERM_A, &W_PERM_B, W_PERM, WilcoxonMethod::Permutation);
        check_wilcoxon(&W_PERM_TIES_A, &W_PERM_TIES_B, W_PERM_TIES, WilcoxonMethod::Permutation);
        check_wilcoxon(&W_ASYMP_A, &W_ASYMP_B, W_ASYMP, WilcoxonMethod::Asymptotic);
        check_wilcoxon(&W_ASYMP60_A, &W_ASYMP60_B, W_ASYMP60, WilcoxonMethod::Asymptotic);
        // Symmetric in the order of the samples.
        let (ab, ba) = (
            wilcoxon(&W_EXACT_A, &W_EXACT_B).unwrap(),
            wilcoxon(&W_EXACT_B, &W_EXACT_A).unwrap(),
        );
        assert_eq!((ab.statistic, ab.p_value), (ba.statistic, ba.p_value));
    }

    #[test]
    fn wilcoxon_exact_small_cases_by_hand() {
        // n = 3, all positive: W+ = 6, P(W ≥ 6) = 1/8 → p = 1/4; statistic min(6, 0) = 0.
        let w = wilcoxon(&[1.0, 2.0, 3.0], &[0.0, 0.0, 0.0]).unwrap();
        assert_eq!((w.statistic, w.p_value, w.method), (0.0, 0.25, WilcoxonMethod::Exact));
        // n = 1: p = 2·min(1/2, 1) = 1.
        assert_eq!(wilcoxon(&[1.0], &[0.0]).unwrap().p_value, 1.0);
    }

    #[test]
    fn wilcoxon_degenerate() {
        assert!(wilcoxon(&[1.0, 2.0], &[1.0, 2.0]).is_none()); // all differences zero
        assert!(wilcoxon(&[], &[]).is_none());
        assert!(wilcoxon(&[1.0, 2.0], &[1.0]).is_none());
        assert!(wilcoxon(&[1.0, f64::NAN], &[0.0, 0.0]).is_none());
    }

    // Holm's step-down on [0.01, 0.04, 0.03, 0.005]: [0.03, 0.06, 0.06, 0.02] (by hand: sorted 0.005·4, 0.01·3, 0.03·2, max(0.04·1, 0.06)).
    #[test]
    fn holm_matches_the_step_down_definition() {
        let got = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (g, w) in got.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn unpaired_difference_is_centred_and_significant_only_when_real() {
        let labels: Vec<u8> = (0..200).map(|i| (i % 2) as u8).collect();
        let good: Vec<f64> = (0..200)
            .map(|i| {
                if i % 2 == 1 {
                    0.6 + (i % 7) as f64 * 0.05
                } else {
                    0.2 + (i % 5) as f64 * 0.1
                }
            })
            .collect();
        let noise: Vec<f64> = (0..200).map(|i| ((i * 37) % 101) as f64 / 101.0).collect();
        let d = unpaired_auc_diff((&noise, &labels), (&good, &labels), 0.95, 400, 1).unwrap();
        assert!(d.diff > 0.3 && d.ci_lo > 0.0 && d.p_value < 0.01, "{d:?}");
        let same = unpaired_auc_diff((&good, &labels), (&good, &labels), 0.95, 400, 1).unwrap();
        assert!(
            same.diff == 0.0 && same.ci_lo < 0.0 && same.ci_hi > 0.0 && same.p_value > 0.3,
            "{same:?}"
        );
    }
}
