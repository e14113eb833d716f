"""Request bodies -> image bytes. Only base64 is decoded here; images are decoded by the Triton ensemble,
which answers a bad image with that image's FAILURE. URLs are refused, never fetched."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from pydantic import ValidationError

from .errors import ApiError
from .schemas import DATA_URL

_DATA_URL = re.compile(r"data:(?:image|video)/[A-Za-z0-9.+-]+(?:;[A-Za-z0-9_.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
_ASSET = re.compile(r"data:[^,]*;asset_id,", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_WHITESPACE = re.compile(rb"\s+")

ASSETS_MESSAGE = ("NVCF asset ids are not supported: GenGuard has no asset store; send the image itself "
                  f"in `input` as a data URL, `{DATA_URL}`")


async def read_body(request) -> bytes:
    """The body, read once and not cached on the request (Request.body() would keep it for the whole
    request); the body limit is enforced while it streams in (limits.BodyLimit)."""
    chunks = [chunk async for chunk in request.stream()]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(422, "invalid_json", 'empty body: send {"input": ["data:image/png;base64,..."]}')
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"the body is not valid JSON ({exc})") from None


def _refuse_assets(obj: Any, headers) -> None:
    if headers.get("nvcf-input-asset-references") or (isinstance(obj, dict) and "asset_id" in obj):
        raise ApiError(422, "assets_not_supported", ASSETS_MESSAGE)
    items = obj.get("input") if isinstance(obj, dict) else None
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict) and "asset_id" in item or isinstance(item, str) and _ASSET.match(item):
                raise ApiError(422, "assets_not_supported", f"input[{i}]: {ASSETS_MESSAGE}")


def validate(model, obj: Any, headers):
    """The request object -> `model`, or 422 naming the first problem (asset forms first: they have
    their own code)."""
    _refuse_assets(obj, headers)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "body"
        hint = f'; expected {{"input": ["{DATA_URL}", ...]}}' if error["loc"][:1] in (("input",), ()) else ""
        raise ApiError(422, "invalid_request", f"{where}: {error['msg']}{hint}") from None


def check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise ApiError(422, "too_many_images",
                       f"{count} images in one request; this gateway takes at most {max_images}: split the request")


def decode_data_url(index: int, item: str) -> bytes:
    match = _DATA_URL.match(item)
    if match is None:
        if _URL.match(item):
            raise ApiError(422, "url_not_supported",
                           f"input[{index}] is a URL ({item[:40]}...): GenGuard never fetches URLs; download the "
                           f"image yourself and send its bytes as `{DATA_URL}`")
        raise ApiError(422, "bad_data_url",
                       f"input[{index}] does not start with `data:image/<type>;base64,` or `data:video/<type>;base64,` "
                       f"(it starts {item[:30]!r}): send `{DATA_URL}`")
    payload = item[match.end():].encode("ascii", errors="replace")
    if b"\n" in payload or b"\r" in payload or b" " in payload:  # MIME-wrapped base64
        payload = _WHITESPACE.sub(b"", payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "bad_base64", f"input[{index}]: the data URL's payload is not valid base64 ({exc})") from None


def decode_all(items: list[str], max_images: int) -> list[bytes]:
    check_count(len(items), max_images)
    return [decode_data_url(i, item) for i, item in enumerate(items)]
