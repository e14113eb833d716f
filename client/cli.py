"""`genguard detect` and `genguard health`: a thin shell over genguard.client.Client (`evaluate` and
`calibrate` live in genguard.calibration.cli)."""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from .errors import GenGuardError, ModelNotReady, RequestTimeout, ServerUnavailable
from .inputs import Item, collect
from .rest import Unauthorized
from .results import ImageInfo, Result, hive_view
from .sync import Client
from .transport import DEFAULT_PORTS, HOST, normalize_url

EXIT_OK, EXIT_OTHER, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
HANDFUL = 5  # more images than this get a progress bar

EXIT_CODES = f"""exit status:
  {EXIT_OK}  every image was answered (health: the server and every model are ready)
  {EXIT_OTHER}  anything else (an unexpected error)
  {EXIT_USAGE}  usage error (bad arguments, or an API key the REST gateway refused)
  {EXIT_UNAVAILABLE}  server unreachable, connection lost after retries, or model not ready
  {EXIT_FAILED}  some images failed (unreadable, not an image, refused, timed out): their rows say why
"""

CSV_COLUMNS = ("index", "name", "status", "is_ai_generated", "verdict", "source", "nsfw_level",
               "width", "height", "format", "error_reason", "error_message", "kind", "duration_s", "frames_sampled")


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1], not {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=None,
                            help=f"host:port of GenGuard's Triton (default {HOST}:{DEFAULT_PORTS['grpc']} for grpc, "
                                 f"{HOST}:{DEFAULT_PORTS['http']} for http), or http(s)://host:port of its REST "
                                 "gateway")
    connection.add_argument("--protocol", choices=("grpc", "http", "rest"), default=None,
                            help="grpc (default), http, or rest (the REST gateway; the default for an "
                                 "http(s):// --url)")
    connection.add_argument("--api-key-file", default=None, metavar="FILE",
                            help="REST gateway: a file holding the API key (sent as `Authorization: Bearer`)")
    connection.add_argument("--tls", action="store_true", help="Triton over TLS (gRPC or HTTPS)")
    connection.add_argument("--tls-ca", default=None, metavar="PEM",
                            help="CA certificates to verify the server with (Triton TLS, or an https:// gateway)")
    connection.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate (mutual TLS to Triton)")
    connection.add_argument("--tls-key", default=None, metavar="PEM", help="client certificate's key")
    connection.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    connection.add_argument("--retries", type=int, default=3,
                            help="retries on connection loss / UNAVAILABLE, with exponential backoff (default 3)")

    parser = argparse.ArgumentParser(prog="genguard", description="Detect AI-generated images with a GenGuard server.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    detect = sub.add_parser("detect", parents=[connection], epilog=EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            help="answer for each image: AI-generated?, likely source, NSFW level",
                            description="Send images to GenGuard; one output row per image, in argument order "
                                        "(directories and globs expand sorted).")
    detect.add_argument("paths", nargs="+", metavar="PATH",
                        help="image or video file, directory, glob ('shots/*.jpg'), or - for bytes on stdin")
    detect.add_argument("-r", "--recursive", action="store_true", help="descend into sub-directories")
    detect.add_argument("--format", choices=("table", "jsonl", "csv", "hive"), default="table",
                        help="table (default), jsonl (the full per-image answer), csv, or hive (Hive NIM JSON)")
    detect.add_argument("--threshold", type=_threshold, default=None,
                        help="verdict threshold on is_ai_generated, applied here (default: the server's verdict)")
    detect.add_argument("--batch-size", type=_positive, default=None,
                        help="images per request (default and cap: the server's max_batch_size)")
    detect.add_argument("--concurrency", type=_positive, default=2, help="requests in flight (default 2)")
    detect.add_argument("--no-progress", action="store_true", help="no progress bar")
    detect.add_argument("--fps", type=float, default=None,
                        help="videos: frames sampled per second of video (default: the server's, 1)")
    detect.add_argument("--max-frames", type=_positive, default=None,
                        help="videos: at most this many sampled frames per clip (default: the server's, 120)")
    detect.add_argument("--sampling", choices=("rate", "keyframes"), default=None,
                        help="videos: every 1/fps s (rate, the server's default) or keyframes only")

    explain = sub.add_parser("explain", parents=[connection], epilog=EXIT_CODES,
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             help="heatmaps: why each detector decided (the genguard_explain ensemble)",
                             description="Send images to GenGuard's genguard_explain ensemble; write, per image, "
                                         "<name>.<detector>.png overlays and <name>.json (the answer with its maps).")
    explain.add_argument("paths", nargs="+", metavar="PATH", help="image file, directory or glob")
    explain.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the overlays and JSON")
    explain.add_argument("-r", "--recursive", action="store_true", help="descend into sub-directories")
    explain.add_argument("--label", action="append", default=[], metavar="DETECTOR[.HEAD]=LABEL",
                         help="map this label instead of the predicted one (repeatable), e.g. sumsub_sd=real "
                              "or hive_effb4.source=midjourney")
    explain.set_defaults(timeout=600.0)  # occlusion of the transformers takes tens of forward passes an image

    sub.add_parser("health", parents=[connection], epilog=EXIT_CODES,
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   help="is the server live and ready, and each model loaded?")
    gateway = sub.add_parser("gateway", help="run GenGuard's REST gateway (needs the `gateway` extra)",
                             description="GenGuard's REST gateway in front of Triton (FastAPI on uvicorn): "
                                         "Hive-compatible and native routes; see README.")
    from genguard.gateway.__main__ import add_arguments as gateway_arguments

    gateway_arguments(gateway)
    weights = sub.add_parser("weights", add_help=False,
                             help="hub checkpoints for air-gapped installs: download | pack | verify | unpack "
                                  "(needs the `export` extra; `genguard weights -h`)")
    weights.add_argument("weights_args", nargs=argparse.REMAINDER)
    from genguard.calibration.cli import add_parsers as calibration_parsers  # evaluate, calibrate

    calibration_parsers(sub, connection, EXIT_CODES)
    from genguard.jobs.cli import add_parsers as jobs_parsers  # jobs submit|status|wait|list|cancel|migrate, worker

    jobs_parsers(sub, connection, EXIT_CODES)
    from genguard.scan.cli import add_parser as scan_parser  # light: Ray and DuckDB load when a scan runs

    scan_parser(sub, connection, EXIT_CODES)
    return parser


