"""The report: columns, the Markdown document, CSV and JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from genguard.benchmarks import machine
from genguard.benchmarks.compare.summary import target_rows
from genguard.benchmarks.report import markdown_table, write_csv

DETECTOR_COLUMNS = [("detector", "detector", "sig3"), ("mode", "mode", "sig3"), ("images_per_s", "images/s", "sig3"),
                    ("p50_ms", "p50 ms", "sig3"), ("p99_ms", "p99 ms", "sig3"),
                    ("gflop_per_image", "GFLOP/img", "sig3"), ("achieved_gflops", "GFLOP/s", "sig3"),
                    ("of_peak", "of peak", "pct")]
SUMMARY_COLUMNS = [("detector", "detector", "sig3"), ("reference_best", "(a) best", "sig3"),
                   ("reference_images_per_s", "(a) img/s", "sig3"), ("ours_best", "(b) best", "sig3"),
                   ("ours_images_per_s", "(b) img/s", "sig3"), ("served_best", "(c) best", "sig3"),
                   ("served_images_per_s", "(c) img/s", "sig3"), ("served_p50_ms", "(c) p50 ms", "sig3"),
                   ("served_p99_ms", "(c) p99 ms", "sig3"), ("served_vs_reference", "(c)/(a)", "x"),
                   ("served_vs_reference_b1", "(c)/(a) b1", "x"), ("served_vs_ours", "(c)/(b)", "x"),
                   ("max_abs_prob", "max |Δprob| (c) vs (a)", "sci"), ("top1_agreement", "top-1 agree", "pct"),
                   ("of_peak", "(c) of peak", "pct")]
OPTION_COLUMNS = [("detector", "detector", "sig3"), ("option", "option", "sig3"), ("images_per_s", "images/s", "sig3"),
                  ("vs_reference", "vs (a)", "x"), ("speedup", "vs FP32 (opt=all)", "x"),
                  ("max_abs_prob", "max |Δprob| vs (a)", "sci"), ("top1_agreement", "top-1 agree", "pct"),
                  ("peak_mb", "process peak MB", "sig3"), ("note", "note", "sig3")]


def memory_line(mem: dict) -> str:
    gib = lambda b: "—" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    return (f"Memory: bench-compare's peak {gib(mem.get('process_peak_bytes'))} (limit {gib(mem.get('limit_bytes'))}), "
            f"its RSS at the end {gib(mem.get('process_rss_bytes'))}; the served stack (tritonserver + its python-backend "
            f"stubs, sum of PSS) {gib(mem.get('served_stack_pss_bytes'))}.")
PRE_COLUMNS = [("images_set", "images", "sig3"), ("detector", "input of", "sig3"),
               ("reference_images_per_s", "reference img/s", "sig3"), ("ours_images_per_s", "ours img/s", "sig3"),
               ("reference_p50_ms", "reference p50 ms", "sig3"), ("ours_p50_ms", "ours p50 ms", "sig3"),
               ("speedup", "ours/reference", "x")]
TARGET_COLUMNS = [("target", "target", "sig3"), ("shown", "this run", "sig3"), ("status", "met?", "sig3")]



SERVED_OPTION_COLUMNS = [("detector", "detector", "sig3"), ("option", "CPU option served", "sig3"),
                         ("why", "why", "sig3")]


def served_options_section(result: dict) -> list[str]:
    """Which engine/precision each detector ran on this CPU and why: `PRECISION=best`'s reason (measured N× FP32,
    no record, every faster option outside the budget, stale records), or that it was asked for or the default."""
    rows = result["served"].get("cpu_options") or []
    if not rows:
        return []
    best = [r for r in rows if r.get("asked") == "best"]
    intro = (f"`PRECISION=best` chose these on {result['served'].get('best_cpu') or 'the server CPU'} (the CPU the "
             "repository was rendered on), from `make cpu-options` records measured there:" if best else
             "`PRECISION=best` was not asked for; the options served:")
    return ["## CPU options served", "", intro, "", markdown_table(rows, SERVED_OPTION_COLUMNS), ""]


def markdown(result: dict) -> str:
    from genguard.benchmarks.report import fmt

    args, B = result["args"], result["args"]["batch"]
    served = result["served"]
    opts = served["options"]
    parts = [
        f"# GenGuard vs the reference pipelines — {result['tag']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Run: {result['started']} – {result['finished']} ({result['minutes']:.1f} min); "
        f"server: tritonserver {served['version']} serving {opts}; weights: {', '.join(sorted(set(served['weights'])))}; "
        f"{args['images']} real photos (scikit-image), batch B={B}, {args['rounds']} interleaved round(s) for the "
        f"ensemble, {args['detector_rounds']} per detector; load average at the end "
        f"{result['machine'].get('load_average_at_end')}.",
        "",
        "## Machine",
        "",
        machine.describe_markdown(result["machine"], result["peak"]),
        "",
        *served_options_section(result),
        "## Targets",
        "",
        markdown_table(target_rows(result["targets"]), TARGET_COLUMNS),
        "",
        "## Summary: served (c) vs reference (a) and in-process (b)",
        "",
        "(a) the seed's card pipeline: its preprocessing library + PyTorch eager; (b) GenGuard's preprocessing + "
        "ONNX Runtime in-process; (c) through Triton (perf_analyzer, gRPC, same requests). Best mode of each; "
        "(c)/(a) is against the reference's faster mode, (c)/(a) b1 against one image at a time. Detector rows are "
        "the model alone (the same tensors in); the ensemble row is encoded bytes in, answers out (the references "
        "run one after another). Agreement: (c)'s answers (through the whole ensemble) vs (a)'s on the same images.",
        "",
        markdown_table(result["summary"], SUMMARY_COLUMNS),
        "",
        f"Fused `is_ai_generated`: max |Δ| served vs reference {fmt(result['agreement'].get('fused_max_abs'), 'sci')}, "
        f"verdict agreement {fmt(result['agreement'].get('verdict_agreement'), 'pct')}.",
        "",
        "## Every mode",
        "",
        f"Latency is per request: one image (b1, served) or one batch of {B} (bB). GFLOP/img counts MatMul/Gemm/Conv "
        "(2 per multiply-add); of peak = achieved GFLOP/s over the FP32 matrix-multiply peak measured above.",
        "",
        markdown_table(result["ensemble"] + result["detectors"], DETECTOR_COLUMNS),
    ]
    if result["options"]:
        parts += ["", "## CPU speed options (in-process, batched) and their accuracy cost", "",
                  "Off by default; switches: `make serve ORT_OPT=basic|extended|all ORT_THREADS=N INT8=1` and "
                  "`PRECISION=best` or `PRECISION=\"name=option ...\"` for the engine/precision options (their files "
                  "and accuracy records come from `make quantize` and `make cpu-options`). One option's session is "
                  "alive at a time, without ORT's arena. vs (a): against the reference pipeline's faster mode on the "
                  "same tensors; max |Δprob| is against (a)'s probabilities on the same images; process peak: "
                  "bench-compare's resident peak while that option ran (everything else it holds included). The "
                  "`ensemble (models)` rows add up the detectors' model times (the references' likewise), with FP32 "
                  "and with each detector's fastest option whose record is within budget.", "",
                  markdown_table(result["options"], OPTION_COLUMNS)]
    if result.get("memory"):
        parts += ["", "## Memory", "", memory_line(result["memory"])]
    if result["preprocessing"]:
        parts += ["", "## Preprocessing alone: decode + resize + normalise", "",
                  "Per image, single thread: each reference library's transform after `Image.open(...).convert('RGB')` "
                  "vs GenGuard's Pillow/numpy (bit-identical output). `all detectors`: every reference in turn vs one "
                  "decode shared by every input spec (what the `preprocess` model does).", "",
                  markdown_table(result["preprocessing"], PRE_COLUMNS)]
    if result.get("notes"):
        parts += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(parts) + "\n"



def write(result: dict, out: Path) -> None:
    tag = result["tag"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare-{tag}.md").write_text(markdown(result))
    rows = result["ensemble"] + result["detectors"] + result["options"] + result["preprocessing"]
    write_csv(out / f"compare-{tag}.csv", rows, ["table", "detector", "mode", "option", "images_set", "images",
                                                   "seconds", "images_per_s", "p50_ms", "p99_ms"])
    (out / f"compare-{tag}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
