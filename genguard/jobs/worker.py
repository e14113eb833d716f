"""Job workers: asyncio tasks that claim jobs, answer their items through the gateway's answer path, write the
results per item, and deliver webhooks; in the gateway process (`jobs_workers`) or alone (`genguard worker`).

Nothing is lost when a worker stops: SIGTERM lets the batch in flight finish and be written, then puts the job
back in the queue; SIGKILL leaves the lease to expire, and another worker takes the job over, answering only the
items that have no result yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Awaitable, Callable

from .store import FAILED, SUCCEEDED, Claim, Store
from .spool import Spool
from .webhooks import deliver, parse_allowlist

log = logging.getLogger("genguard.jobs")

# items, explain, explain_labels, video_options -> one document per item (the gateway's state.answer, or an
# Engine's detect)
Answer = Callable[[list[bytes], bool, "dict | None", "dict | None"], Awaitable[list[dict]]]
IDLE_POLL_S = 0.5           # how often an idle worker looks for work another process queued
JANITOR_EVERY_S = 60.0
TRANSIENT = (502, 503, 504)  # the gateway's answers for "Triton is down, overloaded or slow": retry the job later


def public(job: dict) -> dict:
    return {k: v for k, v in job.items() if not k.startswith("_")}


class Jobs:
    """The store, the spool and the settings that routes and workers share."""

    def __init__(self, settings):
        self.settings = settings
        self.store = Store(settings.jobs_db_url)
        self.spool = Spool(settings.jobs_spool_url)
        self.allowlist = parse_allowlist(settings.jobs_callback_hosts)
        self.wake = asyncio.Event()  # set on submission: idle in-process workers start at once

    def migrate(self) -> None:
        self.store.migrate()

    def close(self) -> None:
        self.store.close()


class Workers:
    def __init__(self, jobs: Jobs, answer: Answer, count: int):
        self.jobs, self.answer, self.count = jobs, answer, count
        self.settings = jobs.settings
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self._http = None

    def start(self) -> None:
        import httpx

        self._http = httpx.AsyncClient(follow_redirects=False)
        prefix = f"{socket.gethostname()}:{os.getpid()}"
        self.tasks = [asyncio.create_task(self._work(f"{prefix}:{n}"), name=f"genguard-job-worker-{n}")
                      for n in range(self.count)]
        self.tasks.append(asyncio.create_task(self._deliver(), name="genguard-webhooks"))
        self.tasks.append(asyncio.create_task(self._janitor(), name="genguard-jobs-janitor"))

    async def stop(self, grace_s: float = 25.0) -> None:
        """Finish the batches in flight, write them, put unfinished jobs back in the queue."""
        self.stopping.set()
        self.jobs.wake.set()
        done, pending = await asyncio.wait(self.tasks, timeout=grace_s) if self.tasks else (set(), set())
        for task in pending:  # past the grace time: the lease brings their jobs back
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _idle(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.jobs.wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self.jobs.wake.clear()

    # -- jobs ------------------------------------------------------------------------------------------------

    async def _work(self, worker: str) -> None:
        store = self.jobs.store
        while not self.stopping.is_set():
            try:
                claim = await asyncio.to_thread(store.claim, worker, self.settings.jobs_lease_s)
            except Exception:  # noqa: BLE001 - the database is down: keep trying, say so
                log.exception("claiming a job failed; retrying")
                await asyncio.sleep(2)
                continue
            if claim is None:
                await self._idle(IDLE_POLL_S)
                continue
            try:
                await self._run(claim, worker)
            except Exception:  # noqa: BLE001 - one job's failure must not stop the worker
                log.exception("job %s failed", claim.id)
                await asyncio.to_thread(store.finish, claim.id, worker, FAILED, "internal error: see the worker log")

    async def _run(self, claim: Claim, worker: str) -> None:
        store, lease = self.jobs.store, self.settings.jobs_lease_s
        if await asyncio.to_thread(store.claims, claim.id) > self.settings.jobs_max_claims:
            await asyncio.to_thread(store.finish, claim.id, worker, FAILED,
                                    f"claimed {self.settings.jobs_max_claims} times without finishing")
            return
        owned = True

        async def heartbeat():
            nonlocal owned
            while owned:
                await asyncio.sleep(lease / 3)
                owned = await asyncio.to_thread(store.renew, claim.id, worker, lease)

        beat = asyncio.create_task(heartbeat())
        try:
            todo = [i for i in range(claim.total) if i not in claim.answered]
            explain, labels = bool(claim.options.get("explain")), claim.options.get("explain_labels")
            video = claim.options.get("video")
            for start in range(0, len(todo), self.settings.jobs_batch):
                if self.stopping.is_set() or not owned:
                    break
                chunk = todo[start:start + self.settings.jobs_batch]
                images = await asyncio.to_thread(lambda: [self.jobs.spool.get(claim.id, i) for i in chunk])
                docs = await self._answer(claim.id, images, explain, labels, video, lambda: owned)
                if docs is None:
                    break
                owned = await asyncio.to_thread(store.record, claim.id, worker,
                                                {i: {**d, "index": i} for i, d in zip(chunk, docs)}) and owned
            else:
                if owned:
                    await asyncio.to_thread(store.finish, claim.id, worker, SUCCEEDED)
                    self.jobs.wake.set()  # a webhook may be due
                return
            if owned:  # stopping: the answered items stay answered; another worker does the rest
                await asyncio.to_thread(store.release, claim.id, worker)
        finally:
            owned = False
            beat.cancel()

    async def _answer(self, job_id: str, images: list[bytes], explain: bool, labels, video,
                      owned) -> list[dict] | None:
        """The batch's documents; Triton down, overloaded or slow: the same batch again after a growing pause, while
        the job is still this worker's (the lease is renewed meanwhile). None: stopping, or the job was lost."""
        from genguard.gateway.errors import ApiError

        pause = 0.5
        while True:
            try:
                return await self.answer(images, explain, labels, video)
            except ApiError as exc:
                if exc.status not in TRANSIENT:
                    raise
                log.warning("job %s: %s; retrying in %.1f s", job_id, exc.message, pause)
            try:
                await asyncio.wait_for(self.stopping.wait(), pause)
            except asyncio.TimeoutError:
                pass
            if self.stopping.is_set() or not owned():
                return None
            pause = min(pause * 2, 30.0)

    # -- webhooks and retention ----------------------------------------------------------------------------

    async def _deliver(self) -> None:
        store, s = self.jobs.store, self.settings
        while not self.stopping.is_set():
            try:
                job = await asyncio.to_thread(store.claim_delivery, 2 * 10.0 + 5)
                if job is None:
                    await self._idle(IDLE_POLL_S)
                    continue
                secret = await asyncio.to_thread(store.webhook_secret, job["_owner"])
                ok, code, error = await deliver(self._http, public(job), secret, self.jobs.allowlist)
                attempt = await asyncio.to_thread(store.record_delivery, job["id"], ok, code, error,
                                                  s.jobs_webhook_attempts, s.jobs_webhook_backoff_s)
                (log.info if ok else log.warning)("job %s webhook attempt %d: %s", job["id"], attempt,
                                                  "delivered" if ok else error)
            except Exception:  # noqa: BLE001
                log.exception("webhook delivery failed; retrying")
                await asyncio.sleep(2)

    async def _janitor(self) -> None:
        while not self.stopping.is_set():
            expired: list[str] = []
            try:
                expired = await asyncio.to_thread(self.jobs.store.expired, self.settings.jobs_retention_s)
                for job_id in expired:
                    await asyncio.to_thread(self.jobs.spool.remove, job_id)
                if expired:
                    await asyncio.to_thread(self.jobs.store.delete, expired)
                    log.info("deleted %d expired jobs", len(expired))
            except Exception:  # noqa: BLE001
                log.exception("deleting expired jobs failed")
            try:
                await asyncio.wait_for(self.stopping.wait(), JANITOR_EVERY_S if not expired else 1)
            except asyncio.TimeoutError:
                pass