def _expand(paths: list[str], parser: argparse.ArgumentParser, stdin) -> list:
    """Arguments -> inputs: globs expanded (sorted) when they aren't literal paths, - read from stdin."""
    inputs: list = []
    if paths.count("-") > 1:
        parser.error("- (stdin) can be given only once")
    for path in paths:
        if path == "-":
            data = stdin.buffer.read()
            inputs.append(Item(0, "-", lambda data=data: data))
        elif glob.has_magic(path) and not os.path.exists(path):
            # A pattern that matches nothing stays as it is and is reported as not found.
            inputs.extend(sorted(glob.glob(path, recursive=True)) or [path])
        else:
            inputs.append(path)
    return inputs


def _row(result: Result, threshold: float | None) -> dict:
    result = result.with_threshold(threshold) if threshold is not None else result
    image = result.image
    clip = result.video or {}
    if clip:  # a clip's size and container in the image columns
        image = ImageInfo(clip.get("width"), clip.get("height"), clip.get("container"))
    return {
        "index": result.index, "name": result.name, "status": result.status,
        "is_ai_generated": "" if result.is_ai_generated is None else f"{result.is_ai_generated:.6f}",
        "verdict": result.verdict or "", "source": result.source or "",
        "nsfw_level": result.nsfw.level if result.nsfw else "",
        "width": image.width if image else "", "height": image.height if image else "",
        "format": image.format if image else "",
        "error_reason": result.error.reason if result.error else "",
        "error_message": result.error.message if result.error else "",
        "kind": result.kind, "duration_s": "" if clip.get("duration_s") is None else clip["duration_s"],
        "frames_sampled": clip.get("frames_sampled", ""),
    }


def write_table(results: list[Result], threshold: float | None, out: TextIO) -> None:
    header = ("#", "INPUT", "STATUS", "VERDICT", "P(AI)", "SOURCE", "NSFW")
    rows = []
    for r in results:
        row = _row(r, threshold)
        if r.ok:
            nsfw = row["nsfw_level"] or "-"
            if r.kind == "video" and r.nsfw and r.nsfw.timestamps:  # a clip: where its NSFW peak is
                nsfw += " at " + ",".join(f"{t:g}s" for t in r.nsfw.timestamps[:3])
            rows.append((str(r.index), r.name + (f" [video {row['frames_sampled']} frames]" if r.kind == "video" else ""),
                         r.status, row["verdict"], f"{r.is_ai_generated:.3f}", row["source"], nsfw))
        else:
            rows.append((str(r.index), r.name, r.status, f"{row['error_reason']}: {row['error_message']}"))
    widths = [max([len(header[i])] + [len(row[i]) for row in rows if len(row) > i + 1]) for i in range(len(header))]

    def line(cells) -> str:
        # A failure's last cell (the error) runs on past the columns it would otherwise fill.
        return "  ".join(c.ljust(widths[i]) if i < len(cells) - 1 else c for i, c in enumerate(cells)).rstrip()

    print(line(header), file=out)
    for row in rows:
        print(line(row), file=out)


