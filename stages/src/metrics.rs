//! Binary-classification metrics, calibration and confidence intervals.
//!
//! Conventions: `labels[i]` is 1 for a fake (the positive class) and 0 for a real item;
//! `scores[i]` is the predicted probability of fake (ranking metrics accept any real score).
//! Inputs are invalid — and every function returns `None` — when the slices differ in length, a
//! label is not 0/1 or a score is not finite (NaN, ±∞: sklearn rejects them too); probability
//! metrics also need every score in `[0, 1]`.
//! `N` = items, `P` = fakes, `Q` = reals.
//!
//! Ranking metrics (need both classes, else `None`):
//! - [`roc_curve`]: one point per distinct score `s`, descending, with `tpr = TP(s)/P`,
//!   `fpr = FP(s)/Q` for "fake iff score ≥ s", after a first point `(0, 0, +∞)` — sklearn's
//!   `roc_curve(y, s, drop_intermediate=False)`.
//! - [`auc`]: area under that curve (trapezoids), i.e. `P(s_fake > s_real) + ½·P(s_fake = s_real)`
//!   — sklearn's `roc_auc_score`. Integer arithmetic on tie groups, O(N log N).
//! - [`average_precision`]: `Σ_k (R_k − R_{k−1})·P_k` over distinct scores descending, with
//!   precision `P_k` and recall `R_k` at "score ≥ s_k", `R_0 = 0`, no interpolation — sklearn's
//!   `average_precision_score`. Needs a fake only (`Some(1.0)` without reals); sklearn returns 0.0
//!   with a warning when there is no fake, this returns `None`.
//! - [`eer`]: equal error rate, the rate where FPR = FNR (= 1 − TPR) on the ROC curve above,
//!   interpolated linearly between the two consecutive points whose `FPR − FNR` changes sign (it
//!   increases strictly along the curve); the threshold is interpolated with the same weight,
//!   except that the finite one is taken when the other end is the `+∞` start point. No sklearn
//!   equivalent.
//!
//! Probability metrics (need `N ≥ 1`):
//! - [`log_loss`]: `−mean(y·ln q₁ + (1−y)·ln q₀)` with `q₁ = clip(p, ε, 1−ε)`,
//!   `q₀ = clip(1−p, ε, 1−ε)`, `ε = f64::EPSILON` — sklearn ≥ 1.5 `log_loss(y, p)` (1.9: clips each
//!   column of `[1−p, p]` to `[eps, 1−eps]`, eps = the dtype's machine epsilon; sklearn needs
//!   `labels=[0, 1]` when one class is absent, here it is simply computed).
//! - [`brier`]: `mean((p − y)²)` — sklearn's `brier_score_loss` (binary, `scale_by_half="auto"`).
//! - [`reliability`] / [`ece`]: `bins` equal-width bins over `[0, 1]`, item `p` in bin
//!   `min(⌊p·bins⌋, bins−1)` (so bin `b` is `[b/bins, (b+1)/bins)`, the last one closed);
//!   `ECE = Σ_b n_b/N · |mean(y)_b − mean(p)_b|` over non-empty bins. No sklearn equivalent.
//!
//! Logit metrics (calibration; need `N ≥ 1`):
//! - [`sigmoid`]: `1/(1+e^(−x))`, without overflow.
//! - [`log_loss_logits`]: the same cross-entropy as [`log_loss`] of `sigmoid(scale·z)`, computed
//!   from the logits as `mean(softplus(s) − y·s)`, `s = scale·z`: exact where [`log_loss`] has to
//!   clip a probability that rounded to 0 or 1 (|s| > 36) — what temperature fitting minimises
//!   and what Calibrate reports.
//! - [`fit_temperature`]: the `T` minimising `log_loss_logits(z, y, 1/T)`, by Newton's method on
//!   `a = 1/T` (convex there) in `[1e-3, 1e3]` with a backtracking line search (= sklearn-style
//!   temperature scaling; the optimum agrees with `scipy.optimize.minimize_scalar` on the NLL).
//! - [`cascade`]: for a filter that passes `p ≥ t` on, the share of items it stops (filtration),
//!   of fakes it stops (leakage) and of reals it passes (false alarms), per threshold.
//!
//! Threshold metrics ([`confusion`] and the [`Confusion`] methods): an item is predicted fake iff
//! `score ≥ threshold` (sklearn: `y_pred = (p >= t)`, then `confusion_matrix(y, y_pred).ravel()`
//! = `(tn, fp, fn, tp)`, `accuracy_score`, `balanced_accuracy_score`, `precision_score`,
//! `recall_score`, `f1_score`). A ratio with a zero denominator is `None` where sklearn returns
//! 0.0 with an `UndefinedMetricWarning` (`zero_division="warn"`): precision without predicted
//! fakes, recall without fakes, false-alarm rate (`fp/(fp+tn)`) without reals, F1 =
//! `2tp/(2tp+fp+fn)` when `tp+fp+fn = 0` (as in sklearn 1.9, F1 is 0, not undefined, when only
//! precision is undefined). Balanced accuracy = `(recall + tn/(tn+fp))/2` needs both classes:
//! `None`, where sklearn averages the classes present (with a warning).
//!
//! [`Binary`] bundles all of the above; [`mean_std_ci`] summarises repeated runs with a Student-t
//! interval, [`bootstrap_ci`] / [`bootstrap_ci_stratified`] give percentile bootstrap intervals
//! (stratified by class — the default for AUC-type statistics, as in [`auc_ci`] — so that no
//! resample lacks a class).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{Continuous, ContinuousCDF, Normal, StudentsT};

/// `(P, Q)` = (fakes, reals); `None` unless lengths agree, labels are 0/1 and scores are finite.
fn class_counts(scores: &[f64], labels: &[u8]) -> Option<(usize, usize)> {
    if scores.len() != labels.len() || labels.iter().any(|&y| y > 1) || !scores.iter().all(|s| s.is_finite()) {
        return None;
    }
    let pos = labels.iter().filter(|&&y| y == 1).count();
    Some((pos, labels.len() - pos))
}

/// [`class_counts`] of a non-empty input whose scores all lie in `[0, 1]`.
fn prob_counts(probs: &[f64], labels: &[u8]) -> Option<(usize, usize)> {
    let counts = class_counts(probs, labels)?;
    (!probs.is_empty() && probs.iter().all(|p| (0.0..=1.0).contains(p))).then_some(counts)
}

/// [`class_counts`] with both classes present.
fn both_classes(scores: &[f64], labels: &[u8]) -> Option<(usize, usize)> {
    class_counts(scores, labels).filter(|&(p, q)| p > 0 && q > 0)
}

/// Cumulative counts of "score ≥ `score`" at one distinct score.
struct Step {
    score: f64,
    tp: u64,
    fp: u64,
}

/// One [`Step`] per distinct score, descending (ties form one step). Inputs must be valid.
fn steps(scores: &[f64], labels: &[u8]) -> Vec<Step> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut out) = (0, 0, Vec::new());
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1;
        } else {
            fp += 1;
        }
        if order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]) {
            out.push(Step {
                score: scores[i],
                tp,
                fp,
            });
        }
    }
    out
}

/// A point of the ROC curve: rates of "predict fake iff score ≥ `threshold`".
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    pub fpr: f64,
    pub tpr: f64,
    pub threshold: f64,
}

