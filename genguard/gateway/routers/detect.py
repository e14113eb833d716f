"""POST /v1/detect: multipart upload (`file` fields) or Hive's JSON form; GenGuard's documents with names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..cache import hits_header
from ..errors import ApiError
from ..inputs import check_count, decode_all, parse_json, read_body, validate
from ..limits import require_key
from ..schemas import ERROR_RESPONSES, DetectMultipart, DetectRequest, DetectResponse
from ..videos import options as video_options

PATH = "/v1/detect"
router = APIRouter(tags=["GenGuard"])

BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                "description": DetectMultipart.model_fields["file"].description}}}},
    "application/json": {"schema": DetectRequest.model_json_schema()},
}}


@dataclass
class Inputs:
    """A parsed /v1/detect request (also what POST /v1/jobs takes): the items, their names, the explain choice,
    and the extra top-level fields a caller asked for (`fields`: JSON members or multipart text fields)."""
    images: list[bytes]
    names: list[str]
    explain: bool
    labels: dict | None
    fields: dict[str, str | object] = field(default_factory=dict)


async def read_inputs(request: Request, explain: bool, explain_label: list[str], fields: tuple[str, ...] = ()) -> Inputs:
    """The request's items, checked as /v1/detect checks them (422/415 before any inference)."""
    state = request.app.state.gateway
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    labels = _labels(explain_label, "explain_label")
    extra: dict = {}
    if kind == "multipart/form-data":
        images, names = await _multipart(request, state.settings.max_images, fields, extra)
    elif kind == "application/json" or kind.endswith("+json"):
        obj = parse_json(await read_body(request))
        if isinstance(obj, dict):
            extra.update((f, obj.pop(f)) for f in fields if f in obj)
        body = validate(DetectRequest, obj, request.headers)
        images = decode_all(body.input, state.settings.max_images)
        if body.names is not None and len(body.names) != len(body.input):
            raise ApiError(422, "invalid_request",
                           f"names has {len(body.names)} entries for {len(body.input)} inputs: give one per input")
        names = body.names or [f"input[{i}]" for i in range(len(images))]
        if body.explain_labels:
            labels = _merge(labels, _labels(body.explain_labels, "explain_labels"))
        del body, obj
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {kind or '(none)'} is not accepted here: send multipart/form-data with "
                       "`file` fields, or application/json with data URLs")
    return Inputs(images, names, explain or bool(labels), labels or None, extra)


async def _multipart(request: Request, max_images: int, fields: tuple[str, ...] = (),
                     extra: dict | None = None) -> tuple[list[bytes], list[str]]:
    try:
        # One more file than allowed, so that "too many" is ours to say (422), with the count.
        form = await request.form(max_files=max_images + 1, max_fields=16)
    except HTTPException as exc:
        raise ApiError(422, "invalid_multipart", f"the multipart body could not be read: {exc.detail}") from None
    try:
        files = [v for k, v in form.multi_items() if k == "file" and not isinstance(v, str)]
        if extra is not None:
            extra.update((k, v) for k, v in form.multi_items() if k in fields and isinstance(v, str))
        others = sorted({k for k, v in form.multi_items()
                         if (k != "file" or isinstance(v, str)) and not (k in fields and isinstance(v, str))})
        if others:
            raise ApiError(422, "invalid_request", f"unexpected form field(s) {', '.join(others)}: send each image "
                                                   "as a file in a field named `file`")
        if not files:
            raise ApiError(422, "no_images", "no `file` field: send each image as a file in a field named `file`")
        check_count(len(files), max_images)
        images = [await f.read() for f in files]
        names = [f.filename or f"file[{i}]" for i, f in enumerate(files)]
    finally:
        await form.close()
    return images, names


def _labels(choice, where: str) -> dict[str, dict[str, str]]:
    """The checked label choice, or 422 naming the valid detectors, heads or labels (before any inference)."""
    from genguard import specs
    from genguard.explanations import parse_labels

    try:
        return parse_labels(choice, [specs.get(n) for n in specs.DETECTORS])
    except ValueError as exc:
        raise ApiError(422, "invalid_explain_label", f"{where}: {exc}") from None


def _merge(query: dict, body: dict) -> dict:
    for detector, heads in body.items():
        for head, label in heads.items():
            if query.setdefault(detector, {}).setdefault(head, label) != label:
                raise ApiError(422, "invalid_explain_label", f"{detector}.{head} is given two labels: "
                               f"{query[detector][head]!r} (explain_label) and {label!r} (explain_labels)")
    return query


def clip_sampling(
        fps: float | None = Query(None, gt=0, description="videos: frames sampled per second of video "
                                                          "(server default 1; the first frame always)"),
        max_frames: int | None = Query(None, ge=1, description="videos: at most this many sampled frames per clip "
                                                               "(server default 120)"),
        sampling: Literal["rate", "keyframes"] | None = Query(
            None, description="videos: `rate` (every 1/fps s) or `keyframes` (only keyframes are decoded)")) -> dict:
    """The videos' sampling query parameters (of /v1/detect and /v1/jobs), as videos.options takes them."""
    return {"fps": fps, "max_frames": max_frames, "sampling": sampling}


@router.post(PATH, dependencies=[Depends(require_key)], response_model=DetectResponse, responses=ERROR_RESPONSES,
             openapi_extra={"requestBody": BODY}, summary="Detect: upload images and videos, or data URLs in JSON")
async def detect(request: Request, explain: bool = Query(
        False, description="answer through the genguard_explain ensemble: each document gains `explanations` "
                           "(heatmaps per detector head; slower: see docs/explanations.md)"),
        explain_label: list[str] = Query(
            [], description="map this label instead of the predicted one, `<detector>=<label>` or "
                            "`<detector>.<head>=<label>` (repeatable; implies explain=true), e.g. `sumsub_sd=real`"),
        clip: dict = Depends(clip_sampling)):
    """Multipart: one or many `file` fields (`curl -F file=@a.jpg -F file=@clip.mp4`). JSON: `{"input":
    ["data:image/<type>;base64,...", "data:video/mp4;base64,..."], "names": [...]}`. Answers GenGuard's full
    document per image, in order, with `index` and `name`; a bad image is that item's FAILURE. `?explain=true`
    adds heatmaps; `explain_label` (or JSON `explain_labels`) names the label to map per head instead of the
    predicted one.

    **Videos** (MP4/MOV, WebM, AVI, MPEG-TS, animated GIF/WebP/PNG; told from images by their bytes) are answered
    by the `genguard_video` model, one document per clip with `kind: "video"`: the clip's verdict, `source`
    and `is_ai_generated` aggregated from its sampled frames, `nsfw` (the highest level reached and its
    timestamps), `timeline` (per sampled frame: `t`, `is_ai_generated`, `source`, `nsfw_level`) and `video`
    (container, codec, size, duration, fps). Sampling: `fps`, `max_frames`, `sampling`. A clip over this
    route's synchronous limits (`video_max_bytes`, `video_max_duration_s`) is that item's FAILURE naming the
    asynchronous jobs API, `POST /v1/jobs`. See docs/video.md."""
    state = request.app.state.gateway
    clip_options = video_options(state.settings.video_max_duration_s, **clip)
    async with state.limiter.admit():
        inputs = await read_inputs(request, explain, explain_label)
        docs = await state.answer(PATH, inputs.images, explain=inputs.explain, explain_labels=inputs.labels,
                                  video_options=clip_options)
    return JSONResponse({"data": [{**d, "name": n} for d, n in zip(docs, inputs.names)]}, headers=hits_header(docs))
