"""Ray Data stages: read entries into bytes (tasks), score them with GenGuard (an actor pool), dedupe by sha256.

Each scoring actor holds one genguard.client Client over gRPC (its retries and backoff), sending one request of
`batch_size` images at a time; `concurrency` actors = requests in flight. A server that stays unreachable turns
the batch into server_unreachable rows, never an exception that would lose them.

Identical bytes are scored once per scan: the actors claim each sha256 at a named Dedupe actor; the first claimant
scores it and publishes the answer, the others wait for it (and score it themselves if the claimant died).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pyarrow as pa

from genguard.protocol import FAILURE

from . import schema
from .sources import Entry, read, uri_digest

# The read stage's rows: what the scorer needs (image bytes, or why there are none)
READ_SCHEMA = pa.schema([("uri", pa.string()), ("shard", pa.string()), ("key", pa.string()), ("sha256", pa.string()),
                         ("bytes", pa.int64()), ("data", pa.large_binary()), ("failure_reason", pa.string()),
                         ("failure_message", pa.string())])
FACTS = ("uri", "shard", "key", "sha256", "bytes")
DEDUPE_ACTOR = "genguard-scan-dedupe"
DEDUPE_CAPACITY = 1_000_000  # answers remembered; a duplicate further apart than this is scored again


def read_batch(batch: dict[str, np.ndarray], done: np.ndarray, storage_options: dict) -> pa.Table:
    """Entries -> READ_SCHEMA rows; uris already in the output dataset (`done`, sorted digests) are dropped."""
    rows = []
    for uri, kind in zip(batch["uri"], batch["kind"]):
        for row in read(Entry(str(uri), str(kind)), storage_options):
            digest = uri_digest(row["uri"])
            position = np.searchsorted(done, digest)
            if position < len(done) and done[position] == digest:
                continue
            data, error = row.pop("data", None), row.pop("error", None)
            if data is not None:
                row.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
                if not data:
                    error, data = ("empty", "the file is empty (zero bytes)"), None
            if error:
                row.update(failure_reason=error[0], failure_message=error[1])
            rows.append({**row, "data": data})
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


class Dedupe:
    """sha256 -> the scored columns, shared by the scoring actors (a Ray actor, one per scan)."""

    def __init__(self, capacity: int = DEDUPE_CAPACITY):
        self.capacity = capacity
        self.answers: dict[str, dict | None] = {}  # None: claimed, being scored

    def claim(self, shas: list[str]) -> dict[str, Any]:
        """For each sha: its answer, "pending" (someone scores it), or "yours" (now claimed by the caller)."""
        out = {}
        for sha in shas:
            if sha in self.answers:
                out[sha] = self.answers[sha] or "pending"
            else:
                self.answers[sha] = None
                out[sha] = "yours"
        return out

    def publish(self, answers: dict[str, dict | None]) -> None:
        """Answers of claimed shas; None releases a claim (an answer not worth sharing: the server was away)."""
        for sha, answer in answers.items():
            if answer is None:
                self.answers.pop(sha, None)
            else:
                self.answers[sha] = answer
        while len(self.answers) > self.capacity:  # dicts keep insertion order: forget the oldest
            self.answers.pop(next(iter(self.answers)))

    def lookup(self, shas: list[str]) -> dict[str, dict | None]:
        return {sha: self.answers.get(sha) for sha in shas}


class Scorer:
    """The map_batches actor: READ_SCHEMA rows -> schema.SCHEMA rows."""

    def __init__(self, url: str, batch_size: int | None, timeout: float, retries: int, dedupe: str | None):
        import ray

        from genguard.client import Client

        self.client = Client(url, batch_size=batch_size, concurrency=1, timeout=timeout, retries=retries)
        self.dedupe = ray.get_actor(dedupe) if dedupe else None
        self.wait_s = timeout * (retries + 1) + 10  # how long to wait for another actor's answer

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        shas = sorted({r["sha256"] for r in rows if r["data"] is not None})
        claims = self._call("claim", shas) if self.dedupe else {sha: "yours" for sha in shas}
        mine = [sha for sha in shas if claims[sha] == "yours"]
        data = {r["sha256"]: r["data"] for r in rows if r["data"] is not None}
        answers = {sha: claims[sha] for sha in shas if isinstance(claims[sha], dict)}
        answers.update(self._score(mine, data))
        if self.dedupe and mine:
            self._call("publish", {sha: None if answers[sha].get("failure_reason") in schema.RETRYABLE
                                   else answers[sha] for sha in mine})
        pending = [sha for sha in shas if sha not in answers]
        deadline = time.monotonic() + self.wait_s
        while pending and self.dedupe and time.monotonic() < deadline:
            found = {sha: a for sha, a in self._call("lookup", pending).items() if a}
            answers.update(found)
            pending = [sha for sha in pending if sha not in found]
            if pending:
                time.sleep(0.05)
        answers.update(self._score(pending, data))  # the claimant is gone or slow: score them here
        out = []
        for r in rows:
            facts = {k: r[k] for k in FACTS}
            if r["data"] is None:
                out.append(schema.failure(r["failure_reason"], r["failure_message"], **facts))
            else:
                out.append({**answers[r["sha256"]], **facts, "scanned_at": schema.now()})
        return schema.table(out)

    def _call(self, method: str, *args):
        """A Dedupe call; if that actor is gone (Ray's memory monitor kills workers on a full node) the scan goes on
        without it: duplicates are then scored again, rows are never lost."""
        import ray

        try:
            return ray.get(getattr(self.dedupe, method).remote(*args), timeout=60)
        except Exception:
            self.dedupe = None
            return {sha: "yours" for sha in args[0]} if method == "claim" else {}

    def _score(self, shas: list[str], data: dict[str, bytes]) -> dict[str, dict]:
        """sha -> scored columns, one request per batch_size images; a server that stays away fails them alone."""
        if not shas:
            return {}
        from genguard.client.inputs import Item
        from genguard.client.errors import ModelNotReady, ServerUnavailable

        items = [Item(i, sha, lambda d=data[sha]: d) for i, sha in enumerate(shas)]
        try:
            results = self.client.detect(items)
        except ServerUnavailable as exc:
            done = {r.name: schema.answer(r) for r in exc.partial or []}
            lost = {"status": FAILURE, "failure_reason": "server_unreachable", "failure_message": str(exc)}
            return {sha: done.get(sha, lost) for sha in shas}
        except ModelNotReady as exc:
            return {sha: {"status": FAILURE, "failure_reason": "model_not_ready", "failure_message": str(exc)}
                    for sha in shas}
        except Exception as exc:  # anything else fails these images alone (a rerun retries them), never the scan
            return {sha: {"status": FAILURE, "failure_reason": "scan_error",
                          "failure_message": f"{type(exc).__name__}: {exc}"} for sha in shas}
        return {r.name: schema.answer(r) for r in results}
