"""The one owner of the Triton connection: image bytes in, GenGuard's per-image documents out.

It uses genguard.client's AsyncClient over gRPC (batches cut to the ensemble's max_batch_size, sorted
by size, sent concurrently; reconnects with backoff), inside the limiter's slot and the request deadline.
Routes never see tensors.
"""

from __future__ import annotations

import asyncio
import json

from genguard import protocol
from genguard.client import AsyncClient, GenGuardError, ModelNotReady, RequestTimeout, ServerUnavailable

from .errors import ApiError
from .limits import Limiter
from .settings import Settings


class Engine:
    def __init__(self, settings: Settings, limiter: Limiter):
        self.settings = settings
        self.limiter = limiter
        # The client's own timeout is longer than the deadline: the deadline (504) decides first.
        self.client = AsyncClient(settings.triton_url, protocol="grpc", timeout=settings.deadline_s + 5,
                                  retries=settings.triton_retries, backoff=settings.triton_backoff_s,
                                  concurrency=2)

    async def close(self) -> None:
        await self.client.close()
        if self._explain is not None:
            await self._explain.close()

    _explain: AsyncClient | None = None

    def explain_client(self) -> AsyncClient:
        """The same connection settings, to the `genguard_explain` ensemble (made on first use)."""
        if self._explain is None:
            from genguard.explanations import EXPLAIN_ENSEMBLE

            s = self.settings
            self._explain = AsyncClient(s.triton_url, protocol="grpc", model=EXPLAIN_ENSEMBLE,
                                        timeout=s.deadline_s + 5, retries=s.triton_retries,
                                        backoff=s.triton_backoff_s, concurrency=2)
        return self._explain

    def _unavailable(self, what: str) -> ApiError:
        return ApiError(503, "triton_unavailable",
                        f"GenGuard's inference server at {self.settings.triton_url} {what}: retry after "
                        f"{self.settings.retry_after_s} s", {"Retry-After": str(self.settings.retry_after_s)})

    async def detect(self, images: list[bytes], explain: bool = False,
                     explain_labels: dict | None = None, video_options: dict | None = None) -> list[dict]:
        """One document per image, in order, each with `index` = its position in `images`; explain: through
        the `genguard_explain` ensemble (the same documents plus `explanations`), explain_labels: the checked
        {detector: {head: label}} whose maps to answer instead of the predicted labels'. Clips go to
        `genguard_video` (the client routes them), sampled by video_options."""
        retry_after = {"Retry-After": str(self.settings.retry_after_s)}
        client = self.explain_client() if explain else self.client

        async def forward():
            async with self.limiter.slot():
                return await client.detect(images, explain_labels=explain_labels if explain else None,
                                           video_options=video_options)

        try:
            results = await asyncio.wait_for(forward(), self.settings.deadline_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "deadline_exceeded",
                           f"no answer within the gateway's deadline of {self.settings.deadline_s:g} s: the server "
                           "is overloaded; retry later or send fewer images per request") from None
        except ServerUnavailable as exc:
            raise self._unavailable("cannot be reached or is refusing work (overloaded)") from exc
        except ModelNotReady as exc:
            if explain:
                raise ApiError(503, "model_not_ready", "explanations are not served here, or still loading: "
                               "the server needs the genguard_explain ensemble (make serve EXPLAIN=1)",
                               retry_after) from exc
            raise ApiError(503, "model_not_ready", "GenGuard's models are still loading: retry after "
                           f"{self.settings.retry_after_s} s", retry_after) from exc
        except RequestTimeout as exc:
            raise self._unavailable("did not answer a readiness check in time") from exc
        except GenGuardError as exc:
            raise ApiError(502, "bad_gateway", str(exc)) from exc
        return [{**r.raw, "index": i} for i, r in enumerate(results)]

    async def ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.is_model_ready(), 5))
        except Exception:
            return False

    async def describe(self) -> dict:
        """What is served: the ensemble's steps and readiness, detectors, weights, fusion."""
        async def read():
            health = await self.client.health()
            config = await self.client.model_config() if health.models.get(protocol.ENSEMBLE) else {}
            post = await self.client._config_or_none(protocol.POSTPROCESS) if health.ok else None
            return health, config, post

        try:
            health, config, post = await asyncio.wait_for(read(), 10)
        except asyncio.TimeoutError:
            raise self._unavailable("did not answer in time") from None
        except (ServerUnavailable, RequestTimeout) as exc:
            raise self._unavailable("cannot be reached") from exc
        params = (post or {}).get("parameters", {})

        def param(name: str) -> dict:
            try:
                return json.loads(params.get(name, {}).get("string_value") or "{}")
            except ValueError:
                return {}

        return {"ensemble": protocol.ENSEMBLE, "ready": health.ok,
                "max_batch_size": int(config.get("max_batch_size", 0)) or None if config else None,
                "models": health.models, "detectors": param("detectors"), "weights": health.weights,
                "served": health.served(), "fusion": param("fusion")}

    async def served(self) -> dict | None:
        """detector -> weights, revision, file, sha256, engine, as rendered (read from the postprocess config, no
        hashing); None when Triton does not say in time."""
        try:
            health = await asyncio.wait_for(self.client.health(), 5)
        except Exception:  # noqa: BLE001 - readiness details are best effort; readiness itself is answered
            return None
        return health.served()
