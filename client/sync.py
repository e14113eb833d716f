"""The blocking client: worker threads keep `concurrency` requests in flight."""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from genguard import protocol

from .base import WINDOW_BATCHES, BaseClient, Health
from .errors import ModelNotReady, ServerUnavailable, not_ready
from .inputs import Loaded, collect, load, split, windows
from .results import Result
from .transport import Transport


class Client(BaseClient):
    """GenGuard over Triton, blocking. Arguments: see BaseClient.

        with Client() as client:
            for result in client.detect(["photo.jpg", "folder/"]):
                print(result.name, result.verdict, result.is_ai_generated)
    """

    def __init__(self, url: str | None = None, **kwargs: Any):
        super().__init__(url, **kwargs)
        # tritonclient's HTTP client runs on gevent, which binds it to the thread that made it: one
        # transport per thread (the worker threads live as long as the client).
        self._local = threading.local()
        self._transports: list[Transport] = []
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._executor:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
            transports, self._transports = self._transports, []
        for transport in transports:
            transport.close()
        self._local = threading.local()

    # -- plumbing -----------------------------------------------------------------------------------

    @contextmanager
    def _lease(self) -> Iterator[Transport]:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._local.transport = Transport(self.protocol, self.url, self.timeout, self.tls)
            with self._lock:
                self._transports.append(transport)
        try:
            yield transport
        except BaseException:
            # After a failure its connection may be half-open: the next call makes a fresh one.
            self._local.transport = None
            with self._lock:
                if transport in self._transports:
                    self._transports.remove(transport)
            transport.close()
            raise

    def _call(self, fn: Callable[[Transport], Any], *, lost: bool = False, infer: bool = False,
              stop: threading.Event | None = None) -> Any:
        """fn(transport), retried on connection loss / UNAVAILABLE; ServerUnavailable when out of retries."""
        for retry in range(self.policy.retries + 1):
            if infer:
                self._count_attempt()
            try:
                with self._lease() as transport:
                    return fn(transport)
            except Exception as exc:
                delay = self._retry_delay(exc, retry, lost=lost, infer=infer)
                if stop is not None and stop.wait(delay):  # the run was abandoned meanwhile
                    raise self._unavailable(lost) from exc
                if stop is None:
                    time.sleep(delay)

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="genguard")
            return self._executor

    def _prepare(self) -> int:
        """Check the model once and read its max_batch_size; returns the batch size to use."""
        if self._max_batch is None:
            if not self._call(lambda t: t.model_ready(self.model)):
                raise ModelNotReady(not_ready(self.url, self.protocol, self.model))
            self._set_max_batch(self._call(lambda t: t.model_config(self.model)))
        return self._effective_batch()

    def _send(self, batch: list[Loaded], stop: threading.Event, labels: str | None = None) -> list[Result]:
        array = self._pack(batch)
        try:
            response = self._call(lambda t: t.infer(self.model, array, labels), lost=True, infer=True, stop=stop)
        except Exception as exc:
            return self._send_failed(batch, exc)
        return self._results(batch, response)

    def _send_video(self, entry: Loaded, stop: threading.Event, options: str | None) -> list[Result]:
        try:
            response = self._call(lambda t: t.infer_video(entry.data, options), lost=True, infer=True, stop=stop)
        except Exception as exc:
            return self._video_failed(entry, exc)
        return [self._video_result(entry, response)]

    # -- API ------------------------------------------------------------------------------------------

    def detect(self, inputs: Any, *, recursive: bool = False,
               on_progress: Callable[[int, int], None] | None = None, explain_labels=None,
               video_options: dict | None = None) -> list[Result]:
        """One Result per image or video, in input order (a directory counts as its files, sorted).

        inputs: a path, directory, bytes, PIL image, or an iterable of them.
        recursive: descend into sub-directories of directory inputs.
        on_progress(done, total): called as results arrive.
        explain_labels (the genguard_explain ensemble only): the label whose map each detector head answers,
        {detector: label}, {detector: {head: label}} or ["detector[.head]=label", ...]; other heads answer
        their predicted label's. An unknown detector, head or label raises ValueError before anything is sent.
        video_options: how clips are sampled, {"fps", "max_frames", "sampling": "rate" | "keyframes"} (the
        server's defaults otherwise). Clips (MP4/MOV, WebM, AVI, TS, animated GIF/WebP/APNG) go to the
        genguard_video model one request each; their Result has kind "video", `video` and `timeline`.
        Raises ServerUnavailable (with .partial results) or ModelNotReady; per-image problems are
        FAILURE results.
        """
        labels = self._labels(explain_labels)
        options = self._video_options(video_options)
        items = collect(inputs, recursive=recursive)
        if not items:
            return []
        batch_size = self._prepare()
        done: dict[int, Result] = {}

        def record(results: list[Result]) -> None:
            done.update((r.index, r) for r in results)
            if on_progress:
                on_progress(len(done), len(items))

        stop, pool = threading.Event(), self._pool()
        pending: set[Future] = set()
        try:
            for window in windows(items, batch_size * WINDOW_BATCHES):
                loaded, failed = load(window)
                images, videos, refused = self._split_videos(loaded)
                if failed or refused:
                    record(failed + refused)
                jobs = [(self._send, batch, stop, labels) for batch in split(images, batch_size, self.max_request_bytes)]
                jobs += [(self._send_video, entry, stop, options) for entry in videos]
                for fn, *args in jobs:
                    while len(pending) >= self.concurrency:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            record(future.result())
                    pending.add(pool.submit(fn, *args))
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future.result())
        except BaseException as exc:
            stop.set()  # other workers stop retrying
            for future in pending:
                future.cancel()
            if not isinstance(exc, KeyboardInterrupt):
                wait(pending)  # in-flight requests end within the timeout
            if isinstance(exc, ServerUnavailable):
                exc.partial = self._in_order(done)
            raise
        return self._in_order(done)

    def detect_one(self, image: Any) -> Result:
        """detect() for one file, bytes or PIL image."""
        results = self.detect([image])
        return results[0]

    def infer_raw(self, array: np.ndarray, model: str | None = None):
        """Send a UINT8 tensor as the IMAGE input as it is (no batching, no checks): the tritonclient
        InferResult. Raises RequestRejected, RequestTimeout or ServerUnavailable."""
        try:
            return self._call(lambda t: t.infer(model or self.model, array), infer=True)
        except Exception as exc:
            error = self._raw_error(exc)
            if error is exc:
                raise
            raise error from exc

    def is_live(self) -> bool:
        return self._call(lambda t: t.live())

    def is_ready(self) -> bool:
        return self._call(lambda t: t.ready())

    def is_model_ready(self, model: str | None = None) -> bool:
        return self._call(lambda t: t.model_ready(model or self.model))

    def model_metadata(self, model: str | None = None) -> dict:
        return self._call(lambda t: t.model_metadata(model or self.model))

    def model_config(self, model: str | None = None) -> dict:
        return self._call(lambda t: t.model_config(model or self.model))

    def _config_or_none(self, model: str) -> dict | None:
        try:
            return self.model_config(model)
        except Exception as exc:
            return self._no_config(exc)

    def health(self) -> Health:
        """Server liveness/readiness and the readiness of the ensemble and each model it runs.
        Raises ServerUnavailable if the server can't be reached."""
        live, ready = self.is_live(), self.is_ready()
        models = {self.model: self.is_model_ready()}
        config = self._config_or_none(self.model) if models[self.model] else None
        steps = self._steps(config)
        models.update((name, self.is_model_ready(name)) for name in steps)
        post = self._config_or_none(protocol.POSTPROCESS) if protocol.POSTPROCESS in steps else None
        return Health(self.url, self.protocol, live, ready, models, self._weights(post),
                      self._weights(post, "revisions"), self._weights(post, "engines"),
                      self._weights(post, "precision_best"), self._weights(post, "files"))
