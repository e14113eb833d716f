"""Async jobs: POST /v1/jobs (what /v1/detect takes, plus callback_url and metadata) -> 202; GET /v1/jobs/{id};
GET /v1/jobs; DELETE /v1/jobs/{id}; GET /v1/jobs/webhook-secret. A key sees only its own jobs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse

from ..errors import ApiError
from ..limits import require_key
from ..schemas import ERROR_RESPONSES
from ..videos import options as video_options
from .detect import BODY, clip_sampling, read_inputs

PATH = "/v1/jobs"
router = APIRouter(tags=["Jobs"], dependencies=[Depends(require_key)])
MAX_METADATA_BYTES = 16 << 10
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

SUBMIT_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {
        **BODY["content"]["multipart/form-data"]["schema"],
        "properties": {**BODY["content"]["multipart/form-data"]["schema"]["properties"],
                       "callback_url": {"type": "string", "description": "called with the signed result"},
                       "metadata": {"type": "string", "description": "a JSON object, echoed back"}}}},
    "application/json": {"schema": {
        "allOf": [BODY["content"]["application/json"]["schema"]],
        "properties": {"callback_url": {"type": "string", "format": "uri"}, "metadata": {"type": "object"}}}},
}}


def owner_of(request: Request) -> str:
    """Who owns a job: a digest of the API key (keys are never stored); `anonymous` on a keyless loopback gateway."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if not request.app.state.gateway.keys.enabled or not token.strip():
        return "anonymous"
    return hashlib.sha256(token.strip().encode()).hexdigest()[:32]


def _jobs(request: Request):
    return request.app.state.gateway.jobs


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"no job {job_id[:64]} for this API key (finished jobs are deleted after "
                                          "the gateway's retention time)")


