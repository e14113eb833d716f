"""genguard.client: typed results, inputs and batching offline; then the sync and asyncio clients over
gRPC and HTTP against the real server (the session `triton` fixture), and a private server stopped
in the middle of a run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from conftest import free_ports, start_server
from genguard import protocol, server
from genguard.client import (AsyncClient, Client, ModelNotReady, NsfwResult, RequestRejected, RequestTimeout,
                             Result, ServerUnavailable, hive_view, is_nsfw)
from genguard.client.inputs import Item, collect, encode_png, load, split
from genguard.client.transport import REJECTED, RETRY, TIMEOUT, RetryPolicy, classify, normalize_url

PROTOCOLS = ("grpc", "http")


def noise(seed: int, size=(64, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encoded(seed: int, fmt: str = "PNG", size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    noise(seed, size).save(buffer, fmt)
    return buffer.getvalue()


def url(triton, kind: str) -> str:
    return triton.grpc_url if kind == "grpc" else triton.http_url


# -- typed results, offline -------------------------------------------------------------------------

NSFW = {"level": "high", "scores": {"neutral": 0.1, "low": 0.2, "medium": 0.3, "high": 0.4},
        "at_least": {"low": 0.9, "medium": 0.7, "high": 0.4}, "is_nsfw": True, "rule": "at_least[medium] >= 0.5"}


def success_doc(index: int, p: float) -> dict:
    return {"index": index, "status": "SUCCESS", "error": None, "is_ai_generated": p,
            "verdict": "ai_generated" if p >= 0.5 else "not_ai_generated",
            "possible_sources": {"none": 1 - p, "flux": p}, "source": "flux" if p >= 0.5 else "none",
            "sources_given_ai": {"flux": 1.0},
            "nsfw": NSFW, "detectors": {"d": {"ai": {"real": 1 - p, "ai": p}}},
            "image": {"width": 3, "height": 2, "format": "PNG"}, "weights": {"d": "random"},
            "fusion": {"rule": "weighted_mean", "threshold": 0.5}, "warnings": ["RANDOM WEIGHTS: d"]}


def test_is_nsfw_uses_the_cumulative_at_least_scores():
    nsfw = NsfwResult.from_json(NSFW)
    # at_least[level] >= threshold, at each level's boundary
    assert nsfw.is_nsfw("high", 0.4) and not nsfw.is_nsfw("high", 0.41)
    assert nsfw.is_nsfw("medium", 0.7) and not nsfw.is_nsfw("medium", 0.71)
    assert nsfw.is_nsfw("low", 0.9) and not nsfw.is_nsfw("low", 0.91)
    assert nsfw.is_nsfw() is True  # medium, 0.5
    # the most likely level alone (high, 0.4) would say "not NSFW at 0.5"; the cumulative rule says NSFW
    assert nsfw.scores["high"] < 0.5 and is_nsfw(nsfw, "high", 0.5) is False and is_nsfw(nsfw, "medium", 0.5)
    # at_least derived from the scores when a document lacks it
    derived = NsfwResult.from_json({k: v for k, v in NSFW.items() if k != "at_least"})
    assert derived.at_least == pytest.approx(NSFW["at_least"])
    with pytest.raises(ValueError, match="low, medium, high"):
        nsfw.is_nsfw("neutral")
    with pytest.raises(ValueError):
        nsfw.is_nsfw("medium", 1.5)
    result = Result.from_json(success_doc(0, 0.8), 0, "x")
    assert result.is_nsfw("medium", 0.7) and not result.is_nsfw("medium", 0.75)
    assert Result.failure(1, "y", "not_an_image", "no").is_nsfw() is None


def test_hive_view_has_hives_shape_and_the_callers_index():
    ok = Result.from_json(success_doc(0, 0.8), 5, "a.png")  # row 0 of its request, item 5 for the caller
    bad = Result.failure(6, "b.txt", "not_an_image", "not a recognised image format")
    assert hive_view([ok, bad]) == {"data": [
        {"index": 5, "is_ai_generated": 0.8, "possible_sources": {"none": pytest.approx(0.2), "flux": 0.8},
         "status": "SUCCESS"},
        {"index": 6, "is_ai_generated": None, "possible_sources": None, "status": "FAILURE"},
    ]}


def test_client_threshold_recomputes_everything_that_depends_on_the_verdict():
    doc = {**success_doc(0, 0.6), "possible_sources": {"none": 0.4, "flux": 0.15, "gan": 0.45},
           "sources_given_ai": {"flux": 0.25, "gan": 0.75}, "source": "gan"}
    r = Result.from_json(doc, 0, "x")
    strict = r.with_threshold(0.7)  # 0.6 < 0.7: not AI-generated, so no generator
    assert (strict.verdict, strict.source) == ("not_ai_generated", "none")
    assert strict.fusion["threshold"] == 0.7 and strict.raw["source"] == "none"
    lenient = Result.from_json({**doc, "verdict": "uncertain", "source": None}, 0, "x").with_threshold(0.1)
    assert (lenient.verdict, lenient.source) == ("ai_generated", "gan")
    assert r.to_dict(threshold=0.7)["source"] == "none" and r.to_dict(threshold=0.7)["verdict"] == "not_ai_generated"
    # a failure is left as it is
    failed = Result.failure(1, "y", "corrupt", "bad")
    assert failed.with_threshold(0.2) is failed


def test_result_mirrors_the_server_document():
    r = Result.from_json(success_doc(2, 0.3), 7, "dir/x.png")
    assert (r.index, r.name, r.ok, r.verdict, r.source) == (7, "dir/x.png", True, "not_ai_generated", "none")
    assert r.image.width == 3 and r.image.format == "PNG" and r.weights == {"d": "random"}
    assert r.detectors["d"]["ai"]["ai"] == 0.3 and r.nsfw.level == "high" and r.warnings == ["RANDOM WEIGHTS: d"]
    assert r.verdict_at(0.25) == "ai_generated" and r.verdict_at(0.35) == "not_ai_generated"
    doc = r.to_dict(threshold=0.25)
    assert doc["index"] == 7 and doc["name"] == "dir/x.png" and doc["verdict"] == "ai_generated"
    assert json.loads(json.dumps(doc)) == doc
    failed = Result.failure(3, "gone.jpg", "not_found", "cannot read gone.jpg: no such file; check the path")
    assert not failed.ok and failed.error.reason == "not_found" and failed.is_ai_generated is None


# -- inputs and batching, offline ------------------------------------------------------------------


def test_split_keeps_a_huge_image_from_padding_a_batch():
    sizes = [100, 5000, 120, 90, 110, 130, 95, 105]
    loaded = [load([Item(i, str(i), lambda n=n: b"x" * n)])[0][0] for i, n in enumerate(sizes)]
    batches = split(loaded, batch_size=4, max_request_bytes=10_000)
    assert sorted(e.item.index for b in batches for e in b) == list(range(len(sizes)))  # nothing lost
    assert all(len(b) <= 4 for b in batches)
    huge = next(b for b in batches if any(len(e.data) == 5000 for e in b))
    assert len(huge) == 1  # 2 rows * 5000 > 10_000: it goes alone
    padded = sum(len(b) * max(len(e.data) for e in b) for b in batches)
    assert padded < 2 * sum(sizes)  # in input order, 4 rows padded to 5000 would cost 20_000 alone


def test_collect_expands_directories_sorted_and_reads_lazily(tmp_path):
    (tmp_path / "b.png").write_bytes(b"b")
    (tmp_path / "a.png").write_bytes(b"a")
    (tmp_path / ".hidden").write_bytes(b"h")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"c")
    names = [Path(i.name).relative_to(tmp_path).as_posix() for i in collect(tmp_path)]
    assert names == ["a.png", "b.png"]
    assert [Path(i.name).name for i in collect([tmp_path], recursive=True)] == ["a.png", "b.png", "c.png"]
    items = collect([b"raw", tmp_path / "a.png", noise(0)])
    assert [i.index for i in items] == [0, 1, 2] and items[0].name == "<bytes 0>"
    assert items[2].name == "<PIL image 2>"
    (tmp_path / "a.png").write_bytes(b"changed")  # read when sent, not when listed
    assert items[1].read() == b"changed"
    with pytest.raises(TypeError, match="path, a directory, bytes or a PIL image"):
        collect([3.5])


def test_pil_images_are_sent_losslessly():
    image = noise(1, (17, 9))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(image)))), np.asarray(image))
    cmyk = image.convert("CMYK")  # PNG has no CMYK: sent as RGB
    assert Image.open(io.BytesIO(encode_png(cmyk))).mode == "RGB"


def test_unreadable_inputs_become_failures_not_exceptions(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    good.write_bytes(b"fine")
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"secret")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read fail as it would for a user
        real = Path.read_bytes

        def read_bytes(self):
            if self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    loaded, failed = load(collect([good, tmp_path / "missing.png", locked, tmp_path / "dangling.png"]))
    assert [e.item.index for e in loaded] == [0] and loaded[0].data == b"fine"
    reasons = {f.index: (f.status, f.error.reason) for f in failed}
    assert reasons == {1: ("FAILURE", "not_found"), 2: ("FAILURE", "permission_denied"), 3: ("FAILURE", "not_found")}
    assert all("cannot read" in f.error.message and f.name in f.error.message for f in failed)


def test_only_connection_loss_and_unavailable_are_retried():
    def status(code):
        return InferenceServerException("x", status=code)

    assert classify(status("StatusCode.UNAVAILABLE")) == RETRY and classify(status("503")) == RETRY
    assert classify(ConnectionRefusedError()) == RETRY and classify(ConnectionResetError()) == RETRY
    for refused in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "400", "404", "500"):
        assert classify(status(refused)) == REJECTED, refused
    unloading = InferenceServerException("Request for unknown model: 'genguard' has no available versions",
                                         status="StatusCode.NOT_FOUND")
    assert classify(unloading) == RETRY  # the server is going away, the request was fine
    assert classify(InferenceServerException("Request for unknown model: 'x' is not found", "400")) == REJECTED
    assert classify(status("StatusCode.DEADLINE_EXCEEDED")) == TIMEOUT and classify(socket.timeout()) == TIMEOUT
    assert classify(ValueError("a bug")) is None
    policy = RetryPolicy(retries=5, backoff=1.0, max_backoff=3.0)
    delays = [policy.delay(i) for i in range(4)]
    assert 0.8 <= delays[0] <= 1.0 and 1.6 <= delays[1] <= 2.0 and all(2.4 <= d <= 3.0 for d in delays[2:])


def test_urls_default_per_protocol():
    assert normalize_url(None, "grpc") == "127.0.0.1:8001" and normalize_url(None, "http") == "127.0.0.1:8000"
    assert normalize_url("http://gg.local", "http") == "gg.local:8000"
    assert normalize_url("gg.local:9001", "grpc") == "gg.local:9001"
    with pytest.raises(ValueError, match="TLS"):
        normalize_url("https://gg.local", "http")


# -- against the real server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One good image among a text file and a truncated JPEG (sorted: bad.txt, good.jpg, trunc.jpg)."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "good.jpg").write_bytes(encoded(10, "JPEG"))
    (root / "bad.txt").write_text("not an image\n")
    (root / "trunc.jpg").write_bytes(encoded(11, "JPEG")[:300])
    return root


@pytest.fixture(scope="module")
def inputs(folder, tmp_path_factory):
    """Every input kind, in the order sent: path, bytes, PIL image, directory."""
    path = tmp_path_factory.mktemp("single") / "one.png"
    path.write_bytes(encoded(1, size=(80, 48)))
    return [path, encoded(2, "JPEG", size=(50, 70)), noise(3, (40, 40)), folder]


@pytest.fixture(scope="module")
def reference(triton, inputs, folder) -> dict[bytes, tuple]:
    """What a bare tritonclient ensemble call answers for each good image, one image per request."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    answers = {}
    for data in (inputs[0].read_bytes(), inputs[1], encode_png(inputs[2]), (folder / "good.jpg").read_bytes()):
        batch = protocol.pack_images([data])
        tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        out = client.infer(protocol.ENSEMBLE, [tensor])
        answers[data] = (json.loads(out.as_numpy(protocol.RESULT)[0, 0]),
                         *(out.as_numpy(name)[0] for name in (protocol.IS_AI_GENERATED, protocol.POSSIBLE_SOURCES,
                                                              protocol.NSFW_SCORES)))
    return answers


def flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, prefix + (key,))
    else:
        yield prefix, tree


def check_answers(results, inputs, folder, reference):
    names = [r.name for r in results]
    assert names == [str(inputs[0]), "<bytes 1>", "<PIL image 2>",
                     str(folder / "bad.txt"), str(folder / "good.jpg"), str(folder / "trunc.jpg")]
    assert [r.index for r in results] == list(range(6))
    assert [r.status for r in results] == ["SUCCESS"] * 3 + ["FAILURE", "SUCCESS", "FAILURE"]
    assert results[3].error.reason == "not_an_image" and results[5].error.reason in {"corrupt", "truncated"}
    assert results[3].is_ai_generated is None and results[5].error.message
    assert (results[0].image.width, results[0].image.height, results[1].image.format) == (80, 48, "JPEG")
    sent = [inputs[0].read_bytes(), inputs[1], encode_png(inputs[2]), (folder / "good.jpg").read_bytes()]
    for result, data in zip([results[0], results[1], results[2], results[4]], sent):
        doc, is_ai, sources, nsfw = reference[data]
        assert result.is_ai_generated == pytest.approx(float(is_ai[0]), abs=1e-6)
        assert list(result.possible_sources.values()) == pytest.approx(sources.tolist(), abs=1e-6)
        assert list(result.nsfw.scores.values()) == pytest.approx(nsfw.tolist(), abs=1e-6)
        ours, theirs = dict(flatten(result.detectors)), dict(flatten(doc["detectors"]))
        assert ours.keys() == theirs.keys() and len(ours) > 5
        assert all(abs(ours[k] - theirs[k]) <= 1e-6 for k in ours)
        assert result.verdict == doc["verdict"] and result.source == doc["source"]
        assert set(result.weights.values()) == {"random"} and "RANDOM WEIGHTS" in result.warnings[0]


