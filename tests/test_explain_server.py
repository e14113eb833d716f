"""The served `genguard_explain` ensemble (cpu target) through the real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import CNNS, start_server
from genguard import explanations as E
from genguard import protocol, specs

pytest.importorskip("tritonclient")
# The slow tier (make test-all, CI): a server of its own for genguard_explain, on the Grad-CAM exports.
pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def explain_server(explain_build, tmp_path_factory):
    from genguard import server

    running = start_server(explain_build, tmp_path_factory.mktemp("explain_triton"), explain=True)
    yield running
    server.stop_pid(running.process.pid)


def _photos():
    from genguard.export import samples

    photos = samples.photos()
    return {"astronaut.png": photos["astronaut.png"], "corrupt.jpg": photos["rocket.jpg"][:300] + b"\0" * 64,
            "coffee.png": photos["coffee.png"]}


def _infer(url: str, protocol_name: str, model: str, images: list[bytes]) -> list[dict]:
    if protocol_name == "http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    batch = protocol.pack_images(images)
    inp = client.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    kwargs = {"client_timeout": 600} if protocol_name == "grpc" else {}
    with client.InferenceServerClient(url, **({"network_timeout": 600.0, "connection_timeout": 600.0}
                                               if protocol_name == "http" else {})) as c:
        out = c.infer(model, [inp], **kwargs)
    return [json.loads(r[0]) for r in out.as_numpy(protocol.RESULT)]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_explain_ensemble_answers_maps_and_a_bad_image_fails_alone(explain_server, explain_build, transport):
    url = explain_server.http_url if transport == "http" else explain_server.grpc_url
    images = _photos()
    explained = _infer(url, transport, E.EXPLAIN_ENSEMBLE, list(images.values()))
    plain = _infer(url, transport, protocol.ENSEMBLE, list(images.values()))
    assert [d["status"] for d in explained] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert "explanations" not in explained[1] and explained[1]["error"] == plain[1]["error"]
    for doc, base in zip(explained, plain):
        assert "explanations" not in base  # genguard itself is unchanged
        if doc["status"] != "SUCCESS":
            continue
        # the same document as genguard's, plus explanations
        assert doc["is_ai_generated"] == pytest.approx(base["is_ai_generated"], abs=1e-6)
        assert doc["verdict"] == base["verdict"]
        assert set(doc) - set(base) == {"explanations"}
        assert set(doc["explanations"]) == set(specs.DETECTORS)
        for name, entries in doc["explanations"].items():
            spec = specs.get(name)
            assert [e["head"] for e in entries] == [h.name for h in spec.heads]
            for entry, head in zip(entries, spec.heads):
                grid = np.asarray(entry["map"])
                assert list(grid.shape) == entry["grid"]
                assert grid.min() >= 0 and grid.max() <= 1
                assert entry["method"] == (E.GRADCAM if name in CNNS else E.OCCLUSION)
                assert entry["target_label"] in head.labels and entry["target"] == "predicted"
                assert entry["geometry"]["resize"] == spec.input.resize
                assert entry["geometry"]["image_size"] == [doc["image"]["width"], doc["image"]["height"]]
                # the target is the label the answer itself predicts
                probs = doc["detectors"][name][head.name] if "detectors" in doc else None
                if isinstance(probs, dict) and all(isinstance(v, (int, float)) for v in probs.values()):
                    assert entry["target_label"] == max(probs, key=probs.get)


def test_served_gradcam_map_is_the_exported_one(explain_server, explain_build):
    """The map served for imagetrust_source equals explain.onnx's on the same preprocessed image."""
    from genguard import onnx_runtime
    from genguard.preprocess import preprocess_bytes

    image = _photos()["coffee.png"]
    doc = _infer(explain_server.grpc_url, "grpc", E.EXPLAIN_ENSEMBLE, [image])[0]
    spec = specs.get("imagetrust_source")
    pixels = preprocess_bytes(image, {"x": spec.input})[1]["x"][None]
    logits, cams = onnx_runtime.session(explain_build / "onnx" / spec.name / "explain.onnx").run(None, {"pixels": pixels})
    target = int(logits[0].argmax())
    (entry,) = doc["explanations"][spec.name]
    assert entry["target_index"] == target and entry["target_layer"] == "layer4"
    np.testing.assert_allclose(np.asarray(entry["map"]), cams[0, target], atol=1e-4)


