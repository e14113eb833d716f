"""The output folder: Parquet parts written atomically as rows arrive, what a rerun finds done, summary.json.

DIR/rows/part-<run>-<n>.parquet  the dataset (schema.SCHEMA; `pd.read_parquet("DIR/rows")`, DuckDB
                            `read_parquet('DIR/rows/*.parquet')`); each part is written to a hidden temporary name and
                            renamed, so a killed scan leaves whole parts only
DIR/summary.json            counts over the whole dataset and this run's figures
DIR/_scan/                  the listing of the current run (hidden from Parquet readers by its leading _)
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .sources import uri_digest

ROWS = "rows"
PART_GLOB = "part-*.parquet"
SUMMARY = "summary.json"
COUNTED = ("status", "failure_reason", "verdict", "source", "nsfw_level", "weights_kind", "fusion_id")


def parts(out: Path) -> list[Path]:
    return sorted((out / ROWS).glob(PART_GLOB))


def pattern(out: Path) -> str:
    """The dataset's parts for DuckDB's read_parquet (quoted for SQL)."""
    return "'" + str(out / ROWS / PART_GLOB).replace("'", "''") + "'"


def _write(table: pa.Table, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)


def drop_retryable(out: Path) -> int:
    """Remove the rows a rerun retries (schema.RETRYABLE) from their parts; returns how many."""
    dropped = 0
    for part in parts(out):
        table = pq.read_table(part, schema=schema.SCHEMA)
        reasons = table.column("failure_reason").to_pylist()
        keep = [reason not in schema.RETRYABLE for reason in reasons]
        if not all(keep):
            dropped += keep.count(False)
            kept = table.filter(pa.array(keep))
            _write(kept, part) if kept.num_rows else part.unlink()
    return dropped


def done_digests(out: Path) -> np.ndarray:
    """Sorted 64-bit digests of the uris the dataset holds (8 bytes a row, not the strings)."""
    digests = []
    for part in parts(out):
        for batch in pq.ParquetFile(part).iter_batches(columns=["uri"]):
            digests.extend(uri_digest(uri) for uri in batch.column(0).to_pylist())
    return np.sort(np.array(digests, dtype=np.int64))


class PartWriter:
    """Buffers result tables and writes a part every `rows` rows or `seconds` seconds (and at close)."""

    def __init__(self, out: Path, rows: int = 2048, seconds: float = 10.0):
        (out / ROWS).mkdir(parents=True, exist_ok=True)
        self.out, self.rows, self.seconds = out, rows, seconds
        self.run = uuid.uuid4().hex[:8]
        self.buffer: list[pa.Table] = []
        self.buffered = self.written = self.count = 0
        self.last = time.monotonic()

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table.select(schema.COLUMNS).cast(schema.SCHEMA))
        self.buffered += table.num_rows
        if self.buffered >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.buffered:
            return
        _write(pa.concat_tables(self.buffer), self.out / ROWS / f"part-{self.run}-{self.count:06d}.parquet")
        self.count += 1
        self.written += self.buffered
        self.buffer, self.buffered = [], 0


def summarize(out: Path, run: dict[str, Any]) -> dict[str, Any]:
    """summary.json: counts by status, failure reason, verdict, source, NSFW level, weights kind and fusion id over
    the whole dataset (DuckDB over the parts), and this run's figures (`run`)."""
    import duckdb

    summary: dict[str, Any] = {"schema_version": schema.SCHEMA_VERSION, "rows": 0, "unique_images": 0,
                               **{f"by_{c}": {} for c in COUNTED}}
    if parts(out):
        con = duckdb.connect()
        con.execute(f"CREATE VIEW scan AS SELECT * FROM read_parquet({pattern(out)})")
        summary["rows"], summary["unique_images"] = con.execute(
            "SELECT count(*), count(DISTINCT sha256) FROM scan").fetchone()
        for column in COUNTED:
            pairs = con.execute(f"SELECT coalesce({column}, 'null'), count(*) FROM scan GROUP BY 1 ORDER BY 2 DESC, 1")
            summary[f"by_{column}"] = dict(pairs.fetchall())
        con.close()
    summary.update(run)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
