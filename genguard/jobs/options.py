"""The jobs settings' flags, shared by `genguard gateway` and `genguard worker` (no database import here)."""

from __future__ import annotations

import argparse

JOBS_SETTINGS = ("state_dir", "jobs_db", "jobs_spool", "jobs_workers", "jobs_batch", "jobs_lease_s",
                 "jobs_max_claims", "jobs_retention_s", "jobs_callback_hosts", "jobs_webhook_attempts",
                 "jobs_webhook_backoff_s")


def add_arguments(parser: argparse.ArgumentParser, workers_default: str | None = None) -> None:
    from genguard.gateway.settings import ENV_PREFIX, Settings

    d = Settings()
    env = lambda name: f"${ENV_PREFIX}{name.upper()}"  # noqa: E731
    group = parser.add_argument_group("jobs (docs/jobs.md)")
    group.add_argument("--state-dir", default=None, help=f"the SQLite jobs store and the spool (default {d.state_dir}; "
                                                         f"{env('state_dir')})")
    group.add_argument("--jobs-db", default=None, help="postgresql://user@host/db for several replicas "
                                                       f"(default: SQLite in --state-dir; {env('jobs_db')})")
    group.add_argument("--jobs-spool", default=None, help="uploaded bytes: a folder or an fsspec URL "
                                                          f"(default: <state-dir>/spool; {env('jobs_spool')})")
    group.add_argument("--jobs-workers", type=int, default=None,
                       help=workers_default or f"job workers in this process (default {d.jobs_workers}; 0: none)")
    group.add_argument("--jobs-batch", type=int, default=None, help=f"items per request to Triton (default {d.jobs_batch})")
    group.add_argument("--jobs-lease-s", type=float, default=None,
                       help=f"a silent worker's job is retried after this (default {d.jobs_lease_s:g})")
    group.add_argument("--jobs-max-claims", type=int, default=None,
                       help=f"claims before a job fails (default {d.jobs_max_claims})")
    group.add_argument("--jobs-retention-s", type=float, default=None,
                       help=f"finished jobs are deleted after this (default {d.jobs_retention_s:g}: 7 days)")
    group.add_argument("--jobs-callback-hosts", default=None,
                       help=f"allowed callback hosts: names, *.suffix, IPs, CIDRs, comma-separated ({env('jobs_callback_hosts')})")
    group.add_argument("--jobs-webhook-attempts", type=int, default=None,
                       help=f"deliveries tried per webhook (default {d.jobs_webhook_attempts})")
    group.add_argument("--jobs-webhook-backoff-s", type=float, default=None,
                       help=f"first retry delay, doubled per attempt (default {d.jobs_webhook_backoff_s:g})")