def _metadata(value) -> object | None:
    if value is None:
        return None
    if isinstance(value, str):  # multipart: a JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise ApiError(422, "invalid_request", "metadata must be a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", "metadata must be a JSON object")
    if len(json.dumps(value)) > MAX_METADATA_BYTES:
        raise ApiError(422, "invalid_request", f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON")
    return value


async def _callback(request: Request, value) -> str | None:
    from genguard.jobs.webhooks import CallbackRefused, check_callback

    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", "callback_url must be a string")
    try:
        return await asyncio.to_thread(check_callback, value, _jobs(request).allowlist)
    except CallbackRefused as exc:
        raise ApiError(422, "callback_refused", str(exc)) from None


def _accepted(job: dict, replayed: bool) -> JSONResponse:
    from genguard.jobs.worker import public

    headers = {"Location": job["url"]} | ({"Idempotent-Replayed": "true"} if replayed else {})
    return JSONResponse(public(job), status_code=202, headers=headers)


@router.post(PATH, status_code=202, responses=ERROR_RESPONSES, openapi_extra={"requestBody": SUBMIT_BODY},
             summary="Submit a job: the same inputs as /v1/detect; answered at once with the job's id and URL")
async def submit(request: Request, explain: bool = Query(False, description="as /v1/detect"),
                 explain_label: list[str] = Query([], description="as /v1/detect"),
                 clip: dict = Depends(clip_sampling),
                 idempotency_key: str | None = Header(None, max_length=255, description=(
                     "a retried submission with the same key returns the same job (per API key)"))):
    """Multipart or JSON exactly as `/v1/detect`, plus optional `callback_url` (a signed webhook when the job
    finishes) and `metadata` (a JSON object echoed back). 202 with the job; GET its `url` for progress and results.
    Videos: without /v1/detect's synchronous limits (`video_max_bytes`, `video_max_duration_s`): only the body
    limit and `genguard_video`'s own (docs/video.md)."""
    from genguard.video import VideoLimits

    state, jobs = request.app.state.gateway, _jobs(request)
    clip_options = video_options(VideoLimits().max_duration_s, **clip)
    owner = owner_of(request)
    idempotency_key = idempotency_key or None
    existing = await asyncio.to_thread(jobs.store.find_idempotent, owner, idempotency_key)
    if existing:
        return _accepted(await asyncio.to_thread(jobs.store.get, existing, owner, False), True)
    async with state.limiter.admit():
        inputs = await read_inputs(request, explain, explain_label, fields=("callback_url", "metadata"))
        callback_url = await _callback(request, inputs.fields.get("callback_url"))
        metadata = _metadata(inputs.fields.get("metadata"))
        job_id = jobs.store.new_id()
        # the bytes first: a worker may claim the job as soon as its row exists
        await asyncio.to_thread(jobs.spool.put, job_id, inputs.images)
        options = {"explain": inputs.explain, "explain_labels": inputs.labels, "video": clip_options}
        try:
            got, created = await asyncio.to_thread(jobs.store.create, job_id, owner, inputs.names, options, metadata,
                                                   callback_url, idempotency_key)
        except BaseException:
            await asyncio.to_thread(jobs.spool.remove, job_id)
            raise
    if not created:  # a concurrent submission with the same key won
        await asyncio.to_thread(jobs.spool.remove, job_id)
    jobs.wake.set()
    return _accepted(await asyncio.to_thread(jobs.store.get, got, owner, False), not created)


@router.get(PATH + "/webhook-secret", responses=ERROR_RESPONSES,
            summary="This API key's webhook signing secret (Standard Webhooks `whsec_...`)")
async def webhook_secret(request: Request):
    """Verify deliveries with it: `standardwebhooks.Webhook(secret).verify(body, headers)`."""
    secret = await asyncio.to_thread(_jobs(request).store.webhook_secret, owner_of(request))
    return {"secret": secret}


@router.get(PATH + "/{job_id}", responses=ERROR_RESPONSES, summary="A job: status, progress, results when done")
async def get_job(request: Request, job_id: str):
    """`status`: queued, running, succeeded, failed, cancelled; `progress`: items done of total; `data`: the items
    answered so far, each as /v1/detect answers it; `webhook`: its delivery status and every attempt."""
    from genguard.jobs.worker import public

    job = await asyncio.to_thread(_jobs(request).store.get, job_id, owner_of(request))
    if job is None:
        raise _not_found(job_id)
    return JSONResponse(public(job))


@router.get(PATH, responses=ERROR_RESPONSES, summary="This key's jobs, newest first (no results; paginated)")
async def list_jobs(request: Request, status: str | None = Query(None, description="|".join(STATUSES)),
                    limit: int = Query(50, ge=1, le=500),
                    cursor: str | None = Query(None, description="`next_cursor` of the previous page")):
    from genguard.jobs.worker import public

    if status is not None and status not in STATUSES:
        raise ApiError(422, "invalid_request", f"status must be one of {', '.join(STATUSES)}, not {status[:20]!r}")
    before = None
    if cursor:
        try:
            created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            before = (float(created_at), str(job_id))
        except (ValueError, TypeError):
            raise ApiError(422, "invalid_request", "cursor is not a next_cursor this gateway gave") from None
    rows = await asyncio.to_thread(_jobs(request).store.list, owner_of(request), status, limit + 1, before)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = base64.urlsafe_b64encode(json.dumps(rows[-1]["_cursor"]).encode()).decode() if more else None
    return {"data": [public(r) for r in rows], "next_cursor": next_cursor}


@router.delete(PATH + "/{job_id}", responses=ERROR_RESPONSES, summary="Cancel a queued or running job")
async def cancel(request: Request, job_id: str):
    """Items already answered stay in the job; a finished job is answered 409 `job_finished`."""
    from genguard.jobs.worker import public

    store, owner = _jobs(request).store, owner_of(request)
    before = await asyncio.to_thread(store.get, job_id, owner, False)
    if before is None:
        raise _not_found(job_id)
    status = await asyncio.to_thread(store.cancel, job_id, owner)
    if status != "cancelled" or before["status"] == "cancelled":
        raise ApiError(409, "job_finished", f"job {job_id} is already {status}: only queued or running jobs cancel")
    return JSONResponse(public(await asyncio.to_thread(store.get, job_id, owner)))
