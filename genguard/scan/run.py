"""The driver: list the sources, start (or join) Ray, stream the Ray Data pipeline, write parts, summarize.

Memory in the driver stays small whatever the scan's size: the listing is written to Parquet chunks as it is
walked (`_scan/listing-*.parquet`) and read back by Ray Data tasks; image bytes live only in the read tasks, the
scoring actors and Ray's object store, whose share for this pipeline is capped (`max_inflight_bytes`); the driver
receives result rows only.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import output, sources

LISTING_CHUNK = 10_000  # entries per listing file


@dataclass
class Options:
    url: str = "127.0.0.1:8001"
    batch_size: int | None = None        # images per request (default and cap: the server's max_batch_size)
    concurrency: int = 2                 # scoring actors = requests in flight
    timeout: float = 60.0
    retries: int = 3
    storage_options: dict = field(default_factory=dict)  # fsspec options (s3fs: endpoint_url, key, secret ...)
    ray_address: str | None = None       # None: RAY_ADDRESS, else a local Ray started here
    max_inflight_bytes: int = 512 << 20  # object store bytes this pipeline may hold (image bytes in flight)
    part_rows: int = 2048
    progress: bool = True
    dedupe: bool = True


def _list(srcs: Iterable[str], folder: Path, storage_options: dict) -> tuple[list[str], int, bool]:
    """Write the listing in chunks; (files, entries, any WebDataset shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    files, count, tar = [], 0, False
    chunk: list[sources.Entry] = []

    def flush() -> None:
        path = folder / f"listing-{len(files):06d}.parquet"
        pq.write_table(pa.table({"uri": [e.uri for e in chunk], "kind": [e.kind for e in chunk]}), path)
        files.append(str(path))
        chunk.clear()

    for entry in sources.entries(srcs, storage_options):
        chunk.append(entry)
        count += 1
        tar |= entry.kind == sources.TAR
        if len(chunk) >= LISTING_CHUNK:
            flush()
    if chunk:
        flush()
    return files, count, tar


def start_ray(address: str | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a quiet local one; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False if not address else None, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=True)
    return True


def _health(opts: Options) -> dict[str, Any]:
    """What the server says it serves (best effort: an unreachable server shows in the rows)."""
    from genguard.client import Client

    from .schema import weights_kind

    try:
        with Client(opts.url, timeout=min(opts.timeout, 10), retries=0) as client:
            health = client.health()
        return {"server": opts.url, "server_ready": health.ok, "weights_kind": weights_kind(health.weights),
                "weights": health.weights, "revisions": health.revisions}
    except Exception as exc:
        return {"server": opts.url, "server_ready": False, "server_error": str(exc)}


def scan(srcs: list[str], out: Path, opts: Options | None = None) -> dict[str, Any]:
    """Scan `srcs` into the dataset at `out` (resuming what it holds); returns the summary."""
    import ray
    from ray.data import DataContext, ExecutionResources
    from tqdm import tqdm

    from .score import DEDUPE_ACTOR, Dedupe, Scorer, read_batch

    opts = opts or Options()
    out.mkdir(parents=True, exist_ok=True)
    started, clock = dt.datetime.now(dt.timezone.utc), time.monotonic()
    server = _health(opts)
    retried = output.drop_retryable(out)
    done = output.done_digests(out)
    files, listed, has_tar = _list(srcs, out / "_scan", opts.storage_options)
    written = 0
    started_ray = start_ray(opts.ray_address) if files else False
    try:
        if files:
            ctx = DataContext.get_current()
            ctx.enable_progress_bars = False  # the tqdm bar below counts rows; Ray's would count blocks
            ctx.print_on_execution_start = False
            ctx.execution_options.resource_limits = ExecutionResources(object_store_memory=opts.max_inflight_bytes)
            ctx.target_max_block_size = max(8 << 20, opts.max_inflight_bytes // 16)
            dedupe = None
            if opts.dedupe:
                dedupe = f"{DEDUPE_ACTOR}-{uuid.uuid4().hex[:8]}"
                actor = ray.remote(Dedupe).options(name=dedupe, num_cpus=0, max_restarts=-1).remote()
            batch = opts.batch_size or 16
            # blocks of `batch` rows before and after reading (a shard expands into many rows): each is one task,
            # so reads run in parallel and every scoring actor gets work
            dataset = (ray.data.read_parquet(files)
                       .repartition(target_num_rows_per_block=batch)
                       .map_batches(read_batch, batch_size=batch, batch_format="numpy",
                                    fn_kwargs={"done": done, "storage_options": opts.storage_options})
                       .repartition(target_num_rows_per_block=batch)
                       .map_batches(Scorer, batch_size=batch, batch_format="pyarrow",
                                    compute=ray.data.ActorPoolStrategy(size=opts.concurrency),
                                    num_cpus=0.25, fn_constructor_kwargs={
                                        "url": opts.url, "batch_size": opts.batch_size, "timeout": opts.timeout,
                                        "retries": opts.retries, "dedupe": dedupe}))
            writer = output.PartWriter(out, rows=opts.part_rows)
            bar = tqdm(total=None if has_tar else listed, initial=0 if has_tar else min(len(done), listed),
                       unit="img", desc="genguard scan", file=sys.stderr, disable=not opts.progress, smoothing=0.1)
            try:
                for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                    writer.add(table)
                    bar.update(table.num_rows)
            finally:
                writer.flush()
                bar.close()
                written = writer.written
                if dedupe:
                    ray.kill(actor)
    finally:
        if started_ray:
            ray.shutdown()
    seconds = time.monotonic() - clock
    run = {"sources": srcs, "server": server, "started_at": started.isoformat(),
           "ended_at": dt.datetime.now(dt.timezone.utc).isoformat(), "listed": listed, "already_done": len(done),
           "retried": retried, "scanned_this_run": written, "seconds": round(seconds, 3),
           "images_per_second": round(written / seconds, 3) if seconds else None}
    shutil.rmtree(out / "_scan", ignore_errors=True)
    return output.summarize(out, {"run": run})
