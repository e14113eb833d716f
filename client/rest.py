"""The blocking client for GenGuard's REST gateway (genguard.gateway), over httpx.

Same inputs and results as Client: images go as multipart `file` uploads to POST /v1/detect, `batch_size`
per request, `concurrency` requests in flight; every answer is a Result built from the gateway's document.

    from genguard.client.rest import RestClient
    with RestClient("https://genguard.example.com", api_key="...") as client:
        results = client.detect(["photo.jpg", "shots/"])
        job = client.wait(client.submit(["videos/"]))   # async jobs (client/jobs.py, docs/jobs.md)

Retried with backoff: connection errors, 429 and 503 (waiting Retry-After when the gateway gives one,
capped by the backoff ceiling); then ServerUnavailable. A request the gateway refused (413, 422 ...)
fails its images with the gateway's error code as the reason; 504 fails them with reason `timeout`.
A wrong or missing key raises Unauthorized.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from .base import WINDOW_BATCHES, Health
from .errors import GenGuardError, RequestTimeout, ServerUnavailable
from .inputs import Loaded, collect, load, split, windows
from .jobs import JobsMixin
from .results import Result
from .transport import RetryEvent, RetryPolicy

DEFAULT_BATCH = 16
MAX_REQUEST_BYTES = 48 << 20  # raw bytes per request: under the gateway's default 64 MiB body limit


class Unauthorized(GenGuardError):
    """The gateway refused the API key (or none was given)."""


def gateway_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a GenGuard gateway URL starts with http:// or https://, not {url!r}")
    return url.rstrip("/")


def read_key_file(path: str) -> str:
    """The first non-comment line of a key file."""
    with open(path) as f:
        for line in f:
            if line.strip() and not line.lstrip().startswith("#"):
                return line.strip()
    raise ValueError(f"no API key in {path}")


class RestClient(JobsMixin):
    """url: the gateway's base URL (http:// or https://). api_key: sent as `Authorization: Bearer`.
    verify: True (system CAs), a CA bundle path, or False (no verification: tests only).
    Other arguments as Client."""

    protocol = "rest"

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, batch_size: int | None = None, concurrency: int = 2,
                 max_request_bytes: int = MAX_REQUEST_BYTES, verify: bool | str = True,
                 on_retry: Callable[[RetryEvent], None] | None = None):
        import httpx

        if timeout <= 0 or retries < 0 or backoff < 0 or concurrency < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError("timeout must be > 0, retries and backoff >= 0, concurrency and batch_size >= 1")
        self.url = gateway_url(url)
        self.timeout = float(timeout)
        self.policy = RetryPolicy(retries=retries, backoff=backoff)
        self.batch_size = batch_size or DEFAULT_BATCH
        self.concurrency = concurrency
        self.max_request_bytes = max_request_bytes
        self.on_retry = on_retry
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, verify=verify,
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                  limits=httpx.Limits(max_connections=concurrency + 2))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RestClient({self.url!r})"

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -----------------------------------------------------------------------------------

    def _unavailable(self, detail: str) -> ServerUnavailable:
        attempts = self.policy.retries + 1
        return ServerUnavailable(f"cannot reach the GenGuard gateway at {self.url} after {attempts} "
                                 f"attempt{'s' * (attempts != 1)} ({detail}): is it running? check the URL, or "
                                 "`genguard health --url ...`")

    def _request(self, method: str, path: str, **kwargs):
        """One HTTP exchange, retried on connection errors, 429 and 503; raises Unauthorized on 401."""
        import httpx

        for retry in range(self.policy.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException:
                if method == "GET":  # health and models: say who didn't answer
                    raise RequestTimeout(f"no answer from the GenGuard gateway at {self.url} within "
                                         f"{self.timeout:g} s") from None
                raise
            except httpx.TransportError as exc:
                error, detail, wait_s = exc, f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 401:
                    raise Unauthorized(f"the GenGuard gateway at {self.url} refused the API key "
                                       f"({_message(response)}): pass --api-key-file with a valid key")
                if response.status_code not in (429, 503):
                    return response
                error, detail = None, f"HTTP {response.status_code}: {_message(response)}"
                wait_s = _retry_after(response)
            if retry == self.policy.retries:
                raise self._unavailable(detail)
            delay = self.policy.delay(retry) if wait_s is None else min(wait_s, self.policy.max_backoff)
            if self.on_retry:
                self.on_retry(RetryEvent(retry + 1, delay, error or GenGuardError(detail), self.url))
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, batch: list[Loaded], params: dict | None = None) -> list[Result]:
        import httpx

        files = [("file", (entry.item.name, entry.data, "application/octet-stream")) for entry in batch]
        try:
            response = self._request("POST", "/v1/detect", files=files, params=params or None)
        except httpx.TimeoutException:
            return self._failed(batch, "timeout", f"no answer from the gateway at {self.url} within "
                                                  f"{self.timeout:g} s: raise --timeout or lower --batch-size")
        if response.status_code == 504:
            return self._failed(batch, "timeout", _message(response))
        if response.status_code != 200:
            reason = _code(response) or f"http_{response.status_code}"
            return self._failed(batch, reason, f"the gateway refused the request carrying this image: "
                                               f"{_message(response)}")
        docs = response.json()["data"]
        if len(docs) != len(batch):
            raise GenGuardError(f"the gateway at {self.url} answered {len(docs)} results for {len(batch)} images")
        return [Result.from_json(doc, entry.item.index, entry.item.name) for doc, entry in zip(docs, batch)]

    @staticmethod
    def _failed(batch: list[Loaded], reason: str, message: str) -> list[Result]:
        return [Result.failure(entry.item.index, entry.item.name, reason, message) for entry in batch]

    # -- API ------------------------------------------------------------------------------------------

    def detect(self, inputs: Any, *, recursive: bool = False,
               on_progress: Callable[[int, int], None] | None = None, video_options: dict | None = None) -> list[Result]:
        """See Client.detect; video_options ({"fps", "max_frames", "sampling"}) become /v1/detect's query."""
        params = dict(video_options or {})
        unknown = sorted(set(params) - {"fps", "max_frames", "sampling"})
        if unknown:
            raise ValueError(f"video_options through the gateway take fps, max_frames and sampling, not {unknown}")
        items = collect(inputs, recursive)
        if not items:
            return []
        done: dict[int, Result] = {}

        def record(results: list[Result]) -> None:
            done.update((r.index, r) for r in results)
            if on_progress:
                on_progress(len(done), len(items))

        pending: set[Future] = set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="genguard-rest") as pool:
            try:
                for window in windows(items, self.batch_size * WINDOW_BATCHES):
                    loaded, failed = load(window)
                    if failed:
                        record(failed)
                    for batch in split(loaded, self.batch_size, self.max_request_bytes):
                        while len(pending) >= self.concurrency:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for future in finished:
                                record(future.result())
                        pending.add(pool.submit(self._send, batch, params))
                for future in pending:
                    record(future.result())
            except BaseException as exc:
                for future in pending:
                    future.cancel()
                if isinstance(exc, ServerUnavailable):
                    exc.partial = [done[i] for i in sorted(done)]
                raise
        return [done[i] for i in sorted(done)]

    def detect_one(self, image: Any) -> Result:
        return self.detect([image])[0]

    def health(self) -> Health:
        """Live and ready (the gateway's view of Triton), the ensemble's models and their weights."""
        import httpx

        live = self._request("GET", "/v1/health/live").status_code == 200
        try:
            ready = self._http.get("/v1/health/ready").status_code == 200  # 503 is an answer here, not retried
        except httpx.HTTPError as exc:
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from exc
        models, weights, served = {}, {}, {}
        if ready:
            response = self._request("GET", "/v1/models")
            if response.status_code == 200:
                body = response.json()
                models, weights, served = body.get("models", {}), body.get("weights", {}), body.get("served") or {}
        pick = lambda *keys: {n: {k: s.get(k) for k in keys} for n, s in served.items()}  # noqa: E731
        return Health(self.url, self.protocol, live, ready, models, weights,
                      revisions={n: s.get("revision") for n, s in served.items()},
                      engines={n: s["engine"] for n, s in served.items() if s.get("engine")},
                      files={n: f for n, f in pick("file", "sha256").items() if f["sha256"]})


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _code(response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except Exception:
        return None


def _message(response) -> str:
    try:
        return response.json()["error"]["message"]
    except Exception:
        return response.text[:200] or response.reason_phrase
