"""Memory against speed per detector: ONNX Runtime's CPU arena on and off, and OpenVINO.

  python -m genguard.benchmarks.arena --build build [--detectors a,b] [--batches 1,8] [--runs 8]

Each configuration runs in a fresh process (spawned, so one's freed-but-kept memory never counts for the
next): resident memory (VmRSS) after loading, after runs at each batch size, the process's peak (VmHWM),
and images/s at each batch. The arena keeps the largest buffers a run needed for the next run; without
it they go back to the allocator after every run. Writes results/arena-<tag>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from genguard import engines, specs
from genguard.export import layout

CONFIGS = {  # label -> (option, arena)
    "ort-fp32 arena on": ("ort-fp32", True),
    "ort-fp32 arena off": ("ort-fp32", False),
    "openvino-fp32": ("openvino-fp32", True),
    "openvino-bf16": ("openvino-bf16", True),
}


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from VmRSS (Linux >= 4.0)
    except OSError:
        pass


def _measure(path: str, option: str, arena: bool, shape: tuple, batches: list[int], runs: int, queue) -> None:
    try:
        base = status_kib("VmRSS")
        engine = engines.open_engine(option, path, arena=arena, spinning=False)
        loaded = status_kib("VmRSS")
        rng = np.random.default_rng(0)
        out = {"rss_start_mb": base / 1024, "rss_loaded_mb": loaded / 1024, "batches": {}}
        for b in batches:
            x = rng.standard_normal((b, *shape)).astype(np.float32)
            reset_peak()  # this batch size's own peak (the arena keeps what earlier ones grew)
            engine.run(None, {"pixels": x})  # warm-up: first run at a shape allocates
            t0 = time.perf_counter()
            for _ in range(runs):
                engine.run(None, {"pixels": x})
            seconds = time.perf_counter() - t0
            out["batches"][b] = {"images_per_s": b * runs / seconds if runs else None,
                                 "rss_after_mb": status_kib("VmRSS") / 1024, "peak_mb": status_kib("VmHWM") / 1024}
        out["peak_mb"] = status_kib("VmHWM") / 1024
        queue.put(out)
    except Exception as exc:  # reported in the table, not a crash of the whole run
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def measure(path: Path, option: str, arena: bool, shape: tuple, batches: list[int], runs: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_measure, args=(str(path), option, arena, shape, batches, runs, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.arena", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "every exported one")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runs", type=int, default=8, help="timed runs per batch size (0: memory only)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="", help="output name suffix (default: the build folder's name)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b]
    names = layout.chosen(args.detectors, lambda: layout.exported(args.build, engines.FP32_FILE))
    rows = []
    for name in names:
        path = layout.onnx_folder(args.build, name) / engines.FP32_FILE
        shape = specs.get(name).input.shape
        for label, (option, arena) in CONFIGS.items():
            if label not in args.configs.split(","):
                continue
            if engines.missing_instructions(engines.get(option)):
                continue
            print(f"{name}: {label} ...", file=sys.stderr, flush=True)
            r = measure(path, option, arena, tuple(shape), batches, args.runs)
            row = {"detector": name, "config": label, **{k: v for k, v in r.items() if k != "batches"}}
            for b, v in r.get("batches", {}).items():
                row[f"b{b}_images_per_s"] = v["images_per_s"]
                row[f"b{b}_rss_mb"] = v["rss_after_mb"]
                row[f"b{b}_peak_mb"] = v["peak_mb"]
            if "rss_loaded_mb" in r:
                row["growth_mb"] = max(v["rss_after_mb"] for v in r["batches"].values()) - r["rss_loaded_mb"]
            rows.append(row)
    from genguard.benchmarks.machine import describe
    from genguard.benchmarks.report import markdown_table, text_table

    cols = [("detector", "detector", "sig3"), ("config", "engine", "sig3"), ("rss_loaded_mb", "RSS loaded MB", "sig3")]
    for b in batches:
        cols += [(f"b{b}_rss_mb", f"RSS after b{b} MB", "sig3"), (f"b{b}_peak_mb", f"peak b{b} MB", "sig3")]
        if args.runs:
            cols.append((f"b{b}_images_per_s", f"b{b} img/s", "sig3"))
    cols += [("growth_mb", "growth MB", "sig3"), ("peak_mb", "peak MB", "sig3"), ("error", "error", "sig3")]
    print(text_table(rows, cols))
    tag = args.tag or args.build.resolve().name
    args.out.mkdir(parents=True, exist_ok=True)
    info = describe()
    command = "python -m genguard.benchmarks.arena " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# Memory against speed per detector — {tag}\n\nCommand: `{command}`  \n"
            f"Each row is a fresh process: random input, {args.runs} timed runs per batch size after one warm-up; "
            "RSS after loading and after each batch size's runs (cumulative), peak = VmHWM. growth = the most "
            f"RSS grew over the loaded model; peak bN = VmHWM during batch size N's runs (reset before each). Load average at the end {[round(x, 2) for x in os.getloadavg()]}.\n\n"
            + markdown_table(rows, cols) + "\n")
    (args.out / f"arena-{tag}.md").write_text(text)
    (args.out / f"arena-{tag}.json").write_text(json.dumps({"command": command, "machine": info, "rows": rows},
                                                           indent=1, default=str) + "\n")
    print(f"written: {args.out}/arena-{tag}.md, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
