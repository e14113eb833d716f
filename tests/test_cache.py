"""The gateway's answer cache (genguard/gateway/cache.py), over real HTTP to a real uvicorn gateway and a real
tritonserver: repeats answered from cache and said so, failures never cached, metrics; slow: Redis (Debian's
redis-server, started here) shared by two gateways, and a changed fusion file or model never answered from the
old entries, across Triton restarts."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import free_ports
from genguard import server
from genguard.checksums import sha256_file
from genguard.export.repository import render
from genguard.fusion import FusionConfig
from test_gateway import HIVE, bad_images, data_url, png, start_gateway

pytestmark = [pytest.mark.server, pytest.mark.gateway]


def detect(gw, image: bytes) -> tuple[dict, str]:
    response = requests.post(gw.url + "/v1/detect", files=[("file", ("a.png", image, "image/png"))], timeout=180)
    assert response.status_code == 200, response.text
    return response.json()["data"][0], response.headers["X-GenGuard-Cache-Hits"]


def lookups(gw) -> dict[str, float]:
    text = requests.get(gw.url + "/metrics", timeout=10).text
    return {r: next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith(f'genguard_gateway_cache_lookups_total{{result="{r}"}}'))
            for r in ("hit", "miss", "error")}


@pytest.fixture(scope="module")
def cached(triton, tmp_path_factory):
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw-cache"), "--deadline-s", "180")
    yield gw
    gw.stop()


def test_repeat_is_answered_from_cache_and_says_so(cached):
    image = png(3101)
    before = lookups(cached)
    first, hits = detect(cached, image)
    assert first["status"] == "SUCCESS" and first["cached"] is False and hits == "0/1"
    again, hits = detect(cached, image)
    assert again["cached"] is True and hits == "1/1"
    assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    after = lookups(cached)
    assert after["hit"] - before["hit"] == 1 and after["miss"] - before["miss"] == 1
    assert 'genguard_gateway_cache_entries' in requests.get(cached.url + "/metrics", timeout=10).text


def test_failures_are_not_cached_and_batch_mates_are(cached):
    """Hive's route: a repeat, a new image and a corrupt one in one request; the corrupt one is a FAILURE both
    times (tried again, never cached), the others come from cache the second time."""
    repeat, fresh, (corrupt, reason) = png(3102), png(3103), bad_images()["corrupt"]
    detect(cached, repeat)
    body = {"input": [data_url(repeat), data_url(fresh), data_url(corrupt)]}
    for hits in ("1/3", "2/3"):
        response = requests.post(cached.url + HIVE + "?extended=true", json=body, timeout=180)
        assert response.status_code == 200 and response.headers["X-GenGuard-Cache-Hits"] == hits, response.text
        data = response.json()["data"]
        assert [d["index"] for d in data] == [0, 1, 2]
        assert data[2]["status"] == "FAILURE" and data[2]["error"]["reason"] == reason and not data[2]["cached"]
    assert [d["cached"] for d in data] == [True, True, False]
    plain = requests.post(cached.url + HIVE, json=body, timeout=180)  # Hive's four fields: the header says it
    assert set(plain.json()["data"][0]) == {"index", "is_ai_generated", "possible_sources", "status"}
    assert plain.headers["X-GenGuard-Cache-Hits"] == "2/3"


# -- slow: Redis, restarts, invalidation -------------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path):
    """Debian's redis-server on 127.0.0.1 (make setup installs it), no persistence; stopped after the test."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (make setup does)")
    port = free_ports(1)[0]
    process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)], stdout=open(tmp_path / "redis.log", "wb"),
                               stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError((tmp_path / "redis.log").read_text())
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0", process
    process.terminate()
    process.wait(10)


