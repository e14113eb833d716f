"""Health as NIM services expose it (no API key: for probes), and the Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import error_response
from ..schemas import ErrorResponse, HealthResponse

router = APIRouter(tags=["health"])


@router.get("/v1/health/live", response_model=HealthResponse)
async def live() -> dict:
    """The gateway process answers (says nothing about Triton)."""
    return {"status": "live"}


@router.get("/v1/health/ready", response_model=HealthResponse,
            responses={503: {"model": ErrorResponse, "description": "Triton unreachable or the ensemble not ready"}})
async def ready(request: Request):
    """Ready only when Triton's `genguard` ensemble is ready."""
    state = request.app.state.gateway
    if await state.engine.ready():
        return JSONResponse({"status": "ready"})
    return error_response(503, "not_ready",
                          f"GenGuard's ensemble at {state.settings.triton_url} is not ready (unreachable or loading)",
                          {"Retry-After": str(state.settings.retry_after_s)})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text; needs the API key like the API unless the gateway runs with --public-metrics."""
    state = request.app.state.gateway
    if not state.settings.public_metrics:
        state.keys.check(request.headers.get("authorization"))
    return Response(generate_latest(request.app.state.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
