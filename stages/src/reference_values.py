"""Reference values for the `report::metrics` and `report::stats` unit tests.

The Rust tests never call Python: this script was run once, offline, and its output pasted into
the `#[cfg(test)]` modules of `metrics.rs` and `stats.rs`. Re-derive them with

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn scipy numpy
    /tmp/skl/bin/python stages/src/report/reference_values.py

(values pasted from scikit-learn 1.9.1, scipy 1.17.1, numpy 2.4.6, Python 3.11). Every float is
printed with `repr`, i.e. the shortest string that round-trips to the same f64, so the Rust
literals are bit-identical inputs.

What has no library equivalent is computed here from its definition, independently of the Rust
code: EER (from sklearn's `roc_curve`), ECE/reliability (equal-width bins, last bin closed),
DeLong (the classic O(n^2) structural-components version *and* the fast midrank version of
Sun & Xu 2014, cross-checked against each other) and the type-7 percentile the bootstrap uses
(`numpy.percentile`, default `method="linear"`).
"""

import numpy as np
import scipy
import scipy.stats as st
import sklearn
from sklearn import metrics as skm

print(f"# scikit-learn {sklearn.__version__}, scipy {scipy.__version__}, numpy {np.__version__}")


def r(x):
    """A float as a Rust literal (shortest round-trip repr; inf as f64::INFINITY)."""
    x = float(x)
    if np.isinf(x):
        return "f64::INFINITY" if x > 0 else "f64::NEG_INFINITY"
    s = repr(x)
    return s if ("." in s or "e" in s or "n" in s) else s + ".0"


def vec(xs):
    return "[" + ", ".join(r(x) for x in xs) + "]"


def ivec(xs):
    return "[" + ", ".join(str(int(x)) for x in xs) + "]"


# ---------------------------------------------------------------- metrics: fixed vectors
# ties: tied scores across and within classes
TIES_S = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.4, 0.65, 0.1]
TIES_Y = [0, 0, 1, 1, 1, 1, 0, 0, 1, 0]
# perfect and inverted classifiers
PERF_S = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
PERF_Y = [1, 1, 1, 0, 0, 0]
INV_Y = [0, 0, 0, 1, 1, 1]
# unbalanced: 2 fakes among 12
UNB_S = [0.05, 0.2, 0.15, 0.7, 0.3, 0.1, 0.55, 0.4, 0.25, 0.6, 0.35, 0.02]
UNB_Y = [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]
# 32 items: scores rounded to 2 decimals (ties), exact 0.0 and 1.0 (log-loss clipping)
rng = np.random.default_rng(20240607)
LONG_Y = rng.integers(0, 2, 32)
LONG_S = np.round(np.clip(0.35 * LONG_Y + 0.65 * rng.random(32) - 0.05, 0.0, 1.0), 2)
LONG_S[int(np.flatnonzero(LONG_Y == 1)[0])] = 0.0  # a fake scored 0: clipped in log loss
LONG_S[int(np.flatnonzero(LONG_Y == 0)[0])] = 1.0  # a real scored 1
LONG_S = [float(x) for x in LONG_S]
LONG_Y = [int(x) for x in LONG_Y]

CASES = {
    "TIES": (TIES_S, TIES_Y),
    "PERF": (PERF_S, PERF_Y),
    "INV": (PERF_S, INV_Y),
    "UNB": (UNB_S, UNB_Y),
    "LONG": (LONG_S, LONG_Y),
}


def eer(scores, labels):
    """FPR = FNR on the ROC (drop_intermediate=False), linear interpolation; threshold likewise,
    taking the finite end when one bracketing point is the +inf start."""
    fpr, tpr, thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    d = fpr - (1 - tpr)
    i = int(np.argmax(d >= 0))
    if d[i] == 0:
        return fpr[i], thr[i]
    a = -d[i - 1] / (d[i] - d[i - 1])
    e = fpr[i - 1] + a * (fpr[i] - fpr[i - 1])
    t0, t1 = thr[i - 1], thr[i]
    t = t1 if np.isinf(t0) else t0 + a * (t1 - t0)
    return e, t


