"""make bench-compare: GenGuard side by side with the seeds' own pipelines, same machine, same run.

  python -m genguard.benchmarks.compare --build build [--images 8] [--detectors a,b] [--quick]

Against a running `make serve` (any options: FP32 or INT8=1, ORT_OPT, ORT_THREADS — read back from the
served configs), on the same real photos and the same checkpoints (each served detector's config names
its checkpoint; the reference pipelines load that one):

  (a) reference  each seed's pipeline as its card writes it: the card's preprocessing library + PyTorch
                 eager, one image at a time (b1) and batched (bB);
  (b) ours       GenGuard's preprocessing + ONNX Runtime in-process, with the served ONNX file and options;
  (c) served     through Triton (perf_analyzer, exactly the same requests), at each concurrency.

Tables (printed, and written to benchmarks/results/compare-<tag>.{md,csv,json}):
  1. per detector, model only (the same tensors in): images/s, p50/p99 latency, FLOPs/image and
     achieved/peak of the machine's matrix-multiply peak measured in this run;
  2. the full ensemble, encoded bytes in (the references run one after another): images/s, p50/p99,
     the ratios (c)/(a) and (c)/(b), and how (c)'s answers agree with (a)'s;
  3. CPU speed options in-process, each with its accuracy cost (ORT optimisation levels, threads, INT8);
  4. preprocessing alone: decode + resize of our preprocessing vs each reference library.
Modes are measured in turn on the same work, interleaved round by round (--rounds), because this machine
is shared and its speed drifts: ratios within one run are what to trust, absolute figures move ±15 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from genguard.benchmarks import machine, perf_analyzer
from genguard.benchmarks.compare import detectors as detector_table
from genguard.benchmarks.compare import ensemble as ensemble_table
from genguard.benchmarks.compare import options as options_table
from genguard.benchmarks.compare import preprocessing as preprocessing_table
from genguard.benchmarks.compare.bench import Bench
from genguard.benchmarks.compare.common import log
from genguard.benchmarks.compare import memory
from genguard.benchmarks.compare.loading import (discover, load_detector, sample_images, served_options, served_tag,
                                                 serves_int8, serves_options)
from genguard.benchmarks.compare.summary import best_peak, summarize, target_rows, targets
from genguard.benchmarks.compare.writing import (DETECTOR_COLUMNS, OPTION_COLUMNS, PRE_COLUMNS, SUMMARY_COLUMNS,
                                                 TARGET_COLUMNS, memory_line, write)
from genguard.benchmarks.report import ratio, text_table
from genguard.protocol import GRPC_PORT, HOST, HTTP_PORT


PEAK_LIMIT_BYTES = 12 * 2**30  # issue 20: bench-compare must fit next to `make serve` on a 24 GiB machine


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=Path("build"), help="the build the server was started from")
    parser.add_argument("--http-url", default=f"{HOST}:{HTTP_PORT}")
    parser.add_argument("--grpc-url", default=f"{HOST}:{GRPC_PORT}")
    parser.add_argument("--images", type=int, default=8, help="real photos per mode (default 8)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched modes (default 8)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds of the ensemble comparison (default 2)")
    parser.add_argument("--detector-rounds", type=int, default=1,
                        help="interleaved rounds of each detector's comparison (default 1)")
    parser.add_argument("--detectors", default="", help="comma-separated subset for the detector tables "
                                                        "(the ensemble row always runs every served detector)")
    parser.add_argument("--options-rounds", type=int, default=2,
                        help="interleaved rounds of the speed-options table (default 2)")
    parser.add_argument("--concurrency", default="1,2,4", help="served ensemble concurrencies (default 1,2,4)")
    parser.add_argument("--detector-concurrency", default="1,4", help="served detector concurrencies (default 1,4)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="small models repeat the images so that each mode works at least this long")
    parser.add_argument("--no-options", action="store_true", help="skip the speed-options table")
    parser.add_argument("--no-preprocessing", action="store_true", help="skip the preprocessing table")
    parser.add_argument("--no-ensemble", action="store_true", help="skip the full-ensemble comparison")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --images 2 --batch 2 --min-seconds 0.2, no options table")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="time per matrix-multiply peak probe")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--scratch", type=Path, default=None, help="perf_analyzer inputs and logs (default BUILD/bench)")
    parser.add_argument("--tag", default="", help="output name suffix (default: from the served options)")
    parser.add_argument("--perf-analyzer", default=None, help="a perf_analyzer binary (default: fetch 2.51.0)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.min_seconds, args.no_options = min(args.images, 2), min(args.batch, 2), 0.2, True
        args.rounds = args.detector_rounds = args.options_rounds = 1
    args.batch = max(1, min(args.batch, args.images))
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.detector_concurrency = [int(c) for c in str(args.detector_concurrency).split(",") if c]
    return args



def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m genguard.benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    try:
        pa = perf_analyzer.obtain(args.perf_analyzer)
        served = discover(args.http_url, args.grpc_url)
    except (perf_analyzer.PerfAnalyzerUnavailable, RuntimeError, OSError) as exc:
        print(f"bench-compare: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # tritonclient raises its own types for refused connections
        print(f"bench-compare: cannot reach the server at {args.http_url}: {exc}\n"
              "start one with `make serve` (WEIGHTS=random works)", file=sys.stderr)
        return 1
    log(f"server {args.http_url}: tritonserver {served.version}, detectors {', '.join(served.detectors)}")
    for row in served_options(served):  # the option each detector runs, and why (PRECISION=best's reason)
        log(f"  {row['detector']}: {row['option']} — {row['why']}")
    info = machine.describe()
    log("measuring the matrix-multiply peak")
    peak = machine.matmul_peak(seconds=args.peak_seconds)
    log(machine.peak_summary(peak))
    try:
        detectors = [load_detector(n, p, args.build) for n, p in served.detectors.items()]
    except RuntimeError as exc:
        print(f"bench-compare: {exc}", file=sys.stderr)
        return 1
    images = sample_images(args.images)
    bench = Bench(args, served, detectors, images, pa)
    chosen = [d for d in detectors if not args.detectors or d.name in args.detectors.split(",")]
    tag = args.tag or served_tag(detectors)

    detector_rows, option_rows, summary, repeats, reference_ips = [], [], [], {}, {}
    ensemble_rows, agree = [], {}
    if not args.no_ensemble:
        ensemble_rows, agree = ensemble_table.rows(bench, peak)
    for det in chosen:
        rows, extra = detector_table.rows(bench, det, peak)
        detector_rows += rows
        repeats[det.name] = extra["repeat"]
    # reference probabilities for the options table: the card pipeline on the sample images
    for det in chosen if not args.no_options else []:
        from genguard.export.reference import open_rgb

        ref_probs = det.reference.probs([open_rgb(b) for b in bench.data])
        reference = [r for r in detector_rows if r["detector"] == det.name and r["mode"].startswith("reference")]
        reference_ips[det.name] = max((r["images_per_s"] for r in reference), default=None)
        option_rows += options_table.rows(bench, det, ref_probs, repeats[det.name], reference_ips[det.name])
        log(f"  process peak so far {memory.process_peak_bytes() / 2**30:.2f} GiB")
    if option_rows:
        option_rows += options_table.ensemble_rows(option_rows, reference_ips)
    pre_rows = [] if args.no_preprocessing else preprocessing_table.rows(bench)
    log("measuring the matrix-multiply peak again (the run's peak is the higher of the two)")
    peak = best_peak(peak, machine.matmul_peak(seconds=args.peak_seconds))
    log(machine.peak_summary(peak))
    for row in ensemble_rows + detector_rows:
        row["of_peak"] = ratio(row["achieved_gflops"], peak["fp32_peak_gflops"])

    all_rows = ensemble_rows + detector_rows
    names = (["ensemble"] if ensemble_rows else []) + [d.name for d in chosen]
    for name in names:
        s = summarize(all_rows, name)
        if name == "ensemble":
            s.update({"max_abs_prob": agree.get("max_abs_prob"),
                      "top1_agreement": min((v["served_vs_reference"]["top1_agreement"]
                                             for v in agree["detectors"].values()), default=None)})
        elif agree:
            s.update(agree["detectors"][name]["served_vs_reference"])
        summary.append(s)
    # Judged by what the server serves: a --tag names the output files, it doesn't choose the targets.
    target_items = (targets(summary[0], agree, serves_int8(detectors), serves_options(detectors))
                    if ensemble_rows else [])
    mem = {"process_peak_bytes": memory.process_peak_bytes(),
           "process_rss_bytes": memory.rss_bytes(), "served_stack_pss_bytes": memory.served_stack_bytes(args.http_url),
           "limit_bytes": PEAK_LIMIT_BYTES}
    target_items.append({"target": f"bench-compare's own peak memory (GiB) ≤ {PEAK_LIMIT_BYTES / 2**30:.0f} GiB",
                         "value": mem["process_peak_bytes"] / 2**30, "goal": PEAK_LIMIT_BYTES / 2**30,
                         "met": mem["process_peak_bytes"] <= PEAK_LIMIT_BYTES, "fmt": ".2f",
                         "by": None})
    finished = time.time()
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "tag": tag, "command": command, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%H:%M:%S", time.localtime(finished)), "minutes": (finished - started) / 60,
        "machine": info, "peak": peak,
        "served": {"version": served.version, "weights": [d.params.get("weights", "?") for d in detectors],
                   "options": ", ".join(sorted({f"{d.onnx.name} opt={d.optimization} threads={d.threads or 'default'}"
                                                for d in detectors})),
                   "detectors": {d.name: d.params for d in detectors},
                   "cpu_options": served_options(served), "best_cpu": served.best.get("cpu")},
        "flops": {d.name: d.flops for d in detectors}, "repeats": repeats,
        "summary": summary, "ensemble": ensemble_rows, "detectors": detector_rows, "options": option_rows,
        "preprocessing": pre_rows, "agreement": agree, "targets": target_items, "memory": mem,
    }
    write(result, args.out)
    print()
    print(text_table(target_rows(target_items), TARGET_COLUMNS) if target_items else "")
    print()
    print(text_table(summary, SUMMARY_COLUMNS))
    print()
    print(text_table(ensemble_rows + detector_rows, DETECTOR_COLUMNS))
    if option_rows:
        print()
        print(text_table(option_rows, OPTION_COLUMNS))
    if pre_rows:
        print()
        print(text_table(pre_rows, PRE_COLUMNS))
    print(f"\n{memory_line(mem)}")
    print(f"\nwritten: {args.out}/compare-{tag}.md, .csv, .json ({result['minutes']:.1f} min)")
    return 0


