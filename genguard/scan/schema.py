"""The scan's output: one typed Arrow schema (docs/scan.md, "Schema") and the rows that fill it.

Plain Parquet types only (string, int, double, bool, map, struct, timestamp) so DuckDB, pandas and Spark read
the dataset as it is. A row is built from the reader's facts (uri, sha256, bytes) and the client's Result, or
from a failure that never reached the server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from genguard.client.results import ImageInfo
from genguard.protocol import FAILURE, NSFW_LEVELS

SCHEMA_VERSION = 1
PROBABILITIES = pa.map_(pa.string(), pa.float64())
TIMELINE = pa.struct([("t", pa.float64()), ("is_ai_generated", pa.float64()), ("verdict", pa.string()),
                      ("source", pa.string()), ("nsfw_level", pa.string())])

SCHEMA = pa.schema([
    ("uri", pa.string()),                 # the input: absolute path, object URL, or shard#member for WebDataset
    ("shard", pa.string()),               # WebDataset: the shard's uri (else null)
    ("key", pa.string()),                 # WebDataset: the sample's __key__ (else null)
    ("sha256", pa.string()),              # of the bytes read (null when they could not be read)
    ("bytes", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("kind", pa.string()),                # image | video (a clip, answered by genguard_video: docs/video.md)
    ("status", pa.string()),              # SUCCESS | FAILURE
    ("failure_reason", pa.string()),      # stable code (docs/scan.md), null on success
    ("failure_message", pa.string()),
    ("verdict", pa.string()),             # ai_generated | not_ai_generated | uncertain
    ("is_ai_generated", pa.float64()),
    ("source", pa.string()),
    ("possible_sources", PROBABILITIES),
    ("sources_given_ai", PROBABILITIES),
    ("nsfw_level", pa.string()),
    ("nsfw_scores", pa.struct([(level, pa.float64()) for level in NSFW_LEVELS])),
    ("detectors", pa.map_(pa.string(), PROBABILITIES)),  # "detector.head" -> label -> probability
    ("provenance_found", pa.bool_()),     # the image's metadata declares it AI-made
    ("provenance_generator", pa.string()),
    ("decided_by", pa.string()),          # c2pa | metadata when provenance decided the verdict
    ("video_duration_s", pa.float64()),   # a clip's duration, and how many of its frames were answered
    ("video_frames_sampled", pa.int32()),
    ("timeline", pa.list_(TIMELINE)),     # a clip's sampled frames
    ("weights_kind", pa.string()),        # real | random | mixed (the detectors' weights that answered)
    ("fusion_id", pa.string()),
    ("scanned_at", pa.timestamp("us", tz="UTC")),
])
COLUMNS = SCHEMA.names

# Failures a rerun retries (the input may be fine; the server or the store was not): the rest are final.
RETRYABLE = frozenset({"server_unreachable", "model_not_ready", "object_store_error", "timeout", "server_error",
                       "scan_error"})


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def failure(reason: str, message: str, **facts: Any) -> dict[str, Any]:
    """A row for an input that has no answer: `facts` are what is known (uri, shard, key, sha256, bytes)."""
    return {**facts, "status": FAILURE, "failure_reason": reason, "failure_message": message,
            "scanned_at": now()}


def weights_kind(weights: dict[str, str]) -> str | None:
    kinds = set(weights.values())
    return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"


def answer(result) -> dict[str, Any]:
    """The scored columns of a genguard.client Result (success or the server's failure)."""
    image, nsfw, provenance, video = result.image, result.nsfw, result.provenance or {}, result.video or {}
    if not image and video:  # a clip's size is in its video block
        image = ImageInfo(video.get("width"), video.get("height"), video.get("container"))
    return {
        "kind": result.kind,
        "video_duration_s": video.get("duration_s"), "video_frames_sampled": video.get("frames_sampled"),
        "timeline": [{k: frame.get(k) for k in TIMELINE.names} for frame in result.timeline] if result.timeline else None,
        "status": result.status,
        "failure_reason": result.error.reason if result.error else None,
        "failure_message": result.error.message if result.error else None,
        "width": image.width if image else None, "height": image.height if image else None,
        "format": image.format if image else None,
        "verdict": result.verdict, "is_ai_generated": result.is_ai_generated, "source": result.source,
        "possible_sources": result.possible_sources, "sources_given_ai": result.sources_given_ai,
        "nsfw_level": nsfw.level if nsfw else None,
        "nsfw_scores": {level: nsfw.scores.get(level) for level in NSFW_LEVELS} if nsfw else None,
        "detectors": {f"{det}.{head}": labels for det, heads in result.detectors.items()
                      for head, labels in heads.items()} or None,
        "provenance_found": bool(provenance.get("declares_ai")) if result.provenance is not None else None,
        "provenance_generator": provenance.get("generator"),
        "decided_by": result.decided_by,
        "weights_kind": weights_kind(result.weights),
        "fusion_id": result.fusion.get("id"),
        "scanned_at": now(),
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with any subset of COLUMNS) -> a table of SCHEMA; missing columns are null."""
    return pa.Table.from_pylist([{name: row.get(name) for name in COLUMNS} for row in rows], schema=SCHEMA)