def reliability(p, y, bins):
    p, y = np.asarray(p, float), np.asarray(y, float)
    b = np.minimum(np.floor(p * bins).astype(int), bins - 1)
    out = []
    for k in range(bins):
        m = b == k
        if m.any():
            out.append((k / bins, (k + 1) / bins, int(m.sum()), p[m].mean(), y[m].mean()))
    return out


def ece(p, y, bins):
    return sum(c / len(p) * abs(fp - mp) for _, _, c, mp, fp in reliability(p, y, bins))


print("\n// ---- metrics.rs")
for name, (s, y) in CASES.items():
    print(f"const {name}_S: [f64; {len(s)}] = {vec(s)};")
    print(f"const {name}_Y: [u8; {len(y)}] = {ivec(y)};")
for name, (s, y) in CASES.items():
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    print(f"// {name}: sklearn.metrics.roc_curve(y, s, drop_intermediate=False)")
    print(f"const {name}_ROC_FPR: [f64; {len(fpr)}] = {vec(fpr)};")
    print(f"const {name}_ROC_TPR: [f64; {len(tpr)}] = {vec(tpr)};")
    print(f"const {name}_ROC_THR: [f64; {len(thr)}] = {vec(thr)};")
    print(f"// {name}: roc_auc_score, average_precision_score")
    print(f"const {name}_AUC: f64 = {r(skm.roc_auc_score(y, s))};")
    print(f"const {name}_AP: f64 = {r(skm.average_precision_score(y, s))};")
    e, t = eer(s, y)
    print(f"// {name}: EER from roc_curve (definition in the script)")
    print(f"const {name}_EER: (f64, f64) = ({r(e)}, {r(t)});")
    print(f"// {name}: log_loss(y, s), brier_score_loss(y, s)")
    print(f"const {name}_LOG_LOSS: f64 = {r(skm.log_loss(y, s, labels=[0, 1]))};")
    print(f"const {name}_BRIER: f64 = {r(skm.brier_score_loss(y, s))};")
    for t in (0.5, 0.4):
        pred = (np.asarray(s) >= t).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        tag = f"{name}_AT_{int(round(t * 100))}"
        print(f"// {name} at t={t}: y_pred = (s >= t); confusion_matrix(...).ravel(), accuracy_score,")
        print("// balanced_accuracy_score, precision_score, recall_score, f1_score; FPR = fp / (fp + tn)")
        print(f"const {tag}_CM: [u64; 4] = [{tn}, {fp}, {fn}, {tp}];")
        vals = [
            skm.accuracy_score(y, pred),
            skm.balanced_accuracy_score(y, pred),
            skm.precision_score(y, pred, zero_division=np.nan),
            skm.recall_score(y, pred, zero_division=np.nan),
            fp / (fp + tn),
            skm.f1_score(y, pred, zero_division=np.nan),
        ]
        print("// [accuracy, balanced_accuracy, precision, recall, false_alarm_rate, f1]")
        print(f"const {tag}: [f64; 6] = {vec(vals)};")

print("// LONG: ECE / reliability, 10 and 4 bins (definition in the script)")
for bins in (10, 4):
    print(f"const LONG_ECE_{bins}: f64 = {r(ece(LONG_S, LONG_Y, bins))};")
for lo, hi, c, mp, fp in reliability(LONG_S, LONG_Y, 4):
    print(f"// bin [{lo}, {hi}): count {c}, mean_p {r(mp)}, frac_pos {r(fp)}")

# ---------------------------------------------------------------- mean/std/ci, percentile
print("\n// ---- mean_std_ci: numpy mean/std(ddof=1), scipy.stats.t.interval(level, n-1, mean, sem)")
SUMM = [0.912, 0.887, 0.934, 0.901, 0.879, 0.925]
print(f"const SUMM: [f64; {len(SUMM)}] = {vec(SUMM)};")
for level in (0.95, 0.9):
    a = np.asarray(SUMM)
    m, s = a.mean(), a.std(ddof=1)
    lo, hi = st.t.interval(level, len(a) - 1, loc=m, scale=s / np.sqrt(len(a)))
    print(f"// level {level}: [mean, std, ci_lo, ci_hi]")
    print(f"const SUMM_{int(level * 100)}: [f64; 4] = {vec([m, s, lo, hi])};")
