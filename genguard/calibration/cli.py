"""`genguard evaluate` and `genguard calibrate` (wired into the `genguard` CLI in client/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .dataset import DatasetError, Labelled, load_labelled


def _fpr(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"target FPR must be in [0, 1), not {text}")
    return value


def _perturbations(text: str) -> list[str]:
    from .perturb import parse

    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(sub, connection: argparse.ArgumentParser, epilog: str = "") -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("labelled", metavar="LABELLED",
                        help="folder with real/ and ai/ (ai/<generator>/ optional), or a CSV / JSONL of "
                             "path,label[,generator][,nsfw] (JSONL: objects with path and label keys, e.g. the reviewer page's label export)")
    common.add_argument("--batch-size", type=int, default=None, help="images per request (default: the server's max)")
    common.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2)")
    common.add_argument("--fresh", action="store_true", help="score everything again (default: resume, skipping "
                                                             "images already in scores.jsonl)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("evaluate", parents=[connection, common], epilog=epilog, formatter_class=fmt,
                        help="measure the detectors and the fused answer on your labelled images",
                        description="Score a labelled set through the server and write report.md (ROC AUC, "
                                    "accuracy/F1 at the served threshold, TPR at 1 % and 5 % FPR, ECE, confusion "
                                    "matrix, recall per generator, NSFW metrics, robustness), its PNG plots, "
                                    "metrics.json and the per-image scores.jsonl.")
    ev.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder (default ./evaluation)")
    ev.add_argument("--perturb", type=_perturbations, default=[], metavar="LIST",
                    help="re-score perturbed copies, e.g. jpeg:90,jpeg:70,resize:0.5,crop:0.8")
    ev.add_argument("--nsfw-level", choices=("low", "medium", "high"), default="medium",
                    help="NSFW level labels at or above this count as NSFW (default: the served rule's, else medium)")
    ev.add_argument("--title", default="GenGuard evaluation")
    ev.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")

    cal = sub.add_parser("calibrate", parents=[connection, common], epilog=epilog, formatter_class=fmt,
                         help="fit a stacked fusion and a threshold for a target false-positive rate",
                         description="Score a labelled set through the server, fit per-detector calibration and a "
                                     "stacked combination (logistic regression on the detectors' logits), choose "
                                     "the threshold for --target-fpr with a bootstrap interval, report "
                                     "cross-validated metrics before and after, and write a fusion configuration "
                                     "(rule `stacked`) to serve with `make serve FUSION=...`.")
    cal.add_argument("--target-fpr", type=_fpr, default=0.01, help="false-positive rate to hold (default 0.01)")
    cal.add_argument("--out", type=Path, default=Path("fusion.json"), help="fusion configuration to write")
    cal.add_argument("--work", type=Path, default=None,
                     help="folder for scores.jsonl and calibration.md (default: OUT without .json, plus .calibration)")
    cal.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    cal.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the threshold (default 1000)")
    cal.add_argument("--C", type=float, default=1.0, dest="C", help="inverse L2 strength of the fit (default 1)")
    cal.add_argument("--seed", type=int, default=0)


def _load(args) -> Labelled | None:
    try:
        labelled = load_labelled(args.labelled)
    except DatasetError as exc:
        print(f"genguard: {exc}", file=sys.stderr)
        return None
    skipped = "".join(f", {n} skipped ({why})" for why, n in labelled.skipped.items())
    print(f"genguard: {len(labelled.samples)} labelled images ({labelled.n_ai} AI-generated, "
          f"{labelled.n_real} real){skipped}", file=sys.stderr)
    return labelled


def _score(args, client_factory, labelled: Labelled, scores: Path, perturbations: list[str]) -> list[dict]:
    from tqdm import tqdm

    from .scoring import score

    if args.fresh:
        scores.unlink(missing_ok=True)
    total = len(labelled.samples) * (1 + len(perturbations))
    bar = tqdm(total=total, unit="img", file=sys.stderr, disable=args.no_progress, desc="scoring")
    try:
        with client_factory(args, batch_size=args.batch_size, concurrency=args.concurrency) as client:
            return score(labelled.samples, client, scores, perturbations,
                         on_progress=lambda done, _: bar.update(done - bar.n))
    finally:
        bar.close()


def _unavailable(run):
    """Exit 3 (as `genguard detect`) when the server can't be reached or isn't ready."""
    def wrapped(args, client_factory) -> int:
        from genguard.client.errors import ModelNotReady, RequestTimeout, ServerUnavailable

        try:
            return run(args, client_factory)
        except (ServerUnavailable, ModelNotReady, RequestTimeout) as exc:
            print(f"genguard: {exc} (images scored so far are kept; rerun to resume)", file=sys.stderr)
            return 3
    wrapped.__name__ = run.__name__
    return wrapped


def _served_config(args, client_factory) -> dict | None:
    """The served FusionConfig's fields (postprocess's `fusion` parameter), or None where the server
    doesn't show its model configurations (then the written file has the defaults for the fields
    calibrate doesn't fit)."""
    try:
        with client_factory(args) as client:
            config = client.model_config("postprocess")
        return json.loads(config["parameters"]["fusion"]["string_value"] or "{}")
    except Exception as exc:  # noqa: BLE001 - best effort: say so and go on with defaults
        print(f"genguard: could not read the served fusion configuration ({exc}); the fields calibrate does "
              "not fit keep their defaults", file=sys.stderr)
        return None


