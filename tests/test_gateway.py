"""The REST gateway (genguard.gateway) as a real uvicorn process in front of the real tritonserver (the
session `triton` fixture), over real HTTP: Hive's NIM snippet unchanged but for URL and key, the native
routes, per-image failures in a mixed batch, API keys, every limit, Triton unreachable, the OpenAPI
document, metrics, and the CLI through the gateway."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import hostile
import snippets
from conftest import TEST_MAX_BYTES, free_ports
from genguard.checksums import sha256_file
from genguard.client import Client

pytestmark = [pytest.mark.server, pytest.mark.gateway]

HIVE = "/v1/cv/hive/ai-generated-image-detection"
KEY = "gk-" + "7f3a9c1e5b2d4f60" * 2
ROOT = Path(__file__).resolve().parents[1]

# Hive's NIM card snippet and the diff that points it at GenGuard, both as docs/rest-api.md shows them.
REST_PAGE = ROOT / "docs" / "rest-api.md"
GATEWAY_EXAMPLE = "https://genguard.example.com"  # the diff's placeholder host
KEY_PLACEHOLDER = "<a key from the gateway's keys file>"


def hive_snippet(url: str, key: str) -> str:
    """The page's Hive snippet with the page's diff applied; the diff's example host and key filled in."""
    page = snippets.blocks(REST_PAGE)
    hive = next(b for b in page if b.lang == "python" and "ai.api.nvidia.com" in b.code)
    diff = next(b for b in page if b.lang == "diff" and b.line > hive.line)
    code = snippets.apply_diff(hive.code, diff.code)
    assert "ai.api.nvidia.com" not in code and GATEWAY_EXAMPLE in code and KEY_PLACEHOLDER in code
    return code.replace(GATEWAY_EXAMPLE, url).replace(KEY_PLACEHOLDER, key)


