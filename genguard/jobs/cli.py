"""`genguard jobs submit|status|wait|list|cancel` (the REST client's jobs), `genguard jobs migrate` and
`genguard worker` (job workers outside the gateway, for scale; needs the `gateway` extra)."""

from __future__ import annotations

import argparse
import json
import sys

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def add_parsers(sub, connection: argparse.ArgumentParser, epilog: str) -> None:
    jobs = sub.add_parser("jobs", help="async jobs on the REST gateway: submit, status, wait, list, cancel; migrate",
                          description="Async jobs on a GenGuard gateway (--url http(s)://...): see docs/jobs.md.")
    verbs = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = verbs.add_parser("submit", parents=[connection], epilog=epilog, help="upload images as one job")
    submit.add_argument("paths", nargs="+", metavar="PATH", help="image file, directory or glob")
    submit.add_argument("-r", "--recursive", action="store_true", help="descend into sub-directories")
    submit.add_argument("--callback-url", default=None, help="the gateway calls it (signed) when the job finishes")
    submit.add_argument("--metadata", default=None, metavar="JSON", help="a JSON object echoed back with the job")
    submit.add_argument("--idempotency-key", default=None, help="a retried submission returns the same job")
    submit.add_argument("--wait", action="store_true", help="wait for the results and print them like `detect`")
    for name, text in (("status", "a job's status and progress"), ("wait", "wait for a job and print its results"),
                       ("cancel", "cancel a queued or running job")):
        verb = verbs.add_parser(name, parents=[connection], epilog=epilog, help=text)
        verb.add_argument("job_id")
    for verb in (submit, verbs.choices["wait"]):
        verb.add_argument("--format", choices=("table", "jsonl", "csv", "hive"), default="table")
        verb.add_argument("--wait-timeout", type=float, default=None, help="seconds (default: no limit)")
    listing = verbs.add_parser("list", parents=[connection], epilog=epilog, help="this key's jobs, newest first")
    listing.add_argument("--status", choices=STATUSES, default=None)
    listing.add_argument("--limit", type=int, default=50)
    migrate = verbs.add_parser("migrate", help="create or upgrade the jobs store's schema (the gateway and "
                                               "workers also do at startup)")
    from .options import add_arguments

    add_arguments(migrate)
    worker = sub.add_parser("worker", help="run job workers outside the gateway (needs the `gateway` extra)",
                            description="Claims jobs from the gateway's store (--jobs-db, --jobs-spool as the "
                                        "gateway's) and answers them through Triton; SIGTERM finishes the batch in "
                                        "flight and puts unfinished jobs back.")
    worker_arguments(worker)


def worker_arguments(parser: argparse.ArgumentParser) -> None:
    from genguard.gateway.settings import Settings

    from .options import add_arguments

    d = Settings()
    parser.add_argument("--triton-url", default=None, help=f"Triton gRPC host:port (default {d.triton_url})")
    parser.add_argument("--deadline-s", type=float, default=None, help=f"per batch (default {d.deadline_s:g})")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help=f"batches forwarded to Triton at once (default {d.max_concurrency})")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_arguments(parser)


def _settings(args):
    from genguard.gateway.settings import Settings

    from .options import JOBS_SETTINGS

    names = [n for n in ("triton_url", "deadline_s", "max_concurrency", *JOBS_SETTINGS) if hasattr(args, n)]
    return Settings.from_env(**{n: getattr(args, n) for n in names})


def run_worker(args) -> int:
    import asyncio
    import logging
    import signal

    from genguard.gateway.engine import Engine
    from genguard.gateway.limits import Limiter
    from genguard.gateway.settings import SettingsError

    from .worker import Jobs, Workers

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"genguard worker: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        jobs = Jobs(settings)
        await asyncio.to_thread(jobs.migrate)
        engine = Engine(settings, Limiter(settings.max_concurrency, settings.max_queue, settings.retry_after_s))
        workers = Workers(jobs, lambda images, explain, labels, video: engine.detect(
            images, explain=explain, explain_labels=labels, video_options=video), max(1, settings.jobs_workers))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        workers.start()
        print(f"genguard worker: {workers.count} workers on {settings.jobs_db_url.split('@')[-1]} -> Triton "
              f"{settings.triton_url}", file=sys.stderr, flush=True)
        await stop.wait()
        await workers.stop()  # the batches in flight are written; unfinished jobs go back to the queue
        jobs.close()
        await engine.close()

    asyncio.run(main())
    return 0


def migrate(args) -> int:
    from .migrations import current
    from .store import Store

    store = Store(_settings(args).jobs_db_url)
    store.migrate()
    print(f"jobs store at revision {current(store.engine)}")
    store.close()
    return 0


def _print_job(job, out) -> None:
    line = f"{job.id}  {job.status:<9}  {job.done}/{job.total}"
    if job.webhook.get("status") not in (None, "none"):
        line += f"  webhook {job.webhook['status']}"
    if job.error:
        line += f"  error: {job.error}"
    print(line, file=out)


def run_client(args, client_for, write_results) -> int:
    """The client verbs; client_for(args) is the CLI's REST client."""
    if args.protocol != "rest":
        print("genguard jobs: jobs live on the REST gateway: --url http(s)://host:port", file=sys.stderr)
        return 2
    with client_for(args) as client:
        if args.jobs_command == "submit":
            metadata = json.loads(args.metadata) if args.metadata else None
            job = client.submit(args.paths, callback_url=args.callback_url, metadata=metadata,
                                idempotency_key=args.idempotency_key, recursive=args.recursive)
            if not args.wait:
                print(job.id)
                return 0
        elif args.jobs_command == "list":
            for job in client.jobs(args.status, args.limit):
                _print_job(job, sys.stdout)
            return 0
        elif args.jobs_command == "cancel":
            _print_job(client.cancel(args.job_id), sys.stdout)
            return 0
        elif args.jobs_command == "status":
            job = client.job(args.job_id)
            _print_job(job, sys.stdout)
            return 0
        else:
            job = args.job_id
        job = client.wait(job, timeout=args.wait_timeout)
        if job.status != "succeeded":
            _print_job(job, sys.stderr)
            return 1
        write_results(job.results, args.format, None, sys.stdout)
        return 0