def _server(args) -> str:
    from genguard.client.transport import DEFAULT_PORTS, HOST

    return args.url or f"{HOST}:{DEFAULT_PORTS.get(args.protocol, '?')} ({args.protocol})"


@_unavailable
def evaluate(args, client_factory) -> int:
    from .evaluate import write_report

    labelled = _load(args)
    if labelled is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    records = _score(args, client_factory, labelled, args.out / "scores.jsonl", args.perturb)
    try:
        analysis = write_report(records, args.out, source=str(args.labelled), server=_server(args), title=args.title,
                                notes=args.note, nsfw_level=args.nsfw_level)
    except ValueError as exc:
        print(f"genguard: {exc}", file=sys.stderr)
        return 2
    fused = analysis["metrics"].get("none", {}).get("fused")
    if fused:
        auc = "n/a" if fused["auc"] is None else f"{fused['auc']:.3f}"
        print(f"fused: ROC AUC {auc}, accuracy {fused['accuracy']:.3f} at threshold {fused['threshold']:g} "
              f"({fused['n']} images)")
    print(f"report: {args.out / 'report.md'}")
    failed = sum(len(v) for v in analysis["failures"].values())
    if failed:
        print(f"genguard: {failed} scorings failed (listed in the report)", file=sys.stderr)
        return 4
    return 0


@_unavailable
def calibrate(args, client_factory) -> int:
    from .calibrate import calibrate as fit, render_markdown

    labelled = _load(args)
    if labelled is None:
        return 2
    work = args.work or args.out.with_name(args.out.stem + ".calibration")
    work.mkdir(parents=True, exist_ok=True)
    records = _score(args, client_factory, labelled, work / "scores.jsonl", [])
    try:
        result = fit(records, target_fpr=args.target_fpr, folds=args.folds, bootstrap=args.bootstrap,
                     seed=args.seed, C=args.C, source=str(args.labelled),
                     served_config=_served_config(args, client_factory))
    except ValueError as exc:
        print(f"genguard: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result["config"], indent=1) + "\n", encoding="utf-8")
    (work / "calibration.md").write_text(render_markdown(result, source=str(args.labelled), server=_server(args),
                                                         out=str(args.out)), encoding="utf-8")
    rep = result["report"]
    auc0, auc1 = rep["before"]["auc"], rep["after_cv"]["auc"]
    print(f"stacked fusion written to {args.out} (id {result['config']['id']}): threshold "
          f"{rep['threshold']:.6g} for FPR <= {args.target_fpr:g} (95 % interval {rep['interval'][0]:.6g} - "
          f"{rep['interval'][1]:.6g}); ROC AUC {auc0 if auc0 is None else round(auc0, 3)} served -> "
          f"{auc1 if auc1 is None else round(auc1, 3)} stacked (cross-validated)")
    print(f"report: {work / 'calibration.md'}")
    return 0
