"""Metrics over scored records, per scorer (the fused answer and each detector) and per perturbation,
and the Markdown report with its plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from . import metrics, perturb
from .dataset import NSFW_LEVELS, is_nsfw_label

FUSED = "fused"
DETECTOR_THRESHOLD = 0.5  # a detector's own call: P(AI-generated) >= 0.5


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "SUCCESS"]


def fusion_of(records: list[dict]) -> dict:
    """The served fusion block the records were scored under; ValueError if they mix several."""
    seen = {json.dumps(r.get("fusion") or {}, sort_keys=True) for r in _ok(records)}
    if len(seen) > 1:
        raise ValueError("the scores come from different fusion configurations (the server changed between "
                         "runs): score again from scratch (--fresh)")
    return json.loads(seen.pop()) if seen else {}


def scorers(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in _ok(records):
        names += [n for n in r["scores"] if n not in names]
    return [FUSED, *names]


def scores_of(records: list[dict], scorer: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(labels, scores, records) for the successful records that have this scorer."""
    rows = [r for r in _ok(records) if scorer == FUSED or scorer in r["scores"]]
    s = [r["is_ai_generated"] if scorer == FUSED else r["scores"][scorer] for r in rows]
    return np.array([r["label"] for r in rows], dtype=np.int64), np.array(s, dtype=np.float64), rows


def threshold_of(scorer: str, fusion: dict) -> float:
    return float(fusion.get("threshold", 0.5)) if scorer == FUSED else DETECTOR_THRESHOLD


def _call(record: dict, scorer: str, threshold: float):
    if scorer == FUSED:
        return record.get("verdict")  # the served verdict (an uncertain band counts as its own call)
    return record["scores"][scorer] >= threshold


def nsfw_metrics(records: list[dict], level: str = "medium") -> dict | None:
    rows = [r for r in _ok(records) if r.get("nsfw_label") and r.get("nsfw")]
    if not rows:
        return None
    threshold = 0.5
    rule = next((r["nsfw"].get("rule") for r in rows if r["nsfw"].get("rule")), None)
    if rule and (m := re.fullmatch(r"at_least\[(\w+)\] >= ([0-9.eE+-]+)", rule)):
        level, threshold = m.group(1), float(m.group(2))
    y = np.array([is_nsfw_label(r["nsfw_label"], level) for r in rows], dtype=np.int64)
    s = np.array([r["nsfw"]["at_least"][level] for r in rows], dtype=np.float64)
    out = {"level": level, "threshold": threshold, **metrics.summarize(y, s, threshold)}
    levelled = [r for r in rows if r["nsfw_label"] in NSFW_LEVELS]
    if levelled:
        out["level_accuracy"] = float(np.mean([r["nsfw"]["level"] == r["nsfw_label"] for r in levelled]))
        out["level_n"] = len(levelled)
    return out


def analyse(records: list[dict], nsfw_level: str = "medium") -> dict:
    """Everything the report shows, as JSON-ready numbers."""
    fusion = fusion_of(records)
    names = scorers(records)
    perturbations = []
    for r in records:
        if r["perturbation"] not in perturbations:
            perturbations.append(r["perturbation"])
    perturbations.sort(key=lambda p: p != perturb.NONE)
    base = {r["path"]: r for r in _ok(records) if r["perturbation"] == perturb.NONE}
    out = {"fusion": fusion, "scorers": names, "perturbations": perturbations, "metrics": {}, "flips": {},
           "by_generator": {}, "failures": {},
           "weights": next((r["weights"] for r in _ok(records) if r.get("weights")), {})}
    for p in perturbations:
        subset = [r for r in records if r["perturbation"] == p]
        out["failures"][p] = [{"path": r["path"], **(r.get("error") or {})} for r in subset
                              if r.get("status") != "SUCCESS"]
        out["metrics"][p], out["flips"][p], out["by_generator"][p] = {}, {}, {}
        for name in names:
            y, s, rows = scores_of(subset, name)
            if not len(y):
                continue
            thr = threshold_of(name, fusion)
            out["metrics"][p][name] = metrics.summarize(y, s, thr)
            out["by_generator"][p][name] = metrics.recall_by_group(y, s, [r.get("generator") for r in rows], thr)
            if p != perturb.NONE:
                pairs = [(r, base[r["path"]]) for r in rows
                         if r["path"] in base and (name == FUSED or name in base[r["path"]]["scores"])]
                flipped = sum(_call(a, name, thr) != _call(b, name, thr) for a, b in pairs)
                out["flips"][p][name] = {"n": len(pairs), "flipped": flipped,
                                         "share": flipped / len(pairs) if pairs else None}
    out["nsfw"] = nsfw_metrics([r for r in records if r["perturbation"] == perturb.NONE], nsfw_level)
    return out