def png(seed: int, size=(64, 48)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def bad_images() -> dict[str, tuple[bytes, str]]:
    """The hostile suite's cases this file uses (tests/hostile.py), without building the others."""
    from genguard.export import samples

    rocket = samples.photos()["rocket.jpg"]
    side = int((TEST_MAX_BYTES / 3) ** 0.5) + 64  # uncompressed PNG of noise: just over the byte limit
    noise = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG", compress_level=0)
    return {"corrupt": (hostile.png_with_bad_crc(png(40, (120, 80))), "corrupt"),
            "truncated": (rocket[: len(rocket) // 2], "truncated"),
            "oversized": (buffer.getvalue(), "too_large"),
            "not_image": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not_an_image")}


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


@dataclass
class Gateway:
    process: subprocess.Popen
    url: str
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metric(self, name: str) -> float:
        for line in requests.get(self.url + "/metrics", headers=auth(), timeout=10).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_gateway(triton_url: str, workdir: Path, *args: str, keys: list[str] | None = None) -> Gateway:
    port = free_ports(1)[0]
    command = [sys.executable, "-m", "genguard.gateway", "--triton-url", triton_url, "--port", str(port),
               "--log-level", "warning", *args]
    if "--state-dir" not in args:  # each gateway its own jobs store and spool
        command += ["--state-dir", str(workdir / f"state-{port}")]
    if keys is not None:
        keys_file = workdir / f"keys-{port}"
        keys_file.write_text("# GenGuard API keys\n" + "\n".join(keys) + "\n")
        command += ["--api-keys-file", str(keys_file)]
    log = workdir / f"gateway-{port}.log"
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    gateway = Gateway(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited ({process.returncode}): {log.read_text()}")
        try:
            if requests.get(gateway.url + "/v1/health/live", timeout=2).status_code == 200:
                return gateway
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    gateway.stop()
    raise RuntimeError(f"gateway not live after 60 s: {log.read_text()}")


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    """Keys on; 16 MiB bodies (room for the 4 MiB+ oversized image, base64'd)."""
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw"), "--max-body-bytes", str(16 << 20),
                       "--deadline-s", "180", keys=[KEY, "gk-second-key-0123456789abcdef"])
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def tight(triton, tmp_path_factory):
    """One request at a time, no queue, 1 MiB bodies, 3 images per request, no keys (loopback)."""
    gw = start_gateway(triton.grpc_url, tmp_path_factory.mktemp("gw-tight"), "--max-concurrency", "1",
                       "--max-queue", "0", "--max-body-bytes", str(1 << 20), "--max-images", "3",
                       "--retry-after-s", "2", "--deadline-s", "180")
    yield gw
    gw.stop()


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def direct(triton, images: list[bytes]):
    with Client(triton.grpc_url, timeout=180) as client:  # a shared, loaded test machine: be patient
        return client.detect(images)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 10
    return body


# -- Hive compatibility ------------------------------------------------------------------------------


def test_hive_snippet_runs_unchanged_but_url_and_key(gateway, triton, tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(png(1))
    code = hive_snippet(gateway.url, KEY)
    out = subprocess.run([sys.executable, "-c", code + "\nimport json; print(json.dumps(response.json()))"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)  # it opens "image.png"
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(body) == ["data"] and len(body["data"]) == 1
    item = body["data"][0]
    assert set(item) == {"index", "is_ai_generated", "possible_sources", "status"}  # Hive's shape, nothing more
    assert item["index"] == 0 and item["status"] == "SUCCESS"
    assert 0.0 <= item["is_ai_generated"] <= 1.0
    assert "none" in item["possible_sources"] and sum(item["possible_sources"].values()) == pytest.approx(1, abs=1e-5)
    expected = direct(triton, [image.read_bytes()])[0]
    assert item["is_ai_generated"] == pytest.approx(expected.is_ai_generated, abs=1e-5)
    assert item["possible_sources"] == pytest.approx(expected.possible_sources, abs=1e-5)


def test_hive_extended_passes_documents_through(gateway, triton):
    images = [png(2), png(3, (40, 90))]
    response = requests.post(gateway.url + HIVE, params={"extended": "true"}, headers=auth(),
                             json={"input": [data_url(i) for i in images]}, timeout=60)
    assert response.status_code == 200, response.text
    docs = response.json()["data"]
    expected = direct(triton, images)
    for i, (doc, exp) in enumerate(zip(docs, expected)):
        assert doc["index"] == i
        assert set(exp.raw) - {"index"} <= set(doc)  # every field the server wrote, passed through
        assert doc["image"] == exp.raw["image"] and doc["weights"] == exp.raw["weights"]
        assert doc["is_ai_generated"] == pytest.approx(exp.is_ai_generated, abs=1e-5)


def test_mixed_batch_is_answered_per_image(gateway, triton):
    cases = bad_images()
    batch = [("good_a", png(4), "SUCCESS"), ("corrupt", *cases["corrupt"]),
             ("good_b", png(5), "SUCCESS"), ("truncated", *cases["truncated"]),
             ("oversized", *cases["oversized"]), ("not_image", *cases["not_image"]),
             ("good_c", png(6, (30, 30)), "SUCCESS")]
    assert len(batch[4][1]) > TEST_MAX_BYTES
    response = requests.post(gateway.url + HIVE, headers=auth(), json={"input": [data_url(b) for _, b, _ in batch]},
                             params={"extended": "true"}, timeout=120)
    assert response.status_code == 200, response.text
    docs = response.json()["data"]
    assert [d["index"] for d in docs] == list(range(len(batch)))
    goods = direct(triton, [b for _, b, e in batch if e == "SUCCESS"])
    g = iter(goods)
    for (name, _, expected), doc in zip(batch, docs):
        if expected == "SUCCESS":
            assert doc["status"] == "SUCCESS", (name, doc)
            assert doc["is_ai_generated"] == pytest.approx(next(g).is_ai_generated, abs=1e-5), name
        else:
            assert doc["status"] == "FAILURE" and doc["error"]["reason"] == expected, (name, doc)
    # Hive's view of the same batch: failures are items with status FAILURE and nulls
    hive = requests.post(gateway.url + HIVE, headers=auth(), json={"input": [data_url(b) for _, b, _ in batch[:2]]},
                         timeout=120).json()["data"]
    assert [(h["index"], h["status"]) for h in hive] == [(0, "SUCCESS"), (1, "FAILURE")]
    assert hive[1]["is_ai_generated"] is None and hive[1]["possible_sources"] is None


# -- native routes ----------------------------------------------------------------------------------


def test_detect_multipart_and_json(gateway, triton):
    a, b = png(7), png(8, (20, 70))
    files = [("file", ("first.png", a, "image/png")), ("file", ("second.png", b, "image/png"))]
    response = requests.post(gateway.url + "/v1/detect", headers=auth(), files=files, timeout=60)
    assert response.status_code == 200, response.text
    docs = response.json()["data"]
    assert [(d["index"], d["name"], d["status"]) for d in docs] == [(0, "first.png", "SUCCESS"),
                                                                       (1, "second.png", "SUCCESS")]
    expected = direct(triton, [a, b])
    assert [d["is_ai_generated"] for d in docs] == pytest.approx([e.is_ai_generated for e in expected], abs=1e-5)
    assert docs[1]["image"]["width"] == 20 and docs[1]["image"]["height"] == 70

    js = requests.post(gateway.url + "/v1/detect", headers=auth(),
                       json={"input": [data_url(a), data_url(b)], "names": ["x", "y"]}, timeout=60).json()["data"]
    assert [d["name"] for d in js] == ["x", "y"]
    assert [d["is_ai_generated"] for d in js] == pytest.approx([d["is_ai_generated"] for d in docs], abs=1e-5)
    unnamed = requests.post(gateway.url + "/v1/detect", headers=auth(), json={"input": [data_url(a)]}, timeout=60)
    assert unnamed.json()["data"][0]["name"] == "input[0]"

    assert_error(requests.post(gateway.url + "/v1/detect", headers=auth(), files={"other": ("a.png", a)}, timeout=30),
                 422, "invalid_request")
    assert_error(requests.post(gateway.url + "/v1/detect", headers={**auth(), "Content-Type": "image/png"}, data=a,
                               timeout=30), 415, "unsupported_media_type")


def test_models_and_health(gateway, triton):
    models = requests.get(gateway.url + "/v1/models", headers=auth(), timeout=30)
    assert models.status_code == 200, models.text
    body = models.json()
    assert body["ensemble"] == "genguard" and body["ready"] is True and body["max_batch_size"] >= 1
    assert body["models"]["genguard"] is True and "preprocess" in body["models"]
    assert set(body["weights"].values()) == {"random"} and set(body["weights"]) == set(body["detectors"])
    assert body["fusion"]  # the rule the answers use
    # what each detector serves: the rendered configs' facts (the file the detector model checked at load)
    served = body["served"]
    assert set(served) == set(body["detectors"])
    for name, what in served.items():
        assert what["weights"] == "random" and what["revision"] is None  # the tiny build: local random checkpoints
        assert what["file"] == "model.onnx"
        assert what["sha256"] == sha256_file(triton.repository / name / "1" / "model.onnx")
        assert what["engine"] == {"option": "ort-fp32", "engine": "onnxruntime", "precision": "fp32"}
    assert requests.get(gateway.url + "/v1/health/live", timeout=10).json() == {"status": "live"}
    # ready: a probe without a key learns the status only; a caller with one, what is served
    assert requests.get(gateway.url + "/v1/health/ready", timeout=10).json() == {"status": "ready"}
    detailed = requests.get(gateway.url + "/v1/health/ready", headers=auth(), timeout=10).json()
    assert detailed == {"status": "ready", "detectors": served}
    assert_error(requests.get(gateway.url + "/v1/models", timeout=10), 401, "missing_api_key")


def test_openapi_document_is_valid(gateway):
    from openapi_spec_validator import validate

    doc = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    validate(doc)
    for path in (HIVE, "/v1/detect", "/v1/models", "/v1/health/live", "/v1/health/ready"):
        assert path in doc["paths"], path
    hive = doc["paths"][HIVE]["post"]
    assert "application/json" in hive["requestBody"]["content"]
    assert {"401", "413", "422", "429", "503", "504"} <= set(hive["responses"])
    assert set(doc["paths"]["/v1/detect"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                                 "application/json"}
    item = doc["components"]["schemas"]["HiveItem"]
    assert set(item["properties"]) == {"index", "is_ai_generated", "possible_sources", "status"}
    assert requests.get(gateway.url + "/docs", timeout=10).status_code == 200


# -- keys -------------------------------------------------------------------------------------------


def test_api_keys(gateway):
    body = {"input": [data_url(png(9))]}
    assert_error(requests.post(gateway.url + HIVE, json=body, timeout=30), 401, "missing_api_key")
    wrong = requests.post(gateway.url + HIVE, json=body, headers=auth(KEY[:-1] + "x"), timeout=30)
    assert_error(wrong, 401, "invalid_api_key")
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert_error(requests.post(gateway.url + HIVE, json=body, headers={"Authorization": KEY}, timeout=30),
                 401, "missing_api_key")  # no scheme
    assert requests.post(gateway.url + HIVE, json=body, headers=auth("gk-second-key-0123456789abcdef"),
                         timeout=60).status_code == 200  # any configured key
    assert requests.post(gateway.url + HIVE, json=body, headers={"Authorization": f"bearer {KEY}"},
                         timeout=60).status_code == 200  # the scheme is case-insensitive


def test_refuses_public_address_without_keys(tmp_path):
    port = free_ports(1)[0]
    out = subprocess.run([sys.executable, "-m", "genguard.gateway", "--host", "0.0.0.0", "--port", str(port)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "without API keys" in out.stderr
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    out = subprocess.run([sys.executable, "-m", "genguard.gateway", "--host", "0.0.0.0", "--port", str(port),
                          "--api-keys-file", str(weak)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "shorter than 16" in out.stderr


# -- malformed requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("payload, code", [
    ({"input": ["data:image/png;base64,iVBORw0K!!!"]}, "bad_base64"),
    ({"input": ["data:image/png;base64,iVBORw0KG"]}, "bad_base64"),                 # bad padding
    ({"input": ["iVBORw0KGgoAAAANSUhEUg=="]}, "bad_data_url"),                       # bare base64
    ({"input": ["data:text/html;base64,PGh0bWw+"]}, "bad_data_url"),
    ({"input": ["https://example.com/cat.png"]}, "url_not_supported"),
    ({"input": ["http://169.254.169.254/latest/meta-data"]}, "url_not_supported"),
    ({"input": ["data:image/png;asset_id,8d2c6f1e-5a43-4c9b-9f1e-2b7a1c0d9e8f"]}, "assets_not_supported"),
    ({"input": [{"asset_id": "8d2c6f1e"}]}, "assets_not_supported"),
    ({"asset_id": "8d2c6f1e", "input": []}, "assets_not_supported"),
    ({"input": []}, "invalid_request"),
    ({"images": ["data:image/png;base64,AAAA"]}, "invalid_request"),
    ({"input": "data:image/png;base64,AAAA"}, "invalid_request"),
])
def test_malformed_requests_are_422(gateway, payload, code):
    response = requests.post(gateway.url + HIVE, json=payload, headers=auth(), timeout=30)
    assert_error(response, 422, code)
    native = requests.post(gateway.url + "/v1/detect", json=payload, headers=auth(), timeout=30)
    assert_error(native, 422, code)


def test_invalid_json_and_too_many_images(tight):
    assert_error(requests.post(tight.url + HIVE, data=b"{not json", headers={"Content-Type": "application/json"},
                               timeout=30), 422, "invalid_json")
    four = {"input": [data_url(png(i, (8, 8))) for i in range(4)]}
    body = assert_error(requests.post(tight.url + HIVE, json=four, timeout=30), 422, "too_many_images")
    assert "at most 3" in body["error"]["message"]
    files = [("file", (f"{i}.png", png(i, (8, 8)))) for i in range(4)]
    assert_error(requests.post(tight.url + "/v1/detect", files=files, timeout=30), 422, "too_many_images")


def test_unknown_route_and_method_are_json(gateway):
    assert_error(requests.get(gateway.url + "/v2/nothing", timeout=10), 404, "not_found")
    assert_error(requests.get(gateway.url + HIVE, headers=auth(), timeout=10), 405, "method_not_allowed")


# -- limits -----------------------------------------------------------------------------------------


def _raw_request(url: str, head: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode())
    return sock


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split()[1]), head + b"\r\n\r\n" + rest


def test_oversized_body_is_413_before_it_is_read(tight):
    # Declared: refused at once, no byte of the body sent.
    sock = _raw_request(tight.url, f"POST {HIVE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   f"Content-Length: {1 << 30}\r\n\r\n")
    status, raw = _read_status(sock)
    sock.close()
    assert status == 413 and b"body_too_large" in raw
    assert tight.metric(f'genguard_gateway_requests_total{{code="413",route="{HIVE}"}}') >= 1

    # Chunked (no length): counted while it streams; 64 MiB offered to a 1 MiB limit.
    before = tight.rss_kib()
    sock = _raw_request(tight.url, f"POST {HIVE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n")
    answer: dict = {}
    reader = threading.Thread(target=lambda: answer.update(zip(("status", "raw"), _read_status(sock))))
    reader.start()
    chunk = b"A" * (1 << 20)
    sent = 0
    try:
        for _ in range(64):
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:  # the gateway answered and closed the connection
        pass
    reader.join(30)
    sock.close()
    assert answer.get("status") == 413, answer
    assert b"body_too_large" in answer["raw"]
    growth_mib = (tight.rss_kib() - before) / 1024
    assert growth_mib < 16, f"gateway memory grew {growth_mib:.1f} MiB while refusing a 64 MiB body"
    assert requests.get(tight.url + "/v1/health/live", timeout=10).status_code == 200


def test_full_queue_is_429_with_retry_after(tight):
    # Hold the only admission slot: a request whose body is still coming.
    sock = _raw_request(tight.url, f"POST {HIVE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 1000\r\n\r\n{\"input\": [")
    deadline = time.monotonic() + 20
    while tight.metric("genguard_gateway_requests_admitted") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tight.metric("genguard_gateway_requests_admitted") == 1
    body = {"input": [data_url(png(10, (8, 8)))]}
    busy = requests.post(tight.url + HIVE, json=body, timeout=30)
    assert_error(busy, 429, "queue_full")
    assert busy.headers["retry-after"] == "2"
    sock.close()  # the held request goes away: its slot is free again
    deadline = time.monotonic() + 20
    while tight.metric("genguard_gateway_requests_admitted") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.post(tight.url + HIVE, json=body, timeout=60).status_code == 200


def test_deadline_is_504(triton, tmp_path):
    gw = start_gateway(triton.grpc_url, tmp_path, "--deadline-s", "0.001")
    try:
        assert_error(requests.post(gw.url + HIVE, json={"input": [data_url(png(11))]}, timeout=60),
                     504, "deadline_exceeded")
        assert requests.get(gw.url + "/v1/health/ready", timeout=10).status_code == 200  # the server is fine
    finally:
        gw.stop()


def test_triton_unreachable_is_503_not_a_hang(tmp_path):
    closed = free_ports(1)[0]
    gw = start_gateway(f"127.0.0.1:{closed}", tmp_path, keys=[KEY])
    try:
        start = time.monotonic()
        response = requests.post(gw.url + HIVE, json={"input": [data_url(png(12))]}, headers=auth(), timeout=60)
        assert_error(response, 503, "triton_unavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert time.monotonic() - start < 30  # answered, not left hanging to the client's timeout
        assert_error(requests.get(gw.url + "/v1/health/ready", timeout=30), 503, "not_ready")
        assert requests.get(gw.url + "/v1/health/live", timeout=10).status_code == 200
        assert_error(requests.get(gw.url + "/v1/models", headers=auth(), timeout=30), 503, "triton_unavailable")
    finally:
        gw.stop()


def test_metrics(gateway):
    cases = bad_images()
    before = gateway.metric('genguard_gateway_image_failures_total{reason="truncated"}')
    requests.post(gateway.url + HIVE, headers=auth(), timeout=60,
                  json={"input": [data_url(png(13)), data_url(cases["truncated"][0])]})
    assert_error(requests.get(gateway.url + "/metrics", timeout=10), 401, "missing_api_key")  # keys on: key needed
    text = requests.get(gateway.url + "/metrics", headers=auth(), timeout=10).text
    assert f'genguard_gateway_requests_total{{code="200",route="{HIVE}"}}' in text
    assert f'genguard_gateway_request_duration_seconds_bucket{{le="+Inf",route="{HIVE}"}}' in text
    assert gateway.metric('genguard_gateway_image_failures_total{reason="truncated"}') == before + 1
    assert gateway.metric(f'genguard_gateway_images_total{{route="{HIVE}",status="SUCCESS"}}') >= 1
    assert gateway.metric(f'genguard_gateway_request_body_bytes_total{{route="{HIVE}"}}') > 0
    # what the dashboard and the alerts read (deploy/components/monitoring) is what this gateway publishes,
    # and the probes and scrapes that the gateway alerts leave out carry the route labels they match
    from test_monitoring import used_metric_names

    requests.get(gateway.url + "/v1/health/live", timeout=10)
    text = requests.get(gateway.url + "/metrics", headers=auth(), timeout=10).text
    published = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    used = {n for n in used_metric_names() if n.startswith("genguard_gateway_")}
    assert len(used) >= 7 and used <= published, used - published
    for route, code in (("/metrics", "401"), ("/metrics", "200"), ("/v1/health/live", "200")):
        assert gateway.metric(f'genguard_gateway_requests_total{{code="{code}",route="{route}"}}') >= 1


def test_make_serve_starts_and_stop_stops_the_gateway(triton, tmp_path, capsys):
    from genguard import server

    port = free_ports(1)[0]
    url = server.start_gateway(tmp_path, triton.ports, port)
    assert url == f"http://127.0.0.1:{port}"
    pid = int((tmp_path / "gateway.pid").read_text())
    ready = requests.get(url + "/v1/health/ready", timeout=30).json()  # loopback, no keys: the details to anyone
    assert ready["status"] == "ready" and {"sumsub_sd", "freepik_nsfw"} <= set(ready["detectors"])
    server.stop_gateway(tmp_path)
    assert "gateway stopped" in capsys.readouterr().out
    assert not (tmp_path / "gateway.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/v1/health/live", timeout=5)


# -- the client and CLI through the gateway -----------------------------------------------------------


def genguard_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genguard.client.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_cli_detect_and_health_through_the_gateway(gateway, triton, tmp_path):
    from genguard.client.rest import RestClient, Unauthorized

    key_file = tmp_path / "key"
    key_file.write_text(f"# the gateway's key\n{KEY}\n")
    good, other = tmp_path / "good.png", tmp_path / "other.png"
    good.write_bytes(png(20))
    other.write_bytes(png(21, (33, 20)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bad_images()["truncated"][0])

    out = genguard_cli("detect", str(good), str(broken), str(other), str(tmp_path / "missing.png"),
                       "--url", gateway.url, "--api-key-file", str(key_file), "--format", "jsonl")
    assert out.returncode == 4, out.stderr  # some images failed
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["index"], r["name"], r["status"]) for r in rows] == [
        (0, str(good), "SUCCESS"), (1, str(broken), "FAILURE"), (2, str(other), "SUCCESS"),
        (3, str(tmp_path / "missing.png"), "FAILURE")]
    assert rows[1]["error"]["reason"] == "truncated" and rows[3]["error"]["reason"] == "not_found"
    expected = direct(triton, [good.read_bytes(), other.read_bytes()])
    assert [rows[0]["is_ai_generated"], rows[2]["is_ai_generated"]] == pytest.approx(
        [e.is_ai_generated for e in expected], abs=1e-5)

    health = genguard_cli("health", "--url", gateway.url, "--api-key-file", str(key_file))
    assert health.returncode == 0, health.stderr
    assert "(rest): live yes, ready yes" in health.stdout and "genguard" in health.stdout
    # what each detector serves, through the gateway as straight from Triton
    sumsub = next(line for line in health.stdout.splitlines() if line.split()[:1] == ["sumsub_sd"])
    digest = sha256_file(triton.repository / "sumsub_sd" / "1" / "model.onnx")
    assert sumsub.endswith(f"random weights, onnxruntime fp32, model.onnx sha256 {digest[:12]}")

    key_file.write_text("gk-not-the-key-0000000000000000\n")
    refused = genguard_cli("detect", str(good), "--url", gateway.url, "--api-key-file", str(key_file))
    assert refused.returncode == 2 and "refused the API key" in refused.stderr

    with RestClient(gateway.url, api_key=KEY, batch_size=2, concurrency=2) as client:  # 5 images, 3 requests
        results = client.detect([png(30 + i) for i in range(5)])
    assert [r.index for r in results] == list(range(5)) and all(r.ok for r in results)
    with RestClient(gateway.url) as client, pytest.raises(Unauthorized):
        client.detect([png(1)])


def test_cli_rest_gateway_unreachable_exits_3(tmp_path):
    closed = free_ports(1)[0]
    out = genguard_cli("detect", "--url", f"http://127.0.0.1:{closed}", "--retries", "1", str(ROOT / "README.md"))
    assert out.returncode == 3, out.stderr
    assert "cannot reach the GenGuard gateway" in out.stderr


def test_gateway_benchmark_runs_side_by_side(triton, tmp_path):
    """`python -m genguard.benchmarks.gateway` end to end, minimal: every mode at the level, the files, the
    CPU accounting of its own gateway and of the tritonserver tree (no timing asserted)."""
    from genguard.benchmarks import gateway as bench

    assert bench.main(["--grpc-url", triton.grpc_url, "--images", "4", "--concurrency", "1", "--rounds", "1",
                       "--out", str(tmp_path), "--tag", "smoke"]) == 0
    saved = json.loads((tmp_path / "gateway-smoke.json").read_text())
    assert {(r["concurrency"], r["mode"]) for r in saved["rows"]} == {(1, m) for m in bench.MODES}
    assert all(r["images"] == 4 and r["images_per_s"] > 0 for r in saved["rows"])
    cpu = {r["mode"]: r for r in saved["cpu"]}
    assert set(cpu) == set(bench.MODES) and all(r["triton_cpu_ms_per_image"] > 0 for r in cpu.values())
    # the kernel counts CPU in clock ticks (10 ms): one small request on a fast core may not reach one, so the
    # gateway's own accounting is checked over both of its modes' 8 images
    assert sum(cpu[m]["gateway_cpu_ms_per_image"] for m in ("gateway_hive_json", "gateway_multipart")) > 0
    assert "| concurrency | mode |" in (tmp_path / "gateway-smoke.md").read_text()


def test_settings_from_environment():
    from genguard.gateway.settings import Settings, SettingsError

    env = {"GENGUARD_GATEWAY_MAX_QUEUE": "3", "GENGUARD_GATEWAY_PUBLIC_METRICS": "true",
           "GENGUARD_GATEWAY_DEADLINE_S": "2.5", "GENGUARD_GATEWAY_API_KEYS_FILE": "/run/keys"}
    settings = Settings.from_env(env, max_queue=None, port=9090)
    assert (settings.max_queue, settings.public_metrics, settings.deadline_s, settings.api_keys_file,
            settings.port) == (3, True, 2.5, "/run/keys", 9090)
    assert Settings.from_env({"GENGUARD_GATEWAY_PUBLIC_METRICS": "false"}).public_metrics is False
    for bad in ({"GENGUARD_GATEWAY_PUBLIC_METRICS": "maybe"}, {"GENGUARD_GATEWAY_MAX_IMAGES": "many"},
                {"GENGUARD_GATEWAY_MAX_IMAGES": "0"}):
        with pytest.raises(SettingsError):
            Settings.from_env(bad)
    assert Settings(host="::1").loopback and Settings(host="localhost").loopback
    assert not Settings(host="0.0.0.0").loopback
