"""Every error the gateway answers is JSON: {"error": {"code": <machine-readable>, "message": <one sentence>}}.

Codes (HTTP status):
  401 missing_api_key, invalid_api_key       413 body_too_large          415 unsupported_media_type
  422 invalid_json, invalid_request, no_images, too_many_images, bad_data_url, bad_base64,
      url_not_supported, assets_not_supported, invalid_multipart
  429 queue_full      503 triton_unavailable, model_not_ready, not_ready      504 deadline_exceeded
  404 not_found       405 method_not_allowed  502 bad_gateway                 500 internal_error
  jobs (/v1/jobs): 422 callback_refused, 404 job_not_found, 409 job_finished
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("genguard.gateway")

_DEFAULT_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  405: "method_not_allowed", 406: "not_acceptable", 413: "body_too_large",
                  415: "unsupported_media_type", 422: "invalid_request", 429: "queue_full",
                  500: "internal_error", 502: "bad_gateway", 503: "unavailable", 504: "deadline_exceeded"}


class ApiError(Exception):
    """Raised anywhere in a request; answered as the JSON error document."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _DEFAULT_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.url.path}: see /docs for the routes"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}: see /docs"
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def _where(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


async def validation_error_handler(request: Request, exc) -> JSONResponse:
    """FastAPI's RequestValidationError (query parameters) as one readable sentence."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    message = f"{_where(first.get('loc', ()))}: {first.get('msg')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})"
    return error_response(422, "invalid_request", message)


async def disconnect_handler(request: Request, exc: Exception) -> JSONResponse:
    """The client went away while sending its body: nobody will read this answer."""
    return error_response(400, "client_disconnected", "the client closed the connection before sending its body")


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error",
                          "the gateway failed on this request; the error is in its log")