/// ROC curve as sklearn's `roc_curve(drop_intermediate=False)`: `(0, 0, +∞)`, then one point per
/// distinct score, descending. `None` without both classes.
pub fn roc_curve(scores: &[f64], labels: &[u8]) -> Option<Vec<RocPoint>> {
    let (p, q) = both_classes(scores, labels)?;
    let start = RocPoint {
        fpr: 0.0,
        tpr: 0.0,
        threshold: f64::INFINITY,
    };
    let points = steps(scores, labels).into_iter().map(|s| RocPoint {
        fpr: s.fp as f64 / q as f64,
        tpr: s.tp as f64 / p as f64,
        threshold: s.score,
    });
    Some(std::iter::once(start).chain(points).collect())
}

/// ROC AUC (ties count ½), = sklearn's `roc_auc_score`. `None` without both classes.
pub fn auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let (p, q) = both_classes(scores, labels)?;
    // Twice the area in units of 1/(P·Q): Σ over tie groups of fp_g · (2·tp_before + tp_g).
    let (mut twice, mut tp0, mut fp0) = (0u128, 0u64, 0u64);
    for s in steps(scores, labels) {
        twice += u128::from(s.fp - fp0) * u128::from(tp0 + s.tp);
        (tp0, fp0) = (s.tp, s.fp);
    }
    Some(twice as f64 / (2.0 * p as f64 * q as f64))
}

/// Average precision `Σ (R_k − R_{k−1})·P_k`, = sklearn's `average_precision_score`. `None`
/// without a fake.
pub fn average_precision(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let (p, _) = class_counts(scores, labels).filter(|&(p, _)| p > 0)?;
    let (mut ap, mut tp0) = (0.0, 0u64);
    for s in steps(scores, labels) {
        ap += (s.tp - tp0) as f64 / p as f64 * (s.tp as f64 / (s.tp + s.fp) as f64);
        tp0 = s.tp;
    }
    Some(ap)
}

/// Equal error rate and the threshold where it is reached (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Eer {
    pub rate: f64,
    pub threshold: f64,
}

/// EER: FPR = FNR on the ROC curve, linearly interpolated. `None` without both classes.
pub fn eer(scores: &[f64], labels: &[u8]) -> Option<Eer> {
    let roc = roc_curve(scores, labels)?;
    let gap = |r: &RocPoint| r.fpr - (1.0 - r.tpr);
    // gap is −1 at the start, +1 at the end and strictly increasing, so 1 ≤ i < len.
    let i = roc.iter().position(|r| gap(r) >= 0.0)?;
    let (a, b) = (roc[i - 1], roc[i]);
    if gap(&b) == 0.0 {
        return Some(Eer {
            rate: b.fpr,
            threshold: b.threshold,
        });
    }
    let w = -gap(&a) / (gap(&b) - gap(&a));
    let threshold = if a.threshold.is_infinite() {
        b.threshold
    } else {
        a.threshold + w * (b.threshold - a.threshold)
    };
    Some(Eer {
        rate: a.fpr + w * (b.fpr - a.fpr),
        threshold,
    })
}

/// Mean cross-entropy with probabilities clipped to `[ε, 1−ε]`, `ε = f64::EPSILON`, = sklearn's
/// `log_loss(y, p)`. `None` if empty or a score is outside `[0, 1]`.
pub fn log_loss(probs: &[f64], labels: &[u8]) -> Option<f64> {
    prob_counts(probs, labels)?;
    let eps = f64::EPSILON;
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| -(if y == 1 { p } else { 1.0 - p }).clamp(eps, 1.0 - eps).ln())
        .sum();
    Some(total / probs.len() as f64)
}

/// Brier score `mean((p − y)²)`, = sklearn's `brier_score_loss`. `None` if empty or a score is
/// outside `[0, 1]`.
pub fn brier(probs: &[f64], labels: &[u8]) -> Option<f64> {
    prob_counts(probs, labels)?;
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| (p - f64::from(y)).powi(2))
        .sum();
    Some(total / probs.len() as f64)
}

/// A non-empty reliability bin `[lo, hi)` (the last one closed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean predicted P(fake) of the bin's items.
    pub mean_p: f64,
    /// Share of fakes among the bin's items.
    pub frac_pos: f64,
}

/// Non-empty equal-width bins over `[0, 1]`, item in bin `min(⌊p·bins⌋, bins−1)`. `None` if
/// `bins` is 0, the input is empty or a score is outside `[0, 1]`.
pub fn reliability(probs: &[f64], labels: &[u8], bins: usize) -> Option<Vec<Bin>> {
    prob_counts(probs, labels).filter(|_| bins > 0)?;
    let mut acc = vec![(0usize, 0.0f64, 0.0f64); bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let a = &mut acc[((p * bins as f64) as usize).min(bins - 1)];
        *a = (a.0 + 1, a.1 + p, a.2 + f64::from(y));
    }
    let bin = |(b, &(count, sum_p, sum_y)): (usize, &(usize, f64, f64))| Bin {
        lo: b as f64 / bins as f64,
        hi: (b + 1) as f64 / bins as f64,
        count,
        mean_p: sum_p / count as f64,
        frac_pos: sum_y / count as f64,
    };
    Some(acc.iter().enumerate().filter(|(_, a)| a.0 > 0).map(bin).collect())
}

/// Expected calibration error `Σ_b n_b/N · |frac_pos_b − mean_p_b|` over [`reliability`] bins.
pub fn ece(probs: &[f64], labels: &[u8], bins: usize) -> Option<f64> {
    let n = probs.len() as f64;
    let bins = reliability(probs, labels, bins)?;
    Some(
        bins.iter()
            .map(|b| b.count as f64 / n * (b.frac_pos - b.mean_p).abs())
            .sum(),
    )
}

/// The logistic function `1/(1+e^(−x))`, computed without overflow for any finite `x`.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Mean cross-entropy of `labels` under `sigmoid(scale · logit)`, from the logits:
/// `mean(softplus(s) − y·s)`, `s = scale·z`. `None` if empty, the lengths differ, a label is not
/// 0/1 or a logit is not finite.
pub fn log_loss_logits(logits: &[f64], labels: &[u8], scale: f64) -> Option<f64> {
    class_counts(logits, labels).filter(|_| !logits.is_empty() && scale.is_finite())?;
    Some(nll(logits, labels, scale))
}

/// [`log_loss_logits`] on input known to be valid (the temperature fit's inner loop).
fn nll(logits: &[f64], labels: &[u8], a: f64) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| {
            let s = a * z;
            // log(1 + e^s) − y s, stably
            let softplus = if s > 0.0 {
                s + (-s).exp().ln_1p()
            } else {
                s.exp().ln_1p()
            };
            softplus - f64::from(y) * s
        })
        .sum();
    total / logits.len().max(1) as f64
}

/// The temperature `T` minimising [`log_loss_logits`]`(logits, labels, 1/T)`: Newton's method on
/// `a = 1/T` in `[1e-3, 1e3]`, never increasing the loss (backtracking). 1 for no logits.
pub fn fit_temperature(logits: &[f64], labels: &[u8]) -> f64 {
    if logits.is_empty() {
        return 1.0;
    }
    let (lo, hi) = (1e-3, 1e3);
    let mut a: f64 = 1.0;
    for _ in 0..100 {
        let (mut g, mut h) = (0.0, 0.0);
        for (&z, &y) in logits.iter().zip(labels) {
            let p = sigmoid(a * z);
            g += (p - f64::from(y)) * z;
            h += p * (1.0 - p) * z * z;
        }
        let n = logits.len() as f64;
        g /= n;
        h /= n;
        if g.abs() < 1e-12 {
            break;
        }
        let step = if h > 1e-12 { g / h } else { g.signum() * a * 0.5 };
        let f0 = nll(logits, labels, a);
        let mut t = 1.0;
        let mut next = a;
        while t > 1e-6 {
            let cand = (a - t * step).clamp(lo, hi);
            if nll(logits, labels, cand) <= f0 + 1e-15 {
                next = cand;
                break;
            }
            t *= 0.5;
        }
        if (next - a).abs() < 1e-12 {
            break;
        }
        a = next;
    }
    1.0 / a
}

