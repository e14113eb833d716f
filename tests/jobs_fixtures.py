"""What the jobs tests share (tests/test_jobs.py): a webhook receiver on 127.0.0.1, submitting and waiting, small
images; the PostgreSQL server comes from genguard.benchmarks.postgres (the benchmark starts it too)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from genguard.benchmarks.postgres import start_postgres  # noqa: F401  (the tests import it from here)
from test_gateway import auth, png


@dataclass
class Receiver:
    """Records every delivery (headers, body); answers 503 to the first `failures` of them (or, with `redirect`,
    307 to that URL to every one)."""
    failures: int = 0
    redirect: str | None = None
    deliveries: list = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.deliveries.append((dict(self.headers), body))
                failed = len(receiver.deliveries) <= receiver.failures
                self.send_response(307 if receiver.redirect else 503 if failed else 204)
                if receiver.redirect:
                    self.send_header("Location", receiver.redirect)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 120) -> list:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} deliveries of {count} after {timeout} s"
            time.sleep(0.05)
        return self.deliveries


def submit(url: str, images: list[bytes], key: str | None, **fields) -> requests.Response:
    headers = auth(key) if key else {}
    if "idempotency_key" in fields:
        headers["Idempotency-Key"] = fields.pop("idempotency_key")
    data = {k: (json.dumps(v) if k == "metadata" else v) for k, v in fields.items()}
    files = [("file", (f"image-{i}.png", image, "image/png")) for i, image in enumerate(images)]
    return requests.post(url + "/v1/jobs", headers=headers, files=files, data=data, timeout=60)


def wait_job(url: str, job_id: str, key: str | None, timeout: float = 240, until=("succeeded", "failed")) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}/v1/jobs/{job_id}", headers=auth(key) if key else {}, timeout=30).json()
        if job.get("status") in until:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.get('status')} after {timeout} s"
        time.sleep(0.1)


def images(count: int, seed: int = 100) -> list[bytes]:
    return [png(seed + i, (48 + 8 * (i % 3), 40)) for i in range(count)]
