"""Faults and the production configuration, each on a private server (one small detector) so the
shared test server is never disturbed: a restart under load, a killed python-backend stub, a stub out of
memory, and the
model-control / repository APIs closed in production."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from conftest import free_ports
from genguard import protocol, server
from genguard.benchmarks.soak import _children
from genguard.client import Client
from genguard.export import samples
from genguard.export.repository import render

# The slow tier (make test-all, CI): servers of their own, killed and restarted.
pytestmark = [pytest.mark.server, pytest.mark.slow]
DETECTOR = "sumsub_sd"  # the smallest: keeps these servers quick to start


@pytest.fixture
def private(tiny_build, tmp_path):
    """Factory: start a server (production or not) on free ports over a one-detector repository."""
    repository = render("cpu", tiny_build, tmp_path / "repository", detectors=[DETECTOR])
    started = []

    def start(ports: server.Ports | None = None, **kwargs):
        ports = ports or server.Ports(*free_ports(3))
        log = tmp_path / f"log{len(started)}"
        process = server.start(repository, tmp_path / "home", ports=ports, log_file=log, **kwargs)
        started.append(process)
        server.wait_ready(process, ports, timeout=120, log_file=log)
        return process, ports, log

    yield start
    for process in started:
        server.stop_pid(process.pid)


def test_restart_under_load_loses_nothing(private):
    """The server is killed mid-run and restarted on the same ports: the client's retries carry every
    image across the gap, and each input is answered exactly once, in order."""
    process, ports, _ = private()
    images = [samples.photos()[n] for n in ("coins.png", "rocket.jpg", "camera.png")] * 150
    retries, results = [], []

    def run():
        with Client(f"127.0.0.1:{ports.grpc}", batch_size=2, concurrency=1, retries=6, backoff=0.5,
                    on_retry=retries.append) as client:
            results.extend(client.detect(images))

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while not answered(ports) and time.monotonic() < deadline:  # kill it mid-run, not before it started
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # a crash, not a graceful stop
    process.wait()
    private(ports)  # back on the same ports
    worker.join(timeout=180)
    assert not worker.is_alive()
    assert retries, "the client never had to retry: the restart did not interrupt the run"
    assert [r.index for r in results] == list(range(len(images)))
    assert all(r.status == "SUCCESS" for r in results), [r.error for r in results if r.status != "SUCCESS"]


def answered(ports) -> bool:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=5).read().decode()
    except OSError:
        return False
    return f'nv_inference_request_success{{model="{protocol.ENSEMBLE}",version="1"}} 0' not in text \
        and f'model="{protocol.ENSEMBLE}"' in text


def stub_pids(server_pid: int, model: str) -> list[int]:
    found = []
    for pid in _children(server_pid):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(f"/{model}/1/model.py".encode() in part for part in cmd):
            found.append(pid)
    return found


def test_killed_stub_fails_loudly_and_the_probe_says_so(private):
    """What Triton 2.51's python backend does when a model's stub process dies: the model stays READY, and
    every request that reaches it fails with an error naming the stub (never a wrong answer); models
    that don't need it keep answering. GenGuard's probe (`python -m genguard.server probe`, a real
    inference) reports it, so an orchestrator restarts the server; before the kill it passes."""
    process, ports, log = private()
    url = f"127.0.0.1:{ports.http}"
    assert server.probe(url) is None
    (stub,) = stub_pids(process.pid, DETECTOR)
    os.kill(stub, signal.SIGKILL)
    time.sleep(1)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
    batch = protocol.pack_images([samples.photos()["coins.png"]])
    tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    # Measured, not assumed: the stub is not restarted. For 20 s every request still fails the same way.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with pytest.raises(Exception, match=f"Stub process '{DETECTOR}_0_0' is not healthy"):
            client.infer(protocol.ENSEMBLE, [tensor])
        time.sleep(2)
    assert stub_pids(process.pid, DETECTOR) == []  # no new stub process either
    assert client.is_model_ready(DETECTOR)  # readiness does not notice: hence the probe
    assert client.infer(protocol.PREPROCESS, [tensor]).as_numpy(protocol.IMAGE_INFO) is not None
    problem = server.probe(url)
    assert problem is not None and "not healthy" in problem
    assert server.main(["probe", "--url", url]) == 1
    # A server with a dead stub sits out Triton's whole exit timeout (30 s) on SIGTERM; nothing is left to drain.
    os.killpg(process.pid, signal.SIGKILL)


def vm_size(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def out_of_memory(ports, detector: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{ports.metrics}/metrics", timeout=5).read().decode()
    series = f'genguard_detector_failures_total{{detector="{detector}",reason="out_of_memory"}} '
    return next(float(line[len(series):]) for line in text.splitlines() if line.startswith(series))


@pytest.mark.parametrize("presized", [False, True], ids=["triton-default-shm", "genguard-shm"])
def test_a_stub_out_of_memory_never_aborts_the_server(private, presized):
    """A detector's stub is held to 8 MiB above its size (RLIMIT_AS, as a container's memory limit would), then
    sent a full batch. With Triton's default 1 MiB shared-memory region the stub must grow it, fails inside
    boost.interprocess holding its lock, and tritonserver aborts (SIGABRT, `boost::interprocess::lock_exception`):
    the reproduction. With GenGuard's flags (server.PYTHON_SHM_BYTES, the region made at start) the same batch
    fails alone (MemoryError or ONNX Runtime's bad_alloc, caught), named in the answer, the log and
    genguard_detector_failures_total{reason="out_of_memory"}; the server lives and its other models answer."""
    process, ports, log = private(python_shm_bytes=server.PYTHON_SHM_BYTES if presized else None)
    (stub,) = stub_pids(process.pid, DETECTOR)
    limit = vm_size(stub) + (8 << 20)
    resource.prlimit(stub, resource.RLIMIT_AS, (limit, limit))
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
    batch = protocol.pack_images([samples.photos()["coins.png"]] * 16)
    tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    with pytest.raises(Exception) as refused:
        client.infer(protocol.ENSEMBLE, [tensor], client_timeout=120)
    if not presized:
        assert process.wait(30) == -signal.SIGABRT
        assert "boost::interprocess::lock_exception" in log.read_text(errors="replace")
        return
    time.sleep(1)
    assert process.poll() is None, log.read_text(errors="replace")[-3000:]
    assert DETECTOR in str(refused.value)
    assert out_of_memory(ports, DETECTOR) == 16
    assert f"{DETECTOR}: a batch of 16 failed" in log.read_text(errors="replace")
    assert client.infer(protocol.PREPROCESS, [tensor]).as_numpy(protocol.IMAGE_INFO) is not None
    os.killpg(process.pid, signal.SIGKILL)  # a dead stub would hold SIGTERM for the whole exit timeout


def _post(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_production_closes_model_control_and_repository_apis(private):
    key = "test-admin-key"
    _, ports, _ = private(production=True, admin_key=key)
    base = f"http://127.0.0.1:{ports.http}/v2/repository"
    for path in ("/index", f"/models/{DETECTOR}/unload", f"/models/{DETECTOR}/load"):
        assert _post(base + path) == 403, path
    assert _post(base + "/index", {"genguard-admin-key": "wrong"}) == 403
    assert _post(base + "/index", {"genguard-admin-key": key}) == 200
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
    with pytest.raises(Exception, match="(?i)restricted|permission|unavailable|denied"):
        grpc.unload_model(DETECTOR)
    with pytest.raises(Exception):
        grpc.get_model_repository_index()
    assert grpc.is_model_ready(DETECTOR) and grpc.is_server_ready()  # nothing was unloaded
    # inference is not restricted
    batch = protocol.pack_images([samples.photos()["coins.png"]])
    tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    assert grpc.infer(protocol.ENSEMBLE, [tensor]).as_numpy(protocol.STATUS)[0, 0] == 0


def test_development_server_keeps_them_open(private):
    """The control: without production, the same request is allowed (so the 403 above is the policy)."""
    _, ports, _ = private()
    assert _post(f"http://127.0.0.1:{ports.http}/v2/repository/index") == 200