# One image per request and one request at a time, as the bare reference call: batch composition
# changes ORT's kernels and so the last float bits (see test_batches_answer_in_input_order).
@pytest.mark.server
@pytest.mark.parametrize("kind", PROTOCOLS)
def test_sync_client_every_input_kind(triton, kind, inputs, folder, reference):
    progress = []
    with Client(url(triton, kind), protocol=kind, batch_size=1, concurrency=1) as client:
        results = client.detect(inputs, on_progress=lambda done, total: progress.append((done, total)))
    check_answers(results, inputs, folder, reference)
    assert progress[-1] == (6, 6) and [d for d, _ in progress] == sorted(d for d, _ in progress)


@pytest.mark.server
@pytest.mark.parametrize("kind", PROTOCOLS)
def test_async_client_every_input_kind(triton, kind, inputs, folder, reference):
    async def run():
        async with AsyncClient(url(triton, kind), protocol=kind, batch_size=1, concurrency=1) as client:
            return await client.detect(inputs)

    check_answers(asyncio.run(run()), inputs, folder, reference)


@pytest.mark.server
def test_batches_answer_in_input_order(triton, reference, inputs, folder):
    """Mixed sizes in batches of 2 with 2 requests in flight: reordered for packing, answered in order."""
    data = [inputs[1], (folder / "good.jpg").read_bytes(), inputs[0].read_bytes(), b"junk"]
    with Client(triton.grpc_url, batch_size=2, concurrency=2) as client:
        results = client.detect(data)
        assert client.attempts == 2
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert [r.status for r in results] == ["SUCCESS"] * 3 + ["FAILURE"]
    for result, sent in zip(results[:3], data):
        # same image, other batch-mates: equal up to batch-dependent float rounding
        assert result.is_ai_generated == pytest.approx(float(reference[sent][1][0]), abs=1e-5)


