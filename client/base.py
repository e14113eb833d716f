"""Settings and result assembly shared by the blocking Client and the AsyncClient."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from genguard import protocol
from genguard.video import is_video

from .errors import GenGuardError, RequestRejected, RequestTimeout, ServerUnavailable, unreachable
from .inputs import Loaded
from .results import Result
from .transport import REJECTED, RETRY, TIMEOUT, TLS, RetryEvent, RetryPolicy, classify, documents, normalize_url

WINDOW_BATCHES = 4  # sort-by-size window, in batches: bigger packs tighter but answers later
MAX_REQUEST_BYTES = 64 << 20
_SERVER_FAULTS = {"StatusCode.INTERNAL", "StatusCode.UNKNOWN", "500"}  # the server broke, the request was fine


@dataclass(frozen=True)
class Health:
    url: str
    protocol: str
    live: bool
    ready: bool
    models: dict[str, bool] = field(default_factory=dict)   # the ensemble and each of its steps -> ready
    weights: dict[str, str] = field(default_factory=dict)   # detector -> real | random, when the server says
    revisions: dict[str, str | None] = field(default_factory=dict)  # detector -> hub commit served (None: local/random)
    engines: dict[str, dict] = field(default_factory=dict)  # detector -> {option, engine, precision} (cpu target)
    # PRECISION=best: {"cpu": the rendering CPU, "detectors": {detector: {option, why}}}; {} when not asked
    best: dict = field(default_factory=dict)
    # detector -> {file, sha256}: the model file it serves and the sha256 its model checked at load (for an OpenVINO
    # IR one digest over its .xml + .bin), as rendered (an older repository: {})
    files: dict[str, dict] = field(default_factory=dict)

    def served(self) -> dict[str, dict]:
        """detector -> what it serves: weights (real | random), revision (hub commit or None), file and sha256,
        and engine ({option, engine, precision}, cpu target) where the server says."""
        return {name: {"weights": weights, "revision": self.revisions.get(name),
                       **{k: self.files.get(name, {}).get(k) for k in ("file", "sha256")},
                       "engine": self.engines.get(name)} for name, weights in self.weights.items()}

    @property
    def ok(self) -> bool:
        return self.live and self.ready and bool(self.models) and all(self.models.values())


class BaseClient:
    """Arguments shared by Client and AsyncClient.

    url: host:port of the server (default 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http).
    protocol: "grpc" (default) or "http".
    model: the ensemble to call.
    timeout: seconds to wait for one request (connecting included) before its images FAIL with reason
        "timeout"; also bounds health and metadata calls.
    retries, backoff: on connection loss or UNAVAILABLE, retry up to `retries` times, waiting `backoff`
        seconds, then twice that, ... (capped at 8 s); then raise ServerUnavailable. A request the
        server refused is never retried.
    batch_size: images per request; default and cap: the model's max_batch_size.
    concurrency: requests in flight at once.
    max_request_bytes: cap on one request's padded tensor (rows * longest image).
    on_retry: called with a RetryEvent before each retry (from worker threads in Client).
    tls: TLS(ca_file, cert_file, key_file, insecure) to reach Triton over TLS (gRPC or HTTPS); None: plaintext.
    """

    def __init__(self, url: str | None = None, *, protocol: str = "grpc", model: str = protocol.ENSEMBLE,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, batch_size: int | None = None,
                 concurrency: int = 2, max_request_bytes: int = MAX_REQUEST_BYTES,
                 on_retry: Callable[[RetryEvent], None] | None = None, tls: TLS | None = None):
        if timeout <= 0 or retries < 0 or backoff < 0 or concurrency < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError("timeout must be > 0, retries and backoff >= 0, concurrency and batch_size >= 1")
        self.protocol = protocol
        self.url = normalize_url(url, protocol)
        self.model = model
        self.timeout = float(timeout)
        self.policy = RetryPolicy(retries=retries, backoff=backoff)
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.max_request_bytes = max_request_bytes
        self.on_retry = on_retry
        self.tls = tls  # None: plaintext
        self.attempts = 0  # inference requests sent, retries included (diagnostics)
        self._count_lock = threading.Lock()
        self._max_batch: int | None = None  # the model's max_batch_size, read on first use

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, protocol={self.protocol!r}, model={self.model!r})"

    def _count_attempt(self) -> None:
        with self._count_lock:
            self.attempts += 1

    def _unavailable(self, lost: bool) -> ServerUnavailable:
        return ServerUnavailable(unreachable(self.url, self.protocol, self.policy.retries + 1, lost))

    def _timed_out(self) -> RequestTimeout:
        return RequestTimeout(f"no answer from GenGuard at {self.url} ({self.protocol}) within {self.timeout:g} s: "
                              "is the server overloaded or stuck? check `genguard health`, or raise --timeout")

    def _retry_delay(self, exc: Exception, retry: int, *, lost: bool, infer: bool) -> float:
        """The retry decision both clients share, for attempt number `retry` (0-based) that raised `exc`:
        the delay before the next attempt, or raise what the caller should see (out of retries, a
        timeout outside inference, or an error that retrying can't fix)."""
        kind = classify(exc)
        if kind == TIMEOUT and not infer:  # inference timeouts are the caller's to report
            raise self._timed_out() from exc
        if kind != RETRY:
            raise exc
        if retry == self.policy.retries:
            raise self._unavailable(lost) from exc
        delay = self.policy.delay(retry)
        if self.on_retry:
            self.on_retry(RetryEvent(retry + 1, delay, exc, self.url))
        return delay

    @staticmethod
    def _video_options(options: dict | None) -> str | None:
        """detect()'s video_options ({"fps", "max_frames", "sampling"}) as genguard_video's OPTIONS JSON."""
        if options is None:
            return None
        if not isinstance(options, dict):
            raise TypeError("video_options must be a dict such as {'fps': 2, 'max_frames': 60, 'sampling': 'rate'}")
        return json.dumps(options)

    def _split_videos(self, loaded: list[Loaded]) -> tuple[list[Loaded], list[Loaded], list[Result]]:
        """(images, videos, failures): clips (genguard.video.is_video) go to genguard_video one by one; through
        the genguard_explain ensemble they fail (maps are for images)."""
        images, videos, failed = [], [], []
        for entry in loaded:
            (videos if is_video(entry.data) else images).append(entry)
        if videos and self.model != protocol.ENSEMBLE:
            failed = [Result.failure(e.item.index, e.item.name, "video_not_supported",
                                     f"{self.model} answers images only: send videos without explanations")
                      for e in videos]
            videos = []
        return images, videos, failed

    def _video_result(self, entry: Loaded, response) -> Result:
        docs = documents(response)
        return Result.from_json(docs[0], entry.item.index, entry.item.name)

    def _video_failed(self, entry: Loaded, exc: Exception) -> list[Result]:
        """A clip whose request failed: that clip's FAILURE (a server without genguard_video says so)."""
        detail = exc.message() if hasattr(exc, "message") else str(exc)
        if protocol.VIDEO_MODEL in str(detail) and "unknown model" in str(detail).lower():
            return [Result.failure(entry.item.index, entry.item.name, "video_not_served",
                                   f"GenGuard at {self.url} serves no {protocol.VIDEO_MODEL} model: update the "
                                   "server (make serve renders it)")]
        return self._send_failed([entry], exc)

    def _send_failed(self, batch: list[Loaded], exc: Exception) -> list[Result]:
        """A batch whose request timed out or was refused fails alone, image by image; anything else raises."""
        kind = classify(exc)
        if kind in (TIMEOUT, REJECTED):
            return self._failed(batch, kind, exc)
        raise exc

    def _raw_error(self, exc: Exception) -> Exception:
        """infer_raw's error for `exc`: RequestRejected, RequestTimeout, or `exc` itself."""
        kind = classify(exc)
        if kind == REJECTED:
            return RequestRejected(f"GenGuard at {self.url} refused the request: {exc.message()}")
        if kind == TIMEOUT:
            return self._timed_out()
        return exc

    @staticmethod
    def _no_config(exc: Exception) -> None:
        """health()'s reading of an optional config: None when the server answered that it has none,
        `exc` raised when the server is unreachable or the error isn't the server's."""
        if isinstance(exc, ServerUnavailable) or classify(exc) is None:
            raise exc
        return None

    @staticmethod
    def _labels(explain_labels) -> str | None:
        """detect()'s explain_labels as the EXPLAIN_LABELS JSON, checked against the detectors' heads and labels
        (ValueError naming the valid ones); None when none is chosen."""
        if not explain_labels:
            return None
        from genguard import specs
        from genguard.explanations import parse_labels

        return json.dumps(parse_labels(explain_labels, [specs.get(n) for n in specs.DETECTORS]))

    def _set_max_batch(self, config: dict) -> None:
        self._max_batch = int(config.get("max_batch_size", 0))

    def _effective_batch(self) -> int:
        cap = self._max_batch if self._max_batch else 1  # 0: the model takes one unbatched image
        return min(self.batch_size or cap, cap)

    def _pack(self, batch: list[Loaded]) -> np.ndarray:
        array = protocol.pack_images([entry.data for entry in batch])
        return array if self._max_batch else array[0]

    def _results(self, batch: list[Loaded], response) -> list[Result]:
        docs = documents(response)
        if len(docs) != len(batch):
            raise GenGuardError(f"GenGuard at {self.url} answered {len(docs)} results for {len(batch)} images: "
                                "the server and this client disagree on the protocol; update one of them")
        # The server numbers rows within the request; the caller's index replaces it.
        return [Result.from_json(doc, entry.item.index, entry.item.name) for doc, entry in zip(docs, batch)]

    def _failed(self, batch: list[Loaded], reason: str, exc: BaseException) -> list[Result]:
        if reason == "timeout":
            message = (f"no answer from GenGuard at {self.url} within {self.timeout:g} s: raise --timeout "
                       "or lower --batch-size")
        else:
            detail = exc.message() if hasattr(exc, "message") else str(exc)
            if str(getattr(exc, "status", lambda: "")()) in _SERVER_FAULTS:
                reason = "server_error"
                message = f"GenGuard failed on the request carrying this image ({detail}): check the server log"
            else:
                message = f"GenGuard refused the request carrying this image: {detail}"
        return [Result.failure(entry.item.index, entry.item.name, reason, message) for entry in batch]

    @staticmethod
    def _in_order(done: dict[int, Result]) -> list[Result]:
        return [done[i] for i in sorted(done)]

    @staticmethod
    def _steps(config: dict | None) -> list[str]:
        return [step["model_name"] for step in (config or {}).get("ensemble_scheduling", {}).get("step", [])]

    @staticmethod
    def _weights(config: dict | None, key: str = "weights") -> dict[str, str]:
        """detector -> real | random (key "revisions": detector -> hub commit), from the postprocess
        config (best effort: {} if absent)."""
        raw = (config or {}).get("parameters", {}).get(key, {}).get("string_value")
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}
