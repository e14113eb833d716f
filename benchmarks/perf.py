"""make bench: perf_analyzer concurrency sweeps over HTTP and gRPC against a running GenGuard server.

  python -m genguard.benchmarks.perf --build build [--models genguard,sumsub_sd] [--images 8] [--quick]

For the `genguard` ensemble and each served detector, at each concurrency and over each protocol:
throughput (images/s; every request is one image) and p50/p90/p95/p99 latency as perf_analyzer measures
them client-side. Inputs are real photos (scikit-image's): the ensemble gets their encoded bytes as the
UINT8 [L] tensor it takes; a detector gets GenGuard's preprocessing of the same photos (FP32 [3, H, W]).
Windows are sized per model from a warm-up (count windows of about --window-seconds each), and a noisy
machine is allowed 25 % spread between windows. Writes benchmarks/results/perf-<tag>.{csv,md,png,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from genguard import protocol, specs
from genguard.protocol import GRPC_PORT, HOST, HTTP_PORT
from genguard.benchmarks import machine, perf_analyzer
from genguard.benchmarks.compare import PIPELINE_MODELS, log, sample_images
from genguard.benchmarks.report import markdown_table, plot_latency_throughput, text_table, write_csv

COLUMNS = [("model", "model", "sig3"), ("protocol", "protocol", "sig3"), ("concurrency", "concurrency", "int"),
           ("throughput", "images/s", "sig3"), ("p50_ms", "p50 ms", "sig3"), ("p90_ms", "p90 ms", "sig3"),
           ("p99_ms", "p99 ms", "sig3"), ("server_queue_ms", "server queue ms", "sig3"),
           ("window_requests", "requests/window", "int"), ("best", "best", "sig3")]


def served_models(http_url: str) -> tuple[str, list[str], dict[str, dict]]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    if not client.is_server_ready():
        raise RuntimeError(f"no ready server at {http_url}: start one with `make serve` (WEIGHTS=random works)")
    version = client.get_server_metadata().get("version", "?")
    names = [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]
    detectors = [n for n in names if n not in PIPELINE_MODELS and n in specs.DETECTORS]
    params = {n: {k: v["string_value"] for k, v in client.get_model_config(n).get("parameters", {}).items()}
              for n in detectors}
    client.close()
    models = ([protocol.ENSEMBLE] if protocol.ENSEMBLE in names else []) + detectors
    return version, models, params


def entries_for(model: str, images: list[bytes]) -> list[dict[str, np.ndarray]]:
    """perf_analyzer input entries: encoded bytes for the ensemble, our preprocessed tensors for a detector."""
    from genguard.preprocess import preprocess_bytes

    if model == protocol.ENSEMBLE:
        return perf_analyzer.image_entries(images, protocol.INPUT)
    spec = specs.get(model).input
    return [{protocol.DETECTOR_INPUT: preprocess_bytes(b, {"x": spec})[1]["x"]} for b in images]


def warm_latency(model: str, url: str, entries: list[dict[str, np.ndarray]]) -> float:
    """Send every entry once (warm-up: first runs allocate) and return the mean latency in seconds."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    times = []
    for entry in entries:
        tensors = []
        for name, array in entry.items():
            batch = array[None]
            t = grpcclient.InferInput(name, list(batch.shape), "UINT8" if array.dtype == np.uint8 else "FP32")
            t.set_data_from_numpy(batch)
            tensors.append(t)
        t0 = time.perf_counter()
        client.infer(model, tensors)
        times.append(time.perf_counter() - t0)
    client.close()
    return float(np.mean(times[1:] if len(times) > 1 else times))


def window_requests(latency_s: float, concurrency: int, window_s: float, cores: int, entries: int = 1,
                    most: int = 500) -> int:
    """Requests per count window so that one window lasts about `window_s` (the server works on at most
    ~`cores` requests at once, so throughput grows with concurrency only up to there), rounded up to a
    whole number of passes over the `entries` images so every window sends the same mix."""
    wanted = max(3, concurrency, math.ceil(window_s / latency_s * min(concurrency, max(1, cores))))
    if entries > 1 and wanted < most:
        wanted = math.ceil(wanted / entries) * entries
    return int(min(most, wanted))


def measure(pa, model: str, url: str, proto: str, concurrency: int, input_path: Path, workdir: Path,
            requests: int, fixed: bool, fixed_windows: int = 3) -> perf_analyzer.Measurement:
    """perf_analyzer's stability-checked count windows; if a noisy machine never settles, one fixed run
    of three windows' worth of requests, timed from its per-request record, stands in (and says so)."""
    if not fixed:
        try:
            m = perf_analyzer.run(pa, model, url, proto, concurrency, input_path, workdir, window_requests=requests,
                                  stability=25, max_trials=5)
            m.extra["method"] = "stable windows"
            return m
        except RuntimeError as exc:
            log(f"  {model} {proto} c{concurrency}: no stable measurement ({str(exc).splitlines()[-1][:120]}); "
                "timing a fixed run instead")
    t = perf_analyzer.run_fixed(pa, model, url, proto, concurrency, input_path, workdir, requests * fixed_windows)
    lat = np.asarray(t.latencies) * 1000
    return perf_analyzer.Measurement(model, proto, concurrency, t.images_per_s, *(float(np.percentile(lat, q))
                                     for q in (50, 90, 95, 99)), extra={"method": "fixed run"})


