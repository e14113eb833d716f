"""python -m genguard.export.repository: render a target's repository from BUILD/onnx and print where."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from genguard import engines, specs
from genguard.engines import OptionError
from genguard.export.cpu_options import parse_precision
from genguard.fusion import FusionConfig
from genguard.provenance import ProvenanceConfig

from . import __doc__ as PACKAGE_DOC
from .common import DEFAULT_MAX_BATCH, GPU_TARGETS, TARGETS, RepositoryError
from .cpu import CpuOptions
from .gpu import GpuOptions, docker_run_command
from .render import render


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.export.repository", description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cpu", choices=TARGETS)
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--out", type=Path, default=None, help="default: BUILD/model_repository/TARGET")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument("--fusion", type=Path, default=None, help="JSON file of FusionConfig fields")
    parser.add_argument("--trust-anchors", type=Path, default=None,
                        help="PEM bundle of C2PA trust anchors (default: none; valid manifests are 'untrusted')")
    parser.add_argument("--provenance", type=Path, default=None,
                        help="JSON of ProvenanceConfig fields (full_text, excerpt_chars, limits, enabled)")
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--copy", dest="copy", action="store_const", const=True, default=None,
                       help="copy model.onnx files (default for the GPU targets: a self-contained repository)")
    files.add_argument("--link", dest="copy", action="store_const", const=False,
                       help="symlink model.onnx files to BUILD/onnx (default for cpu; only where BUILD stays)")
    cpu_args = parser.add_argument_group("cpu target")
    cpu_args.add_argument("--precision", action="append", default=[], metavar="[NAME=]OPTION",
                          help=f"CPU engine/precision per detector (genguard.engines: {', '.join(engines.OPTIONS)}) or "
                               "best; a plain value: every detector")
    cpu_args.add_argument("--int8", action="store_true", help="serve model.int8.onnx on make quantize's record")
    cpu_args.add_argument("--arena", choices=("auto", "on", "off"), default="auto",
                          help="ONNX Runtime's CPU memory arena (auto: off for EVA02-448, where it holds GBs)")
    cpu_args.add_argument("--explain", action="store_true",
                          help="also render the genguard_explain ensemble (heatmaps; docs/explanations.md)")
    gpu_args = parser.add_argument_group("GPU targets (onnx-gpu, tensorrt)")
    gpu_args.add_argument("--instances", type=int, default=1, help="instances of each detector per GPU")
    gpu_args.add_argument("--gpus", default="", help="comma-separated GPU ids (default: all)")
    gpu_args.add_argument("--opt-batch", type=int, default=0, help="TensorRT profile opt batch (default: max)")
    gpu_args.add_argument("--verify", choices=("header", "decode"), default="header",
                          help="validate step: header checks only, or also a full CPU decode per image")
    gpu_args.add_argument("--ort-cache", default=GpuOptions.ort_cache, help="onnx-gpu: ORT TensorRT EP engine cache")
    args = parser.parse_args(argv)
    fusion = FusionConfig.from_json(args.fusion.read_text()) if args.fusion else FusionConfig()
    provenance = ProvenanceConfig.from_json(args.provenance.read_text()) if args.provenance else ProvenanceConfig()
    if args.trust_anchors:
        provenance = dataclasses.replace(provenance, trust_anchors=args.trust_anchors.read_text())
    gpu = GpuOptions(instances=args.instances, gpus=tuple(int(g) for g in args.gpus.split(",") if g.strip()),
                     opt_batch=args.opt_batch, verify=args.verify, ort_cache=args.ort_cache)
    try:
        precision = parse_precision(args.precision, list(specs.DETECTORS))
    except OptionError as exc:
        print(f"--precision: {exc}", file=sys.stderr)
        return 2
    cpu = CpuOptions(int8=args.int8, precision=tuple(precision.items()), arena=args.arena)
    try:
        out = render(args.target, args.build, args.out, max_batch=args.max_batch, fusion=fusion, copy=args.copy,
                     gpu=gpu, provenance=provenance, cpu=cpu, explain=args.explain)
    except RepositoryError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"rendered the {args.target} repository: {out}")
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        print(f"  {folder.name}/")
    if args.target == "tensorrt":
        print("engines are built on the serving GPU: python -m genguard.export.tensorrt build "
              f"--repository {out} --cache /engine-cache (the server image's entrypoint does this)")
    if args.target in GPU_TARGETS:
        print("serve it with the server image (make image):\n  " + shlex.join(docker_run_command(
            args.target, out, max_batch=args.max_batch)))
    return 0
