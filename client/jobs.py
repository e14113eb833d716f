"""Async jobs on the REST gateway (POST /v1/jobs): submit now, get the results later, by polling or a webhook.

    with RestClient("https://genguard.example.com", api_key="...") as client:
        job = client.submit(["shots/"], callback_url="https://hooks.example.com/genguard", metadata={"case": 17})
        job = client.wait(job)          # or let the webhook tell you; job.results: one Result per image
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .errors import GenGuardError
from .results import Result

FINISHED = ("succeeded", "failed", "cancelled")


class JobError(GenGuardError):
    """The gateway refused a job request (the message is the gateway's)."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code, self.status = code, status


@dataclass
class Job:
    id: str
    status: str                      # queued, running, succeeded, failed, cancelled
    done: int
    total: int
    metadata: Any = None
    error: str | None = None
    webhook: dict = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)  # the items answered so far, in order
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_json(cls, doc: dict) -> "Job":
        results = [Result.from_json(d, d["index"], d.get("name") or f"input[{d['index']}]") for d in doc.get("data") or []]
        return cls(doc["id"], doc["status"], doc["progress"]["done"], doc["progress"]["total"], doc.get("metadata"),
                   doc.get("error"), doc.get("webhook") or {}, results, doc)


def _checked(response, *ok: int) -> dict:
    if response.status_code in ok:
        return response.json()
    try:
        error = response.json()["error"]
        raise JobError(error["message"], error["code"], response.status_code)
    except (ValueError, KeyError, TypeError):
        raise JobError(f"HTTP {response.status_code}: {response.text[:200]}", None, response.status_code) from None


class JobsMixin:
    """RestClient's job methods (it provides _request, the retries and the key)."""

    def submit(self, inputs: Any, *, callback_url: str | None = None, metadata: dict | None = None,
               idempotency_key: str | None = None, recursive: bool = False) -> Job:
        """Upload the inputs (paths, folders, bytes, PIL images) as one job; answered at once (queued)."""
        import json

        from .inputs import collect, load

        loaded, failed = load(collect(inputs, recursive))
        if failed:
            raise JobError(f"{len(failed)} input(s) could not be read, first {failed[0].name}: "
                           f"{failed[0].error.message if failed[0].error else 'unreadable'}")
        if not loaded:
            raise JobError("no inputs to submit")
        files = [("file", (entry.item.name, entry.data, "application/octet-stream")) for entry in loaded]
        data = {k: v for k, v in (("callback_url", callback_url),
                                  ("metadata", None if metadata is None else json.dumps(metadata))) if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job.from_json(_checked(self._request("POST", "/v1/jobs", files=files, data=data, headers=headers), 202))

    def job(self, job: Job | str) -> Job:
        return Job.from_json(_checked(self._request("GET", f"/v1/jobs/{getattr(job, 'id', job)}"), 200))

    def jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """This key's jobs, newest first (without results), up to `limit`."""
        found: list[Job] = []
        cursor = None
        while len(found) < limit:
            params = {"limit": min(500, limit - len(found)), **({"status": status} if status else {}),
                      **({"cursor": cursor} if cursor else {})}
            page = _checked(self._request("GET", "/v1/jobs", params=params), 200)
            found += [Job.from_json(doc) for doc in page["data"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return found

    def cancel(self, job: Job | str) -> Job:
        return Job.from_json(_checked(self._request("DELETE", f"/v1/jobs/{getattr(job, 'id', job)}"), 200))

    def wait(self, job: Job | str, *, timeout: float | None = None, poll: float = 1.0) -> Job:
        """Poll until the job is finished (succeeded, failed or cancelled); TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.job(job)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current.id} is still {current.status} ({current.done}/{current.total}) "
                                   f"after {timeout:g} s")
            time.sleep(poll)