def markdown(result: dict) -> str:
    parts = [
        f"# GenGuard perf_analyzer sweep — {result['tag']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Run: {result['started']} – {result['finished']} ({result['minutes']:.1f} min); server: tritonserver "
        f"{result['server_version']} serving {result['options']}; perf_analyzer {result['perf_analyzer']}; "
        f"{result['images']} real photos (scikit-image) cycled as the requests, batch 1 per request.",
        "",
        "## Machine",
        "",
        machine.describe_markdown(result["machine"]),
        "",
        "## Throughput and latency",
        "",
        "Client-side latency per request (one image). The ensemble takes encoded bytes (UINT8 [L]); a detector "
        "takes GenGuard's preprocessed tensor of the same photo, so its rows are the model alone as served. "
        "`best`: the concurrency with the highest throughput per model and protocol. Plot: "
        f"`perf-{result['tag']}.png`.",
        "",
        markdown_table(result["rows"], COLUMNS),
    ]
    return "\n".join(parts) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=Path("build"), help="scratch files go to BUILD/bench/perf")
    parser.add_argument("--http-url", default=f"{HOST}:{HTTP_PORT}")
    parser.add_argument("--grpc-url", default=f"{HOST}:{GRPC_PORT}")
    parser.add_argument("--models", default="", help="comma-separated (default: genguard and every served detector)")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--images", type=int, default=8, help="real photos used as the requests (default 8)")
    parser.add_argument("--window-seconds", type=float, default=4.0, help="about how long one window lasts")
    parser.add_argument("--fixed", action="store_true",
                        help="skip perf_analyzer's stability windows: time a fixed number of requests")
    parser.add_argument("--quick", action="store_true", help="smoke run: --images 2 --concurrency 1,2, short "
                                                              "fixed runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="", help="output name suffix (default: fp32 or int8, from the server)")
    parser.add_argument("--perf-analyzer", default=None, help="a perf_analyzer binary (default: fetch 2.51.0)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.concurrency, args.window_seconds, args.fixed = min(args.images, 2), "1,2", 0.25, True
    args.max_requests = 12 if args.quick else 500
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.protocols = [p for p in args.protocols.split(",") if p]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m genguard.benchmarks.perf " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    try:
        pa = perf_analyzer.obtain(args.perf_analyzer)
        version, models, params = served_models(args.http_url)
    except (perf_analyzer.PerfAnalyzerUnavailable, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # tritonclient's own error types for a refused connection
        print(f"bench: cannot reach the server at {args.http_url}: {exc}\nstart one with `make serve`", file=sys.stderr)
        return 1
    if args.models:
        wanted = args.models.split(",")
        unknown = [m for m in wanted if m not in models]
        if unknown:
            print(f"bench: the server serves no {unknown} (it serves {models})", file=sys.stderr)
            return 1
        models = wanted
    onnx_files = {p.get("onnx_file", "model.onnx") for p in params.values()}
    tag = args.tag or ("int8" if "model.int8.onnx" in onnx_files else "fp32")
    options = ", ".join(sorted({f"{p.get('onnx_file')} opt={p.get('optimization')} threads="
                                f"{p.get('intra_op_threads', '0') if p.get('intra_op_threads', '0') != '0' else 'default'}"
                                for p in params.values()}))
    info = machine.describe()
    workdir = args.build / "bench" / "perf"
    images = list(sample_images(args.images).values())
    urls = {"http": args.http_url, "grpc": args.grpc_url}
    rows = []
    log(f"tritonserver {version} at {args.http_url}; perf_analyzer {pa.version}; models: {', '.join(models)}")
    for model in models:
        entries = entries_for(model, images)
        input_path = perf_analyzer.write_input_data(workdir / f"{model}.json", entries)
        latency = warm_latency(model, args.grpc_url, entries)
        log(f"{model}: {latency * 1000:.1f} ms per request after warm-up")
        for proto in args.protocols:
            for c in args.concurrency:
                n = window_requests(latency, c, args.window_seconds, info["usable_cpus"] or 1, len(entries),
                                    args.max_requests)
                m = measure(pa, model, urls[proto], proto, c, input_path, workdir, n, args.fixed,
                            1 if args.quick else 3)
                log(f"  {model} {proto} c{c}: {m.throughput:.2f} img/s, p50 {m.p50_ms:.1f} ms, p99 {m.p99_ms:.1f} ms "
                    f"({m.extra.get('method')}, {n} requests/window)")
                rows.append({"model": model, "protocol": proto, "concurrency": c, "throughput": m.throughput,
                             "p50_ms": m.p50_ms, "p90_ms": m.p90_ms, "p95_ms": m.p95_ms, "p99_ms": m.p99_ms,
                             "server_queue_ms": m.server_queue_ms, "server_compute_ms": m.server_compute_ms,
                             "window_requests": n, "method": m.extra.get("method")})
    for model in models:
        for proto in args.protocols:
            group = [r for r in rows if r["model"] == model and r["protocol"] == proto]
            if group:
                max(group, key=lambda r: r["throughput"])["best"] = "◀"
    finished = time.time()
    result = {"tag": tag, "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
              "finished": time.strftime("%H:%M:%S", time.localtime(finished)), "minutes": (finished - started) / 60,
              "server_version": version, "perf_analyzer": pa.version, "options": options, "images": len(images),
              "machine": info, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"perf-{tag}.csv", rows, [c[0] for c in COLUMNS])
    (args.out / f"perf-{tag}.md").write_text(markdown(result))
    (args.out / f"perf-{tag}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    series = {m: [r for r in rows if r["model"] == m] for m in models}
    plot = plot_latency_throughput(args.out / f"perf-{tag}.png", series,
                                   f"GenGuard on {info['cpu']} ({info['usable_cpus']} CPUs), {tag}: "
                                   "throughput vs latency, by concurrency")
    print()
    print(text_table(rows, COLUMNS))
    print(f"\nwritten: {args.out}/perf-{tag}.csv, .md, .json" + (", .png" if plot else "")
          + f" ({result['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
