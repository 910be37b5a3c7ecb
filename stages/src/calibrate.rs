//! `Calibrate` (temperature scaling per fold, reliability, cascade thresholds) and
//! `MineHardNegatives` — plain numerics on the per-fold scores Train writes; no libtorch.
//!
//! ```ron
//! "calibrate": Calibrate(models: "train", bins: 15, thresholds: [0.9, 0.95, 0.98, 0.99]),
//! "mine": MineHardNegatives(calibration: "calibrate", top: 0.1),
//! ```
//! Calibrate fits, for each fold, the temperature `T` that minimises the negative
//! log-likelihood of `sigmoid(logit / T)` on that fold's *validation* items (Newton's method
//! on `a = 1/T`, where the NLL is convex, with bounds and a backtracking line search), and
//! reports NLL, ECE and Brier before/after on the validation items and — the honest figure —
//! on the fold's held-out *test* items. ECE: equal-width bins over P(fake),
//! `Σ_b n_b/N · |mean(y)_b − mean(p)_b|`. Thresholds: for a cascade whose fast filter passes
//! items with P(fake) ≥ t to the next stage, `filtration` = share of items stopped (p < t) and
//! `leakage` = share of fakes stopped.
//!
//! Outputs: `calibration.json`, `reliability.csv` (test items, all folds, before/after),
//! `scores.csv` (`item,fold,role,label,source,logit,prob`: every fold's scores with its
//! calibrated probability). Mine writes `hard_negatives.csv` (`item,fold,score`): the real
//! *training* items of each fold that fold's calibrated model scores most fake — never items
//! of the fold's test set.

use std::collections::BTreeMap;

use flow_engine::{
    key_params_of, Code, ConfigProblem, ExecCtx, Input, PortType, ResolvedInput, StageConfig, StageError, StageKind,
};
use serde::{Deserialize, Serialize};

use crate::metrics::{self, fit_temperature, sigmoid};
use crate::ports::calibration::{
    write_reliability, write_scores, BeforeAfter, CalibratedRow, CalibrationDoc, DocBin, FoldCalibration,
    PooledQuality, Quality, Reliability, ReliabilityRow,
};
use crate::ports::hard_negatives::{FoldMined, HardNegative, MineSummary};
use crate::ports::split::Role;
use crate::ports::{CALIBRATION, HARD_NEGATIVES, MODELS};

fn d_bins() -> usize {
    15
}
fn d_thresholds() -> Vec<f64> {
    vec![0.9, 0.95, 0.98, 0.99]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibrate {
    /// A per-fold model stage (Train/Retrain): its `scores.csv` per fold.
    pub models: String,
    #[serde(default = "d_bins")]
    pub bins: usize,
    #[serde(default = "d_thresholds")]
    pub thresholds: Vec<f64>,
}

// 2: NLLs computed from logits (exact; the pooled test NLL clipped probabilities at
// 1e-15), metrics shared with the report; `models` in the key.
inventory::submit! { crate::Kind(|| StageKind::new::<Calibrate>("Calibrate", 2, "temperature scaling per fold, ECE, reliability, cascade thresholds")) }

/// NLL (exact, from logits scaled by `1/t`), ECE and Brier of `sigmoid(logit / t)`.
/// Quantities of an empty set (a fold without validation items) are 0.
fn quality(logits: &[f64], labels: &[u8], t: f64, bins: usize) -> Quality {
    let probs: Vec<f64> = logits.iter().map(|z| sigmoid(z / t)).collect();
    Quality {
        n: logits.len(),
        nll: metrics::log_loss_logits(logits, labels, 1.0 / t).unwrap_or(0.0),
        ece: metrics::ece(&probs, labels, bins).unwrap_or(0.0),
        brier: metrics::brier(&probs, labels).unwrap_or(0.0),
    }
}

/// The bins of `probs` as `calibration.json` writes them.
fn bins_of(probs: &[f64], labels: &[u8], bins: usize) -> Vec<DocBin> {
    metrics::reliability(probs, labels, bins)
        .unwrap_or_default()
        .iter()
        .map(DocBin::from)
        .collect()
}

impl StageConfig for Calibrate {
    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("models", self.models.clone(), &[MODELS])]
    }
    fn output(&self) -> PortType {
        CALIBRATION
    }
    fn key_params(&self) -> serde_json::Value {
        // `models` stays: the model instances' names are written into calibration.json
        // (`from`), so the output depends on them.
        key_params_of(self, &[])
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let mut v = Vec::new();
        if self.bins < 2 {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`bins` must be at least 2".into(),
                needle: None,
                help: None,
            });
        }
        if self.bins > 10_000 {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: format!("`bins` {} is more than 10000", self.bins),
                needle: Some("bins:".into()),
                help: None,
            });
        }
        if self.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
            v.push(ConfigProblem {
                code: Code::InvalidValue,
                message: "`thresholds` must be in [0, 1]".into(),
                needle: None,
                help: None,
            });
        }
        v
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let mut folds = Vec::new();
        let mut all_rows: Vec<CalibratedRow> = Vec::new();
        let mut pooled = PooledTest::default();
        let mut inputs: Vec<_> = ctx.inputs_of("models").collect();
        inputs.sort_by_key(|i| i.fold);
        for input in inputs {
            folds.push(self.calibrate_fold(input, &mut pooled, &mut all_rows)?);
        }
        if folds.is_empty() {
            return Err(StageError::msg("no model folds to calibrate"));
        }
        let doc = self.document(folds, pooled);
        doc.write(ctx.out_dir).map_err(StageError::msg)?;
        let mut reliability = Vec::new();
        for (which, bins) in [
            ("before", &doc.reliability_test.before),
            ("after", &doc.reliability_test.after),
        ] {
            reliability.extend(bins.iter().map(|b| ReliabilityRow {
                which: which.into(),
                lo: b.lo,
                hi: b.hi,
                count: b.count,
                mean_pred: b.mean_pred,
                frac_pos: b.frac_pos,
            }));
        }
        write_reliability(ctx.out_dir, &reliability).map_err(StageError::msg)?;
        write_scores(ctx.out_dir, &all_rows).map_err(StageError::msg)
    }
}