/// A cascade filter that passes items with P(fake) ≥ `threshold` on (to a slower, better
/// detector) and stops the rest, judged on labelled items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct CascadePoint {
    pub threshold: f64,
    /// Share of items stopped (p < t): the work the next stage is spared.
    pub filtration: f64,
    /// Share of fakes stopped (p < t): what slips through undetected.
    pub leakage: f64,
    /// Share of reals passed on (p ≥ t).
    pub false_alarm: f64,
}

/// [`CascadePoint`]s of `probs` at each threshold (empty classes count as one item, so no
/// share is NaN).
pub fn cascade(probs: &[f64], labels: &[u8], thresholds: &[f64]) -> Vec<CascadePoint> {
    let n = probs.len().max(1) as f64;
    let fakes = labels.iter().filter(|&&y| y == 1).count().max(1) as f64;
    let reals = labels.iter().filter(|&&y| y == 0).count().max(1) as f64;
    thresholds
        .iter()
        .map(|&t| {
            let stopped = probs.iter().filter(|&&p| p < t).count() as f64;
            let leaked = probs.iter().zip(labels).filter(|(p, y)| **p < t && **y == 1).count() as f64;
            let alarms = probs.iter().zip(labels).filter(|(p, y)| **p >= t && **y == 0).count() as f64;
            CascadePoint {
                threshold: t,
                filtration: stopped / n,
                leakage: leaked / fakes,
                false_alarm: alarms / reals,
            }
        })
        .collect()
}

/// Confusion matrix of "predict fake iff score ≥ threshold" (sklearn's `.ravel()` order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tp: u64,
}

/// Counts of "predict fake iff score ≥ `threshold`". `None` for invalid input.
pub fn confusion(scores: &[f64], labels: &[u8], threshold: f64) -> Option<Confusion> {
    class_counts(scores, labels)?;
    let mut c = Confusion {
        tn: 0,
        fp: 0,
        fn_: 0,
        tp: 0,
    };
    for (&s, &y) in scores.iter().zip(labels) {
        match (y == 1, s >= threshold) {
            (true, true) => c.tp += 1,
            (true, false) => c.fn_ += 1,
            (false, true) => c.fp += 1,
            (false, false) => c.tn += 1,
        }
    }
    Some(c)
}

/// `num / den`, `None` when `den` is 0.
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl Confusion {
    /// `(tp + tn) / N`.
    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }

    /// `(recall + tn/(tn + fp)) / 2`; `None` without both classes.
    pub fn balanced_accuracy(&self) -> Option<f64> {
        Some((self.recall()? + ratio(self.tn, self.tn + self.fp)?) / 2.0)
    }

    /// `tp / (tp + fp)`; `None` without predicted fakes.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Fake detection rate (TPR) `tp / (tp + fn)`; `None` without fakes.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// False alarm rate (FPR) `fp / (fp + tn)`; `None` without reals.
    pub fn false_alarm_rate(&self) -> Option<f64> {
        ratio(self.fp, self.fp + self.tn)
    }

    /// `2tp / (2tp + fp + fn)`; `None` when `tp + fp + fn = 0`.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

/// Every metric of this module for one set of scores (`None`: undefined, see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Binary {
    pub n: usize,
    pub n_pos: usize,
    pub n_neg: usize,
    pub threshold: f64,
    pub ece_bins: usize,
    pub auc: Option<f64>,
    pub average_precision: Option<f64>,
    pub eer: Option<f64>,
    pub eer_threshold: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub ece: Option<f64>,
    pub accuracy: Option<f64>,
    pub balanced_accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub false_alarm_rate: Option<f64>,
    pub f1: Option<f64>,
    pub confusion: Confusion,
}

impl Binary {
    /// All metrics at `threshold` with `ece_bins` bins. `None` for invalid input (length
    /// mismatch, label not 0/1, non-finite score); scores outside `[0, 1]` only void the probability
    /// metrics.
    pub fn compute(scores: &[f64], labels: &[u8], threshold: f64, ece_bins: usize) -> Option<Binary> {
        let (n_pos, n_neg) = class_counts(scores, labels)?;
        let c = confusion(scores, labels, threshold)?;
        let e = eer(scores, labels);
        Some(Binary {
            n: scores.len(),
            n_pos,
            n_neg,
            threshold,
            ece_bins,
            auc: auc(scores, labels),
            average_precision: average_precision(scores, labels),
            eer: e.map(|e| e.rate),
            eer_threshold: e.map(|e| e.threshold),
            log_loss: log_loss(scores, labels),
            brier: brier(scores, labels),
            ece: ece(scores, labels, ece_bins),
            accuracy: c.accuracy(),
            balanced_accuracy: c.balanced_accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            false_alarm_rate: c.false_alarm_rate(),
            f1: c.f1(),
            confusion: c,
        })
    }
}

/// Mean, sample standard deviation and Student-t confidence interval of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub level: f64,
    /// `None` when `n = 0`.
    pub mean: Option<f64>,
    /// Sample standard deviation (ddof = 1); `None` when `n < 2`.
    pub std: Option<f64>,
    /// `mean ∓ t_{(1+level)/2, n−1} · std/√n`; `None` when `n < 2` or `level ∉ (0, 1)`.
    pub ci_lo: Option<f64>,
    pub ci_hi: Option<f64>,
}

