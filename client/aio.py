"""The asyncio client: tritonclient's aio clients, `concurrency` requests in flight as tasks."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import numpy as np

from genguard import protocol

from .base import WINDOW_BATCHES, BaseClient, Health
from .errors import ModelNotReady, ServerUnavailable, not_ready
from .inputs import Loaded, collect, load, split, windows
from .results import Result
from .transport import AsyncTransport


class AsyncClient(BaseClient):
    """GenGuard over Triton, for asyncio. Arguments: see BaseClient.

        async with AsyncClient() as client:
            results = await client.detect(["photo.jpg", "folder/"])
    """

    def __init__(self, url: str | None = None, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._transport: AsyncTransport | None = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()

    # -- plumbing -----------------------------------------------------------------------------------

    def _client(self) -> AsyncTransport:
        # Made on first use, inside the running loop (aiohttp and grpc.aio bind to it).
        if self._transport is None:
            self._transport = AsyncTransport(self.protocol, self.url, self.timeout, self.tls)
        return self._transport

    async def _call(self, fn: Callable[[AsyncTransport], Awaitable[Any]], *, lost: bool = False,
                    infer: bool = False) -> Any:
        """await fn(transport), retried on connection loss / UNAVAILABLE; ServerUnavailable when out of retries."""
        for retry in range(self.policy.retries + 1):
            if infer:
                self._count_attempt()
            try:
                return await fn(self._client())
            except Exception as exc:
                await asyncio.sleep(self._retry_delay(exc, retry, lost=lost, infer=infer))

    async def _prepare(self) -> int:
        if self._max_batch is None:
            if not await self._call(lambda t: t.model_ready(self.model)):
                raise ModelNotReady(not_ready(self.url, self.protocol, self.model))
            self._set_max_batch(await self._call(lambda t: t.model_config(self.model)))
        return self._effective_batch()

    async def _send(self, batch: list[Loaded], labels: str | None = None) -> list[Result]:
        array = self._pack(batch)
        try:
            response = await self._call(lambda t: t.infer(self.model, array, labels), lost=True, infer=True)
        except Exception as exc:
            return self._send_failed(batch, exc)
        return self._results(batch, response)

    async def _send_video(self, entry: Loaded, options: str | None) -> list[Result]:
        try:
            response = await self._call(lambda t: t.infer_video(entry.data, options), lost=True, infer=True)
        except Exception as exc:
            return self._video_failed(entry, exc)
        return [self._video_result(entry, response)]

    # -- API ------------------------------------------------------------------------------------------

    async def detect(self, inputs: Any, *, recursive: bool = False,
                     on_progress: Callable[[int, int], None] | None = None, explain_labels=None,
                     video_options: dict | None = None) -> list[Result]:
        """See Client.detect."""
        labels = self._labels(explain_labels)
        options = self._video_options(video_options)
        items = await asyncio.to_thread(collect, inputs, recursive)
        if not items:
            return []
        batch_size = await self._prepare()
        done: dict[int, Result] = {}

        def record(results: list[Result]) -> None:
            done.update((r.index, r) for r in results)
            if on_progress:
                on_progress(len(done), len(items))

        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()

        async def send(batch: list[Loaded] | Loaded) -> list[Result]:
            try:
                if isinstance(batch, Loaded):
                    return await self._send_video(batch, options)
                return await self._send(batch, labels)
            finally:
                slots.release()

        def harvest() -> None:  # record finished batches; raises the first batch's error
            for task in [t for t in tasks if t.done()]:
                tasks.discard(task)
                record(task.result())

        try:
            for window in windows(items, batch_size * WINDOW_BATCHES):
                loaded, failed = await asyncio.to_thread(load, window)  # file reads off the loop
                images, videos, refused = self._split_videos(loaded)
                if failed or refused:
                    record(failed + refused)
                for batch in [*split(images, batch_size, self.max_request_bytes), *videos]:
                    await slots.acquire()
                    harvest()
                    tasks.add(asyncio.create_task(send(batch)))
            while tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                harvest()
        except BaseException as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, ServerUnavailable):
                exc.partial = self._in_order(done)
            raise
        return self._in_order(done)

    async def detect_one(self, image: Any) -> Result:
        return (await self.detect([image]))[0]

    async def infer_raw(self, array: np.ndarray, model: str | None = None):
        """See Client.infer_raw."""
        try:
            return await self._call(lambda t: t.infer(model or self.model, array), infer=True)
        except Exception as exc:
            error = self._raw_error(exc)
            if error is exc:
                raise
            raise error from exc

    async def is_live(self) -> bool:
        return await self._call(lambda t: t.live())

    async def is_ready(self) -> bool:
        return await self._call(lambda t: t.ready())

    async def is_model_ready(self, model: str | None = None) -> bool:
        return await self._call(lambda t: t.model_ready(model or self.model))

    async def model_metadata(self, model: str | None = None) -> dict:
        return await self._call(lambda t: t.model_metadata(model or self.model))

    async def model_config(self, model: str | None = None) -> dict:
        return await self._call(lambda t: t.model_config(model or self.model))

    async def _config_or_none(self, model: str) -> dict | None:
        try:
            return await self.model_config(model)
        except Exception as exc:
            return self._no_config(exc)

    async def health(self) -> Health:
        """See Client.health."""
        live, ready = await self.is_live(), await self.is_ready()
        models = {self.model: await self.is_model_ready()}
        config = await self._config_or_none(self.model) if models[self.model] else None
        steps = self._steps(config)
        for name in steps:
            models[name] = await self.is_model_ready(name)
        post = await self._config_or_none(protocol.POSTPROCESS) if protocol.POSTPROCESS in steps else None
        return Health(self.url, self.protocol, live, ready, models, self._weights(post),
                      self._weights(post, "revisions"), self._weights(post, "engines"),
                      self._weights(post, "precision_best"), self._weights(post, "files"))
