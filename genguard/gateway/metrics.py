"""Gateway metrics (Prometheus text format at GET /metrics), one registry per app.

genguard_gateway_requests_total{route,code}          requests answered, by route template and HTTP status
genguard_gateway_request_duration_seconds{route}     latency histogram (arrival to last byte sent)
genguard_gateway_request_body_bytes_total{route}     request body bytes received
genguard_gateway_images_total{route,status}          images answered, SUCCESS / FAILURE
genguard_gateway_image_failures_total{reason}        per-image failures by reason (corrupt, truncated ...)
genguard_gateway_requests_admitted / _forwarding     requests admitted (queue + in flight) / in flight to Triton
genguard_gateway_cache_lookups_total{result}         answer-cache lookups per image: hit, miss, error
genguard_gateway_cache_entries / _bytes              the in-process answer cache's size (memory store)
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, limiter) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes ...
        r = self.registry
        self.requests = Counter("genguard_gateway_requests", "requests answered", ["route", "code"], registry=r)
        self.latency = Histogram("genguard_gateway_request_duration_seconds", "request latency", ["route"],
                                 buckets=BUCKETS, registry=r)
        self.body_bytes = Counter("genguard_gateway_request_body_bytes", "request body bytes received", ["route"],
                                  registry=r)
        self.images = Counter("genguard_gateway_images", "images answered", ["route", "status"], registry=r)
        self.failures = Counter("genguard_gateway_image_failures", "per-image failures by reason", ["reason"],
                                registry=r)
        admitted = Gauge("genguard_gateway_requests_admitted", "requests admitted (waiting or in flight)", registry=r)
        admitted.set_function(lambda: limiter.admitted)
        forwarding = Gauge("genguard_gateway_requests_forwarding", "requests in flight to Triton", registry=r)
        forwarding.set_function(lambda: limiter.forwarding)
        self.cache_lookups = Counter("genguard_gateway_cache_lookups", "answer-cache lookups per image", ["result"],
                                     registry=r)
        for result in ("hit", "miss", "error"):
            self.cache_lookups.labels(result)  # present at 0 from the start (rates and alerts need the series)

    def watch_cache(self, store) -> None:
        """The memory store's size as gauges (Redis reports its own)."""
        if hasattr(store, "bytes"):
            Gauge("genguard_gateway_cache_entries", "answers in the in-process cache",
                  registry=self.registry).set_function(lambda: len(store))
            Gauge("genguard_gateway_cache_bytes", "bytes of answers in the in-process cache",
                  registry=self.registry).set_function(lambda: store.bytes)

    def record_documents(self, route: str, docs: list[dict]) -> None:
        for doc in docs:
            status = doc.get("status", "FAILURE")
            self.images.labels(route, status).inc()
            if status != "SUCCESS":
                self.failures.labels((doc.get("error") or {}).get("reason") or "unknown").inc()


class MetricsMiddleware:
    """Counts every request by its route template (not its raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: frozenset[str] = frozenset()):
        self.app, self.metrics = app, metrics
        self.paths = paths  # routes without path parameters: a request refused before routing keeps its path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counted, watched)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope.get("path") if scope.get("path") in self.paths else "unmatched"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            if received:
                self.metrics.body_bytes.labels(route).inc(received)
