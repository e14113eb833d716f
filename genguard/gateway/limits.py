"""API keys, the body-size limit, and bounded concurrency with a queue.

- API keys: `Authorization: Bearer <key>`; each presented key is hashed and compared with every
  configured key's hash by hmac.compare_digest (constant time, no early exit), so neither the key
  nor which key matched leaks through timing.
- Body size: a declared Content-Length over the limit is refused (413) before any of the body is read;
  a chunked body is counted while it streams in and refused as soon as it passes the limit. The gateway
  never holds more than the limit of one request's body.
- Concurrency: at most `max_concurrency` requests are forwarded to Triton at once; up to `max_queue` more
  are admitted and wait (reading their bodies, then for a slot). Beyond that a request is refused at
  once with 429 and Retry-After, before its body is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response


class ApiKeys:
    def __init__(self, keys: list[str] | None):
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys or []]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise 401 unless the header carries a configured key (no-op when keys are off)."""
        if not self._digests:
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="genguard"'}
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing_api_key",
                           "this gateway needs an API key: send the header `Authorization: Bearer <key>`", challenge)
        presented = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for digest in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise ApiError(401, "invalid_api_key", "the API key is not valid for this gateway", challenge)


def require_key(request: Request) -> None:
    """FastAPI dependency for the authenticated routes."""
    request.app.state.gateway.keys.check(request.headers.get("authorization"))


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "body_too_large",
                         f"the request body is larger than this gateway's limit of {limit} bytes "
                         f"({limit / (1 << 20):g} MiB): send fewer or smaller images per request",
                         {"Connection": "close"})  # the rest of the body is never read


class BodyLimit:
    """ASGI middleware enforcing the body-size limit while the body is read."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "bad_request", "Content-Length is not a number")(scope, receive, send)
                    return
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # raised outside a route's exception handling (normally a handler answers it)
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(self.max_bytes)
        await error_response(exc.status, exc.code, exc.message, exc.headers)(scope, receive, send)


class Limiter:
    """Admission (concurrency + queue) and the slots that bound requests in flight to Triton."""

    def __init__(self, max_concurrency: int, max_queue: int, retry_after_s: int):
        self.capacity = max_concurrency + max_queue
        self.max_concurrency = max_concurrency
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self.forwarding = 0
        self._slots = asyncio.Semaphore(max_concurrency)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        if self.admitted >= self.capacity:
            raise ApiError(429, "queue_full",
                           f"the gateway is at capacity ({self.max_concurrency} requests in progress and "
                           f"{self.capacity - self.max_concurrency} waiting): retry after {self.retry_after_s} s",
                           {"Retry-After": str(self.retry_after_s)})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            self.forwarding += 1
            try:
                yield
            finally:
                self.forwarding -= 1