/// [`Summary`] of `values` (NaNs propagate) = numpy `mean`, `std(ddof=1)` and scipy's
/// `t.interval(level, n−1, mean, std/√n)`.
pub fn mean_std_ci(values: &[f64], level: f64) -> Summary {
    let n = values.len();
    let mean = (n > 0).then(|| values.iter().sum::<f64>() / n as f64);
    let std = mean
        .filter(|_| n > 1)
        .map(|m| (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
    let half = std
        .zip(t_quantile((1.0 + level) / 2.0, (n as f64) - 1.0))
        .map(|(s, t)| t * s / (n as f64).sqrt());
    let ci = mean.zip(half).map(|(m, h)| (m - h, m + h));
    Summary {
        n,
        level,
        mean,
        std,
        ci_lo: ci.map(|c| c.0),
        ci_hi: ci.map(|c| c.1),
    }
}

/// Quantile `q ∈ (0.5, 1)` of Student's t with `df > 0` (statrs, polished by Newton steps on the
/// CDF so it matches scipy's `t.ppf` to ~1e-14 relative).
fn t_quantile(q: f64, df: f64) -> Option<f64> {
    if !(q > 0.5 && q < 1.0 && df > 0.0) {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, df).ok()?;
    let mut x = t.inverse_cdf(q);
    for _ in 0..3 {
        let step = (t.cdf(x) - q) / t.pdf(x);
        if !step.is_finite() {
            break;
        }
        x -= step;
    }
    Some(x)
}

/// Percentile bootstrap CI over `n_items` items: `resamples` draws of `n_items` indices with
/// replacement (`ChaCha8Rng::seed_from_u64(seed)`, so deterministic per seed), `statistic` on each,
/// resamples where it is `None` skipped, interval = the `(1−level)/2` and `(1+level)/2`
/// quantiles (numpy's default linear percentile) of the rest. `None` if `n_items` or `resamples`
/// is 0, `level ∉ (0, 1)` or no resample is defined. For AUC-type statistics use
/// [`bootstrap_ci_stratified`], whose resamples always contain both classes.
pub fn bootstrap_ci(
    n_items: usize,
    level: f64,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> Option<f64>,
) -> Option<(f64, f64)> {
    let all: Vec<usize> = (0..n_items).collect();
    bootstrap(&[all], level, resamples, seed, statistic)
}

/// [`bootstrap_ci`] resampling reals and fakes separately, each with replacement up to its own
/// count, so every resample keeps the class counts of `labels` (indices: reals' draws first,
/// then fakes'). The default for AUC-type statistics. `None` also for a label other than 0/1.
pub fn bootstrap_ci_stratified(
    labels: &[u8],
    level: f64,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> Option<f64>,
) -> Option<(f64, f64)> {
    if labels.iter().any(|&y| y > 1) {
        return None;
    }
    let class = |c: u8| (0..labels.len()).filter(|&i| labels[i] == c).collect::<Vec<_>>();
    bootstrap(&[class(0), class(1)], level, resamples, seed, statistic)
}

/// Wilson score interval of the proportion `k / n` at confidence `level` (stays in [0, 1],
/// sound near 0 and 1 where the normal approximation is not). `None` for `n = 0`.
pub fn wilson(k: u64, n: u64, level: f64) -> Option<(f64, f64)> {
    if n == 0 || k > n || !(level > 0.0 && level < 1.0) {
        return None;
    }
    let z = Normal::new(0.0, 1.0).ok()?.inverse_cdf((1.0 + level) / 2.0);
    let (n, p) = (n as f64, k as f64 / n as f64);
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / d;
    Some(((c - h).max(0.0), (c + h).min(1.0)))
}

/// Percentile bootstrap CI of the mean of per-fold `values` (folds resampled with
/// replacement): always inside [min, max] of the values, so a rate's interval stays in
/// [0, 1]. With few folds it is narrow and coarse — a description of the spread, not a
/// guarantee. `None` for fewer than 2 values.
pub fn fold_mean_ci(values: &[f64], level: f64, resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    bootstrap_ci(values.len(), level, resamples, seed, |idx| {
        Some(idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64)
    })
}

/// Stratified percentile bootstrap CI of [`auc`].
pub fn auc_ci(scores: &[f64], labels: &[u8], level: f64, resamples: usize, seed: u64) -> Option<(f64, f64)> {
    both_classes(scores, labels)?;
    bootstrap_ci_stratified(labels, level, resamples, seed, |idx| {
        let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
        let y: Vec<u8> = idx.iter().map(|&i| labels[i]).collect();
        auc(&s, &y)
    })
}

/// One resample: for each stratum, `stratum.len()` draws from it with replacement.
fn resample(rng: &mut ChaCha8Rng, strata: &[Vec<usize>], out: &mut Vec<usize>) {
    out.clear();
    for stratum in strata.iter().filter(|s| !s.is_empty()) {
        out.extend((0..stratum.len()).map(|_| stratum[rng.gen_range(0..stratum.len())]));
    }
}

fn bootstrap(
    strata: &[Vec<usize>],
    level: f64,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> Option<f64>,
) -> Option<(f64, f64)> {
    if strata.iter().all(|s| s.is_empty()) || resamples == 0 || !(level > 0.0 && level < 1.0) {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = Vec::new();
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        resample(&mut rng, strata, &mut idx);
        values.extend(statistic(&idx).filter(|v| !v.is_nan()));
    }
    values.sort_by(f64::total_cmp);
    Some((
        percentile(&values, (1.0 - level) / 2.0)?,
        percentile(&values, (1.0 + level) / 2.0)?,
    ))
}

/// Linear-interpolation quantile `q ∈ [0, 1]` of ascending `sorted` (numpy's default `percentile`,
/// Hyndman–Fan type 7). `None` if empty.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let h = (sorted.len().checked_sub(1)? as f64) * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

#[cfg(test)]
pub(crate) mod tests {
    //! Reference values: `reference_values.py` (next to this file), run with scikit-learn 1.9.1,
    //! scipy 1.17.1, numpy 2.4.6 (Python 3.11); pasted verbatim. Tolerance 1e-9 (relative above 1).
    use super::*;

    const TOL: f64 = 1e-9;

    #[track_caller]
    pub(crate) fn assert_close(got: f64, want: f64) {
        assert!(
            got == want || (got - want).abs() <= TOL * want.abs().max(1.0),
            "got {got:?}, want {want:?}"
        );
    }

    #[track_caller]
    fn assert_some_close(got: Option<f64>, want: f64) {
        assert_close(got.expect("defined"), want);
    }

    const TIES_S: [f64; 10] = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4, 0.65, 0.1];
    const TIES_Y: [u8; 10] = [0, 0, 1, 1, 1, 1, 0, 0, 1, 0];
    const PERF_S: [f64; 6] = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1];
    const PERF_Y: [u8; 6] = [1, 1, 1, 0, 0, 0];
    const INV_S: [f64; 6] = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1];
    const INV_Y: [u8; 6] = [0, 0, 0, 1, 1, 1];
    const UNB_S: [f64; 12] = [0.05, 0.2, 0.15, 0.7, 0.3, 0.1, 0.55, 0.4, 0.25, 0.6, 0.35, 0.02];
    const UNB_Y: [u8; 12] = [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0];
    pub(crate) const LONG_S: [f64; 32] = [
        0.0, 1.0, 0.38, 0.54, 0.38, 0.4, 0.51, 0.81, 0.9, 0.65, 0.76, 0.38, 0.32, 0.31, 0.61, 0.41, 0.58, 0.17, 0.46,
        0.53, 0.71, 0.69, 0.57, 0.08, 0.87, 0.77, 0.4, 0.54, 0.38, 0.26, 0.18, 0.47,
    ];
    pub(crate) const LONG_Y: [u8; 32] = [
        1, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1,
    ];
    // TIES: sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    const TIES_ROC_FPR: [f64; 8] = [0.0, 0.0, 0.0, 0.0, 0.4, 0.4, 0.6, 1.0];
    const TIES_ROC_TPR: [f64; 8] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0];
    const TIES_ROC_THR: [f64; 8] = [f64::INFINITY, 0.9, 0.8, 0.65, 0.4, 0.35, 0.2, 0.1];
    // TIES: roc_auc_score, average_precision_score
    const TIES_AUC: f64 = 0.8799999999999999;
    const TIES_AP: f64 = 0.8761904761904762;
    // TIES: EER from roc_curve (definition in the script)
    const TIES_EER: (f64, f64) = (0.26666666666666666, 0.4833333333333334);
    // TIES: log_loss(y, s), brier_score_loss(y, s)
    const TIES_LOG_LOSS: f64 = 0.4180915669599166;
    const TIES_BRIER: f64 = 0.1335;
    // TIES at t=0.5: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const TIES_AT_50_CM: [u64; 4] = [5, 0, 2, 3];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const TIES_AT_50: [f64; 6] = [0.8, 0.8, 1.0, 0.6, 0.0, 0.75];
    // TIES at t=0.4: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const TIES_AT_40_CM: [u64; 4] = [3, 2, 1, 4];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const TIES_AT_40: [f64; 6] = [0.7, 0.7, 0.6666666666666666, 0.8, 0.4, 0.7272727272727273];
    // PERF: sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    const PERF_ROC_FPR: [f64; 7] = [0.0, 0.0, 0.0, 0.0, 0.3333333333333333, 0.6666666666666666, 1.0];
    const PERF_ROC_TPR: [f64; 7] = [0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 1.0, 1.0, 1.0];
    const PERF_ROC_THR: [f64; 7] = [f64::INFINITY, 0.9, 0.8, 0.7, 0.3, 0.2, 0.1];
    // PERF: roc_auc_score, average_precision_score
    const PERF_AUC: f64 = 1.0;
    const PERF_AP: f64 = 1.0;
    // PERF: EER from roc_curve (definition in the script)
    const PERF_EER: (f64, f64) = (0.0, 0.7);
    // PERF: log_loss(y, s), brier_score_loss(y, s)
    const PERF_LOG_LOSS: f64 = 0.22839300363692283;
    const PERF_BRIER: f64 = 0.04666666666666667;
    // PERF at t=0.5: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const PERF_AT_50_CM: [u64; 4] = [3, 0, 0, 3];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const PERF_AT_50: [f64; 6] = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
    // PERF at t=0.4: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const PERF_AT_40_CM: [u64; 4] = [3, 0, 0, 3];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const PERF_AT_40: [f64; 6] = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
    // INV: sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    const INV_ROC_FPR: [f64; 7] = [0.0, 0.3333333333333333, 0.6666666666666666, 1.0, 1.0, 1.0, 1.0];
    const INV_ROC_TPR: [f64; 7] = [0.0, 0.0, 0.0, 0.0, 0.3333333333333333, 0.6666666666666666, 1.0];
    const INV_ROC_THR: [f64; 7] = [f64::INFINITY, 0.9, 0.8, 0.7, 0.3, 0.2, 0.1];
    // INV: roc_auc_score, average_precision_score
    const INV_AUC: f64 = 0.0;
    const INV_AP: f64 = 0.38333333333333336;
    // INV: EER from roc_curve (definition in the script)
    const INV_EER: (f64, f64) = (1.0, 0.7);
    // INV: log_loss(y, s), brier_score_loss(y, s)
    const INV_LOG_LOSS: f64 = 1.7053319365846942;
    const INV_BRIER: f64 = 0.6466666666666667;
    // INV at t=0.5: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const INV_AT_50_CM: [u64; 4] = [0, 3, 3, 0];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const INV_AT_50: [f64; 6] = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    // INV at t=0.4: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const INV_AT_40_CM: [u64; 4] = [0, 3, 3, 0];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const INV_AT_40: [f64; 6] = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    // UNB: sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    const UNB_ROC_FPR: [f64; 13] = [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
    const UNB_ROC_TPR: [f64; 13] = [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    const UNB_ROC_THR: [f64; 13] = [
        f64::INFINITY,
        0.7,
        0.6,
        0.55,
        0.4,
        0.35,
        0.3,
        0.25,
        0.2,
        0.15,
        0.1,
        0.05,
        0.02,
    ];
    // UNB: roc_auc_score, average_precision_score
    const UNB_AUC: f64 = 1.0;
    const UNB_AP: f64 = 1.0;
    // UNB: EER from roc_curve (definition in the script)
    const UNB_EER: (f64, f64) = (0.0, 0.6);
    // UNB: log_loss(y, s), brier_score_loss(y, s)
    const UNB_LOG_LOSS: f64 = 0.3178744015288612;
    const UNB_BRIER: f64 = 0.08857500000000001;
    // UNB at t=0.5: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const UNB_AT_50_CM: [u64; 4] = [9, 1, 0, 2];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const UNB_AT_50: [f64; 6] = [0.9166666666666666, 0.95, 0.6666666666666666, 1.0, 0.1, 0.8];
    // UNB at t=0.4: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const UNB_AT_40_CM: [u64; 4] = [8, 2, 0, 2];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const UNB_AT_40: [f64; 6] = [0.8333333333333334, 0.9, 0.5, 1.0, 0.2, 0.6666666666666666];
    // LONG: sklearn.metrics.roc_curve(y, s, drop_intermediate=False)
    const LONG_ROC_FPR: [f64; 28] = [
        0.0,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.07142857142857142,
        0.21428571428571427,
        0.2857142857142857,
        0.35714285714285715,
        0.35714285714285715,
        0.35714285714285715,
        0.42857142857142855,
        0.5,
        0.6428571428571429,
        0.7142857142857143,
        0.7142857142857143,
        0.7857142857142857,
        0.8571428571428571,
        0.9285714285714286,
        1.0,
        1.0,
    ];
    const LONG_ROC_TPR: [f64; 28] = [
        0.0,
        0.0,
        0.05555555555555555,
        0.1111111111111111,
        0.16666666666666666,
        0.2222222222222222,
        0.2777777777777778,
        0.3333333333333333,
        0.3888888888888889,
        0.4444444444444444,
        0.5,
        0.5555555555555556,
        0.6111111111111112,
        0.6111111111111112,
        0.6111111111111112,
        0.6111111111111112,
        0.6666666666666666,
        0.7222222222222222,
        0.7222222222222222,
        0.7777777777777778,
        0.8888888888888888,
        0.8888888888888888,
        0.9444444444444444,
        0.9444444444444444,
        0.9444444444444444,
        0.9444444444444444,
        0.9444444444444444,
        1.0,
    ];
    const LONG_ROC_THR: [f64; 28] = [
        f64::INFINITY,
        1.0,
        0.9,
        0.87,
        0.81,
        0.77,
        0.76,
        0.71,
        0.69,
        0.65,
        0.61,
        0.58,
        0.57,
        0.54,
        0.53,
        0.51,
        0.47,
        0.46,
        0.41,
        0.4,
        0.38,
        0.32,
        0.31,
        0.26,
        0.18,
        0.17,
        0.08,
        0.0,
    ];
    // LONG: roc_auc_score, average_precision_score
    const LONG_AUC: f64 = 0.7321428571428572;
    const LONG_AP: f64 = 0.7479827885138343;
    // LONG: EER from roc_curve (definition in the script)
    const LONG_EER: (f64, f64) = (0.35714285714285715, 0.48714285714285716);
    // LONG: log_loss(y, s), brier_score_loss(y, s)
    const LONG_LOG_LOSS: f64 = 2.7359066931947877;
    const LONG_BRIER: f64 = 0.22330625;
    // LONG at t=0.5: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const LONG_AT_50_CM: [u64; 4] = [9, 5, 7, 11];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const LONG_AT_50: [f64; 6] = [
        0.625,
        0.626984126984127,
        0.6875,
        0.6111111111111112,
        0.35714285714285715,
        0.6470588235294118,
    ];
    // LONG at t=0.4: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,
    // balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)
    const LONG_AT_40_CM: [u64; 4] = [7, 7, 4, 14];
    // [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]
    const LONG_AT_40: [f64; 6] = [
        0.65625,
        0.6388888888888888,
        0.6666666666666666,
        0.7777777777777778,
        0.5,
        0.717948717948718,
    ];
    // LONG: ECE / reliability, 10 and 4 bins (definition in the script)
    const LONG_ECE_10: f64 = 0.23562500000000003;
    const LONG_ECE_4: f64 = 0.06874999999999995;
    // bin [0.0, 0.25): count 4, mean_p 0.1075, frac_pos 0.25
    // bin [0.25, 0.5): count 12, mean_p 0.37916666666666665, frac_pos 0.5
    // bin [0.5, 0.75): count 10, mean_p 0.5930000000000001, frac_pos 0.6
    // bin [0.75, 1.0): count 6, mean_p 0.8516666666666666, frac_pos 0.8333333333333334

    // mean_std_ci: numpy mean/std(ddof=1), scipy.stats.t.interval(level, n-1, mean, sem)
    const SUMM: [f64; 6] = [0.912, 0.887, 0.934, 0.901, 0.879, 0.925];
    // level 0.95: [mean, std, ci_lo, ci_hi]
    const SUMM_95: [f64; 4] = [
        0.9063333333333333,
        0.021425841095897902,
        0.88384829207255,
        0.9288183745941166,
    ];
    // level 0.9: [mean, std, ci_lo, ci_hi]
    const SUMM_90: [f64; 4] = [
        0.9063333333333333,
        0.021425841095897902,
        0.8887075782654532,
        0.9239590884012134,
    ];
    // [1.0, 2.5] at level 0.95 (df = 1): [mean, std, ci_lo, ci_hi]
    const TWO_95: [f64; 4] = [1.75, 1.0606601717798212, -7.77965355213102, 11.27965355213102];
    // numpy.percentile(x, q) (method='linear', type 7)
    const PCT: [f64; 7] = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0];
    // q = 2.5: 1.075
    // q = 50.0: 3.0
    // q = 97.5: 8.399999999999999

    /// One fixed vector and what scikit-learn says about it.
    struct Case {
        name: &'static str,
        s: &'static [f64],
        y: &'static [u8],
        /// fpr, tpr, thresholds
        roc: [&'static [f64]; 3],
        auc: f64,
        ap: f64,
        eer: (f64, f64),
        log_loss: f64,
        brier: f64,
        /// `(threshold, [tn, fp, fn, tp], [acc, bal_acc, prec, rec, far, f1])`
        at: [(f64, [u64; 4], [f64; 6]); 2],
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "ties",
                s: &TIES_S,
                y: &TIES_Y,
                roc: [&TIES_ROC_FPR, &TIES_ROC_TPR, &TIES_ROC_THR],
                auc: TIES_AUC,
                ap: TIES_AP,
                eer: TIES_EER,
                log_loss: TIES_LOG_LOSS,
                brier: TIES_BRIER,
                at: [(0.5, TIES_AT_50_CM, TIES_AT_50), (0.4, TIES_AT_40_CM, TIES_AT_40)],
            },
            Case {
                name: "perf",
                s: &PERF_S,
                y: &PERF_Y,
                roc: [&PERF_ROC_FPR, &PERF_ROC_TPR, &PERF_ROC_THR],
                auc: PERF_AUC,
                ap: PERF_AP,
                eer: PERF_EER,
                log_loss: PERF_LOG_LOSS,
                brier: PERF_BRIER,
                at: [(0.5, PERF_AT_50_CM, PERF_AT_50), (0.4, PERF_AT_40_CM, PERF_AT_40)],
            },
            Case {
                name: "inv",
                s: &INV_S,
                y: &INV_Y,
                roc: [&INV_ROC_FPR, &INV_ROC_TPR, &INV_ROC_THR],
                auc: INV_AUC,
                ap: INV_AP,
                eer: INV_EER,
                log_loss: INV_LOG_LOSS,
                brier: INV_BRIER,
                at: [(0.5, INV_AT_50_CM, INV_AT_50), (0.4, INV_AT_40_CM, INV_AT_40)],
            },
            Case {
                name: "unb",
                s: &UNB_S,
                y: &UNB_Y,
                roc: [&UNB_ROC_FPR, &UNB_ROC_TPR, &UNB_ROC_THR],
                auc: UNB_AUC,
                ap: UNB_AP,
                eer: UNB_EER,
                log_loss: UNB_LOG_LOSS,
                brier: UNB_BRIER,
                at: [(0.5, UNB_AT_50_CM, UNB_AT_50), (0.4, UNB_AT_40_CM, UNB_AT_40)],
            },
            Case {
                name: "long",
                s: &LONG_S,
                y: &LONG_Y,
                roc: [&LONG_ROC_FPR, &LONG_ROC_TPR, &LONG_ROC_THR],
                auc: LONG_AUC,
                ap: LONG_AP,
                eer: LONG_EER,
                log_loss: LONG_LOG_LOSS,
                brier: LONG_BRIER,
                at: [(0.5, LONG_AT_50_CM, LONG_AT_50), (0.4, LONG_AT_40_CM, LONG_AT_40)],
            },
        ]
    }

    #[test]
    fn wilson_matches_statsmodels_and_stays_in_range() {
        // statsmodels.stats.proportion.proportion_confint(45, 50, 0.05, "wilson")
        let (lo, hi) = wilson(45, 50, 0.95).unwrap();
        assert!((lo - 0.7864).abs() < 1e-4 && (hi - 0.9565).abs() < 1e-4, "{lo} {hi}");
        let (lo, hi) = wilson(50, 50, 0.95).unwrap();
        assert!(hi <= 1.0 && lo > 0.9, "{lo} {hi}");
        assert_eq!(wilson(0, 0, 0.95), None);
        let (lo, hi) = fold_mean_ci(&[0.9, 1.0, 1.0, 0.95, 1.0], 0.95, 500, 1).unwrap();
        assert!(lo >= 0.9 && hi <= 1.0, "{lo} {hi}");
    }

    #[test]
    fn roc_curve_matches_sklearn() {
        for c in cases() {
            let roc = roc_curve(c.s, c.y).unwrap();
            assert_eq!(roc.len(), c.roc[0].len(), "{}", c.name);
            for (k, r) in roc.iter().enumerate() {
                assert_close(r.fpr, c.roc[0][k]);
                assert_close(r.tpr, c.roc[1][k]);
                assert_eq!(r.threshold, c.roc[2][k], "{}", c.name);
            }
        }
    }

    #[test]
    fn auc_ap_eer_match_reference() {
        for c in cases() {
            assert_some_close(auc(c.s, c.y), c.auc);
            assert_some_close(average_precision(c.s, c.y), c.ap);
            let e = eer(c.s, c.y).unwrap();
            assert_close(e.rate, c.eer.0);
            assert_close(e.threshold, c.eer.1);
        }
    }

    #[test]
    fn log_loss_and_brier_match_sklearn() {
        for c in cases() {
            assert_some_close(log_loss(c.s, c.y), c.log_loss);
            assert_some_close(brier(c.s, c.y), c.brier);
        }
        // A fake scored 0 costs −ln(ε), a fake scored 1 costs −ln(1 − ε).
        assert_some_close(
            log_loss(&[0.0, 1.0], &[1, 1]),
            (-f64::EPSILON.ln() - (1.0 - f64::EPSILON).ln()) / 2.0,
        );
    }

    #[test]
    fn threshold_metrics_match_sklearn() {
        for c in cases() {
            for (t, cm, v) in c.at {
                let m = confusion(c.s, c.y, t).unwrap();
                assert_eq!([m.tn, m.fp, m.fn_, m.tp], cm, "{} at {t}", c.name);
                let got = [
                    m.accuracy(),
                    m.balanced_accuracy(),
                    m.precision(),
                    m.recall(),
                    m.false_alarm_rate(),
                    m.f1(),
                ];
                for (g, w) in got.into_iter().zip(v) {
                    assert_some_close(g, w);
                }
            }
        }
    }

    #[test]
    fn threshold_is_inclusive() {
        // 0.4 is a score: the three items scored 0.4 are predicted fake at t = 0.4, not at 0.41.
        assert_eq!(confusion(&TIES_S, &TIES_Y, 0.4).unwrap().fp, 2);
        assert_eq!(confusion(&TIES_S, &TIES_Y, 0.41).unwrap().fp, 0);
    }

    #[test]
    fn ece_and_reliability_by_hand() {
        // 4 items, 2 bins: [0, .5) holds p = .1 (real), .3 (fake): mean_p .2, frac_pos .5;
        // [.5, 1] holds p = .5 (fake), 1.0 (fake; last bin closed): mean_p .75, frac_pos 1.
        // ECE = 2/4·|.5 − .2| + 2/4·|1 − .75| = .15 + .125 = .275.
        let (p, y) = ([0.1, 0.3, 0.5, 1.0], [0, 1, 1, 1]);
        let bins = reliability(&p, &y, 2).unwrap();
        assert_eq!(bins.len(), 2);
        assert_eq!((bins[0].lo, bins[0].hi, bins[0].count), (0.0, 0.5, 2));
        assert_close(bins[0].mean_p, 0.2);
        assert_close(bins[0].frac_pos, 0.5);
        assert_eq!((bins[1].lo, bins[1].hi, bins[1].count), (0.5, 1.0, 2));
        assert_close(bins[1].mean_p, 0.75);
        assert_close(bins[1].frac_pos, 1.0);
        assert_some_close(ece(&p, &y, 2), 0.275);
        // Empty bins are left out: 10 bins, items in bins 1, 3, 5, 9.
        assert_eq!(
            reliability(&p, &y, 10)
                .unwrap()
                .iter()
                .map(|b| b.count)
                .collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        // Perfectly calibrated in every bin.
        assert_some_close(ece(&[0.0, 0.0, 1.0, 1.0], &[0, 0, 1, 1], 5), 0.0);
    }

    #[test]
    fn ece_matches_reference() {
        assert_some_close(ece(&LONG_S, &LONG_Y, 10), LONG_ECE_10);
        assert_some_close(ece(&LONG_S, &LONG_Y, 4), LONG_ECE_4);
        let bins = reliability(&LONG_S, &LONG_Y, 4).unwrap();
        let want = [
            (4, 0.1075, 0.25),
            (12, 0.37916666666666665, 0.5),
            (10, 0.5930000000000001, 0.6),
            (6, 0.8516666666666666, 0.8333333333333334),
        ];
        assert_eq!(bins.len(), want.len());
        for (b, (count, mean_p, frac_pos)) in bins.iter().zip(want) {
            assert_eq!(b.count, count);
            assert_close(b.mean_p, mean_p);
            assert_close(b.frac_pos, frac_pos);
        }
    }

    #[test]
    fn eer_by_hand() {
        // Reals 0.1, 0.2, 0.6; fakes 0.4, 0.7, 0.8. ROC (fpr, fnr): t = 0.7 → (0, 1/3),
        // t = 0.6 → (1/3, 1/3): FPR = FNR exactly, EER = 1/3 at threshold 0.6.
        let e = eer(&[0.1, 0.2, 0.6, 0.4, 0.7, 0.8], &[0, 0, 0, 1, 1, 1]).unwrap();
        assert_close(e.rate, 1.0 / 3.0);
        assert_close(e.threshold, 0.6);
        // Reals 0.1, 0.6; fakes 0.3, 0.5, 0.9: t = .9 → (0, 2/3), t = .6 → (.5, 2/3): gap −2/3 → −1/6;
        // t = .5 → (.5, 1/3): gap 1/6. w = (1/6)/(1/3) = ½ → EER = .5, threshold .55.
        let e = eer(&[0.1, 0.6, 0.3, 0.5, 0.9], &[0, 0, 1, 1, 1]).unwrap();
        assert_close(e.rate, 0.5);
        assert_close(e.threshold, 0.55);
    }

    #[test]
    fn degenerate_inputs_are_none() {
        let (one_s, one_y) = ([0.2, 0.7, 0.4], [1, 1, 1]);
        assert!(roc_curve(&one_s, &one_y).is_none());
        assert!(auc(&one_s, &one_y).is_none());
        assert!(eer(&one_s, &one_y).is_none());
        assert!(average_precision(&one_s, &[0, 0, 0]).is_none());
        assert_eq!(average_precision(&one_s, &one_y), Some(1.0));
        let c = confusion(&one_s, &one_y, 0.5).unwrap();
        assert!(c.false_alarm_rate().is_none() && c.balanced_accuracy().is_none());
        assert_eq!(c.recall(), Some(1.0 / 3.0));
        let c = confusion(&one_s, &[0, 0, 0], 0.9).unwrap();
        assert!(c.precision().is_none() && c.recall().is_none() && c.f1().is_none());
        assert_eq!(c.accuracy(), Some(1.0));
        // Precision undefined but fakes missed: F1 is 0, as sklearn.
        let c = confusion(&[0.1, 0.2], &[1, 0], 0.9).unwrap();
        assert_eq!((c.precision(), c.f1()), (None, Some(0.0)));

        let (e_s, e_y): ([f64; 0], [u8; 0]) = ([], []);
        assert!(roc_curve(&e_s, &e_y).is_none() && auc(&e_s, &e_y).is_none());
        assert!(average_precision(&e_s, &e_y).is_none() && eer(&e_s, &e_y).is_none());
        assert!(log_loss(&e_s, &e_y).is_none() && brier(&e_s, &e_y).is_none());
        assert!(ece(&e_s, &e_y, 10).is_none() && reliability(&e_s, &e_y, 10).is_none());
        let c = confusion(&e_s, &e_y, 0.5).unwrap();
        assert!(c.accuracy().is_none() && c.f1().is_none());

        // Invalid input: length mismatch, label 2, NaN, probability outside [0, 1], 0 bins.
        assert!(auc(&[0.1, 0.2], &[0]).is_none());
        assert!(auc(&[0.1, 0.2], &[0, 2]).is_none());
        assert!(auc(&[0.1, f64::NAN], &[0, 1]).is_none());
        assert!(eer(&[0.1, f64::INFINITY], &[0, 1]).is_none());
        assert!(confusion(&[0.1], &[0, 1], 0.5).is_none());
        assert!(log_loss(&[1.5, 0.2], &[1, 0]).is_none() && brier(&[-0.1, 0.2], &[1, 0]).is_none());
        assert!(ece(&[0.5], &[1], 0).is_none());
        // Any real score ranks: logits work for AUC.
        assert_eq!(auc(&[-3.0, 2.0, 0.5, -1.0], &[0, 1, 1, 0]), Some(1.0));
    }

    #[test]
    fn binary_bundles_and_serializes() {
        let b = Binary::compute(&LONG_S, &LONG_Y, 0.5, 10).unwrap();
        assert_eq!((b.n, b.n_pos, b.n_neg, b.ece_bins), (32, 18, 14, 10));
        assert_some_close(b.auc, LONG_AUC);
        assert_some_close(b.average_precision, LONG_AP);
        assert_some_close(b.eer, LONG_EER.0);
        assert_some_close(b.eer_threshold, LONG_EER.1);
        assert_some_close(b.log_loss, LONG_LOG_LOSS);
        assert_some_close(b.brier, LONG_BRIER);
        assert_some_close(b.ece, LONG_ECE_10);
        assert_some_close(b.f1, LONG_AT_50[5]);
        let json = serde_json::to_value(&b).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "n",
            "n_pos",
            "n_neg",
            "threshold",
            "auc",
            "average_precision",
            "eer",
            "eer_threshold",
            "log_loss",
            "brier",
            "ece",
            "ece_bins",
            "accuracy",
            "balanced_accuracy",
            "precision",
            "recall",
            "false_alarm_rate",
            "f1",
            "confusion",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
        assert_eq!(
            json["confusion"],
            serde_json::json!({"tn": 9, "fp": 5, "fn": 7, "tp": 11})
        );
        // One class: ranking metrics are null, the rest still defined.
        let b = Binary::compute(&[0.2, 0.9], &[1, 1], 0.5, 10).unwrap();
        assert!(b.auc.is_none() && b.eer.is_none() && b.false_alarm_rate.is_none());
        assert_eq!(serde_json::to_value(&b).unwrap()["auc"], serde_json::Value::Null);
        assert_eq!(b.recall, Some(0.5));
        assert!(Binary::compute(&[0.2], &[1, 0], 0.5, 10).is_none());
    }

    #[test]
    fn mean_std_ci_matches_scipy() {
        for (level, want) in [(0.95, SUMM_95), (0.9, SUMM_90)] {
            let s = mean_std_ci(&SUMM, level);
            assert_eq!(s.n, 6);
            assert_some_close(s.mean, want[0]);
            assert_some_close(s.std, want[1]);
            assert_some_close(s.ci_lo, want[2]);
            assert_some_close(s.ci_hi, want[3]);
        }
        let s = mean_std_ci(&[1.0, 2.5], 0.95);
        for (got, want) in [s.mean, s.std, s.ci_lo, s.ci_hi].into_iter().zip(TWO_95) {
            assert_some_close(got, want);
        }
        let one = mean_std_ci(&[0.7], 0.95);
        assert_eq!((one.mean, one.std, one.ci_lo, one.ci_hi), (Some(0.7), None, None, None));
        let none = mean_std_ci(&[], 0.95);
        assert_eq!((none.n, none.mean, none.ci_lo), (0, None, None));
        assert!(mean_std_ci(&SUMM, 1.0).ci_lo.is_none() && mean_std_ci(&SUMM, 0.0).ci_hi.is_none());
    }

    #[test]
    fn percentile_matches_numpy() {
        let mut v = PCT.to_vec();
        v.sort_by(f64::total_cmp);
        // numpy.percentile(PCT, [2.5, 50, 97.5])
        assert_some_close(percentile(&v, 0.025), 1.075);
        assert_some_close(percentile(&v, 0.5), 3.0);
        assert_some_close(percentile(&v, 0.975), 8.399999999999999);
        assert_eq!(percentile(&[2.0], 0.3), Some(2.0));
        assert_eq!(percentile(&[], 0.3), None);
    }

    #[test]
    fn bootstrap_is_deterministic_and_covers_the_estimate() {
        let mean = |idx: &[usize]| Some(idx.iter().map(|&i| LONG_S[i]).sum::<f64>() / idx.len() as f64);
        let a = bootstrap_ci(LONG_S.len(), 0.95, 500, 7, mean).unwrap();
        assert_eq!(a, bootstrap_ci(LONG_S.len(), 0.95, 500, 7, mean).unwrap());
        assert_ne!(a, bootstrap_ci(LONG_S.len(), 0.95, 500, 8, mean).unwrap());
        let m = mean(&(0..LONG_S.len()).collect::<Vec<_>>()).unwrap();
        assert!(a.0 < m && m < a.1, "{a:?} vs {m}");

        let (lo, hi) = auc_ci(&LONG_S, &LONG_Y, 0.95, 500, 7).unwrap();
        assert!(lo < LONG_AUC && LONG_AUC < hi && hi <= 1.0, "({lo}, {hi})");
        assert_eq!(auc_ci(&LONG_S, &LONG_Y, 0.95, 500, 7), Some((lo, hi)));
        // A narrower level gives a narrower interval on the same draws.
        let (lo80, hi80) = auc_ci(&LONG_S, &LONG_Y, 0.8, 500, 7).unwrap();
        assert!(lo <= lo80 && hi80 <= hi);
    }

    #[test]
    fn stratified_resamples_keep_class_counts() {
        let counts = std::cell::RefCell::new(Vec::new());
        bootstrap_ci_stratified(&UNB_Y, 0.9, 50, 3, |idx| {
            let fakes = idx.iter().filter(|&&i| UNB_Y[i] == 1).count();
            counts
                .borrow_mut()
                .push((idx.len(), fakes, idx[..10].iter().all(|&i| UNB_Y[i] == 0)));
            Some(0.0)
        })
        .unwrap();
        assert_eq!(counts.borrow().len(), 50);
        assert!(counts.borrow().iter().all(|&c| c == (12, 2, true)));
        // Unstratified, 2 fakes in 12 items: some resamples have no fake and are skipped.
        let defined = std::cell::Cell::new(0);
        let skipped = std::cell::Cell::new(0);
        bootstrap_ci(UNB_S.len(), 0.9, 200, 3, |idx| {
            let y: Vec<u8> = idx.iter().map(|&i| UNB_Y[i]).collect();
            let s: Vec<f64> = idx.iter().map(|&i| UNB_S[i]).collect();
            let a = auc(&s, &y);
            if a.is_some() {
                defined.set(defined.get() + 1)
            } else {
                skipped.set(skipped.get() + 1)
            }
            a
        })
        .unwrap();
        assert!(skipped.get() > 0 && defined.get() > 0);
    }

    #[test]
    fn bootstrap_degenerate_is_none() {
        let any = |_: &[usize]| Some(1.0);
        assert!(bootstrap_ci(0, 0.95, 100, 1, any).is_none());
        assert!(bootstrap_ci(5, 0.95, 0, 1, any).is_none());
        assert!(bootstrap_ci(5, 1.5, 100, 1, any).is_none());
        assert!(bootstrap_ci(5, 0.95, 100, 1, |_| None).is_none());
        assert!(bootstrap_ci_stratified(&[0, 2], 0.95, 100, 1, any).is_none());
        assert!(auc_ci(&[0.1, 0.2], &[1, 1], 0.95, 100, 1).is_none());
        assert_eq!(bootstrap_ci(5, 0.95, 100, 1, any), Some((1.0, 1.0)));
    }

    #[test]
    fn log_loss_from_logits_is_log_loss_of_the_sigmoid_and_exact_beyond_it() {
        let z = [-3.0, -0.5, 0.0, 0.7, 2.5, 4.0];
        let y = [0, 1, 0, 1, 1, 0];
        for scale in [1.0, 0.5, 2.0] {
            let p: Vec<f64> = z.iter().map(|v| sigmoid(v * scale)).collect();
            let a = log_loss_logits(&z, &y, scale).unwrap();
            assert!((a - log_loss(&p, &y).unwrap()).abs() < 1e-12, "{a}");
        }
        // A confident mistake: the probability rounds to 1, log_loss must clip, this need not.
        let (z, y) = ([40.0], [0]);
        assert!((log_loss_logits(&z, &y, 1.0).unwrap() - 40.0).abs() < 1e-9);
        assert!(log_loss(&[sigmoid(40.0)], &y).unwrap() < 37.0);
        assert_eq!(log_loss_logits(&[], &[], 1.0), None);
        assert_eq!(log_loss_logits(&[f64::NAN], &[1], 1.0), None);
        assert!((sigmoid(-800.0)).abs() < 1e-300 && sigmoid(800.0) == 1.0 && sigmoid(0.0) == 0.5);
    }
}