/// The pooled test items of every fold: logits before, logits over their fold's temperature
/// after.
#[derive(Default)]
struct PooledTest {
    before: Vec<f64>,
    after: Vec<f64>,
    labels: Vec<u8>,
}

impl Calibrate {
    /// One fold: the temperature fitted on its validation items (on its training items when it
    /// has none), quality before/after; its test items join `pooled`, every item `all_rows`.
    fn calibrate_fold(
        &self,
        input: &ResolvedInput,
        pooled: &mut PooledTest,
        all_rows: &mut Vec<CalibratedRow>,
    ) -> Result<FoldCalibration, StageError> {
        let fold = input
            .fold
            .ok_or_else(|| StageError::msg(format!("`{}` is not a per-fold model stage", input.from)))?;
        let rows = crate::ports::models::read_scores(&input.dir).map_err(StageError::msg)?;
        let pick = |role: Role| -> (Vec<f64>, Vec<u8>) {
            rows.iter()
                .filter(|r| r.role == role)
                .map(|r| (r.logit, r.label))
                .unzip()
        };
        let (vz, vy) = pick(Role::Val);
        let (tz, ty) = pick(Role::Test);
        let (fit_z, fit_y, fit_on) = if vz.is_empty() {
            let (z, y) = pick(Role::Train);
            (z, y, "train")
        } else {
            (vz.clone(), vy.clone(), "val")
        };
        let t = fit_temperature(&fit_z, &fit_y);
        let test_probs: Vec<f64> = tz.iter().map(|z| sigmoid(z / t)).collect();
        let calibration = FoldCalibration {
            fold,
            from: input.from.clone(),
            temperature: t,
            fit_on: fit_on.into(),
            val: BeforeAfter {
                before: quality(&vz, &vy, 1.0, self.bins),
                after: quality(&vz, &vy, t, self.bins),
            },
            test: BeforeAfter {
                before: quality(&tz, &ty, 1.0, self.bins),
                after: quality(&tz, &ty, t, self.bins),
            },
            thresholds_test: metrics::cascade(&test_probs, &ty, &self.thresholds),
        };
        pooled.before.extend(tz.iter().copied());
        pooled.after.extend(tz.iter().map(|z| z / t));
        pooled.labels.extend(ty);
        for r in rows {
            let prob = sigmoid(r.logit / t);
            all_rows.push(CalibratedRow {
                item: r.item,
                fold,
                role: r.role,
                label: r.label,
                source: r.source,
                logit: r.logit,
                prob,
            });
        }
        Ok(calibration)
    }

    /// `calibration.json`: the folds, and quality, thresholds and reliability of the pooled
    /// test items.
    fn document(&self, folds: Vec<FoldCalibration>, pooled: PooledTest) -> CalibrationDoc {
        let labels = &pooled.labels;
        let (before, after) = (
            quality(&pooled.before, labels, 1.0, self.bins),
            quality(&pooled.after, labels, 1.0, self.bins),
        );
        let probs = |logits: &[f64]| logits.iter().map(|z| sigmoid(*z)).collect::<Vec<f64>>();
        let (test_before, test_after) = (probs(&pooled.before), probs(&pooled.after));
        let reduction = if before.ece > 0.0 {
            1.0 - after.ece / before.ece
        } else {
            0.0
        };
        CalibrationDoc {
            method: "temperature".into(),
            bins: self.bins,
            folds,
            pooled_test: PooledQuality {
                before,
                after,
                ece_reduction: reduction,
            },
            thresholds_test: metrics::cascade(&test_after, labels, &self.thresholds),
            reliability_test: Reliability {
                before: bins_of(&test_before, labels, self.bins),
                after: bins_of(&test_after, labels, self.bins),
            },
        }
    }
}

