"""The answer cache: an image whose exact bytes were answered before is answered again without the detectors.

Key: sha256 of the image bytes + the request options (explain, explain labels) + the served identity, a digest
of what Triton serves (every detector's weights, revision, model file sha256 and engine, and the fusion
configuration, read through Engine.describe()). A changed model or fusion file gives new keys: the old entries
are never read again (they age out). The identity is re-read at most every `cache_identity_s` and after any
error from Triton (a restart, which a model change needs under model-control-mode=none, takes longer than that);
an answer whose fusion id differs from the identity's is neither stored nor trusted: the identity is re-read.

Only SUCCESS documents are stored; a failed image is tried again next time. A cache that fails (Redis down)
answers every lookup as a miss and is counted (result="error"): it never fails a request.

Stores: `memory` (in-process LRU bounded by entries and bytes, one per gateway) or `redis://...` (shared by
several replicas; entries expire after `cache_ttl_s`, Redis's maxmemory policy bounds it).
Triton's own response cache was measured too (docs/operating.md, "Answer cache"): it works with this ensemble
but keys whole requests (batches), cannot say an answer came from it, and is per server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Awaitable, Callable

log = logging.getLogger("genguard.gateway.cache")

Forward = Callable[[list[bytes]], Awaitable[list[dict]]]


class MemoryStore:
    """LRU over entries and bytes (values are the JSON documents)."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        found = []
        for key in keys:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            found.append(value)
        return found

    async def put_many(self, items: dict[str, bytes]) -> None:
        for key, value in items.items():
            if len(value) > self.max_bytes:
                continue
            old = self._items.pop(key, None)
            self.bytes += len(value) - (len(old) if old is not None else 0)
            self._items[key] = value
            while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
                self.bytes -= len(self._items.popitem(last=False)[1])

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


class RedisStore:
    """Shared by the replicas: MGET to look up, a pipeline of SET ... EX to store."""

    def __init__(self, url: str, ttl_s: int):
        import redis.asyncio as redis

        self.ttl_s = ttl_s
        self.redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self.redis.mget(keys)

    async def put_many(self, items: dict[str, bytes]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(key, value, ex=self.ttl_s)
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


def store_for(settings):
    """The store `settings.cache` names (memory | redis://...), or None when it is off."""
    if settings.cache == "off":
        return None
    if settings.cache == "memory":
        return MemoryStore(settings.cache_max_entries, settings.cache_max_bytes)
    return RedisStore(settings.cache, settings.cache_ttl_s)


def identity_of(described: dict) -> tuple[str, str | None]:
    """(digest of what is served, the fusion id) from Engine.describe()."""
    served = {"served": described.get("served"), "fusion": described.get("fusion"),
              "detectors": described.get("detectors")}
    digest = hashlib.sha256(json.dumps(served, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return digest, fusion_id(described.get("fusion") or {})


def fusion_id(fusion: dict) -> str | None:
    from genguard.fusion import FusionConfig

    try:
        return FusionConfig(**fusion).fusion_id if fusion else None
    except (TypeError, ValueError):
        return None


class AnswerCache:
    def __init__(self, store, describe: Callable[[], Awaitable[dict]], metrics, identity_s: float):
        self.store, self.describe, self.metrics, self.identity_s = store, describe, metrics, identity_s
        self._identity: tuple[str, str | None] | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """Re-read the served identity before the next lookup (after an error from Triton)."""
        self._identity = None

    async def identity(self) -> tuple[str, str | None] | None:
        async with self._lock:
            if self._identity is None or time.monotonic() - self._read_at > self.identity_s:
                self._identity = None
                try:
                    described = await self.describe()
                except Exception:  # noqa: BLE001 - no identity, no cache: the request itself says what is wrong
                    return None
                if described.get("ready") and described.get("served"):
                    self._identity, self._read_at = identity_of(described), time.monotonic()
            return self._identity

    async def detect(self, images: list[bytes], forward: Forward, options: dict) -> list[dict]:
        """Documents for `images` (index = position), the cached ones with `"cached": true`; `forward` answers
        the rest (the misses, in order)."""
        identity = await self.identity()
        if identity is None:
            return await self._forward(images, forward)
        namespace = hashlib.sha256(json.dumps([identity[0], options], sort_keys=True).encode()).hexdigest()[:16]
        keys = [f"genguard:answer:{namespace}:{hashlib.sha256(image).hexdigest()}" for image in images]
        try:
            found = await self.store.get_many(keys)
        except Exception as exc:  # noqa: BLE001 - a cache that fails is a miss, never a failed request
            log.warning("answer cache lookup failed: %s", exc)
            self.metrics.cache_lookups.labels("error").inc(len(images))
            return await self._forward(images, forward)
        docs: list[dict | None] = [None] * len(images)
        for i, value in enumerate(found):
            if value is not None:
                docs[i] = {**json.loads(value), "index": i, "cached": True}
        missing = [i for i, d in enumerate(docs) if d is None]
        self.metrics.cache_lookups.labels("hit").inc(len(images) - len(missing))
        self.metrics.cache_lookups.labels("miss").inc(len(missing))
        if missing:
            fresh = await self._forward([images[i] for i in missing], forward)
            for i, doc in zip(missing, fresh):
                docs[i] = {**doc, "index": i}
            answered = [doc for doc in fresh if doc.get("status") == "SUCCESS"]
            store = {keys[i]: json.dumps({k: v for k, v in doc.items() if k not in ("index", "cached")}).encode()
                     for i, doc in zip(missing, fresh) if doc.get("status") == "SUCCESS"}
            if any((doc.get("fusion") or {}).get("id", identity[1]) != identity[1] for doc in answered):
                self.forget()  # Triton serves another fusion than the identity says: re-read it, store nothing
                store = {}
            if store:
                try:
                    await self.store.put_many(store)
                except Exception as exc:  # noqa: BLE001
                    log.warning("answer cache store failed: %s", exc)
        return docs  # type: ignore[return-value]

    async def _forward(self, images: list[bytes], forward: Forward) -> list[dict]:
        try:
            return [{**doc, "cached": False} for doc in await forward(images)]
        except Exception:
            self.forget()
            raise

    async def close(self) -> None:
        await self.store.close()


def hits_header(docs: list[dict]) -> dict[str, str]:
    """`X-GenGuard-Cache-Hits: <n>/<images>` (the one place Hive's four-field answer can say it)."""
    return {"X-GenGuard-Cache-Hits": f"{sum(bool(d.get('cached')) for d in docs)}/{len(docs)}"}