def test_cli_explain_writes_overlays_and_json(explain_server, tmp_path, capsys):
    from PIL import Image

    from genguard.client.cli import EXIT_FAILED, main
    from genguard.client.explain import overlay

    images = _photos()
    (tmp_path / "in").mkdir()
    for name in ("astronaut.png", "corrupt.jpg"):
        (tmp_path / "in" / name).write_bytes(images[name])
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "in" / "astronaut.png"), str(tmp_path / "in" / "corrupt.jpg"),
                 "--out", str(out), "--url", explain_server.grpc_url])
    assert code == EXIT_FAILED  # the corrupt image failed, alone
    doc = json.loads((out / "astronaut.json").read_text())
    assert doc["status"] == "SUCCESS" and set(doc["explanations"]) == set(specs.DETECTORS)
    assert json.loads((out / "corrupt.json").read_text())["status"] == "FAILURE"
    pngs = sorted(p.name for p in out.glob("*.png"))
    expected = sorted(f"astronaut.{n}.png" for n in specs.DETECTORS if n != "hive_effb4") + [
        "astronaut.hive_effb4.ai.png", "astronaut.hive_effb4.source.png"]
    assert pngs == sorted(expected)
    written = np.asarray(Image.open(out / "astronaut.sumsub_sd.png"))
    again = np.asarray(overlay(tmp_path / "in" / "astronaut.png", doc["explanations"]["sumsub_sd"][0]))
    assert written.shape == (512, 512, 3) and np.array_equal(written, again)
    assert "corrupt.jpg: FAILURE" in capsys.readouterr().out


@pytest.mark.gateway
def test_gateway_detect_with_explain(explain_server, tmp_path):
    """POST /v1/detect?explain=true answers the documents with explanations; a corrupt image fails alone;
    without the flag the documents have none."""
    import requests

    from test_gateway import KEY, auth, start_gateway

    images = _photos()
    gw = start_gateway(explain_server.grpc_url, tmp_path, "--deadline-s", "600", keys=[KEY])
    try:
        files = [("file", (name, data)) for name, data in images.items() if name != "astronaut.png"]
        r = requests.post(gw.url + "/v1/detect?explain=true", files=files, headers=auth(), timeout=900)
        assert r.status_code == 200, r.text
        docs = r.json()["data"]
        assert [d["status"] for d in docs] == ["FAILURE", "SUCCESS"]
        assert set(docs[1]["explanations"]) == set(specs.DETECTORS) and "explanations" not in docs[0]
        plain = requests.post(gw.url + "/v1/detect", files=files[1:], headers=auth(), timeout=300).json()["data"]
        assert "explanations" not in plain[0]
        bad = requests.post(gw.url + "/v1/detect?explain=maybe", files=files[1:], headers=auth(), timeout=60)
        assert bad.status_code == 422 and set(bad.json()["error"]) >= {"code", "message"}
    finally:
        gw.stop()


def test_render_without_an_explain_onnx_serves_the_plain_detector(explain_build, tmp_path):
    """A CNN whose explain.json no longer vouches for its file is explained as unavailable: genguard_explain
    runs its plain model, and postprocess_explain says why; genguard's own models are rendered as without
    --explain."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from genguard.export.repository import render

    build = tmp_path / "build"
    for name in ("imagetrust_binary", "opensdi_flux"):
        shutil.copytree(explain_build / "onnx" / name, build / "onnx" / name)
    (build / "onnx" / "imagetrust_binary" / "explain.json").write_text("{}")
    names = ["imagetrust_binary", "opensdi_flux"]
    plain = render("cpu", build, tmp_path / "plain", detectors=names)
    repo = render("cpu", build, tmp_path / "repo", detectors=names, explain=True)
    assert not (repo / "explain_imagetrust_binary").exists() and (repo / "explain_opensdi_flux").is_dir()
    for model in ("genguard", "postprocess", "preprocess", *names):  # genguard untouched
        assert (repo / model / "config.pbtxt").read_text() == (plain / model / "config.pbtxt").read_text()
    ensemble = text_format.Parse((repo / E.EXPLAIN_ENSEMBLE / "config.pbtxt").read_text(), mc.ModelConfig())
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == ["preprocess", "imagetrust_binary", E.explain_model("opensdi_flux"), E.EXPLAIN_POSTPROCESS]
    post = text_format.Parse((repo / E.EXPLAIN_POSTPROCESS / "config.pbtxt").read_text(), mc.ModelConfig())
    plan = json.loads(post.parameters["explain"].string_value)
    assert "unavailable" in plan["imagetrust_binary"] and plan["opensdi_flux"]["method"] == E.OCCLUSION
    assert plan["opensdi_flux"]["forward_passes"] == 50


@pytest.mark.parametrize("target", ["onnx-gpu", "tensorrt"])
def test_gpu_targets_render_the_explain_ensemble(explain_build, tmp_path, target):
    """Offline: the GPU targets' genguard_explain: validate -> DALI preprocess -> explain models served like the
    detectors (Grad-CAM) or BLS occlusion through the served detector -> postprocess_explain. Running it needs
    a GPU (not available here)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from genguard.export.repository import render
    from genguard.export.tensorrt import ONNX_FOLDER, RECIPE_FILE

    names = ["imagetrust_binary", "hive_effb4", "opensdi_flux"]
    repo = render(target, explain_build, tmp_path / target, detectors=names, explain=True, copy=False)
    parse = lambda model: text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())  # noqa: E731
    ensemble = parse(E.EXPLAIN_ENSEMBLE)
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "validate", "preprocess", *[E.explain_model(n) for n in names], E.EXPLAIN_POSTPROCESS]
    assert [o.name for o in ensemble.output] == [o.name for o in parse("genguard").output]
    for name in ("imagetrust_binary", "hive_effb4"):
        config, plain = parse(E.explain_model(name)), parse(name)
        outputs = {o.name: list(o.dims) for o in config.output}
        spec = specs.get(name)
        for head in spec.heads:
            assert outputs[head.name] == [head.num_logits]
            assert outputs[f"cam_{head.name}"][0] == len(head.labels)
        assert config.platform == plain.platform and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        if target == "onnx-gpu":
            assert config.default_model_filename == "explain.onnx"
            assert (repo / E.explain_model(name) / "1" / "explain.onnx").resolve() == (
                explain_build / "onnx" / name / "explain.onnx").resolve()
            cache = config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters
            assert cache["trt_engine_cache_path"].endswith(E.explain_model(name))
        else:
            recipe = json.loads((repo / E.explain_model(name) / ONNX_FOLDER / RECIPE_FILE).read_text())
            assert recipe["detector"] == E.explain_model(name)
            assert (repo / E.explain_model(name) / ONNX_FOLDER / "model.onnx").resolve() == (
                explain_build / "onnx" / name / "explain.onnx").resolve()
    bls = parse(E.explain_model("opensdi_flux"))
    assert bls.backend == "python" and (repo / E.explain_model("opensdi_flux") / "1" / "model.py").read_text() == (
        Path(__file__).resolve().parents[1] / "genguard/triton_models/explain_bls.py").read_text()
    assert {p: bls.parameters[p].string_value for p in ("detector", "window")} == {"detector": "opensdi_flux",
                                                                                  "window": "32"}



