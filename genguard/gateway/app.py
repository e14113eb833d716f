"""The app factory: create_app(Settings) -> the FastAPI ASGI app."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .cache import AnswerCache, store_for
from .engine import Engine
from .errors import (ApiError, api_error_handler, disconnect_handler, http_error_handler, unexpected_error_handler,
                     validation_error_handler)
from .limits import ApiKeys, BodyLimit, Limiter
from .metrics import Metrics, MetricsMiddleware
from .routers import detect, health, hive, jobs, models, page
from .settings import Settings, SettingsError, read_keys
from .state import GatewayState

log = logging.getLogger("genguard.gateway")

DESCRIPTION = """AI-generated image detection (and NSFW levels) from GenGuard's Triton ensemble.

- `POST /v1/cv/hive/ai-generated-image-detection`: Hive's NIM request and response (`?extended=true`: GenGuard's
  full documents).
- `POST /v1/detect`: multipart upload (`file` fields) or the same JSON; GenGuard's documents with names.
- `POST /v1/jobs`: the same inputs, answered later (202 with the job's URL; optional signed webhook).
- Authentication: `Authorization: Bearer <key>` (off only on a loopback-bound gateway without a keys file).
- Every error is `{"error": {"code", "message"}}`; a bad image is that image's `FAILURE`, never the request's.
"""


def create_app(settings: Settings | None = None, keys: list[str] | None = None) -> FastAPI:
    """keys: API keys (default: read from settings.api_keys_file). Without keys the gateway must be
    bound to loopback: SettingsError otherwise."""
    settings = settings or Settings()
    if keys is None and settings.api_keys_file:
        keys = read_keys(settings.api_keys_file)
    if not keys and not settings.loopback:
        raise SettingsError(f"refusing to serve on {settings.host} without API keys: give --api-keys-file "
                            "(GENGUARD_GATEWAY_API_KEYS_FILE), or bind to 127.0.0.1")
    limiter = Limiter(settings.max_concurrency, settings.max_queue, settings.retry_after_s)
    engine = Engine(settings, limiter)
    metrics = Metrics(limiter)
    store = store_for(settings)
    cache = AnswerCache(store, engine.describe, metrics, settings.cache_identity_s) if store is not None else None
    if store is not None:
        metrics.watch_cache(store)
    state = GatewayState(settings, ApiKeys(keys), limiter, engine, metrics, cache)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        from genguard.jobs.worker import Jobs, Workers

        log.info("GenGuard gateway -> Triton gRPC %s; API keys %s; answer cache %s", settings.triton_url,
                 f"on ({len(keys)})" if keys else "OFF (loopback only)", settings.cache.split("@")[-1])
        state.jobs = Jobs(settings)
        await asyncio.to_thread(state.jobs.migrate)
        workers = Workers(state.jobs, lambda images, explain, labels, video: state.answer(
            jobs.PATH, images, explain=explain, explain_labels=labels, video_options=video, synchronous=False),
            settings.jobs_workers)
        if settings.jobs_workers:
            workers.start()
        yield
        await workers.stop()  # SIGTERM: the batches in flight are written, unfinished jobs go back to the queue
        state.jobs.close()
        await engine.close()
        if cache is not None:
            await cache.close()

    app = FastAPI(title="GenGuard", version=_version(), description=DESCRIPTION, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                             "auto_configure": False})
    app.state.gateway = state
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(ClientDisconnect, disconnect_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    for module in (hive, detect, jobs, models, health, page):  # page: the reviewer page at / (no key to load it)
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    paths = frozenset(r.path for m in (hive, detect, jobs, models, health) for r in m.router.routes if "{" not in r.path)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)  # outermost: sees every answer, 413s included
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("genguard")
    except Exception:
        return "0"