/// Real training items that the calibrated model of their fold scores most fake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MineHardNegatives {
    /// A Calibrate stage (its `scores.csv` has calibrated probabilities per fold).
    pub calibration: String,
    /// Fraction of each fold's real training items to take (highest scores first).
    #[serde(default)]
    pub top: Option<f64>,
    /// Or: every real training item with calibrated P(fake) at least this.
    #[serde(default)]
    pub threshold: Option<f64>,
}

inventory::submit! { crate::Kind(|| StageKind::new::<MineHardNegatives>("MineHardNegatives", 1, "real training items the calibrated model scores most fake")) }

impl StageConfig for MineHardNegatives {
    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("calibration", self.calibration.clone(), &[CALIBRATION])]
    }
    fn output(&self) -> PortType {
        HARD_NEGATIVES
    }
    fn key_params(&self) -> serde_json::Value {
        key_params_of(self, &["calibration"])
    }
    fn validate(&self) -> Vec<ConfigProblem> {
        let p = |m: &str| ConfigProblem {
            code: Code::InvalidValue,
            message: m.into(),
            needle: None,
            help: None,
        };
        match (self.top, self.threshold) {
            (None, None) => vec![p("give `top` (a fraction) or `threshold` (a probability)")],
            (Some(_), Some(_)) => vec![p("give either `top` or `threshold`, not both")],
            (Some(t), _) if !(t > 0.0 && t <= 1.0) => vec![p("`top` must be in (0, 1]")],
            (_, Some(t)) if !(0.0..=1.0).contains(&t) => vec![p("`threshold` must be in [0, 1]")],
            _ => vec![],
        }
    }
    fn execute(&self, ctx: &ExecCtx<'_>) -> Result<(), StageError> {
        let input = ctx
            .inputs_of("calibration")
            .next()
            .ok_or_else(|| StageError::msg("no calibration input"))?;
        let rows = crate::ports::calibration::read_scores(&input.dir).map_err(StageError::msg)?;
        let mut by_fold: BTreeMap<u32, Vec<&CalibratedRow>> = BTreeMap::new();
        for row in rows.iter().filter(|r| r.role == Role::Train && r.label == 0) {
            by_fold.entry(row.fold).or_default().push(row);
        }
        let mut mined = Vec::new();
        let mut summary = Vec::new();
        for (fold, mut reals) in by_fold {
            reals.sort_by(|a, b| b.prob.total_cmp(&a.prob).then_with(|| a.item.cmp(&b.item)));
            let take = match (self.top, self.threshold) {
                (Some(f), _) => ((reals.len() as f64 * f).ceil() as usize).min(reals.len()),
                (_, Some(t)) => reals.iter().take_while(|r| r.prob >= t).count(),
                _ => 0,
            };
            mined.extend(reals[..take].iter().map(|r| HardNegative {
                item: r.item.clone(),
                fold,
                score: r.prob,
            }));
            summary.push(FoldMined {
                fold,
                real_train_items: reals.len(),
                hard_negatives: take,
                min_score: reals[..take].last().map(|r| r.prob),
            });
        }
        crate::ports::hard_negatives::write_rows(ctx.out_dir, &mined).map_err(StageError::msg)?;
        MineSummary { folds: summary }
            .write(ctx.out_dir)
            .map_err(StageError::msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_fixes_an_overconfident_model() {
        // Logits that are 4x too confident: true P(fake) = sigmoid(z / 4).
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        let mut state = 12345u64;
        for i in 0..4000 {
            let z = (i % 200) as f64 / 10.0 - 10.0; // -10..10
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            labels.push((u < sigmoid(z / 4.0)) as u8);
            logits.push(z);
        }
        let t = fit_temperature(&logits, &labels);
        assert!((t - 4.0).abs() < 0.4, "T = {t}");
        let before: Vec<f64> = logits.iter().map(|z| sigmoid(*z)).collect();
        let after: Vec<f64> = logits.iter().map(|z| sigmoid(z / t)).collect();
        let (e0, e1) = (
            metrics::ece(&before, &labels, 15).unwrap(),
            metrics::ece(&after, &labels, 15).unwrap(),
        );
        assert!(
            e1 < 0.5 * e0,
            "ECE {e0} -> {e1}: the seeds' criterion is a >= 50 % reduction"
        );
        let nll = |a| metrics::log_loss_logits(&logits, &labels, a).unwrap();
        assert!(nll(1.0 / t) < nll(1.0));
    }

    #[test]
    fn ece_brier_and_cascade_by_hand() {
        let p = [0.1, 0.2, 0.8, 0.9];
        let y = [0, 1, 1, 1];
        // 2 bins: [0,.5): mean p .15, frac .5 -> .35 * 2/4; [.5,1]: mean .85, frac 1 -> .15 * 2/4
        assert!((metrics::ece(&p, &y, 2).unwrap() - 0.25).abs() < 1e-12);
        assert!((metrics::brier(&p, &y).unwrap() - (0.01 + 0.64 + 0.04 + 0.01) / 4.0).abs() < 1e-12);
        let t = metrics::cascade(&p, &y, &[0.5]);
        assert_eq!((t[0].filtration, t[0].leakage, t[0].false_alarm), (0.5, 1.0 / 3.0, 0.0));
    }
}