@pytest.mark.gateway
@pytest.mark.browser
def test_reviewer_page_draws_the_overlay(explain_server, tmp_path):
    """The page with "heatmaps" checked asks /v1/detect?explain=true and draws the chosen head's overlay in
    the detail view; its pixels are the client's overlay (within the browser's own image downscaling)."""
    from PIL import Image

    from genguard.client.explain import overlay
    from test_gateway import KEY, start_gateway
    from test_page import CHROMIUM

    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    image = tmp_path / "astronaut.png"
    image.write_bytes(_photos()["astronaut.png"])
    gw = start_gateway(explain_server.grpc_url, tmp_path, "--deadline-s", "600", keys=[KEY])
    try:
        with sync_playwright() as pw:
            args = ["--no-sandbox"] if os.geteuid() == 0 else []
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(gw.url + "/")
            page.locator("#key-dialog").wait_for(state="visible")
            page.fill("#key-input", KEY)
            page.click("#key-form button[type=submit]")
            page.locator("#key-dialog").wait_for(state="hidden")
            page.check("#explain")
            with page.expect_response(lambda r: "/v1/detect" in r.url, timeout=600_000) as answered:
                page.set_input_files("#pick-files", str(image))
            assert answered.value.url.endswith("/v1/detect?explain=true") and answered.value.status == 200
            doc = answered.value.json()["data"][0]
            page.locator("#progress-box").wait_for(state="hidden", timeout=600_000)
            page.click('#rows tr[data-name="astronaut.png"] td.name')
            box = page.locator("#d-explanations")
            box.wait_for(state="visible")
            options = page.locator("#d-explain-select option")
            assert options.count() == sum(len(v) for v in doc["explanations"].values()) == 7
            index = next(i for i in range(options.count()) if options.nth(i).inner_text().startswith("sumsub_sd"))
            page.select_option("#d-explain-select", str(index))
            canvas = page.locator("#d-explain-canvas")
            assert canvas.get_attribute("data-detector") == "sumsub_sd"
            size = page.evaluate("[document.getElementById('d-explain-canvas').width, "
                                 "document.getElementById('d-explain-canvas').height]")
            pixels = page.evaluate("Array.from(document.getElementById('d-explain-canvas').getContext('2d')"
                                   ".getImageData(0, 0, 480, 480).data)")
            assert errors == []
            browser.close()
    finally:
        gw.stop()
    assert size == [480, 480]
    drawn = np.asarray(pixels, dtype=np.float32).reshape(480, 480, 4)[..., :3]
    expected = np.asarray(overlay(Image.open(image).convert("RGB").resize((480, 480), Image.Resampling.BILINEAR),
                                  doc["explanations"]["sumsub_sd"][0]), dtype=np.float32)
    plain = np.asarray(Image.open(image).convert("RGB").resize((480, 480), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(drawn - expected).mean() < 6  # the browser's downscaling differs from Pillow's by a few levels
    assert np.abs(drawn - plain).mean() > 20  # and a heatmap is drawn, not the bare image