def write_results(results: list[Result], fmt: str, threshold: float | None, out: TextIO) -> None:
    if fmt == "table":
        write_table(results, threshold, out)
    elif fmt == "jsonl":
        for r in results:
            print(json.dumps(r.to_dict(threshold)), file=out)
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(_row(r, threshold) for r in results)
    else:
        print(json.dumps(hive_view(results)), file=out)


def _warn_once(results: list[Result], err: TextIO) -> None:
    seen: list[str] = []
    for r in results:
        seen += [w for w in r.warnings if w not in seen]
    for warning in seen:
        print(f"genguard: WARNING from the server: {warning}", file=err)


def _client(args, **kwargs):
    if args.protocol == "rest":
        from .rest import RestClient, read_key_file

        key = read_key_file(args.api_key_file) if args.api_key_file else None
        return RestClient(args.url, api_key=key, timeout=args.timeout, retries=args.retries,
                          verify=args.tls_ca or True, **kwargs)
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        from .transport import TLS

        tls = TLS(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
    return Client(args.url, protocol=args.protocol, timeout=args.timeout, retries=args.retries, tls=tls, **kwargs)


def _resolve_protocol(args, parser: argparse.ArgumentParser) -> None:
    """http(s):// URLs are REST gateways unless --protocol says otherwise; check what goes with what."""
    url = args.url or ""
    if args.protocol is None:
        args.protocol = "rest" if url.startswith(("http://", "https://")) else "grpc"
    if args.protocol == "rest":
        if not url.startswith(("http://", "https://")):
            parser.error("--protocol rest needs --url http(s)://host:port of a GenGuard gateway")
        if args.tls or args.tls_cert:
            parser.error("--tls and --tls-cert are for Triton; a gateway's TLS comes from its https:// URL "
                         "(--tls-ca to verify it)")
        if args.api_key_file and not os.path.isfile(args.api_key_file):
            parser.error(f"--api-key-file {args.api_key_file}: no such file")
        return
    if args.api_key_file:
        parser.error("--api-key-file is for the REST gateway (--url http(s)://host:port)")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        normalize_url(args.url, args.protocol)
    except ValueError as exc:
        parser.error(str(exc))


def detect(args, parser: argparse.ArgumentParser) -> int:
    from tqdm import tqdm

    items = collect(_expand(args.paths, parser, sys.stdin), recursive=args.recursive)
    if not items:
        print("genguard: no images: the given directories are empty", file=sys.stderr)
        return EXIT_FAILED
    bar = tqdm(total=len(items), unit="img", file=sys.stderr, disable=args.no_progress or len(items) <= HANDFUL,
               desc="genguard")
    try:
        with _client(args, batch_size=args.batch_size, concurrency=args.concurrency) as client:
            options = {k: v for k, v in (("fps", args.fps), ("max_frames", args.max_frames),
                                         ("sampling", args.sampling)) if v is not None}
            results = client.detect(items, on_progress=lambda done, total: bar.update(done - bar.n),
                                    video_options=options or None)
    except ServerUnavailable as exc:
        bar.close()
        answered = f" ({len(exc.partial)} of {len(items)} images were answered before that)" if exc.partial else ""
        print(f"genguard: {exc}{answered}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ModelNotReady, RequestTimeout) as exc:
        bar.close()
        print(f"genguard: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    bar.close()
    _warn_once(results, sys.stderr)
    write_results(results, args.format, args.threshold, sys.stdout)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"genguard: {failed} of {len(results)} images failed (see their rows)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def explain(args, parser: argparse.ArgumentParser) -> int:
    from genguard.explanations import EXPLAIN_ENSEMBLE

    from .explain import write_explanations

    if args.protocol == "rest":
        parser.error("genguard explain talks to Triton (grpc or http), not to the REST gateway")
    from genguard import specs
    from genguard.explanations import parse_labels

    try:
        labels = parse_labels(args.label, [specs.get(n) for n in specs.DETECTORS])
    except ValueError as exc:
        parser.error(f"--label: {exc}")
    items = collect(_expand(args.paths, parser, sys.stdin), recursive=args.recursive)
    if not items:
        print("genguard: no images: the given directories are empty", file=sys.stderr)
        return EXIT_FAILED
    try:
        with _client(args, model=EXPLAIN_ENSEMBLE, concurrency=1) as client:
            results = client.detect(items, explain_labels=labels)
    except (ServerUnavailable, ModelNotReady, RequestTimeout) as exc:
        print(f"genguard: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    _warn_once(results, sys.stderr)
    names: dict[str, int] = {}
    for r in results:
        stem = Path(r.name).stem if r.name not in ("-",) else "stdin"
        names[stem] = names.get(stem, 0) + 1
        stem = stem if names[stem] == 1 else f"{stem}-{names[stem]}"  # two a.jpg from two folders
        source = r.name if r.ok and Path(r.name).is_file() else None
        written = write_explanations(source, r.raw, args.out, stem) if source else []
        if not source:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{stem}.json").write_text(json.dumps(r.raw, indent=2) + "\n")
        print(f"{r.name}: {r.status}" + (f" ({r.error.reason})" if r.error else "")
              + (f" -> {len(written) - 1} overlays" if written else ""))
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"genguard: {failed} of {len(results)} images failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def health(args) -> int:
    try:
        with _client(args) as client:
            status = client.health()
    except (ServerUnavailable, RequestTimeout) as exc:
        print(f"genguard: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    yes = {True: "yes", False: "NO"}
    print(f"GenGuard at {status.url} ({status.protocol}): live {yes[status.live]}, ready {yes[status.ready]}")
    width = max(len(name) for name in status.models)
    for name, ready in status.models.items():
        weights = ""
        if name in status.weights:  # a detector: which weights, and the hub revision it serves
            revision = status.revisions.get(name)
            weights = f"  {status.weights[name]} weights" + (f", revision {revision}" if revision else "")
            engine = status.engines.get(name)
            if engine:  # the CPU engine and precision it runs on (make serve PRECISION=...)
                weights += f", {engine.get('engine')} {engine.get('precision')}"
            served = status.files.get(name)
            if served and served.get("sha256"):  # the file it serves, and the start of the sha256 checked at load
                weights += f", {served.get('file')} sha256 {served['sha256'][:12]}"
        print(f"  {name.ljust(width)}  {'ready' if ready else 'NOT READY'}{weights}")
    chosen = status.best.get("detectors", {})
    if chosen:  # PRECISION=best: the option chosen per detector on the server's CPU, and why
        print(f"PRECISION=best on {status.best.get('cpu', 'the server CPU')}:")
        for name, choice in chosen.items():
            print(f"  {name}: {choice.get('option')} — {choice.get('why')}")
    random = sorted(d for d, w in status.weights.items() if w == "random")
    if random:
        print(f"genguard: WARNING: {', '.join(random)} run random weights: their scores are meaningless",
              file=sys.stderr)
    if not status.ok:
        print("genguard: the server is not ready: wait for its models to load, or read its log", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["weights"]:  # = python -m genguard.export.weights (its own arguments, -h included)
        try:
            from genguard.export.weights import main as weights_main
        except ImportError as exc:
            print(f"genguard weights needs the `export` extra (huggingface_hub): {exc}", file=sys.stderr)
            return EXIT_OTHER
        return weights_main(argv[1:], prog="genguard weights")
    if argv[:2] == ["scan", "select"]:  # curation of a scan's dataset: its own arguments (no server)
        from genguard.scan.cli import select_main

        return select_main(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "gateway":
        from genguard.gateway.__main__ import run as run_gateway

        return run_gateway(args)
    if args.command == "worker" or args.command == "jobs" and args.jobs_command == "migrate":
        from genguard.jobs import cli as jobs_cli

        return jobs_cli.run_worker(args) if args.command == "worker" else jobs_cli.migrate(args)
    if args.timeout <= 0 or args.retries < 0:
        parser.error("--timeout must be > 0 and --retries >= 0")
    _resolve_protocol(args, parser)
    try:
        if args.command in ("evaluate", "calibrate"):
            from genguard.calibration import cli as calibration_cli

            return getattr(calibration_cli, args.command)(args, _client)
        if args.command == "explain":
            return explain(args, parser)
        if args.command == "jobs":
            from genguard.jobs.cli import run_client

            return run_client(args, _client, write_results)
        if args.command == "scan":
            from genguard.scan.cli import scan_command

            return scan_command(args, parser)
        return detect(args, parser) if args.command == "detect" else health(args)
    except Unauthorized as exc:
        print(f"genguard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GenGuardError as exc:  # not one of the documented cases: say so rather than dump a trace
        print(f"genguard: {exc}", file=sys.stderr)
        return EXIT_OTHER
    except KeyboardInterrupt:
        print("genguard: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `genguard ... | head`: the reader left; exit quietly like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main())
