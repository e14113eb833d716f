"""Clips on the gateway's synchronous routes: which inputs are videos (magic bytes, never names), the
synchronous limit (bytes here, before any work; duration by the `genguard_video` model, asked for the lower
limit), and the pointer to the asynchronous jobs API for what is longer.

The gateway never decodes a clip: `genguard_video` does, in Triton, off this event loop. The functions here
are what another route that takes the same inputs (the jobs API) calls with its own limits.
"""

from __future__ import annotations

import json

from genguard import protocol, video

from .errors import ApiError

JOBS_ROUTE = "POST /v1/jobs"
TOO_LONG = ("too_large", "too_long")  # genguard_video's reasons that the jobs API answers instead


def jobs_hint(limit: str) -> str:
    return f"{limit}: longer or larger clips go through the asynchronous jobs API, {JOBS_ROUTE} (docs/video.md)"


def refusal(index: int, data: bytes, max_bytes: int) -> dict | None:
    """The FAILURE document of a clip over the synchronous byte limit (None for images and clips within it):
    that clip fails alone, its neighbours are answered."""
    if len(data) <= max_bytes or not video.is_video(data):
        return None
    return {"index": index, "kind": "video", "status": protocol.FAILURE, "error": {"reason": "too_large", "message": (
        jobs_hint(f"the clip is {len(data)} bytes, over this route's synchronous limit of {max_bytes} bytes"))},
        "is_ai_generated": None, "verdict": None, "possible_sources": None, "sources_given_ai": None,
        "source": None, "decided_by": None}


def with_jobs_hint(doc: dict) -> dict:
    """A clip refused by genguard_video for its length or size also names the jobs API."""
    error = doc.get("error") or {}
    if doc.get("kind") == "video" and error.get("reason") in TOO_LONG and JOBS_ROUTE not in error.get("message", ""):
        return {**doc, "error": {**error, "message": jobs_hint(error.get("message", "").rstrip("."))}}
    return doc


def options(max_duration_s: float, fps: float | None = None, max_frames: int | None = None,
            sampling: str | None = None) -> dict:
    """genguard_video's OPTIONS for a synchronous request: the caller's sampling (422 when invalid, before any
    work) and the route's duration limit."""
    asked = {k: v for k, v in {"fps": fps, "max_frames": max_frames, "sampling": sampling}.items() if v is not None}
    try:
        video.parse_options(json.dumps({**asked, "max_duration_s": max_duration_s}))
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "invalid_video_options", f"video sampling: {exc}") from None
    return {**asked, "max_duration_s": max_duration_s}


def refuse_videos(images: list[bytes], route: str) -> None:
    """For routes that take images only (Hive's): a clip is refused, naming the route that takes it."""
    for i, data in enumerate(images):
        kind = video.sniff(data)
        if kind:
            raise ApiError(422, "video_not_supported",
                           f"input[{i}] is a video ({kind}): {route} takes images only, as Hive's does; send videos "
                           "to POST /v1/detect (multipart or data:video/<type>;base64 URLs)")
