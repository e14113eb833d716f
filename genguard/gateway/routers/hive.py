"""POST /v1/cv/hive/ai-generated-image-detection: Hive's NIM request and response, unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..cache import hits_header
from ..inputs import decode_all, parse_json, read_body, validate
from ..limits import require_key
from ..videos import refuse_videos
from ..schemas import ERROR_RESPONSES, ExtendedResponse, HiveItem, HiveRequest, HiveResponse

PATH = "/v1/cv/hive/ai-generated-image-detection"
router = APIRouter(tags=["Hive-compatible"])


def hive_item(doc: dict) -> dict:
    """Hive's view of one GenGuard document: the four fields Hive's NIM answers with, as sent."""
    return HiveItem(index=doc["index"], is_ai_generated=doc.get("is_ai_generated"),
                    possible_sources=doc.get("possible_sources"), status=doc["status"]).model_dump()


@router.post(PATH, dependencies=[Depends(require_key)], response_model=HiveResponse | ExtendedResponse,
             responses=ERROR_RESPONSES,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": HiveRequest.model_json_schema()}}}},
             summary="Hive NIM-compatible detection")
async def hive_detect(request: Request, extended: bool = Query(
        False, description="answer GenGuard's full per-image documents instead of Hive's four fields")):
    """Exactly what Hive's NIM endpoint takes: `{"input": ["data:image/<type>;base64,..."]}` with
    `Authorization: Bearer <key>`; answers `{"data": [{"index", "is_ai_generated", "possible_sources",
    "status"}]}`. A bad image is that item's FAILURE; the others are answered. Videos are refused (422
    `video_not_supported`): send them to POST /v1/detect."""
    state = request.app.state.gateway
    async with state.limiter.admit():
        body = validate(HiveRequest, parse_json(await read_body(request)), request.headers)
        images = decode_all(body.input, state.settings.max_images)
        del body
        refuse_videos(images, PATH)
        docs = await state.answer(PATH, images)
    data = docs if extended else [hive_item(d) for d in docs]
    return JSONResponse({"data": data}, headers=hits_header(docs))
