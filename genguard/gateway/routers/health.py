"""Health as NIM services expose it (no API key: for probes), and the Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ApiError, error_response
from ..schemas import ErrorResponse, HealthResponse

router = APIRouter(tags=["health"])


@router.get("/v1/health/live", response_model=HealthResponse, response_model_exclude_none=True)
async def live() -> dict:
    """The gateway process answers (says nothing about Triton)."""
    return {"status": "live"}


@router.get("/v1/health/ready", response_model=HealthResponse,
            responses={503: {"model": ErrorResponse, "description": "Triton unreachable or the ensemble not ready"}})
async def ready(request: Request):
    """Ready only when Triton's `genguard` ensemble is ready. Ready, it also says what each detector serves
    (`detectors`: weights, revision, file, sha256, engine, as GET /v1/models' `served`) to a caller with an API key,
    or to anyone where the gateway runs without keys; a probe without one gets the status alone."""
    state = request.app.state.gateway
    if await state.engine.ready():
        body: dict = {"status": "ready"}
        if _has_key(state, request):
            detectors = await state.engine.served()
            if detectors is not None:
                body["detectors"] = detectors
        return JSONResponse(body)
    return error_response(503, "not_ready",
                          f"GenGuard's ensemble at {state.settings.triton_url} is not ready (unreachable or loading)",
                          {"Retry-After": str(state.settings.retry_after_s)})


def _has_key(state, request: Request) -> bool:
    try:
        state.keys.check(request.headers.get("authorization"))
    except ApiError:
        return False
    return True


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text; needs the API key like the API unless the gateway runs with --public-metrics."""
    state = request.app.state.gateway
    if not state.settings.public_metrics:
        state.keys.check(request.headers.get("authorization"))
    return Response(generate_latest(request.app.state.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
