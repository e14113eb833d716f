"""The summary (best mode of each side, ratios) and the issue's targets, met or missed."""

from __future__ import annotations

import math

from genguard.benchmarks.report import overhead, ratio

TARGET_FP32 = {"speedup": 1.0, "max_abs_prob": 1e-4}
TARGET_INT8 = {"speedup": 2.0, "max_abs_prob": 1e-2}
TARGET_OPTIONS = {"speedup": 3.0, "max_abs_prob": 1e-2}  # issue 20: the best engine/precision within budget
TARGET_OVERHEAD = 0.10


def best_peak(first: dict, second: dict) -> dict:
    """The higher of two peak probes, key by key: on a shared machine a probe can only under-read."""
    out = {k: max(v, second[k]) if isinstance(v, (int, float)) and second.get(k) is not None else v
           for k, v in first.items()}
    out["probes"] = [first.get("fp32_peak_gflops"), second.get("fp32_peak_gflops")]
    return out


def best(rows: list[dict], detector: str, prefix: str) -> dict | None:
    cands = [r for r in rows if r["detector"] == detector and r["mode"].startswith(prefix)]
    return max(cands, key=lambda r: r["images_per_s"]) if cands else None


def summarize(rows: list[dict], name: str) -> dict:
    """Best mode of each side, and the ratios: served/reference (vs the reference's faster mode and vs
    one at a time) and served/ours (Triton's overhead at its best concurrency)."""
    ref_b1 = next((r for r in rows if r["detector"] == name and r["mode"] == "reference b1"), None)
    ref, ours, served = best(rows, name, "reference"), best(rows, name, "ours"), best(rows, name, "served")
    return {
        "detector": name,
        "reference_best": ref and ref["mode"], "reference_images_per_s": ref and ref["images_per_s"],
        "ours_best": ours and ours["mode"], "ours_images_per_s": ours and ours["images_per_s"],
        "served_best": served and served["mode"], "served_images_per_s": served and served["images_per_s"],
        "served_p50_ms": served and served["p50_ms"], "served_p99_ms": served and served["p99_ms"],
        "served_vs_reference": ratio(served and served["images_per_s"], ref and ref["images_per_s"]),
        "served_vs_reference_b1": ratio(served and served["images_per_s"], ref_b1 and ref_b1["images_per_s"]),
        "served_vs_ours": ratio(served and served["images_per_s"], ours and ours["images_per_s"]),
        "triton_overhead": overhead(served and served["images_per_s"], ours and ours["images_per_s"]),
        "of_peak": served and served["of_peak"],
    }


def targets(summary: dict, agree: dict, int8: bool, options: bool = False) -> list[dict]:
    """The issue's targets against this run's figures: met or missed, and by how much. options: the server
    serves engine/precision options (PRECISION=...) beyond FP32 and INT8=1."""
    goal = TARGET_OPTIONS if options else TARGET_INT8 if int8 else TARGET_FP32
    mode = "engine/precision options" if options else "INT8" if int8 else "FP32"
    speed, acc = summary["served_vs_reference"], agree.get("max_abs_prob")
    out = [
        {"target": f"{mode}: served ensemble vs the references run one after another (batched) ≥ {goal['speedup']:.1f}×",
         "value": speed, "goal": goal["speedup"], "met": speed is not None and speed >= goal["speedup"],
         "fmt": "x"},
        {"target": f"{mode}: max |Δprob| served vs reference ≤ {goal['max_abs_prob']:.0e}", "value": acc,
         "goal": goal["max_abs_prob"], "met": acc is not None and acc <= goal["max_abs_prob"], "fmt": "sci"},
        {"target": f"Triton overhead over in-process ONNX Runtime at the best concurrency ≤ {TARGET_OVERHEAD:.0%}",
         "value": summary["triton_overhead"], "goal": TARGET_OVERHEAD,
         "met": summary["triton_overhead"] is not None and summary["triton_overhead"] <= TARGET_OVERHEAD,
         "fmt": "pct"},
    ]
    for t in out:
        if t["value"] is None:
            t["by"] = None
        elif t["fmt"] == "x":
            t["by"] = t["value"] / t["goal"] - 1.0  # +: ahead of the goal
        elif t["fmt"] == "sci":
            t["by"] = t["goal"] / t["value"] - 1.0 if t["value"] else float("inf")
        else:
            t["by"] = t["goal"] - t["value"]
    return out



def target_rows(items: list[dict]) -> list[dict]:
    from genguard.benchmarks.report import fmt

    rows = []
    for t in items:
        status = "—" if t["value"] is None else ("met" if t["met"] else "MISSED")
        if t["value"] is not None and t["by"] is not None and math.isfinite(t["by"]):
            if t["fmt"] == "x":
                status += f" ({abs(t['by']):.0%} {'ahead' if t['by'] >= 0 else 'short'})"
            elif t["fmt"] == "pct":
                status += f" ({abs(t['by']) * 100:.1f} points {'to spare' if t['by'] >= 0 else 'over'})"
            elif t["fmt"] == "sci" and not t["met"]:
                status += f" ({t['value'] / t['goal']:.1f}× the bound)"
        rows.append({"target": t["target"], "shown": fmt(t["value"], t["fmt"]), "status": status})
    return rows