# ---------------------------------------------------------------------------------------------------
# Plots (matplotlib, small PNGs)

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    _plt().close(fig)
    return path.name


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> str | None:
    """curves: label -> (y, s); curves without both classes are left out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    drawn = False
    for label, (y, s) in curves.items():
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = metrics.roc_points(y, s)
            ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{label} (AUC {metrics.roc_auc(y, s):.3f})")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for x in (0.01, 0.05):
        ax.axvline(x, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="false-positive rate (real photos called AI)", ylabel="true-positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfectly calibrated")
    for label, (y, p) in curves.items():
        count, mean_p, frac = metrics.reliability(y, p)
        used = count > 0
        ax.plot(mean_p[used], frac[used], marker="o", ms=3, label=f"{label} (ECE {metrics.ece(y, p):.3f})")
    ax.set(xlabel="mean predicted P(AI-generated), 10 bins", ylabel="observed share AI-generated",
           title="Reliability", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_histograms(curves: dict[str, tuple[np.ndarray, np.ndarray]], thresholds: dict[str, float],
                    path: Path) -> str:
    plt = _plt()
    n = len(curves)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, (label, (y, s)) in zip(axes.ravel(), curves.items()):
        ax.hist(s[y == 0], bins=bins, alpha=0.6, label="real")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, label="AI-generated")
        ax.axvline(thresholds[label], color="black", lw=0.8, ls="--")
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6)
    fig.suptitle("P(AI-generated) by true label (dashed: threshold)", fontsize=9)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# Markdown

def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def metrics_table(rows: dict[str, dict], first: str = "scorer") -> list[str]:
    lines = [f"| {first} | n (AI/real) | ROC AUC | accuracy | F1 | TPR | FPR | TPR @ 1 % FPR | TPR @ 5 % FPR | ECE | threshold |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['n']} ({m['n_ai']}/{m['n_real']}) | {_f(m['auc'])} | {_f(m['accuracy'])} | "
                     f"{_f(m['f1'])} | {_f(m['tpr'])} | {_f(m['fpr'])} | {_f(m['tpr_at_1pct_fpr'])} | "
                     f"{_f(m['tpr_at_5pct_fpr'])} | {_f(m['ece'])} | {m['threshold']:g} |")
    return lines


def render_markdown(analysis: dict, *, title: str, source: str, server: str, plots: dict[str, str],
                    notes: list[str] = ()) -> str:
    fusion, base = analysis["fusion"], analysis["metrics"].get(perturb.NONE, {})
    random = sorted(d for d, w in analysis["weights"].items() if w == "random")
    lines = [f"# {title}", "", f"Labelled set: `{source}`. Server: `{server}`. Served fusion: rule "
             f"`{fusion.get('rule', '?')}`, threshold {fusion.get('threshold', '?')}"
             + (f", id `{fusion['id']}`" if fusion.get("id") else "") + "."]
    if random:
        lines += ["", f"**RANDOM WEIGHTS** ({', '.join(random)}): the server runs random-weight detectors, so these "
                      "figures show the evaluation machinery, not detector quality."]
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    lines += ["", "Scorers: `fused` is the served answer (`is_ai_generated`, called AI-generated at the served "
                  "threshold); each detector is its own P(AI-generated) (binary head, or 1 − P(real) of a source "
                  f"head), called at {DETECTOR_THRESHOLD}. TPR @ x % FPR: the best true-positive rate of any "
                  "threshold whose false-positive rate on these real images is ≤ x % (no interpolation). ECE: 10 "
                  "equal-width bins.", "", "## Unperturbed", ""]
    lines += metrics_table(base)
    fused = base.get(FUSED)
    if fused:
        (tn, fp), (fn, tp) = fused["confusion"]
        lines += ["", "Confusion matrix (fused, at the served threshold):", "",
                  "| truth \\ call | not AI-generated | AI-generated |", "|---|---|---|",
                  f"| real | {tn} | {fp} |", f"| AI-generated | {fn} | {tp} |"]
    groups = analysis["by_generator"].get(perturb.NONE, {})
    generators = sorted({g for per in groups.values() for g in per})
    if generators:
        lines += ["", "Recall per generator (share of its images called AI-generated):", "",
                  "| scorer | " + " | ".join(f"{g} (n={groups[FUSED][g]['n'] if g in groups.get(FUSED, {}) else '?'})"
                                           for g in generators) + " |",
                  "|---" * (len(generators) + 1) + "|"]
        for name, per in groups.items():
            lines.append(f"| {name} | " + " | ".join(_f(per[g]["recall"]) if g in per else "n/a"
                                                   for g in generators) + " |")
    for key, caption in (("roc", "ROC"), ("reliability", "Reliability diagram"), ("histograms", "Score histograms")):
        if plots.get(key):
            lines += ["", f"![{caption}]({plots[key]})"]
    others = [p for p in analysis["perturbations"] if p != perturb.NONE]
    if others:
        lines += ["", "## Robustness", "", "Each image re-scored after the perturbation; *flips*: share of images "
                  "whose call changed from the unperturbed one (the fused verdict as served, each detector's "
                  f"call at {DETECTOR_THRESHOLD}).", "",
                  "| perturbation | scorer | ROC AUC | accuracy | F1 | FPR | TPR @ 5 % FPR | ECE | flips |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in [perturb.NONE, *others]:
            for name, m in analysis["metrics"].get(p, {}).items():
                flip = analysis["flips"].get(p, {}).get(name)
                flips = "—" if p == perturb.NONE else (f"{_pct(flip['share'])} ({flip['flipped']}/{flip['n']})"
                                                       if flip else "n/a")
                lines.append(f"| {p} | {name} | {_f(m['auc'])} | {_f(m['accuracy'])} | {_f(m['f1'])} | "
                             f"{_f(m['fpr'])} | {_f(m['tpr_at_5pct_fpr'])} | {_f(m['ece'])} | {flips} |")
        if plots.get("roc_perturbations"):
            lines += ["", f"![ROC per perturbation (fused)]({plots['roc_perturbations']})"]
    nsfw = analysis.get("nsfw")
    if nsfw:
        lines += ["", "## NSFW", "", f"NSFW when at_least[{nsfw['level']}] ≥ {nsfw['threshold']:g} (the served rule); "
                  f"{nsfw['n']} images with NSFW labels ({nsfw['n_ai']} NSFW).", "",
                  "| ROC AUC | accuracy | F1 | TPR | FPR | ECE | level accuracy |", "|---|---|---|---|---|---|---|",
                  f"| {_f(nsfw['auc'])} | {_f(nsfw['accuracy'])} | {_f(nsfw['f1'])} | {_f(nsfw['tpr'])} | "
                  f"{_f(nsfw['fpr'])} | {_f(nsfw['ece'])} | "
                  + (f"{_f(nsfw['level_accuracy'])} (n={nsfw['level_n']})" if "level_accuracy" in nsfw else "n/a")
                  + " |"]
    failures = {p: f for p, f in analysis["failures"].items() if f}
    if failures:
        lines += ["", "## Failures", ""]
        for p, items in failures.items():
            for item in items[:20]:
                lines.append(f"- {p}: `{item['path']}`: {item.get('reason')}: {item.get('message')}")
            if len(items) > 20:
                lines.append(f"- {p}: … and {len(items) - 20} more (see scores.jsonl)")
    return "\n".join(lines) + "\n"


def write_report(records: list[dict], out: Path, *, source: str, server: str, title: str = "GenGuard evaluation",
                 notes: list[str] = (), nsfw_level: str = "medium") -> dict:
    """report.md, metrics.json and the PNG plots in `out`; returns the analysis."""
    analysis = analyse(records, nsfw_level)
    base = [r for r in records if r["perturbation"] == perturb.NONE]
    curves = {}
    for name in analysis["scorers"]:
        y, s, _ = scores_of(base, name)
        if len(y):
            curves[name] = (y, s)
    plots = {}
    if curves:
        plots["roc"] = plot_roc(curves, "ROC (unperturbed)", out / "roc.png")
        plots["reliability"] = plot_reliability(curves, out / "reliability.png")
        plots["histograms"] = plot_histograms(curves, {n: threshold_of(n, analysis["fusion"]) for n in curves},
                                              out / "histograms.png")
    if len(analysis["perturbations"]) > 1:
        per = {}
        for p in analysis["perturbations"]:
            y, s, _ = scores_of([r for r in records if r["perturbation"] == p], FUSED)
            if len(y):
                per[p] = (y, s)
        plots["roc_perturbations"] = plot_roc(per, "ROC of the fused answer per perturbation",
                                              out / "roc_perturbations.png")
    (out / "report.md").write_text(render_markdown(analysis, title=title, source=source, server=server,
                                                   plots=plots, notes=list(notes)), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(analysis, indent=1, default=float) + "\n", encoding="utf-8")
    analysis["plots"] = {k: v for k, v in plots.items() if v}
    return analysis
