"""Async jobs (POST /v1/jobs) against real uvicorn gateways in front of the real tritonserver, with both stores:
SQLite (the default; fast tier) and a real PostgreSQL server from Debian's packages (slow tier). Webhooks go to a
receiver on 127.0.0.1 and are verified with the `standardwebhooks` package; a gateway is SIGKILLed mid-job and
restarted; a separate `genguard worker` shares the PostgreSQL queue."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from conftest import free_ports, start_server
from jobs_fixtures import Receiver, images, start_postgres, submit, wait_job
from test_gateway import KEY, ROOT, assert_error, auth, direct, genguard_cli, start_gateway
from test_page import browser  # noqa: F401  (the chromium fixture)

pytestmark = [pytest.mark.server, pytest.mark.gateway]

OTHER_KEY = "gk-other-key-0123456789abcdef"
FAST = ("--jobs-webhook-backoff-s", "0.2", "--jobs-webhook-attempts", "5", "--jobs-lease-s", "3", "--jobs-batch", "2",
        "--deadline-s", "180")


@pytest.fixture(scope="module")
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def sqlite_gateway(triton, tmp_path_factory):
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw-jobs"), *FAST, "--jobs-callback-hosts", "127.0.0.1",
                       "--video-max-duration-s", "2.5", keys=[KEY, OTHER_KEY])  # a 4 s clip: over /v1/detect's
    yield gw
    gw.stop()


# -- the scenarios, run on each store ----------------------------------------------------------------------


def check_submit_webhook_results(gateway, receiver, triton) -> None:
    """submit -> a signed webhook on 127.0.0.1 -> GET answers the same documents as /v1/detect."""
    batch = images(3)
    seen = len(receiver.deliveries)
    response = submit(gateway.url, batch, KEY, callback_url=receiver.url, metadata={"case": "c-17"})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] in ("queued", "running", "succeeded") and response.headers["location"] == accepted["url"]
    assert accepted["url"] == f"/v1/jobs/{accepted['id']}" and accepted["progress"]["total"] == 3

    headers, body = receiver.wait(seen + 1)[seen]
    secret = requests.get(gateway.url + "/v1/jobs/webhook-secret", headers=auth(), timeout=10).json()["secret"]
    event = Webhook(secret).verify(body, headers)  # raises unless the signature is this key's
    assert event["type"] == "job.succeeded" and event["data"]["id"] == accepted["id"]
    assert event["data"]["metadata"] == {"case": "c-17"}
    other = requests.get(gateway.url + "/v1/jobs/webhook-secret", headers=auth(OTHER_KEY), timeout=10).json()
    with pytest.raises(Exception):
        Webhook(other["secret"]).verify(body, headers)  # another key's secret does not verify it

    job = wait_job(gateway.url, accepted["id"], KEY)
    assert job["status"] == "succeeded" and job["progress"] == {"done": 3, "total": 3}
    assert [d["index"] for d in job["data"]] == [0, 1, 2]
    assert [d["name"] for d in job["data"]] == ["image-0.png", "image-1.png", "image-2.png"]
    assert event["data"]["data"] == job["data"]
    expected = direct(triton, batch)
    for doc, exp in zip(job["data"], expected):
        assert doc["status"] == "SUCCESS"
        assert doc["is_ai_generated"] == pytest.approx(exp.is_ai_generated, abs=1e-5)
    assert job["webhook"]["status"] == "delivered"
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in job["webhook"]["attempts"]] == [(1, True, 204)]


def check_idempotent_resubmission(gateway) -> None:
    first = submit(gateway.url, images(1, 200), KEY, idempotency_key="order-4711")
    again = submit(gateway.url, images(1, 200), KEY, idempotency_key="order-4711")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    other = submit(gateway.url, images(1, 200), OTHER_KEY, idempotency_key="order-4711")  # keys are per API key
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    listed = requests.get(gateway.url + "/v1/jobs", headers=auth(), params={"limit": 500}, timeout=10).json()["data"]
    assert [j["id"] for j in listed].count(first.json()["id"]) == 1
    wait_job(gateway.url, first.json()["id"], KEY)


def check_keys_scope_jobs(gateway) -> None:
    job_id = submit(gateway.url, images(1, 300), KEY).json()["id"]
    assert requests.get(f"{gateway.url}/v1/jobs/{job_id}", headers=auth(), timeout=10).status_code == 200
    assert_error(requests.get(f"{gateway.url}/v1/jobs/{job_id}", headers=auth(OTHER_KEY), timeout=10),
                 404, "job_not_found")
    assert_error(requests.delete(f"{gateway.url}/v1/jobs/{job_id}", headers=auth(OTHER_KEY), timeout=10),
                 404, "job_not_found")
    theirs = requests.get(gateway.url + "/v1/jobs", headers=auth(OTHER_KEY), params={"limit": 500}, timeout=10)
    assert job_id not in {j["id"] for j in theirs.json()["data"]}
    assert_error(requests.get(f"{gateway.url}/v1/jobs/{job_id}", timeout=10), 401, "missing_api_key")
    wait_job(gateway.url, job_id, KEY)


def check_flaky_receiver(gateway, triton) -> None:
    """A receiver that fails three times, then succeeds: four attempts recorded, exactly one successful."""
    flaky = Receiver(failures=3).start()
    try:
        job_id = submit(gateway.url, images(1, 400), KEY, callback_url=flaky.url).json()["id"]
        flaky.wait(4)
        deadline = time.monotonic() + 60
        while (job := wait_job(gateway.url, job_id, KEY))["webhook"]["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.0)  # time for a wrong extra delivery to show
        assert len(flaky.deliveries) == 4
        attempts = job["webhook"]["attempts"]
        assert [(a["ok"], a["status_code"]) for a in attempts] == [(False, 503)] * 3 + [(True, 204)]
        assert job["webhook"]["status"] == "delivered"
        assert len({h["webhook-id"] for h, _ in flaky.deliveries}) == 1  # one event: receivers can deduplicate
        gaps = [b["at"] for b in attempts]
        assert gaps == sorted(gaps)
    finally:
        flaky.stop()


def check_redirect_is_not_followed(gateway) -> None:
    """A receiver answering 307: never followed, each attempt a failure, and after the last one the job's webhook
    is `failed` (recorded, not dropped)."""
    target = Receiver().start()
    redirecting = Receiver(redirect=target.url).start()
    try:
        job_id = submit(gateway.url, images(1, 420), KEY, callback_url=redirecting.url).json()["id"]
        redirecting.wait(5)
        deadline = time.monotonic() + 60
        while (job := wait_job(gateway.url, job_id, KEY))["webhook"]["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert job["webhook"]["status"] == "failed"
        assert [(a["ok"], a["status_code"]) for a in job["webhook"]["attempts"]] == [(False, 307)] * 5
        assert target.deliveries == [] and len(redirecting.deliveries) == 5
    finally:
        redirecting.stop()
        target.stop()


# -- SQLite (fast tier) ---------------------------------------------------------------------------------------


def test_sqlite_submit_webhook_results(sqlite_gateway, receiver, triton):
    check_submit_webhook_results(sqlite_gateway, receiver, triton)


def test_sqlite_idempotent_resubmission(sqlite_gateway):
    check_idempotent_resubmission(sqlite_gateway)


def test_sqlite_keys_scope_jobs(sqlite_gateway):
    check_keys_scope_jobs(sqlite_gateway)


def test_sqlite_flaky_receiver_gets_one_successful_delivery(sqlite_gateway, triton):
    check_flaky_receiver(sqlite_gateway, triton)


def test_sqlite_redirect_is_not_followed_and_exhausted_webhooks_are_failed(sqlite_gateway):
    check_redirect_is_not_followed(sqlite_gateway)


def test_callbacks_refused_at_submission(sqlite_gateway, receiver):
    cases = {"http://example.com/hook": "not in this gateway's callback allowlist",
             "http://127.0.0.2:9/hook": "not in this gateway's callback allowlist",  # loopback, but not the listed one
             "ftp://127.0.0.1/hook": "http:// or https://",
             "http://user:pw@127.0.0.1/hook": "credentials"}
    for url, why in cases.items():
        body = assert_error(submit(sqlite_gateway.url, images(1), KEY, callback_url=url), 422, "callback_refused")
        assert why in body["error"]["message"], (url, body)
    listed = requests.get(sqlite_gateway.url + "/v1/jobs", headers=auth(), params={"limit": 500}, timeout=10)
    assert not any(j["callback_url"] in cases for j in listed.json()["data"])  # nothing was queued


def test_bad_requests_are_json(sqlite_gateway):
    url = sqlite_gateway.url
    assert_error(requests.post(url + "/v1/jobs", headers=auth(), json={"input": ["https://x.test/a.png"]}, timeout=10),
                 422, "url_not_supported")
    assert_error(submit(url, images(1), KEY, metadata=[1, 2]), 422, "invalid_request")
    assert_error(requests.get(url + "/v1/jobs", headers=auth(), params={"status": "done"}, timeout=10),
                 422, "invalid_request")
    assert_error(requests.get(url + "/v1/jobs/nope", headers=auth(), timeout=10), 404, "job_not_found")


def test_list_paginates_and_cancel(sqlite_gateway):
    url = sqlite_gateway.url
    ids = [submit(url, images(1, 500 + i), OTHER_KEY).json()["id"] for i in range(3)]
    seen, cursor = [], None
    while True:
        page = requests.get(url + "/v1/jobs", headers=auth(OTHER_KEY), params={"limit": 2, **(
            {"cursor": cursor} if cursor else {})}, timeout=10).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen[:3] == ids[::-1] and len(seen) == len(set(seen))  # newest first, each once
    for job_id in ids:
        wait_job(url, job_id, OTHER_KEY)
    assert_error(requests.delete(f"{url}/v1/jobs/{ids[0]}", headers=auth(OTHER_KEY), timeout=10), 409, "job_finished")
    done = requests.get(url + "/v1/jobs", headers=auth(OTHER_KEY), params={"status": "succeeded"}, timeout=10)
    assert set(ids) <= {j["id"] for j in done.json()["data"]}


@pytest.mark.slow  # ~20 s: a 4 s clip's frames through the detectors on a shared 2-CPU machine
def test_a_clip_over_the_synchronous_limit_is_answered_as_a_job(sqlite_gateway, triton):
    """The clip /v1/detect refuses for its length (naming POST /v1/jobs) is answered by a job, in order with an
    image, with the sampling asked for, as Triton answers it directly."""
    import video_fixtures as vf
    from genguard.client import Client
    from genguard.export import samples

    photos = samples.photos()
    clip = vf.clip([photos["rocket.jpg"], photos["coffee.png"]] * 2, seconds_each=1.0, fps=4)  # 4 s
    files = [("file", ("a.png", images(1, 950)[0], "image/png")), ("file", ("long.mp4", clip, "video/mp4"))]
    refused = requests.post(sqlite_gateway.url + "/v1/detect", headers=auth(), files=files, timeout=180).json()
    assert refused["data"][1]["error"]["reason"] == "too_long" and "POST /v1/jobs" in refused["data"][1]["error"]["message"]
    response = requests.post(sqlite_gateway.url + "/v1/jobs", headers=auth(), files=files, params={"fps": 2}, timeout=60)
    assert response.status_code == 202, response.text
    job = wait_job(sqlite_gateway.url, response.json()["id"], KEY)
    image, video = job["data"]
    assert (image["name"], image["status"], video["name"], video["kind"]) == ("a.png", "SUCCESS", "long.mp4", "video")
    assert video["status"] == "SUCCESS" and [e["t"] for e in video["timeline"]] == [i / 2 for i in range(8)]
    with Client(triton.grpc_url, timeout=180) as client:
        direct = client.detect(clip, video_options={"fps": 2})[0]
    assert video["is_ai_generated"] == pytest.approx(direct.is_ai_generated, abs=1e-6)


def test_client_and_cli(sqlite_gateway, triton, tmp_path):
    """RestClient.submit/wait/jobs/cancel and `genguard jobs submit|status|wait|list|cancel` on the same gateway."""
    from genguard.client.jobs import JobError
    from genguard.client.rest import RestClient

    folder = tmp_path / "shots"
    folder.mkdir()
    for i, data in enumerate(images(2, 960)):
        (folder / f"s{i}.png").write_bytes(data)
    with RestClient(sqlite_gateway.url, api_key=KEY) as client:
        job = client.submit([folder], metadata={"case": 9}, idempotency_key="cli-test")
        assert client.submit([folder], idempotency_key="cli-test").id == job.id
        done = client.wait(job, timeout=240, poll=0.1)
        assert done.status == "succeeded" and done.metadata == {"case": 9}
        assert [r.name for r in done.results] == [str(folder / "s0.png"), str(folder / "s1.png")]  # as detect names them
        expected = direct(triton, [(folder / "s0.png").read_bytes(), (folder / "s1.png").read_bytes()])
        assert [r.is_ai_generated for r in done.results] == pytest.approx([e.is_ai_generated for e in expected],
                                                                          abs=1e-5)
        assert job.id in {j.id for j in client.jobs(status="succeeded")}
        with pytest.raises(JobError) as refused:
            client.cancel(job)
        assert refused.value.code == "job_finished"
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    cli = ("--url", sqlite_gateway.url, "--api-key-file", str(key_file))
    submitted = genguard_cli("jobs", "submit", *cli, str(folder))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = genguard_cli("jobs", "wait", *cli, job_id, "--format", "jsonl")
    assert waited.returncode == 0, waited.stderr
    rows = [json.loads(line) for line in waited.stdout.splitlines()]
    assert [Path(r["name"]).name for r in rows] == ["s0.png", "s1.png"]
    assert [r["is_ai_generated"] for r in rows] == pytest.approx([r.is_ai_generated for r in done.results], abs=1e-6)
    status = genguard_cli("jobs", "status", *cli, job_id)
    assert status.returncode == 0 and status.stdout.split()[:3] == [job_id, "succeeded", "2/2"]
    listed = genguard_cli("jobs", "list", *cli, "--status", "succeeded")
    assert job_id in listed.stdout
    cancelled = genguard_cli("jobs", "cancel", *cli, job_id)
    assert cancelled.returncode != 0 and "already succeeded" in cancelled.stderr


@pytest.mark.browser
def test_page_lists_jobs_and_shows_results(sqlite_gateway, browser):
    """The reviewer page's Jobs panel in Debian's chromium: this key's jobs (not another key's), and a job's
    results with the API's numbers; every request stays on the gateway's origin."""
    url = sqlite_gateway.url
    mine = submit(url, [*images(2, 900), b"not an image"], KEY).json()["id"]
    theirs = submit(url, images(1, 910), OTHER_KEY).json()["id"]
    job = wait_job(url, mine, KEY)
    page = browser.new_page()
    page.set_default_timeout(60_000)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.evaluate("key => sessionStorage.setItem('genguard.apiKey', key)", KEY)
    page.reload()
    page.click("#jobs summary")
    row = page.locator(f'#job-rows tr[data-job="{mine}"]')
    row.wait_for()
    assert row.locator("td").nth(1).inner_text() == "succeeded" and row.locator("td").nth(2).inner_text() == "3/3"
    assert page.locator(f'#job-rows tr[data-job="{theirs}"]').count() == 0
    row.click()
    page.locator("#job-results tr").nth(2).wait_for()
    cells = [[c.inner_text() for c in r.locator("td").all()] for r in page.locator("#job-results tr").all()]
    assert [c[0] for c in cells] == ["image-0.png", "image-1.png", "image-2.png"]
    assert cells[2][1] == "FAILURE" and cells[2][3] == job["data"][2]["error"]["reason"]
    shown = page.locator("#job-results tr .num").evaluate_all("nodes => nodes.map(n => n.dataset.value || null)")
    assert [float(v) for v in shown[:2]] == [d["is_ai_generated"] for d in job["data"][:2]]
    assert job["id"] in page.inner_text("#job-title") and "succeeded" in page.inner_text("#job-title")
    assert not errors, errors
    assert all(u.startswith(url) for u in requested), [u for u in requested if not u.startswith(url)]
    page.close()


@pytest.mark.slow  # three gateway starts and ten items one at a time: ~15-30 s on a shared 2-CPU machine
def test_job_survives_gateway_sigterm_and_restart(triton, tmp_path):
    """SIGTERM mid-job: the gateway writes the batch in flight and puts the job back in the queue (no lease to
    wait for); the restarted gateway answers only the rest."""
    args = ("--state-dir", str(tmp_path / "state"), "--jobs-batch", "1", "--deadline-s", "180",
            "--jobs-callback-hosts", "localhost")
    gw = start_gateway(triton.grpc_url, tmp_path, *args)
    try:
        body = assert_error(submit(gw.url, images(1), None, callback_url="http://localhost:9/hook"),
                            422, "callback_refused")  # allowlisted by name, but it resolves to loopback
        assert "loopback" in body["error"]["message"]
        job_id = submit(gw.url, images(10, 800), None).json()["id"]
        while requests.get(f"{gw.url}/v1/jobs/{job_id}", timeout=10).json()["progress"]["done"] < 2:
            time.sleep(0.02)
    finally:
        gw.stop()  # SIGTERM
    assert gw.process.returncode in (0, -signal.SIGTERM) and "Traceback" not in gw.log.read_text(), gw.log.read_text()
    gw = start_gateway(triton.grpc_url, tmp_path, *args, "--jobs-workers", "0")  # look before anyone works on it
    try:
        stopped = requests.get(f"{gw.url}/v1/jobs/{job_id}", timeout=10).json()
        assert stopped["status"] == "queued" and 2 <= stopped["progress"]["done"] < 10, stopped
        assert [d["index"] for d in stopped["data"]] == list(range(stopped["progress"]["done"]))
    finally:
        gw.stop()
    gw = start_gateway(triton.grpc_url, tmp_path, *args)
    try:
        job = wait_job(gw.url, job_id, None)
        assert job["status"] == "succeeded" and [d["index"] for d in job["data"]] == list(range(10))
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def own_triton(tiny_build, tmp_path_factory):
    """A tritonserver of these tests' own, restarted on the same ports whenever it dies, as Kubernetes' liveness
    probe would: a gateway SIGKILLed while its gRPC request is in flight can crash the bundled tritonserver 2.51
    (a segfault in TRITONBACKEND_ResponseSend, reproduced in CI). The session's server, shared by every other
    test, is never exposed to that; what these tests check is that the jobs still finish."""
    import threading
    import warnings

    from genguard import server

    workdir = tmp_path_factory.mktemp("triton-jobs")
    running = start_server(tiny_build, workdir)
    stop, restarts = threading.Event(), []

    def revive() -> None:
        while not stop.wait(0.5):
            if running.process.poll() is not None:
                restarts.append(running.process.returncode)
                home = workdir / f"tritonserver-restart-{len(restarts)}"
                running.process = server.start(running.repository, home, ports=running.ports, log_file=running.log)
                server.wait_ready(running.process, running.ports, timeout=180, log_file=running.log)

    watcher = threading.Thread(target=revive, daemon=True)
    watcher.start()
    yield running
    stop.set()
    watcher.join(200)
    if restarts:
        warnings.warn(f"the jobs tests' tritonserver died {len(restarts)} time(s) (exit codes {restarts}) after a "
                      "gateway's SIGKILL and was restarted")
    server.stop_pid(running.process.pid)


@pytest.mark.slow  # starts its own tritonserver (SIGKILL must not touch the session's), and two gateways
def test_job_survives_gateway_sigkill_and_restart(own_triton, tmp_path):
    """SIGKILL mid-job: the restarted gateway takes the job over once its lease expires; every item is answered
    exactly once. The same gateway, keyless on loopback, refuses a callback host that resolves to a loopback
    address it did not allowlist."""
    triton = own_triton
    state = tmp_path / "state"
    args = ("--state-dir", str(state), "--jobs-batch", "1", "--jobs-lease-s", "2", "--deadline-s", "180",
            "--jobs-callback-hosts", "localhost")
    gw = start_gateway(triton.grpc_url, tmp_path, *args)
    try:
        body = assert_error(submit(gw.url, images(1), None, callback_url="http://localhost:9/hook"),
                            422, "callback_refused")
        assert "127.0.0.1" in body["error"]["message"] or "::1" in body["error"]["message"]
        batch = images(16, 600)
        job_id = submit(gw.url, batch, None).json()["id"]
        while (done := requests.get(f"{gw.url}/v1/jobs/{job_id}", timeout=10).json()["progress"]["done"]) < 2:
            time.sleep(0.02)
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
        assert done < len(batch), "the job finished before the kill: give it more items"
    finally:
        gw.stop()
    gw = start_gateway(triton.grpc_url, tmp_path, *args)
    try:
        job = wait_job(gw.url, job_id, None)
        assert job["status"] == "succeeded" and job["progress"] == {"done": 16, "total": 16}
        assert [d["index"] for d in job["data"]] == list(range(16))
        assert [d["name"] for d in job["data"]] == [f"image-{i}.png" for i in range(16)]
        assert all(d["status"] == "SUCCESS" for d in job["data"])
    finally:
        gw.stop()


# -- PostgreSQL (slow tier) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    pg = start_postgres(free_ports(1)[0])
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def pg_gateway(triton, postgres, tmp_path_factory):
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw-jobs-pg"), *FAST, "--jobs-db", postgres.url,
                       "--jobs-callback-hosts", "127.0.0.1", keys=[KEY, OTHER_KEY])
    yield gw
    gw.stop()


@pytest.mark.slow  # starts its own PostgreSQL server and gateway
def test_postgres_scenarios(pg_gateway, receiver, triton):
    check_submit_webhook_results(pg_gateway, receiver, triton)
    check_idempotent_resubmission(pg_gateway)
    check_keys_scope_jobs(pg_gateway)
    check_flaky_receiver(pg_gateway, triton)
    check_redirect_is_not_followed(pg_gateway)
    assert_error(submit(pg_gateway.url, images(1), KEY, callback_url="http://example.com/h"), 422, "callback_refused")


@pytest.mark.slow  # starts its own PostgreSQL server, two gateways and a separate worker
def test_postgres_sigkill_restart_and_separate_worker(own_triton, postgres, tmp_path):
    """Two processes claim from one PostgreSQL queue (a gateway's workers and `genguard worker`); the gateway is
    SIGKILLed mid-job; the separate worker and the restarted gateway finish every item exactly once."""
    database = postgres.url.rsplit("/", 1)[0] + "/genguard_kill"
    triton = own_triton
    postgres.createdb("genguard_kill")
    common = ("--jobs-db", database, "--state-dir", str(tmp_path / "state"), "--jobs-batch", "1",
              "--jobs-lease-s", "2", "--deadline-s", "180")
    gw = start_gateway(triton.grpc_url, tmp_path, *common)
    worker = subprocess.Popen([sys.executable, "-m", "genguard.jobs", "worker", "--triton-url", triton.grpc_url,
                               *common, "--jobs-workers", "1"], cwd=ROOT, stdout=open(tmp_path / "worker.log", "wb"),
                              stderr=subprocess.STDOUT)
    try:
        job_ids = [submit(gw.url, images(6, 700 + 10 * j), None).json()["id"] for j in range(3)]
        while sum(requests.get(f"{gw.url}/v1/jobs/{j}", timeout=10).json()["progress"]["done"] for j in job_ids) < 3:
            time.sleep(0.02)
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
        gw = start_gateway(triton.grpc_url, tmp_path, *common)
        for job_id in job_ids:
            job = wait_job(gw.url, job_id, None)
            assert job["status"] == "succeeded" and [d["index"] for d in job["data"]] == list(range(6))
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(40) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
        gw.stop()


@pytest.mark.slow  # starts PostgreSQL, two gateways and two worker processes
def test_jobs_benchmark_runs_both_stores(triton, tmp_path):
    """`python -m genguard.benchmarks.jobs` end to end, minimal: both stores, the files (no timing asserted)."""
    from genguard.benchmarks import jobs as bench

    assert bench.main(["--grpc-url", triton.grpc_url, "--jobs", "3", "--samples", "1", "--out", str(tmp_path),
                       "--tag", "smoke"]) == 0
    saved = json.loads((tmp_path / "jobs-smoke.json").read_text())
    assert [r["store"] for r in saved["rows"]] == ["sqlite", "postgresql"]
    assert all(r["jobs"] == 3 and r["completed_jobs_per_s"] > 0 and r["job_p50_ms"] > 0 for r in saved["rows"])
    assert "| store | workers |" in (tmp_path / "jobs-smoke.md").read_text()


def test_retention_deletes_finished_jobs_with_their_results_and_bytes(tmp_path):
    """The store and spool a gateway uses (SQLite, a folder): a finished job past the retention time is found,
    and deleting it takes its results, deliveries and uploaded bytes; a queued one is kept."""
    from genguard.jobs.spool import Spool
    from genguard.jobs.store import SUCCEEDED, Store

    migrated = genguard_cli("jobs", "migrate", "--state-dir", str(tmp_path))  # what the gateway does at startup
    assert migrated.returncode == 0 and "revision 0001" in migrated.stdout, migrated.stderr
    store, spool = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}"), Spool(str(tmp_path / "spool"))
    store.migrate()  # again: a no-op
    done, kept = store.new_id(), store.new_id()
    for job_id in (done, kept):
        spool.put(job_id, [b"one", b"two"])
        store.create(job_id, "owner", ["a", "b"], {}, None, None, None)
    claim = store.claim("w", 30)
    assert claim.id == done and store.record(done, "w", {0: {"index": 0}, 1: {"index": 1}})
    assert store.finish(done, "w", SUCCEEDED)
    assert store.expired(retention_s=3600) == []
    time.sleep(0.05)
    assert store.expired(retention_s=0.01) == [done]
    spool.remove(done)
    store.delete([done])
    assert store.get(done) is None and store.get(kept)["status"] == "queued"
    assert not (tmp_path / "spool" / done).exists() and spool.get(kept, 1) == b"two"
    store.close()