def changed_model(build: Path, out: Path, name: str) -> Path:
    """A copy of `build` whose `name` detector is another model: one weight changed, its digest recorded."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    (out / "onnx").mkdir(parents=True)
    (out / "checkpoints").symlink_to(build / "checkpoints")
    for folder in (build / "onnx").iterdir():
        if folder.name != name:
            (out / "onnx" / folder.name).symlink_to(folder)
    target = out / "onnx" / name
    shutil.copytree(build / "onnx" / name, target, symlinks=False)
    model = onnx.load(str(target / "model.onnx"))
    weight = next(w for w in model.graph.initializer if w.data_type == onnx.TensorProto.FLOAT and w.dims)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.5), weight.name))
    onnx.save(model, str(target / "model.onnx"))
    parity = json.loads((target / "parity.json").read_text())
    parity["onnx_sha256"] = sha256_file(target / "model.onnx")
    (target / "parity.json").write_text(json.dumps(parity))
    return out


@pytest.mark.slow  # its own tritonserver (started three times), two gateways and redis-server: ~15 s
def test_redis_is_shared_and_a_changed_fusion_or_model_is_never_served_from_the_old_entries(
        tiny_build, tmp_path, redis_url):
    url, redis_process = redis_url
    detector = "sumsub_sd"
    ports = server.Ports(*free_ports(3))
    image = png(3201)
    one = start_gateway(f"127.0.0.1:{ports.grpc}", tmp_path, "--cache", url, "--deadline-s", "120")
    two = start_gateway(f"127.0.0.1:{ports.grpc}", tmp_path, "--cache", url, "--deadline-s", "120")

    def serve(build: Path, fusion: FusionConfig, n: int):
        repository = render("cpu", build, tmp_path / f"repository{n}", detectors=[detector], fusion=fusion)
        process = server.start(repository, tmp_path / "home", ports=ports, log_file=tmp_path / f"triton{n}.log")
        server.wait_ready(process, ports, timeout=120, log_file=tmp_path / f"triton{n}.log")
        return process

    triton = serve(tiny_build, FusionConfig(), 0)
    try:
        first, _ = detect(one, image)
        shared, _ = detect(two, image)  # the other replica: answered from what the first stored
        assert first["cached"] is False and shared["cached"] is True
        assert shared["is_ai_generated"] == first["is_ai_generated"]

        # The fusion file changes (a restart serves it): the next answer is fresh, from the new fusion.
        server.stop_pid(triton.pid)
        triton = serve(tiny_build, FusionConfig(threshold=0.3, id="stricter"), 1)
        refused = requests.post(one.url + "/v1/detect", files=[("file", ("a.png", image, "image/png"))], timeout=60)
        fused, _ = detect(one, image) if refused.status_code != 200 else (refused.json()["data"][0], None)
        assert fused["cached"] is False and fused["fusion"]["id"] == "stricter"
        assert detect(two, image)[0]["cached"] is True  # cached again under the new identity

        # The model changes (one weight): fresh again, and a different score.
        server.stop_pid(triton.pid)
        triton = serve(changed_model(tiny_build, tmp_path / "changed", detector), FusionConfig(id="stricter"), 2)
        remodelled, _ = detect(two, image)
        assert remodelled["cached"] is False
        assert remodelled["detectors"] != fused["detectors"]

        # Redis goes away: answers go on (fresh), counted as cache errors.
        redis_process.terminate()
        redis_process.wait(10)
        alone, _ = detect(one, image)
        assert alone["status"] == "SUCCESS" and alone["cached"] is False
        assert lookups(one)["error"] >= 1
    finally:
        server.stop_pid(triton.pid)
        one.stop()
        two.stop()


@pytest.mark.slow  # make load end to end on the tiny build: its own tritonserver (restarted) and gateway, ~40 s
def test_load_benchmark_loses_nothing_across_a_restart(tiny_build, tmp_path):
    """`python -m genguard.benchmarks.load`, short: the mix and the restart, every request answered (200, or a
    deliberate 429/503 retried), the memory samples and the recovery in the written report."""
    from genguard.benchmarks import load

    assert load.main(["--build", str(tiny_build), "--duration", "30", "--concurrency", "6", "--corrupt-share", "0.3",
                      "--out", str(tmp_path), "--tag", "smoke"]) == 0
    saved = json.loads((tmp_path / "load-smoke.json").read_text())
    summary = saved["summary"]
    assert summary["lost"] == 0 and summary["unexpected"] == 0 and summary["codes"].get("200", 0) > 0
    assert summary["failed_images"] > 0  # the corrupt share answered FAILURE, per image
    assert saved["recovery"]["triton_down_s"] > 0 and "503" in summary["codes"]
    assert {"tritonserver", "gateway", "stub:preprocess"} <= set(saved["memory"]["peak_mib"])
    assert "| requests | by HTTP status |" in (tmp_path / "load-smoke.md").read_text()