TWO = [1.0, 2.5]
m, s = np.mean(TWO), np.std(TWO, ddof=1)
lo, hi = st.t.interval(0.95, 1, loc=m, scale=s / np.sqrt(2))
print("// [1.0, 2.5] at level 0.95 (df = 1): [mean, std, ci_lo, ci_hi]")
print(f"const TWO_95: [f64; 4] = {vec([m, s, lo, hi])};")
print("// numpy.percentile(x, q) (method='linear', type 7)")
PCT = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
print(f"const PCT: [f64; {len(PCT)}] = {vec(PCT)};")
for q in (2.5, 50.0, 97.5):
    print(f"// q = {q}: {r(np.percentile(PCT, q))}")

# ---------------------------------------------------------------- DeLong
def midrank(x):
    return st.rankdata(x, method="average")


def delong_fast(sa, sb, y):
    """Sun & Xu (2014) midrank algorithm (as in yandexdataschool/roc_comparison)."""
    y = np.asarray(y)
    order = np.r_[np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    m = int((y == 1).sum())
    preds = np.vstack([np.asarray(sa)[order], np.asarray(sb)[order]])
    n = preds.shape[1] - m
    k = 2
    tx = np.array([midrank(preds[r, :m]) for r in range(k)])
    ty = np.array([midrank(preds[r, m:]) for r in range(k)])
    tz = np.array([midrank(preds[r, :]) for r in range(k)])
    aucs = tz[:, :m].sum(axis=1) / m / n - (m + 1.0) / 2.0 / n
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    sx, sy = np.cov(v01), np.cov(v10)
    cov = sx / m + sy / n
    return aucs, cov


def delong_classic(sa, sb, y):
    """DeLong, DeLong & Clarke-Pearson (1988): structural components with psi(x, y) in {0, 1/2, 1},
    O(m n)."""
    y = np.asarray(y)
    out_v10, out_v01, aucs = [], [], []
    for s in (np.asarray(sa, float), np.asarray(sb, float)):
        x, w = s[y == 1], s[y == 0]
        psi = (x[:, None] > w[None, :]) + 0.5 * (x[:, None] == w[None, :])
        aucs.append(psi.mean())
        out_v10.append(psi.mean(axis=1))  # one per positive
        out_v01.append(psi.mean(axis=0))  # one per negative
    m, n = len(out_v10[0]), len(out_v01[0])
    s10 = np.cov(np.vstack(out_v10))
    s01 = np.cov(np.vstack(out_v01))
    return np.array(aucs), s10 / m + s01 / n


def delong(sa, sb, y):
    a1, c1 = delong_fast(sa, sb, y)
    a2, c2 = delong_classic(sa, sb, y)
    assert np.allclose(a1, a2, rtol=0, atol=1e-14) and np.allclose(c1, c2, rtol=0, atol=1e-14)
    var = c2[0, 0] + c2[1, 1] - 2 * c2[0, 1]
    se = np.sqrt(var)
    diff = a2[0] - a2[1]
    z = diff / se
    p = 2 * st.norm.sf(abs(z))
    return [a2[0], a2[1], diff, se, z, p]


print("\n// ---- stats.rs")
print("// DeLong: classic O(mn) structural components == Sun & Xu fast midrank (to 1e-14);")
print("// p = 2 * scipy.stats.norm.sf(|z|). [auc_a, auc_b, diff, se, z, p]")
B_LONG = np.round(np.clip(np.asarray(LONG_S) * 0.5 + 0.5 * rng.random(32), 0, 1), 2)
print(f"const LONG_S: [f64; {len(LONG_S)}] = {vec(LONG_S)};")
print(f"const LONG_S_B: [f64; {len(B_LONG)}] = {vec(B_LONG)};")
print(f"const LONG_Y: [u8; {len(LONG_Y)}] = {ivec(LONG_Y)};")
print(f"const DELONG_LONG: [f64; 6] = {vec(delong(LONG_S, B_LONG, LONG_Y))};")
TIES_B = [0.2, 0.3, 0.3, 0.6, 0.5, 0.6, 0.5, 0.5, 0.3, 0.2]
print(f"const TIES_S: [f64; 10] = {vec(TIES_S)};")
print(f"const TIES_S_B: [f64; 10] = {vec(TIES_B)};")
print(f"const TIES_Y: [u8; 10] = {ivec(TIES_Y)};")
print(f"const DELONG_TIES: [f64; 6] = {vec(delong(TIES_S, TIES_B, TIES_Y))};")

# ---------------------------------------------------------------- paired t, Wilcoxon
print("// scipy.stats.ttest_rel(a, b): [t, df, p, mean(a - b)]")
TA = [0.81, 0.84, 0.79, 0.88, 0.83, 0.86, 0.80, 0.85, 0.82, 0.87, 0.84, 0.83]
TB = [0.78, 0.82, 0.80, 0.84, 0.80, 0.85, 0.77, 0.83, 0.81, 0.83, 0.84, 0.80]
res = st.ttest_rel(TA, TB)
print(f"const TA: [f64; {len(TA)}] = {vec(TA)};")
print(f"const TB: [f64; {len(TB)}] = {vec(TB)};")
print(f"const TTEST: [f64; 4] = {vec([res.statistic, res.df, res.pvalue, np.mean(np.subtract(TA, TB))])};")

print("// scipy.stats.wilcoxon(a, b) (defaults: zero_method='wilcox', correction=False, method='auto'):")
print("// [statistic, pvalue]")
W = {}
# exact: n = 10, no ties, no zeros
W["EXACT"] = ([1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30, 2.01],
              [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29, 1.11])
# exact: n = 30, no ties
a = np.round(rng.normal(0, 1, 30), 4)
b = np.round(a - 0.3 + rng.normal(0, 1, 30), 4)
W["EXACT30"] = (list(a), list(b))
# permutation (n <= 13 with ties and a zero): enumerated exactly by scipy
W["PERM"] = ([3.0, 5.0, 2.0, 7.0, 4.0, 6.0, 8.0, 5.5, 1.0, 4.5],
             [2.0, 3.0, 2.0, 5.0, 5.0, 4.0, 7.0, 3.5, 2.0, 2.5])
# permutation (n <= 13, ties among |d|, no zero)
W["PERM_TIES"] = ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0],
                  [0.0, 1.0, 2.5, 3.0, 4.5, 5.0, 8.0, 7.0, 8.5, 9.1, 10.0, 13.0])
# asymptotic: n = 20 with ties and zeros
a = np.round(rng.normal(0, 1, 20), 1)
b = np.round(a + np.round(rng.normal(0.3, 0.6, 20), 1), 1)
b[3] = a[3]
b[11] = a[11]
W["ASYMP"] = (list(a), list(b))
# asymptotic: n = 60 (> 50), no ties
a = np.round(rng.normal(0, 1, 60), 5)
b = np.round(a + rng.normal(0.2, 1, 60), 5)
W["ASYMP60"] = (list(a), list(b))
for name, (a, b) in W.items():
    d = np.subtract(a, b)
    nz = np.abs(d[d != 0])
    ties = len(np.unique(nz)) < len(nz)
    res = st.wilcoxon(a, b)
    print(f"// {name}: n = {len(a)}, zeros = {int((d == 0).sum())}, ties = {ties}")
    print(f"const W_{name}_A: [f64; {len(a)}] = {vec(a)};")
    print(f"const W_{name}_B: [f64; {len(b)}] = {vec(b)};")
    print(f"const W_{name}: [f64; 2] = {vec([res.statistic, res.pvalue])};")
