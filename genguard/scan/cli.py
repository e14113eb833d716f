"""`genguard scan SOURCE... --out DIR` and `genguard scan select DIR --where SQL --to LIST|DIR`.

Imported by genguard.client.cli to add its parser; Ray, pyarrow and DuckDB are imported only when a scan runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genguard.client.cli import _positive  # imported lazily by that CLI: no cycle

EXIT_OK, EXIT_OTHER, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 1, 2, 3, 4
NEEDS = "genguard scan needs the `scan` extra: pip install 'genguard[scan]'"


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_parser(sub, connection: argparse.ArgumentParser, epilog: str) -> None:
    scan = sub.add_parser(
        "scan", parents=[connection], epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="bulk-scan folders, object stores, WebDataset shards or lists into a Parquet dataset (Ray Data); "
             "`genguard scan select` curates it",
        description="Scan every image of the SOURCEs with GenGuard on Ray Data into a Parquet dataset under --out "
                    "(one row per input, failures included) and --out/summary.json. Rerunning the same command "
                    "resumes: only what the dataset lacks is scanned. `genguard scan select DIR --where SQL --to "
                    "LIST|DIR` keeps what a DuckDB WHERE clause keeps (`genguard scan select -h`).")
    scan.add_argument("sources", nargs="+", metavar="SOURCE",
                      help="folder (recursive), glob, file, fsspec URL or prefix (s3://bucket/prefix, gs://...), "
                           "WebDataset shard (.tar), or a list (.parquet/.csv/.jsonl with a uri, url or path column)")
    scan.add_argument("--out", required=True, type=Path, metavar="DIR", help="the Parquet dataset's folder")
    scan.add_argument("--batch-size", type=_positive, default=None,
                      help="images per request (default and cap: the server's max_batch_size)")
    scan.add_argument("--concurrency", type=_positive, default=2,
                      help="scoring actors, each with one request in flight (default 2)")
    scan.add_argument("--storage-options", type=_json_object, default={}, metavar="JSON",
                      help='fsspec options for URLs, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' for s3fs')
    scan.add_argument("--ray-address", default=None, metavar="ADDRESS",
                      help="a Ray cluster to run on (default: RAY_ADDRESS, else a local Ray started for the scan)")
    scan.add_argument("--max-inflight-mib", type=_positive, default=512,
                      help="object store MiB the pipeline may fill with image bytes in flight (default 512)")
    scan.add_argument("--part-rows", type=_positive, default=2048,
                      help="rows per Parquet part (a part is also written every 10 s; default 2048)")
    scan.add_argument("--no-progress", action="store_true", help="no progress bar")


def scan_command(args, parser: argparse.ArgumentParser) -> int:
    if args.protocol != "grpc" or args.tls or args.tls_ca or args.tls_cert:
        parser.error("genguard scan talks to Triton over plain gRPC (--url host:port)")
    try:
        from .run import Options, scan
    except ImportError as exc:
        print(f"{NEEDS} ({exc})", file=sys.stderr)
        return EXIT_OTHER
    opts = Options(url=args.url or "127.0.0.1:8001", batch_size=args.batch_size, concurrency=args.concurrency,
                   timeout=args.timeout, retries=args.retries, storage_options=args.storage_options,
                   ray_address=args.ray_address, max_inflight_bytes=args.max_inflight_mib << 20,
                   part_rows=args.part_rows, progress=not args.no_progress)
    summary = scan(args.sources, args.out, opts)
    run = summary["run"]
    print(f"genguard scan: {summary['rows']} rows in {args.out} ({run['scanned_this_run']} this run, "
          f"{run['images_per_second']} images/s); by status {summary['by_status']}")
    reasons = summary["by_failure_reason"]
    failed = {k: v for k, v in reasons.items() if k != "null"}
    if failed:
        print(f"genguard scan: failures by reason {failed}; rerun the same command to retry the transient ones",
              file=sys.stderr)
        return EXIT_UNAVAILABLE if "server_unreachable" in failed else EXIT_FAILED
    return EXIT_OK


def select_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="genguard scan select", description="Keep the rows of a scan's dataset that a DuckDB WHERE clause keeps "
        "and write their uris, rows, files or WebDataset shards (docs/scan.md, \"Curating a dataset\").")
    parser.add_argument("dataset", type=Path, metavar="DIR", help="the folder genguard scan --out wrote")
    parser.add_argument("--where", required=True, metavar="SQL",
                        help="DuckDB WHERE clause over the schema, e.g. \"verdict = 'not_ai_generated' AND "
                             "nsfw_level IN ('neutral','low')\"")
    parser.add_argument("--to", required=True, type=Path, metavar="LIST|DIR",
                        help="FILE.txt (uris), FILE.parquet/.csv/.jsonl (rows), or a folder (files copied; "
                             "WebDataset members as shards)")
    parser.add_argument("--link", choices=("hard", "symbolic"), default=None,
                        help="link local files into the folder instead of copying them")
    parser.add_argument("--storage-options", type=_json_object, default={}, metavar="JSON",
                        help="fsspec options to read object-store files being copied")
    args = parser.parse_args(argv)
    try:
        from .select import select
    except ImportError as exc:
        print(f"{NEEDS} ({exc})", file=sys.stderr)
        return EXIT_OTHER
    try:
        counts = select(args.dataset, args.where, args.to, link=args.link, storage_options=args.storage_options)
    except ValueError as exc:
        print(f"genguard scan select: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"genguard scan select: {json.dumps(counts)} -> {args.to}")
    return EXIT_OK
