"""Calibration on a labelled set: per-detector Platt scaling, a stacked combination (logistic regression
on the detectors' logits), a threshold for a target false-positive rate with a bootstrap interval, and
cross-validated metrics before and after. Writes a FusionConfig (rule `stacked`) the server can serve.

The stacked rule, as served (genguard/fusion.py):

    is_ai = sigmoid(intercept + sum_d coefficients[d] * logit(p_d)),  p_d clipped to [1e-7, 1 - 1e-7]

over the detectors with a binary head. The fit standardises each logit (so the L2 penalty treats every
detector alike, whatever its logit scale) and the coefficients are written back on the raw logit scale;
`training.standardized_coefficients` are the weights per standard deviation of each detector's logit,
the comparable measure of how much each detector counts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math

import numpy as np

from . import metrics, perturb
from .evaluate import fusion_of
from .scoring import binary_head

CLIP = 1e-7  # as genguard.fusion clips before taking a logit


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(p / (1 - p))


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def stacked_score(X, coefficients, intercept: float) -> np.ndarray:
    """The served stacked rule on a [N, D] matrix of logits (columns in `coefficients` order)."""
    return sigmoid(np.asarray(X, dtype=np.float64) @ np.asarray(coefficients, dtype=np.float64) + intercept)


def threshold_for_fpr(real_scores, target: float) -> float:
    """The lowest threshold t (call AI-generated when score >= t) whose FPR on these real images is <= target.

    With the real scores sorted high to low, at most k = floor(target * n) of them may be called
    AI-generated: t is the next float above the (k+1)-th highest. (0.0 if every one may be.)
    """
    s = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if not 0 <= target < 1:
        raise ValueError("target FPR must be in [0, 1)")
    k = int(math.floor(target * len(s) + 1e-9))
    if k >= len(s):
        return 0.0
    return float(min(np.nextafter(s[k], np.inf), 1.0))


def bootstrap_threshold(real_scores, target: float, rounds: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of threshold_for_fpr over bootstrap resamples of the real images."""
    s = np.asarray(real_scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = [threshold_for_fpr(s[rng.integers(0, len(s), len(s))], target) for _ in range(rounds)]
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def fit_logistic(X, y, C: float = 1.0) -> tuple[np.ndarray, float, np.ndarray]:
    """L2 logistic regression on standardised columns -> (raw-scale coefficients, intercept, standardised
    coefficients). sigmoid(X @ coef + intercept) is the model's P(y = 1)."""
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(X, dtype=np.float64)
    mean, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    model = LogisticRegression(C=C, max_iter=1000).fit((X - mean) / sd, np.asarray(y))
    standardized = model.coef_[0].astype(np.float64)
    coef = standardized / sd
    intercept = float(model.intercept_[0] - np.sum(standardized * mean / sd))
    return coef, intercept, standardized


def platt(x, y, C: float = 1e6) -> tuple[float, float]:
    """Platt scaling of one detector's logit: (a, b) with calibrated P = sigmoid(a * x + b)."""
    coef, intercept, _ = fit_logistic(np.asarray(x, dtype=np.float64)[:, None], y, C)
    return float(coef[0]), intercept


def _folds(y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    k = max(2, min(folds, int(y.sum()), int(len(y) - y.sum())))
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def out_of_fold(X, y, folds: int = 5, seed: int = 0, C: float = 1.0) -> np.ndarray:
    """Each image's stacked score from a model fitted without it (stratified k-fold)."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    oof = np.empty(len(y))
    for train, test in _folds(y, folds, seed):
        coef, intercept, _ = fit_logistic(X[train], y[train], C)
        oof[test] = stacked_score(X[test], coef, intercept)
    return oof


def training_matrix(records: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str], list[dict]]:
    """(X logits [N, D], y, detectors, records) from the successful unperturbed records; the detectors
    are those with a binary head that every record scored."""
    rows = [r for r in records if r.get("status") == "SUCCESS" and r["perturbation"] == perturb.NONE]
    if not rows:
        raise ValueError("no successfully scored images to calibrate on")
    names = [d for d in rows[0]["scores"] if binary_head(d) and all(d in r["scores"] for r in rows)]
    if not names:
        raise ValueError("no detector with a binary head in the answers")
    X = logit([[r["scores"][d] for d in names] for r in rows])
    return X, np.array([r["label"] for r in rows], dtype=np.int64), names, rows


# Fields calibrate decides; every other field of the served configuration (weights for the generator
# evidence, NSFW rule, provenance policy ...) is kept as it is when `served_config` is given.
FITTED_FIELDS = ("rule", "threshold", "margin", "coefficients", "intercept", "id", "training")


def calibrate(records: list[dict], *, target_fpr: float = 0.01, folds: int = 5, bootstrap: int = 1000,
              seed: int = 0, C: float = 1.0, source: str = "", today: _dt.date | None = None,
              served_config: dict | None = None) -> dict:
    """-> {"config": the FusionConfig fields to write, "report": the numbers behind it}.

    served_config: the served FusionConfig's fields (the postprocess model's `fusion` parameter); the
    fields calibrate doesn't fit are carried over from it."""
    X, y, names, rows = training_matrix(records)
    n_ai = int(y.sum())
    if n_ai < 2 or len(y) - n_ai < 2:
        raise ValueError(f"calibration needs at least 2 AI-generated and 2 real images (have {n_ai} and {len(y) - n_ai})")
    served = fusion_of(rows)
    served_scores = np.array([r["is_ai_generated"] for r in rows])
    oof = out_of_fold(X, y, folds, seed, C)
    threshold = threshold_for_fpr(oof[y == 0], target_fpr)
    interval = bootstrap_threshold(oof[y == 0], target_fpr, bootstrap, seed)
    coef, intercept, standardized = fit_logistic(X, y, C)
    # per-detector calibration (Platt), cross-validated the same way, and fitted on everything
    per_detector = {}
    for j, name in enumerate(names):
        raw = sigmoid(X[:, j])
        cal = np.empty(len(y))
        for train, test in _folds(y, folds, seed):
            a, b = platt(X[train, j], y[train])
            cal[test] = sigmoid(a * X[test, j] + b)
        a, b = platt(X[:, j], y)
        per_detector[name] = {"a": a, "b": b,
                              "before": metrics.summarize(y, raw, 0.5), "after_cv": metrics.summarize(y, cal, 0.5)}
    before = metrics.summarize(y, served_scores, float(served.get("threshold", 0.5)))
    after = metrics.summarize(y, oof, threshold)
    date = (today or _dt.datetime.now(_dt.timezone.utc).date()).isoformat()
    coefficients = {d: float(c) for d, c in zip(names, coef)}
    digest = hashlib.sha256(json.dumps([coefficients, intercept, threshold], sort_keys=True).encode()).hexdigest()[:10]
    kept = {k: v for k, v in (served_config or {}).items() if k not in FITTED_FIELDS}
    config = {
        **kept,
        "rule": "stacked", "coefficients": coefficients, "intercept": intercept, "threshold": threshold,
        "margin": 0.0, "id": f"stacked-{date}-{digest}",
        "training": {
            "n": int(len(y)), "n_ai": n_ai, "n_real": int(len(y) - n_ai), "date": date, "source": source,
            "target_fpr": target_fpr, "threshold_interval_95": list(interval), "cv_folds": len(_folds(y, folds, seed)),
            "bootstrap_rounds": bootstrap, "C": C,
            "standardized_coefficients": {d: float(c) for d, c in zip(names, standardized)},
            "platt": {d: {"a": v["a"], "b": v["b"]} for d, v in per_detector.items()},
            "auc_before_served": before["auc"], "auc_after_cv": after["auc"],
            "fused_before": {"rule": served.get("rule"), "id": served.get("id")},
            "kept_from_served": sorted(kept),
        },
    }
    report = {"detectors": names, "served": served, "before": before, "after_cv": after,
              "per_detector": per_detector, "threshold": threshold, "interval": interval,
              "oof": oof, "y": y, "X": X, "paths": [r["path"] for r in rows]}
    return {"config": config, "report": report}


def render_markdown(result: dict, *, source: str, server: str, out: str) -> str:
    config, rep = result["config"], result["report"]
    tr = config["training"]
    before, after = rep["before"], rep["after_cv"]
    lo, hi = rep["interval"]
    lines = [
        "# GenGuard calibration", "",
        f"Labelled set `{source}` ({tr['n']} images: {tr['n_ai']} AI-generated, {tr['n_real']} real), scored by "
        f"`{server}` under rule `{rep['served'].get('rule')}` (threshold {rep['served'].get('threshold')}). "
        f"Written: `{out}` (id `{config['id']}`, {tr['date']}).", "",
        "## Stacked rule", "",
        "is_ai = σ(intercept + Σ_d c_d · logit(p_d)); standardised weight = c_d × the SD of the detector's logit "
        "on this set (comparable across detectors).", "",
        "| detector | coefficient c_d | standardised weight |", "|---|---|---|"]
    for d in rep["detectors"]:
        lines.append(f"| {d} | {config['coefficients'][d]:.6g} | {tr['standardized_coefficients'][d]:.4f} |")
    lines += ["", f"intercept {config['intercept']:.6g}", "",
              f"Threshold for FPR ≤ {100 * tr['target_fpr']:g} % on the out-of-fold scores of the real images: "
              f"**{config['threshold']:.6g}** (bootstrap 95 % interval {lo:.6g} – {hi:.6g}, "
              f"{tr['bootstrap_rounds']} resamples of the real images).", "",
              f"## Before and after ({tr['cv_folds']}-fold cross-validation)", "",
              "*before*: the served answer as it is (no fitting); *after*: each image scored by a stacked model "
              "fitted without it, called at the chosen threshold.", "",
              "| | ROC AUC | accuracy | F1 | TPR | FPR | TPR @ 1 % FPR | TPR @ 5 % FPR | ECE | Brier |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def row(name, m):
        f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        return (f"| {name} | {f(m['auc'])} | {f(m['accuracy'])} | {f(m['f1'])} | {f(m['tpr'])} | {f(m['fpr'])} | "
                f"{f(m['tpr_at_1pct_fpr'])} | {f(m['tpr_at_5pct_fpr'])} | {f(m['ece'])} | {f(m['brier'])} |")

    lines += [row(f"before: served `{rep['served'].get('rule')}`", before), row("after: stacked (CV)", after), "",
              "## Per-detector calibration (Platt scaling, cross-validated)", "",
              "| detector | a | b | AUC | ECE before | ECE after | Brier before | Brier after |",
              "|---|---|---|---|---|---|---|---|"]
    for d, v in rep["per_detector"].items():
        b0, b1 = v["before"], v["after_cv"]
        auc = "n/a" if b0["auc"] is None else f"{b0['auc']:.3f}"
        lines.append(f"| {d} | {v['a']:.4g} | {v['b']:.4g} | {auc} | {b0['ece']:.3f} | {b1['ece']:.3f} | "
                     f"{b0['brier']:.3f} | {b1['brier']:.3f} |")
    kept = tr.get("kept_from_served") or []
    lines += ["", "Kept from the served configuration: " + (", ".join(f"`{k}`" for k in kept) if kept else
                                                          "nothing (it was not readable: defaults)") + "."]
    lines += ["", f"Serve it: `make serve FUSION={out}` (or `python -m genguard.export.repository --fusion {out}`); "
                  f"every answer's `fusion` block then names `{config['id']}`."]
    return "\n".join(lines) + "\n"
