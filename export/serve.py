"""`make serve`: export what the build lacks or holds differently from what was asked, render the cpu
repository, start tritonserver (genguard.server) and the REST gateway next to it, and wait until ready.

With `--precision best` (make serve PRECISION=best) it first measures the CPU options of the detectors whose
records are missing or stale (genguard.export.cpu_options.best_choices; --measure no: it does not, and those
detectors serve ort-fp32), then prints, per detector, the option `best` chose and why.

export_stale() is the one place that decides what to export before serving; `make cpu-options` uses it too.

It lives in the export package because it exports and renders; genguard.server, the runtime launcher,
knows nothing of either. `make stop` is genguard.server's `stop`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from genguard import cpus, engines, specs
from genguard.export.__main__ import UsageError, only_detectors, stale_exports
from genguard.export.cpu_options import best_choices, parse_precision
from genguard.export.__main__ import main as export_main
from genguard.export.repository import CpuOptions, RepositoryError, render
from genguard.fusion import FusionConfig
from genguard.provenance import ProvenanceConfig
from genguard.server import (GATEWAY_PORT, GRPC_PORT, HOST, HTTP_PORT, METRICS_PORT, Ports, is_ready,
                             serve_gateway, start, stop_pid, wait_ready)


def export_arguments(args) -> list[str]:
    """`python -m genguard.export` arguments for what `make serve` was asked to serve."""
    argv = ["--weights", args.weights, "--build", str(args.build)]
    if args.detectors:
        argv += ["--detectors", args.detectors]
    for flag, values in (("--checkpoint", args.checkpoint), ("--labels", args.labels), ("--revision", args.revision)):
        for value in values:
            argv += [flag, value]
    if getattr(args, "tiny", False):  # tests: reduced-depth random weights
        argv.append("--tiny")
    return argv


def export_stale(args, who: str = "make serve") -> tuple[list[str], int]:
    """Export what the build lacks or holds differently from what `args` asks for (weights kind, checkpoints,
    revisions, label order, detectors), saying so. Returns (the detectors asked for, exit status: 0, or 1/2
    with the reason printed)."""
    argv = export_arguments(args)
    try:
        wanted, stale = stale_exports(argv)
    except UsageError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return [], 2
    if stale:  # re-export what the build lacks or holds differently from what was asked
        print(f"{who}: exporting {', '.join(stale)} (WEIGHTS={args.weights}): the build lacks them or holds other "
              "weights or labels ...", file=sys.stderr, flush=True)
        if export_main(only_detectors(argv, stale)) != 0:
            return [], 1
    else:
        print(f"{who}: the build holds current exports of {', '.join(wanted)}", file=sys.stderr, flush=True)
    return wanted, 0


def serve(args) -> int:
    build = Path(args.build)
    pidfile, log_file = build / "tritonserver.pid", build / "tritonserver.log"
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    if pidfile.exists() or is_ready(ports):
        print(f"a server is already running (pid file {pidfile} or port {ports.http} answers): make stop first",
              file=sys.stderr)
        return 1
    wanted, status = export_stale(args)
    if status:
        return status
    try:
        try:
            precision = parse_precision(args.precision, list(wanted or specs.DETECTORS))
        except engines.OptionError as exc:
            print(f"make serve PRECISION: {exc}", file=sys.stderr)
            return 2
        best = [name for name, option in precision.items() if option == "best"]
        if best:  # measured first where the records are missing or stale; then one line per detector
            choices = best_choices(build, best, measure=args.measure == "auto", threads=args.ort_threads)
            print(f"PRECISION=best on {cpus.describe()}:")
            for choice in choices.values():
                print(f"  {choice.line()}")
            print("", flush=True)
        cpu = CpuOptions(optimization=args.ort_optimization, intra_op_threads=args.ort_threads, int8=args.int8,
                         precision=tuple(precision.items()), arena=args.arena)
        fusion = None
        if getattr(args, "fusion", None):
            try:  # e.g. `genguard calibrate`'s output
                fusion = FusionConfig.from_json(Path(args.fusion).read_text())
            except (OSError, ValueError, TypeError) as exc:
                print(f"fusion configuration {args.fusion}: {exc}", file=sys.stderr)
                return 1
        extra = {"fusion": fusion} if fusion else {}
        if getattr(args, "trust_anchors", None) or getattr(args, "provenance", None):
            try:  # JSON of ProvenanceConfig fields; a PEM bundle of C2PA trust anchors
                provenance = (ProvenanceConfig.from_json(Path(args.provenance).read_text()) if args.provenance
                              else ProvenanceConfig())
                if args.trust_anchors:
                    provenance = dataclasses.replace(provenance, trust_anchors=Path(args.trust_anchors).read_text())
            except (OSError, ValueError, TypeError) as exc:
                print(f"provenance configuration: {exc}", file=sys.stderr)
                return 1
            extra["provenance"] = provenance
        if getattr(args, "explain", False):
            from genguard.export.explain import export_missing

            export_missing(build, wanted)
            extra["explain"] = True
        repository = render("cpu", build, cpu=cpu, detectors=wanted, **extra)
    except RepositoryError as exc:
        print(exc, file=sys.stderr)
        return 1
    log_file.unlink(missing_ok=True)
    process = start(repository, build / "tritonserver", ports=ports, log_file=log_file)
    pidfile.write_text(f"{process.pid}\n")
    try:
        wait_ready(process, ports, timeout=args.timeout, log_file=log_file)
    except RuntimeError as exc:
        stop_pid(process.pid)
        pidfile.unlink(missing_ok=True)
        print(f"GenGuard failed to start: {exc}", file=sys.stderr)
        return 1
    gateway = serve_gateway(build, ports, args.gateway_port)
    random = "" if args.weights == "real" else "\n  !!! RANDOM WEIGHTS: answers are meaningless (plumbing only) !!!"
    print(f"""GenGuard is ready (pid {process.pid}, log {log_file}, repository {repository}){random}
  HTTP    http://{HOST}:{ports.http}   gRPC {HOST}:{ports.grpc}   metrics http://{HOST}:{ports.metrics}/metrics{gateway}
  query:  {Path(sys.executable).parent}/genguard detect path/to/image.jpg
  stop:   make stop""")
    return 0


def main(argv=None) -> int:
    serve_p = argparse.ArgumentParser(prog="python -m genguard.export.serve", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    serve_p.add_argument("--build", default="build")
    serve_p.add_argument("--weights", choices=("real", "random"), default="real")
    serve_p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    serve_p.add_argument("--labels", action="append", default=[], metavar="NAME=HEAD:L0,L1,...")
    serve_p.add_argument("--detectors", default="", help="comma-separated subset to serve (default: all that apply)")
    serve_p.add_argument("--revision", action="append", default=[], metavar="NAME=REV",
                         help="pin a hub checkpoint's revision (commit, branch or tag)")
    serve_p.add_argument("--http-port", type=int, default=HTTP_PORT)
    serve_p.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    serve_p.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    serve_p.add_argument("--timeout", type=float, default=300)
    serve_p.add_argument("--gateway-port", type=int, default=GATEWAY_PORT,
                         help=f"REST gateway on {HOST}:PORT next to Triton (0: none)")
    serve_p.add_argument("--int8", action="store_true",
                         help="serve the INT8 models (make quantize's record; = --precision ort-int8 on that record)")
    serve_p.add_argument("--precision", action="append", default=[], metavar="[NAME=]OPTION",
                         help=f"CPU engine/precision per detector: {', '.join(engines.OPTIONS)}, or best "
                              "(repeatable; a plain value: every detector)")
    serve_p.add_argument("--measure", choices=("auto", "no"), default="auto",
                         help="with --precision best: measure the CPU options first where their records are missing "
                              "or stale (auto), or serve ort-fp32 for those detectors, saying so (no)")
    serve_p.add_argument("--arena", choices=("auto", "on", "off"), default="auto",
                          help="ONNX Runtime's CPU memory arena (auto: off for EVA02-448, where it holds GBs)")
    serve_p.add_argument("--explain", action="store_true",
                         help="also serve the genguard_explain ensemble (exports the CNNs' explain.onnx if missing)")
    serve_p.add_argument("--fusion", default=None, metavar="FILE",
                         help="JSON of FusionConfig fields (e.g. written by `genguard calibrate`)")
    serve_p.add_argument("--trust-anchors", default=None, metavar="PEM",
                         help="C2PA trust anchors (PEM bundle); without: valid manifests are 'untrusted'")
    serve_p.add_argument("--provenance", default=None, metavar="FILE",
                         help="JSON of ProvenanceConfig fields (full_text, excerpt_chars, limits, enabled)")
    serve_p.add_argument("--ort-optimization", default="all", choices=("disable", "basic", "extended", "all"))
    serve_p.add_argument("--ort-threads", type=int, default=0, help="intra-op threads per detector (0: ORT default)")
    return serve(serve_p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