@pytest.mark.server
@pytest.mark.parametrize("kind", PROTOCOLS)
def test_health_readiness_and_metadata(triton, kind):
    with Client(url(triton, kind), protocol=kind) as client:
        health = client.health()
        metadata, config = client.model_metadata(), client.model_config()
        assert client.is_model_ready() and not client.is_model_ready("no_such_model")
    assert health.ok and health.live and health.ready
    assert {"genguard", "preprocess", "postprocess", "freepik_nsfw"} <= set(health.models)
    assert all(health.models.values()) and set(health.weights.values()) == {"random"}
    assert set(health.files) == set(health.weights) and {f["file"] for f in health.files.values()} == {"model.onnx"}
    assert health.served()["freepik_nsfw"]["sha256"] == health.files["freepik_nsfw"]["sha256"]
    assert metadata["inputs"][0]["name"] == protocol.INPUT and metadata["inputs"][0]["datatype"] == "UINT8"
    assert {o["name"] for o in metadata["outputs"]} == set(protocol.OUTPUTS)
    assert int(config["max_batch_size"]) >= 1

    async def run():
        async with AsyncClient(url(triton, kind), protocol=kind) as client:
            return await client.health()

    assert asyncio.run(run()) == health


@pytest.mark.server
@pytest.mark.parametrize("kind", PROTOCOLS)
def test_a_rejected_request_is_sent_exactly_once(triton, kind):
    retries = []
    with Client(url(triton, kind), protocol=kind, retries=3, backoff=0.01, on_retry=retries.append) as client:
        with pytest.raises(RequestRejected, match="unexpected shape"):
            client.infer_raw(np.zeros(16, dtype=np.uint8))  # no batch dimension: INVALID_ARG / 400
        assert client.attempts == 1
        with pytest.raises(RequestRejected, match="no_such_model"):
            client.infer_raw(np.zeros((1, 16), dtype=np.uint8), model="no_such_model")
        assert client.attempts == 2
        # a well-formed request on the same client still works
        answer = client.infer_raw(protocol.pack_images([encoded(4)]))
        assert json.loads(answer.as_numpy(protocol.RESULT)[0, 0])["status"] == "SUCCESS"
    assert retries == []
    with Client(url(triton, kind), protocol=kind, model="no_such_model") as client:
        with pytest.raises(ModelNotReady, match="model 'no_such_model' is not ready"):
            client.detect([encoded(4)])


