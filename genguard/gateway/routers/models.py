"""GET /v1/models: what this gateway serves."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..limits import require_key
from ..schemas import ERROR_RESPONSES, ModelsResponse

router = APIRouter(tags=["GenGuard"])


@router.get("/v1/models", dependencies=[Depends(require_key)], response_model=ModelsResponse,
            responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 503)})
async def models(request: Request) -> dict:
    """The ensemble and its steps (ready or not), each detector's heads and labels, real or random
    weights (random: the answers are meaningless), and the fusion rule."""
    return await request.app.state.gateway.engine.describe()
