"""python -m genguard.export: checkpoints -> build/onnx/<detector>/{model.onnx,parity.json}.

  --weights real     load each spec's checkpoint (hub id, or --checkpoint NAME=PATH); optional
                     detectors (hive_effb4) only when a checkpoint is given.
  --weights random   build each real architecture with random weights into build/checkpoints/<name>/,
                     in its native format, then export it through the same loaders. Loudly marked.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from genguard import specs
from genguard.export import layout
from genguard.export.checkpoints import RANDOM_WARNING, CheckpointMismatch, write_random_checkpoint
from genguard.export.onnx_export import export_detector
from genguard.export.weights import cached_commit, is_hub_id, split_revision


class UsageError(ValueError):
    """A bad command line: reported in one line, exit status 2."""


def _spec(name: str) -> specs.DetectorSpec:
    try:
        return specs.get(name)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not rest:
            raise UsageError(f"--{what} expects NAME=VALUE, got {value!r}")
        _spec(name)
        pairs[name] = rest
    return pairs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m genguard.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", choices=("real", "random"), default="real")
    parser.add_argument("--build", type=Path, default=Path("build"), help="build directory (default: build)")
    parser.add_argument("--detectors", default="", help="comma-separated subset (default: all that apply)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH_OR_HUB_ID",
                        help="checkpoint for one detector (repeatable)")
    parser.add_argument("--revision", action="append", default=[], metavar="NAME=REV",
                        help="pin a hub checkpoint's revision (commit, branch or tag; default main)")
    parser.add_argument("--labels", action="append", default=[], metavar="NAME=HEAD:L0,L1,...",
                        help="reorder a head's labels, e.g. sumsub_sd=sd:stable_diffusion,real")
    parser.add_argument("--tiny", action="store_true", help="random weights, reduced depth (tests)")
    return parser.parse_args(argv)


def selected_specs(args) -> list[specs.DetectorSpec]:
    checkpoints = _pairs(args.checkpoint, "checkpoint")
    chosen = [_spec(n) for n in args.detectors.split(",") if n] or list(specs.DETECTORS.values())
    if not args.detectors and args.weights == "real":
        chosen = [s for s in chosen if not s.optional or s.name in checkpoints]
    for name, value in _pairs(args.labels, "labels").items():
        head, _, labels = value.partition(":")
        index = next((i for i, s in enumerate(chosen) if s.name == name), None)
        if index is None:
            raise UsageError(f"--labels {name}=...: {name} is not among the detectors being exported")
        try:
            chosen[index] = specs.with_labels(chosen[index], head, tuple(labels.split(",")))
        except (KeyError, ValueError) as exc:
            raise UsageError(f"--labels {value!r}: {exc}") from None
    return chosen


def stale_exports(argv: list[str]) -> tuple[list[str], list[str]]:
    """What `make serve` must export before serving: (the detectors argv asks for, those of them whose
    export under --build is missing, failed, altered since its check, or differs from what argv names).

    Compared: the weights kind (real/random) always; the checkpoint only for detectors argv names a
    checkpoint for (its identity: hub id, or resolved path with file sizes and times); the label order
    only for detectors argv reorders. What argv doesn't name is served as the build holds it.
    """
    from genguard.export.onnx_export import checkpoint_identity
    from genguard.export.repository import RepositoryError, find_exports

    args = parse_args(argv)
    checkpoints = _pairs(args.checkpoint, "checkpoint")
    relabelled = {name for name in _pairs(args.labels, "labels")}
    revisions = _pairs(args.revision, "revision")
    wanted = selected_specs(args)
    stale = []
    for spec in wanted:
        try:
            (exported,) = find_exports(args.build, [spec.name])
        except RepositoryError:
            stale.append(spec.name)
            continue
        parity = exported.parity
        if exported.weights != args.weights:
            stale.append(spec.name)
        elif args.weights == "real" and spec.name in checkpoints and parity.get(
                "checkpoint_identity", parity.get("checkpoint")) != (
                checkpoint_identity(checkpoints[spec.name])):
            stale.append(spec.name)
        elif args.weights == "real" and spec.name in revisions and exported.revision != cached_commit(
                *split_revision(f"{str(checkpoints.get(spec.name, spec.source)).split('@')[0]}@{revisions[spec.name]}")):
            stale.append(spec.name)  # a pinned revision other than the one exported
        elif spec.name in relabelled and [h.labels for h in exported.spec.heads] != [h.labels for h in spec.heads]:
            stale.append(spec.name)
    return [s.name for s in wanted], stale


def only_detectors(argv: list[str], names: list[str]) -> list[str]:
    """argv restricted to `names`: --detectors set, and --checkpoint/--labels/--revision of other detectors dropped."""
    out, pending = [], list(argv)
    while pending:
        flag = pending.pop(0)
        if flag in ("--checkpoint", "--labels", "--revision", "--detectors"):
            value = pending.pop(0)
            if flag != "--detectors" and value.partition("=")[0] in names:
                out += [flag, value]
        else:
            out.append(flag)
    return out + ["--detectors", ",".join(names)]


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("genguard").setLevel(logging.INFO)
    args = parse_args(argv)
    try:
        checkpoints = _pairs(args.checkpoint, "checkpoint")
        revisions = _pairs(args.revision, "revision")
        chosen = selected_specs(args)
    except UsageError as exc:
        print(f"python -m genguard.export: error: {exc}", file=sys.stderr)
        return 2
    results, failed = [], []
    if args.weights == "random":
        print("\n" + "!" * 100 + "\n" + RANDOM_WARNING.format(name="every detector") + "\n" + "!" * 100 + "\n",
              file=sys.stderr)
    for spec in chosen:
        if args.weights == "random":
            source = write_random_checkpoint(spec, layout.checkpoint_folder(args.build, spec.name), tiny=args.tiny)
        else:
            source = checkpoints.get(spec.name, spec.source)
            if spec.name in revisions:  # hub id@revision (timm's spelling); a local path has no revision
                if source is None or not is_hub_id(source):
                    print(f"python -m genguard.export: error: --revision {spec.name}=...: {source} is not a hub id",
                          file=sys.stderr)
                    return 2
                source = f"{source.split('@')[0]}@{revisions[spec.name]}"
        print(f"==> {spec.name}: {source}", file=sys.stderr, flush=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)  # the random marker is already loud
                results.append(export_detector(spec, source, layout.onnx_dir(args.build)))
        except Exception as exc:  # one detector's bad checkpoint fails it alone; the others still export
            kind = "" if isinstance(exc, (CheckpointMismatch, RuntimeError, OSError)) else f"{type(exc).__name__}: "
            print(f"FAILED {spec.name}: {kind}{exc}", file=sys.stderr)
            failed.append(spec.name)
    print_table(results)
    if failed:
        print(f"\nexport failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_table(results: list[dict]) -> None:
    header = (f"{'detector':<18} {'weights':<7} {'|dlogit| onnx':>13} {'|dprob| onnx':>12} "
              f"{'|dpix| ref':>10} {'|dprob| ref':>11} {'top1':>5} {'tol':>7} {'ok':>3} {'s':>6}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        o, ref = r["onnx_vs_pytorch"], r["reference"]
        print(f"{r['detector']:<18} {r['weights']:<7} {o['max_abs_logit']:>13.2e} {o['max_abs_prob']:>12.2e} "
              f"{ref['preprocess_max_abs']:>10.2e} {ref['max_abs_prob']:>11.2e} {ref['top1_agreement']:>5.2f} "
              f"{r['tolerance']['max_abs_prob']:>7.0e} {'yes' if r['passed'] else 'NO':>3} {r['seconds']:>6.1f}")
    print("onnx: ORT vs PyTorch on the same tensors (batches 1 and 4); ref: the card's pipeline vs "
          "GenGuard's on the sample images\n")


if __name__ == "__main__":
    sys.exit(main())
