"""The real tritonserver (bundled in nvidia-pytriton) serving the cpu repository, over HTTP and gRPC."""

from __future__ import annotations

import io
import json
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from conftest import TEST_MAX_BYTES, checkpoint_path, free_ports
from genguard import onnx_runtime, protocol, server, specs
from genguard.export import samples
from genguard.export.checkpoints import load
from genguard.export.reference import ReferencePipeline, open_rgb
from genguard.export.repository import render
from genguard.preprocess import preprocess_bytes

pytestmark = pytest.mark.server
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


def client(triton, kind):
    return PROTOCOLS[kind].InferenceServerClient(triton.http_url if kind == "http" else triton.grpc_url)


def infer(triton, images: list[bytes], kind="http", model=protocol.ENSEMBLE):
    module = PROTOCOLS[kind]
    batch = protocol.pack_images(images)
    tensor = module.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return client(triton, kind).infer(model, [tensor])


def answers(result) -> list[dict]:
    return [json.loads(row) for row in result.as_numpy(protocol.RESULT).reshape(-1)]


def oversized_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (1300, 1300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG", compress_level=0)
    assert len(buf.getvalue()) > TEST_MAX_BYTES
    return buf.getvalue()


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_server_and_every_model_ready(triton, kind):
    c = client(triton, kind)
    assert c.is_server_live() and c.is_server_ready()
    for name in ("genguard", "preprocess", "postprocess", *specs.DETECTORS):
        assert c.is_model_ready(name), name


def test_single_image_same_answer_over_http_and_grpc(triton):
    image = samples.photos()["chelsea.png"]
    http, grpc = answers(infer(triton, [image], "http"))[0], answers(infer(triton, [image], "grpc"))[0]
    assert http == grpc
    assert http["status"] == "SUCCESS" and http["index"] == 0
    assert 0.0 <= http["is_ai_generated"] <= 1.0
    assert sum(http["possible_sources"].values()) == pytest.approx(1.0)
    assert http["image"] == {"width": 451, "height": 300, "format": "PNG"}
    assert set(http["weights"].values()) == {"random"} and "RANDOM WEIGHTS" in http["warnings"][0]


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_batch_of_8_with_bad_images_answers_the_good_ones(triton, kind):
    photos = samples.photos()
    good = {i: photos[n] for i, n in zip((0, 2, 3, 5, 7), ("astronaut.png", "rocket.jpg", "camera.png",
                                                            "hubble_deep_field.jpg", "coffee.png"))}
    truncated = photos["rocket.jpg"][: len(photos["rocket.jpg"]) // 2]
    bad = {1: (truncated, "truncated"), 4: (b"", "empty"), 6: (oversized_png(), "too_large")}
    batch = [good[i] if i in good else bad[i][0] for i in range(8)]
    docs = answers(infer(triton, batch, kind))
    assert [d["index"] for d in docs] == list(range(8))
    for i, (_, reason) in bad.items():
        assert docs[i]["status"] == "FAILURE" and docs[i]["error"]["reason"] == reason, docs[i]
        assert docs[i]["error"]["message"]
    for i, image in good.items():
        alone = answers(infer(triton, [image], kind))[0]
        assert docs[i]["status"] == "SUCCESS"
        assert docs[i]["is_ai_generated"] == pytest.approx(alone["is_ai_generated"], abs=1e-6)
        assert docs[i]["detectors"]["freepik_nsfw"]["nsfw"] == pytest.approx(alone["detectors"]["freepik_nsfw"]["nsfw"], abs=1e-6)
    assert client(triton, kind).is_server_ready()


def test_decompression_bomb_and_non_images_fail_alone(triton):
    bomb = io.BytesIO()
    Image.new("L", (9000, 9000)).save(bomb, "PNG")  # 81 Mpx > the 50 Mpx default, a few hundred kB
    docs = answers(infer(triton, [bomb.getvalue(), b"%PDF-1.4 not an image", samples.photos()["coins.png"]]))
    assert [d["status"] for d in docs] == ["FAILURE", "FAILURE", "SUCCESS"]
    assert docs[0]["error"]["reason"] == "too_many_pixels" and docs[1]["error"]["reason"] == "not_an_image"


def test_numeric_outputs_agree_with_the_json(triton):
    result = infer(triton, [samples.photos()["coffee.png"], b"junk"], "grpc")
    docs = answers(result)
    sources = (triton.repository / "genguard" / "sources.txt").read_text().split()
    levels = (triton.repository / "genguard" / "nsfw_levels.txt").read_text().split()
    assert result.as_numpy(protocol.STATUS).reshape(-1).tolist() == [0, 1]
    assert result.as_numpy(protocol.IS_AI_GENERATED)[0, 0] == pytest.approx(docs[0]["is_ai_generated"], abs=1e-6)
    assert result.as_numpy(protocol.POSSIBLE_SOURCES)[0] == pytest.approx(
        [docs[0]["possible_sources"][s] for s in sources], abs=1e-6)
    assert result.as_numpy(protocol.NSFW_SCORES)[0] == pytest.approx(
        [docs[0]["nsfw"]["scores"][lvl] for lvl in levels], abs=1e-6)
    assert np.isnan(result.as_numpy(protocol.IS_AI_GENERATED)[1, 0])


def test_served_answers_match_the_reference_pipelines(triton, tiny_build):
    """Per detector: the card's preprocessing + PyTorch model vs the served probabilities, 12 real photos."""
    photos = samples.photos()
    served = answers(infer(triton, list(photos.values()), "grpc"))
    worst = {}
    for name, spec in specs.DETECTORS.items():
        source = checkpoint_path(tiny_build, name)
        with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
            reference = ReferencePipeline(spec, load(spec, source), str(source))
        ref = reference.probs([open_rgb(b) for b in photos.values()])
        for head, ref_probs in zip(spec.heads, ref):
            got = np.array([[d["detectors"][name][head.name][label] for label in head.labels] for d in served])
            worst[f"{name}.{head.name}"] = float(np.abs(got - ref_probs).max())
    print("\nmax |dprob| served vs reference (12 photos):", json.dumps(worst, indent=1))
    assert len(photos) >= 10
    assert max(worst.values()) <= 1e-4, worst


def test_each_model_is_callable_on_its_own(triton, tiny_build):
    image = samples.photos()["rocket.jpg"]
    pre = infer(triton, [image], "http", model=protocol.PREPROCESS)
    _, ours = preprocess_bytes(image, specs.distinct_inputs(specs.DETECTORS.values()))
    for name, tensor in ours.items():
        assert np.array_equal(pre.as_numpy(protocol.pixels_tensor(name))[0], tensor)
    info = json.loads(pre.as_numpy(protocol.IMAGE_INFO)[0, 0])
    provenance = info.pop("provenance")  # what the image's metadata says (tests/test_provenance*.py)
    assert info == {"ok": True, "width": 640, "height": 427, "format": "JPEG"}
    assert provenance["looked_for"] == ["c2pa", "xmp", "exif", "text"] and provenance["c2pa"] == {"present": False}

    spec = specs.get("sumsub_sd")
    pixels = np.stack([ours[spec.input.name]] * 3)
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    served = client(triton, "http").infer("sumsub_sd", [tensor]).as_numpy("sd")
    local = onnx_runtime.session(tiny_build / "onnx" / "sumsub_sd" / "model.onnx").run(None, {"pixels": pixels})[0]
    assert served.shape == (3, 2) and np.allclose(served, local, atol=1e-5)


def test_metrics_count_requests_per_model(triton):
    infer(triton, [samples.photos()["coins.png"]])
    text = urllib.request.urlopen(triton.metrics_url, timeout=10).read().decode()
    counts = {m.group(1): float(m.group(2)) for m in
              re.finditer(r'nv_inference_request_success\{model="([^"]+)",version="1"\} (\S+)', text)}
    for name in ("genguard", "preprocess", "postprocess", *specs.DETECTORS):
        assert counts.get(name, 0) >= 1, (name, counts)


def test_random_weights_are_loud_in_the_log(triton):
    log = triton.log_text()
    for name in specs.DETECTORS:
        assert re.search(rf"RANDOM WEIGHTS: detector {name} serves random weights", log), name


@pytest.mark.parametrize("damage, message", [  # a server of its own each: one in the fast tier
    ("corrupt", "changed since the repository was rendered"),
    pytest.param("swapped", "changed since the repository was rendered", marks=pytest.mark.slow),  # valid ONNX, not the checked one
    pytest.param("missing", "is missing", marks=pytest.mark.slow),
])
def test_startup_fails_clearly_when_a_model_file_is_bad(tiny_build, tmp_path, damage, message):
    """Render a good repository, damage one detector's model.onnx, and start: the server must refuse."""
    repository = render("cpu", tiny_build, tmp_path / "repository", detectors=["imagetrust_binary"], copy=True)
    onnx = repository / "imagetrust_binary" / "1" / "model.onnx"
    if damage == "corrupt":
        onnx.write_bytes(b"this is not protobuf")
    elif damage == "swapped":
        onnx.write_bytes((tiny_build / "onnx" / "imagetrust_source" / "model.onnx").read_bytes())
    else:
        onnx.unlink()
    ports = server.Ports(*free_ports(3))
    log = tmp_path / "log"
    process = server.start(repository, tmp_path / "home", ports=ports, log_file=log)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            server.wait_ready(process, ports, timeout=120, log_file=log)
    finally:
        server.stop_pid(process.pid)
    assert message in log.read_text(errors="replace")


# --- the served answer is the in-process fusion of the served probabilities ---------------------------

def assert_served_equals_in_process(docs, fuser):
    for doc in docs:
        assert doc["status"] == "SUCCESS"
        expected = fuser.fuse(doc["detectors"])
        for key in ("is_ai_generated", "possible_sources", "sources_given_ai"):
            assert doc[key] == pytest.approx(expected[key], abs=1e-6), key
        assert (doc["verdict"], doc["source"]) == (expected["verdict"], expected["source"])
        assert sum(doc["possible_sources"].values()) == pytest.approx(1.0, abs=1e-6)


def test_served_fusion_equals_in_process_default(triton):
    from genguard.fusion import FusionConfig, Fuser

    docs = answers(infer(triton, list(samples.photos().values())[:8]))
    detectors = [specs.get(name) for name in docs[0]["detectors"]]
    assert_served_equals_in_process(docs, Fuser(detectors, FusionConfig(), {}))


@pytest.mark.slow  # a server of its own
def test_served_fusion_equals_in_process_generator_less_max_with_weights_and_margin(tiny_build, tmp_path):
    from conftest import start_server
    from genguard.fusion import FusionConfig, Fuser

    names = ["imagetrust_binary", "freepik_nsfw"]  # no head names a generator
    config = FusionConfig(rule="max", weights={"imagetrust_binary": 2.0}, threshold=0.45, margin=0.05)
    running = start_server(tiny_build, tmp_path, detectors=names, fusion=config)
    try:
        result = infer(running, list(samples.photos().values())[:8], kind="grpc")
        docs = answers(result)
        assert docs[0]["fusion"]["rule"] == "max" and docs[0]["fusion"]["margin"] == 0.05
        assert_served_equals_in_process(docs, Fuser([specs.get(n) for n in names], config, {}))
        for doc in docs:
            assert list(doc["possible_sources"]) == ["none", "unknown"] and doc["sources_given_ai"] == {"unknown": 1.0}
            assert doc["source"] == {"ai_generated": "unknown", "not_ai_generated": "none"}.get(doc["verdict"])
        numeric = result.as_numpy(protocol.POSSIBLE_SOURCES)
        assert numeric.shape == (8, 2) and np.allclose(numeric.sum(1), 1.0, atol=1e-6)
    finally:
        server.stop_pid(running.process.pid)
