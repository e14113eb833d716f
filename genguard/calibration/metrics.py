"""Binary-detection metrics in numpy (checked against scikit-learn in tests/test_calibration.py).

Conventions: y is 1 for AI-generated, 0 for real; s is a score, higher = more likely AI-generated;
an image is called AI-generated when s >= threshold.
"""

from __future__ import annotations

import numpy as np


def _arrays(y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.int64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (real) or 1 (AI-generated)")
    return y, s


def roc_points(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) at threshold +inf downwards.

    Same points as sklearn.metrics.roc_curve(y, s, drop_intermediate=False).
    """
    y, s = _arrays(y, s)
    pos, neg = int(y.sum()), int(y.size - y.sum())
    if pos == 0 or neg == 0:
        raise ValueError("ROC needs both real and AI-generated images")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each distinct score
    tps = np.cumsum(y_sorted)[last]
    fps = last + 1 - tps
    return (np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, s_sorted[last]])


def roc_auc(y, s) -> float:
    """Area under the ROC curve (trapezoids: a tie counts one half, as Mann-Whitney U)."""
    fpr, tpr, _ = roc_points(y, s)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(y, s, target: float) -> tuple[float, float]:
    """(TPR, threshold): the highest true-positive rate of any threshold whose FPR is <= target.

    No interpolation between ROC points: the threshold returned achieves both numbers on this data.
    """
    fpr, tpr, thresholds = roc_points(y, s)
    ok = np.flatnonzero(fpr <= target + 1e-12)
    best = ok[np.argmax(tpr[ok])]
    return float(tpr[best]), float(thresholds[best])


def confusion(y, s, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]]: rows the truth (real, AI), columns the call (sklearn's layout)."""
    y, s = _arrays(y, s)
    pred = s >= threshold
    return np.array([[np.sum(~pred & (y == 0)), np.sum(pred & (y == 0))],
                     [np.sum(~pred & (y == 1)), np.sum(pred & (y == 1))]], dtype=np.int64)


def f1(y, s, threshold: float) -> float:
    (_, fp), (fn, tp) = confusion(y, s, threshold)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def accuracy(y, s, threshold: float) -> float:
    cm = confusion(y, s, threshold)
    return float((cm[0, 0] + cm[1, 1]) / cm.sum())


def reliability(y, p, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of [0, 1]: (count, mean predicted probability, observed AI share).

    Bin edges as sklearn.calibration.calibration_curve(strategy="uniform"): a probability equal to an
    inner edge falls in the lower bin. Empty bins have NaN means.
    """
    y, p = _arrays(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(ids, weights=p, minlength=bins) / count
        frac = np.bincount(ids, weights=y, minlength=bins) / count
    return count, mean_p, frac


def ece(y, p, bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (bin share) * |observed AI share - mean probability|."""
    count, mean_p, frac = reliability(y, p, bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(frac[used] - mean_p[used])))


def brier(y, p) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2))


def summarize(y, s, threshold: float, *, probability: bool = True) -> dict:
    """Every metric the evaluation report shows, for one scorer on one set of images.

    Metrics that need both classes (AUC, TPR at FPR) are None when one class is missing;
    ECE/Brier only when `probability` (the score is meant as a probability).
    """
    y, s = _arrays(y, s)
    n_ai = int(y.sum())
    both = 0 < n_ai < y.size
    cm = confusion(y, s, threshold)
    out = {
        "n": int(y.size), "n_ai": n_ai, "n_real": int(y.size - n_ai), "threshold": float(threshold),
        "auc": roc_auc(y, s) if both else None,
        "accuracy": accuracy(y, s, threshold) if y.size else None,
        "f1": f1(y, s, threshold) if y.size else None,
        "tpr": float(cm[1, 1] / n_ai) if n_ai else None,
        "fpr": float(cm[0, 1] / (y.size - n_ai)) if y.size - n_ai else None,
        "tpr_at_1pct_fpr": tpr_at_fpr(y, s, 0.01)[0] if both else None,
        "tpr_at_5pct_fpr": tpr_at_fpr(y, s, 0.05)[0] if both else None,
        "ece": ece(y, s) if probability and y.size else None,
        "brier": brier(y, s) if probability and y.size else None,
        "confusion": cm.tolist(),
    }
    return out


def recall_by_group(y, s, groups, threshold: float) -> dict[str, dict]:
    """Per generator: how many AI-generated images of it, and the share called AI-generated."""
    y, s = _arrays(y, s)
    out = {}
    for g in sorted({g for g, label in zip(groups, y) if label == 1 and g}):
        mask = np.array([gg == g for gg in groups]) & (y == 1)
        out[g] = {"n": int(mask.sum()), "recall": float(np.mean(s[mask] >= threshold))}
    return out