@pytest.mark.server
def test_a_slow_answer_fails_its_images_not_the_run(triton):
    with Client(triton.grpc_url, timeout=0.2, retries=0, batch_size=4) as client:
        results = client.detect([encoded(20 + i) for i in range(4)])  # a batch of 4 takes seconds on CPU
    assert [r.error.reason for r in results] == ["timeout"] * 4
    assert "within 0.2 s" in results[0].error.message and "--timeout" in results[0].error.message


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_unreachable_server_is_one_clear_error_after_retries(kind):
    port = free_ports(1)[0]
    retries = []
    with Client(f"127.0.0.1:{port}", protocol=kind, retries=2, backoff=0.01, on_retry=retries.append) as client:
        with pytest.raises(ServerUnavailable) as caught:
            client.detect([encoded(5)])
    assert f"cannot reach GenGuard at 127.0.0.1:{port} ({kind})" in str(caught.value)
    assert "make serve" in str(caught.value) and "--url" in str(caught.value)
    assert [e.retry for e in retries] == [1, 2]  # two retries, then the error: not an endless loop

    async def run():
        async with AsyncClient(f"127.0.0.1:{port}", protocol=kind, retries=1, backoff=0.01) as client:
            await client.health()

    with pytest.raises(ServerUnavailable, match=f"127.0.0.1:{port}"):
        asyncio.run(run())


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_a_server_that_never_answers_times_out(kind):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with Client(f"127.0.0.1:{silent.getsockname()[1]}", protocol=kind, timeout=1.0) as client:
            with pytest.raises(RequestTimeout, match="within 1 s"):  # the deadline, not a hang
                client.detect([encoded(6)])


@pytest.mark.server
def test_server_stopped_mid_run_retries_then_fails_clearly(tiny_build, tmp_path):
    """A private server (one small detector, so requests are quick) stopped after 20 answers."""
    running = start_server(tiny_build, tmp_path, detectors=["sumsub_sd"])
    stopper = threading.Thread(target=server.stop_pid, args=(running.process.pid,))
    retries = []

    def progress(done, total):
        if done >= 20 and stopper.ident is None:
            stopper.start()

    try:
        with Client(running.grpc_url, batch_size=1, timeout=10, retries=3, backoff=0.2,
                    on_retry=retries.append) as client:
            with pytest.raises(ServerUnavailable) as caught:
                client.detect([encoded(7)] * 20_000, on_progress=progress)  # far longer than the stop takes
    finally:
        if stopper.ident is None:  # the run ended before the stop: stop it now
            stopper.start()
        # Reap it: stop_pid waits for the process group to vanish, and an unreaped child lingers.
        running.process.wait(timeout=60)
        stopper.join()
    message = str(caught.value)
    assert f"lost the connection to GenGuard at {running.grpc_url} (grpc) after 4 attempts" in message
    assert "is the server running?" in message
    assert retries and all(e.url == running.grpc_url for e in retries)
    assert max(e.retry for e in retries) == 3  # the last batch used every retry before giving up
    partial = caught.value.partial
    assert len(partial) >= 20 and all(r.ok for r in partial)
    assert [r.index for r in partial] == sorted(r.index for r in partial)
    assert len(partial) < 20_000  # it gave up instead of waiting out the whole run
