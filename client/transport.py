"""The few Triton calls GenGuard needs, over tritonclient's four clients (grpc/http, sync/aio), and
the one place that decides which failures are retried.

Retried: connection refused/reset/lost, UNAVAILABLE (gRPC) / 502-504 (HTTP), and a model that is
unloading (the server is shutting down or reloading). Never retried: a
request the server answered with a refusal (INVALID_ARG, NOT_FOUND, HTTP 400/404 ...): sending the
same bytes again gets the same answer. Timeouts aren't retried either: a server too slow for one
request only gets busier.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
from dataclasses import dataclass

import numpy as np

from genguard import protocol

PROTOCOLS = ("grpc", "http")
HOST = protocol.HOST
DEFAULT_PORTS = {"grpc": protocol.GRPC_PORT, "http": protocol.HTTP_PORT}

RETRY, TIMEOUT, REJECTED = "retry", "timeout", "rejected"
_RETRY_STATUS = {"StatusCode.UNAVAILABLE", "502", "503", "504"}
_TIMEOUT_STATUS = {"StatusCode.DEADLINE_EXCEEDED", "408"}
_UNLOADING = "has no available versions"


def default_url(protocol_name: str) -> str:
    return f"{HOST}:{DEFAULT_PORTS[protocol_name]}"


def normalize_url(url: str | None, protocol_name: str) -> str:
    """host[:port] as tritonclient wants it: no scheme; the protocol's default port when none is given."""
    if protocol_name not in PROTOCOLS:
        raise ValueError(f"protocol must be grpc or http, not {protocol_name!r}")
    if not url:
        return default_url(protocol_name)
    for scheme in ("http://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    if "://" in url:
        raise ValueError(f"unsupported URL {url!r}: give host:port (for TLS to Triton add tls=TLS(...), "
                         "--tls on the command line; an https:// URL is a GenGuard REST gateway)")
    url = url.rstrip("/")
    host_part = url.rsplit("]", 1)[-1]  # IPv6 literals: [::1]:8001
    return url if ":" in host_part else f"{url}:{DEFAULT_PORTS[protocol_name]}"


def classify(exc: BaseException) -> str | None:
    """RETRY, TIMEOUT, REJECTED, or None for an error that isn't the server's or the network's."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        # Triton answers NOT_FOUND / 400 "... has no available versions" while a model unloads (a server
        # shutting down or reloading): the request was fine, the server is going away. A model that
        # never existed is "... is not found", and is refused.
        if status in _RETRY_STATUS or _UNLOADING in str(exc.message()):
            return RETRY
        if status in _TIMEOUT_STATUS:
            return TIMEOUT
        return REJECTED if status else None
    if isinstance(exc, TimeoutError):  # socket.timeout and asyncio.TimeoutError are TimeoutError
        return TIMEOUT
    if isinstance(exc, (OSError, http.client.HTTPException)):  # refused, reset, DNS, connection closed
        return RETRY
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp and isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return RETRY
    return None


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3          # retries after the first attempt
    backoff: float = 0.5      # first delay, seconds; doubles each retry
    max_backoff: float = 8.0

    def delay(self, retry: int) -> float:
        """Delay before retry number `retry` (0-based). Jittered so that clients which lost the same
        server don't all come back at the same instant."""
        return min(self.max_backoff, self.backoff * 2**retry) * random.uniform(0.8, 1.0)


@dataclass(frozen=True)
class RetryEvent:
    """Passed to on_retry before each retry's delay."""

    retry: int            # 1 for the first retry
    delay: float          # seconds until it
    error: BaseException  # what failed
    url: str


@dataclass(frozen=True)
class TLS:
    """TLS to a Triton server (or a proxy in front of it). Files are PEM paths; all optional.

    ca_file: certificates to verify the server with (default: the system's). cert_file, key_file: a
    client certificate (mutual TLS). insecure: don't check the server's name against its certificate
    (HTTP only; gRPC always checks).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def context(self, gevent: bool = False):
        """An SSLContext (gevent's for tritonclient's blocking HTTP client, which runs on gevent)."""
        if gevent:
            from gevent import ssl
        else:
            import ssl
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            context.check_hostname = False
        return context

    def grpc_kwargs(self) -> dict:
        if self.insecure:
            raise ValueError("gRPC always checks the server's name: give the CA that signed it (ca_file) instead "
                             "of insecure")
        return {"ssl": True, "root_certificates": self.ca_file, "private_key": self.key_file,
                "certificate_chain": self.cert_file}


def _modules(protocol_name: str, aio: bool):
    if protocol_name == "grpc":
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
    elif aio:
        import tritonclient.http.aio as module
    else:
        import tritonclient.http as module
    return module


def _request(module, array: np.ndarray, labels: str | None = None):
    image = module.InferInput(protocol.INPUT, list(array.shape), "UINT8")
    image.set_data_from_numpy(array)
    inputs = [image]
    if labels is not None:  # genguard_explain's optional EXPLAIN_LABELS: the same choice for every image
        from genguard.explanations import LABELS_INPUT

        rows = np.array([[labels.encode()]] * array.shape[0] if array.ndim == 2 else [labels.encode()],
                        dtype=np.object_)
        tensor = module.InferInput(LABELS_INPUT, list(rows.shape), "BYTES")
        tensor.set_data_from_numpy(rows)
        inputs.append(tensor)
    return inputs, [module.InferRequestedOutput(protocol.RESULT)]


def _video_request(module, data: bytes, options: str | None = None):
    """genguard_video's inputs: the clip's bytes as one unbatched UINT8 [L] row, and its optional OPTIONS."""
    clip = module.InferInput(protocol.VIDEO, [len(data)], "UINT8")
    clip.set_data_from_numpy(np.frombuffer(data, dtype=np.uint8))
    inputs = [clip]
    if options is not None:
        tensor = module.InferInput(protocol.VIDEO_OPTIONS, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([options.encode()], dtype=np.object_))
        inputs.append(tensor)
    return inputs, [module.InferRequestedOutput(protocol.RESULT)]


def _config(doc: dict) -> dict:
    return doc.get("config", doc)  # gRPC's as_json wraps the config; HTTP returns it bare


def documents(result) -> list[dict]:
    """The per-image JSON documents of an ensemble response, in row order."""
    return [json.loads(raw) for raw in result.as_numpy(protocol.RESULT).reshape(-1)]


class Transport:
    """A blocking tritonclient client. The HTTP one isn't thread-safe: one per thread at a time."""

    def __init__(self, protocol_name: str, url: str, timeout: float, tls: TLS | None = None):
        self.module = _modules(protocol_name, aio=False)
        if protocol_name == "grpc":
            self.client = self.module.InferenceServerClient(url, **(tls.grpc_kwargs() if tls else {}))
            self.kw, self.json_kw = {"client_timeout": timeout}, {"as_json": True}
        else:
            secure = {"ssl": True, "ssl_context_factory": lambda: tls.context(gevent=True),
                      "insecure": tls.insecure} if tls else {}
            self.client = self.module.InferenceServerClient(
                url, connection_timeout=min(timeout, 10.0), network_timeout=timeout, **secure)
            self.kw, self.json_kw = {}, {}

    def live(self) -> bool:
        return self.client.is_server_live(**self.kw)

    def ready(self) -> bool:
        return self.client.is_server_ready(**self.kw)

    def model_ready(self, model: str) -> bool:
        return self.client.is_model_ready(model, **self.kw)

    def model_config(self, model: str) -> dict:
        return _config(self.client.get_model_config(model, **self.json_kw, **self.kw))

    def model_metadata(self, model: str) -> dict:
        return self.client.get_model_metadata(model, **self.json_kw, **self.kw)

    def infer(self, model: str, array: np.ndarray, labels: str | None = None):
        inputs, outputs = _request(self.module, array, labels)
        return self.client.infer(model, inputs, outputs=outputs, **self.kw)

    def infer_video(self, data: bytes, options: str | None = None):
        inputs, outputs = _video_request(self.module, data, options)
        return self.client.infer(protocol.VIDEO_MODEL, inputs, outputs=outputs, **self.kw)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a client whose connection already broke
            pass


class AsyncTransport:
    """An asyncio tritonclient client; safe for concurrent requests on its event loop."""

    def __init__(self, protocol_name: str, url: str, timeout: float, tls: TLS | None = None):
        self.module = _modules(protocol_name, aio=True)
        if protocol_name == "grpc":
            self.client = self.module.InferenceServerClient(url, **(tls.grpc_kwargs() if tls else {}))
            self.kw, self.json_kw = {"client_timeout": timeout}, {"as_json": True}
        else:
            secure = {"ssl": True, "ssl_context": tls.context()} if tls else {}
            self.client = self.module.InferenceServerClient(url, conn_timeout=timeout, **secure)
            self.kw, self.json_kw = {}, {}

    async def live(self) -> bool:
        return await self.client.is_server_live(**self.kw)

    async def ready(self) -> bool:
        return await self.client.is_server_ready(**self.kw)

    async def model_ready(self, model: str) -> bool:
        return await self.client.is_model_ready(model, **self.kw)

    async def model_config(self, model: str) -> dict:
        return _config(await self.client.get_model_config(model, **self.json_kw, **self.kw))

    async def model_metadata(self, model: str) -> dict:
        return await self.client.get_model_metadata(model, **self.json_kw, **self.kw)

    async def infer(self, model: str, array: np.ndarray, labels: str | None = None):
        inputs, outputs = _request(self.module, array, labels)
        return await self.client.infer(model, inputs, outputs=outputs, **self.kw)

    async def infer_video(self, data: bytes, options: str | None = None):
        inputs, outputs = _video_request(self.module, data, options)
        return await self.client.infer(protocol.VIDEO_MODEL, inputs, outputs=outputs, **self.kw)

    async def close(self) -> None:
        await self.client.close()
