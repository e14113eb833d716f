"""The served `genguard_explain` ensemble (cpu target) through the real tritonserver, over HTTP and gRPC."""

from __future__ import annotations

import contextlib
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
    session = onnx_runtime.session(explain_build / "onnx" / spec.name / "explain.onnx")
    logits, cams = session.run(None, {"pixels": pixels})
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


def _in_process_maps(build: Path, name: str, image: bytes) -> dict[str, np.ndarray]:
    """Every label's map per head, computed here: explain.onnx's cam_<head> (Grad-CAM), or occlusion through
    the detector's model.onnx in the served model's batches of 8 (the transformers)."""
    from genguard import onnx_runtime
    from genguard.preprocess import preprocess_bytes

    spec = specs.get(name)
    pixels = preprocess_bytes(image, {"x": spec.input})[1]["x"][None]
    if name in CNNS:
        session = onnx_runtime.session(build / "onnx" / name / "explain.onnx")
        outputs = [o.name for o in session.get_outputs()]
        got = dict(zip(outputs, session.run(outputs, {protocol.DETECTOR_INPUT: pixels})))
        return {h.name: got[E.cam_output(h.name)][0] for h in spec.heads}
    session = onnx_runtime.session(build / "onnx" / name / "model.onnx")
    out = {}
    for head in spec.heads:
        def scores(x, head=head):
            return E.head_scores(session.run([head.name], {protocol.DETECTOR_INPUT: x})[0], head.labels)
        out[head.name] = E.occlusion(scores, pixels, E.occlusion_window(spec), batch=8)[0]
    return out


def _other_label(entry: dict) -> str:
    """A label of the entry's head that is not the predicted one."""
    predicted = entry.get("predicted_label", entry["target_label"])
    return next(label for label in entry["labels"] if label != predicted)


@pytest.mark.gateway
def test_gateway_explains_a_chosen_label(explain_server, explain_build, tmp_path):
    """?explain_label=<detector>[.<head>]=<label> (and JSON explain_labels) answer that label's map: equal to
    every-label maps computed here (Grad-CAM from explain.onnx, occlusion through model.onnx), for labels the
    detectors did not predict; the heads not named keep their predicted label's map."""
    import base64

    import requests

    from test_gateway import KEY, auth, start_gateway

    image = _photos()["coffee.png"]
    gw = start_gateway(explain_server.grpc_url, tmp_path, "--deadline-s", "600", keys=[KEY])
    try:
        first = requests.post(gw.url + "/v1/detect?explain=true", files=[("file", ("coffee.png", image))],
                              headers=auth(), timeout=900).json()["data"][0]["explanations"]
        chosen = {"imagetrust_source": ("source", _other_label(first["imagetrust_source"][0])),
                  "hive_effb4": ("source", _other_label(first["hive_effb4"][1])),
                  "opensdi_flux": ("flux", _other_label(first["opensdi_flux"][0]))}
        query = "&".join(f"explain_label={d}.{h}={label}" for d, (h, label) in chosen.items())
        r = requests.post(gw.url + "/v1/detect?" + query, files=[("file", ("coffee.png", image))], headers=auth(),
                          timeout=900)
        assert r.status_code == 200, r.text
        by_query = r.json()["data"][0]["explanations"]
        body = {"input": ["data:image/png;base64," + base64.b64encode(image).decode()],
                "explain_labels": {"imagetrust_source": chosen["imagetrust_source"][1],
                                   "hive_effb4": {"source": chosen["hive_effb4"][1]}}}
        by_json = requests.post(gw.url + "/v1/detect", json=body, headers=auth(), timeout=900).json()["data"][0]
    finally:
        gw.stop()
    for name, (head, label) in chosen.items():
        spec = specs.get(name)
        maps = _in_process_maps(explain_build, name, image)
        entries = {e["head"]: e for e in by_query[name]}
        entry = entries[head]
        index = next(h for h in spec.heads if h.name == head).labels.index(label)
        assert entry["target"] == "requested" and entry["target_label"] == label and entry["target_index"] == index
        assert entry["predicted_label"] != label
        np.testing.assert_allclose(np.asarray(entry["map"]), maps[head][index], atol=1e-4)
        # and it is not the predicted label's map
        predicted = {e["head"]: e for e in first[name]}[head]
        assert np.abs(np.asarray(entry["map"]) - np.asarray(predicted["map"])).max() > 1e-2
        for other, e in entries.items():  # heads not named: the predicted label's, as before
            if other != head:
                assert e["target"] == "predicted" and e["map"] == {x["head"]: x for x in first[name]}[other]["map"]
    assert all(e["target"] == "predicted" for e in by_query["sumsub_sd"])
    for name in ("imagetrust_source", "hive_effb4"):  # JSON explain_labels: the same maps
        assert [e["map"] for e in by_json["explanations"][name]] == [e["map"] for e in by_query[name]]
    assert all(e["target"] == "predicted" for e in by_json["explanations"]["opensdi_flux"])


@pytest.mark.gateway
def test_gateway_refuses_an_unknown_label_before_inference(tmp_path):
    """An unknown detector, head or label is a 422 {code, message} naming the valid ones, answered without
    inference: this gateway's Triton does not exist (a valid choice gets 503)."""
    import requests

    from conftest import free_ports
    from test_gateway import KEY, auth, start_gateway

    image = _photos()["coffee.png"]
    gw = start_gateway(f"127.0.0.1:{free_ports(1)[0]}", tmp_path, "--triton-retries", "0", keys=[KEY])
    try:
        def post(query="", json_body=None):
            if json_body is not None:
                return requests.post(gw.url + "/v1/detect" + query, json=json_body, headers=auth(), timeout=60)
            return requests.post(gw.url + "/v1/detect" + query, files=[("file", ("coffee.png", image))],
                                 headers=auth(), timeout=60)

        data_url = "data:image/png;base64,iVBORw0KGgo="
        cases = {
            "?explain_label=sumsub_sd=fake": "real, stable_diffusion",
            "?explain=true&explain_label=hive_effb4.nope=x": "ai, source",
            "?explain_label=hive_effb4=gan": "hive_effb4.<head>=<label>",
            "?explain_label=nobody=real": "imagetrust_source",
            "?explain_label=sumsub_sd": "<detector>=<label>",
            "?explain_label=sumsub_sd=real&explain_label=sumsub_sd.sd=stable_diffusion": "two labels",
        }
        for query, names in cases.items():
            r = post(query)
            assert r.status_code == 422, (query, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_explain_label" and names in error["message"], (query, error)
        r = post(json_body={"input": [data_url], "explain_labels": {"imagetrust_source": "Diffusion2"}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_explain_label"
        assert "Real, GAN, Diffusion, Other" in r.json()["error"]["message"]
        r = post("?explain_label=sumsub_sd=real",
                 {"input": [data_url], "explain_labels": {"sumsub_sd": "stable_diffusion"}})
        assert r.status_code == 422 and "two labels" in r.json()["error"]["message"]
        assert post("?explain_label=sumsub_sd=real").status_code == 503  # valid: on to the (missing) server
    finally:
        gw.stop()


def test_client_and_triton_take_explain_labels(explain_server, explain_build, tmp_path, capsys):
    """genguard.client.explain(labels=...) over HTTP and gRPC, the EXPLAIN_LABELS input itself (a bad choice
    fails the request naming the valid labels) and `genguard explain --label`."""
    from tritonclient.utils import InferenceServerException

    from genguard.client.cli import main
    from genguard.client.explain import explain

    images = _photos()
    paths = []
    for name in ("astronaut.png", "corrupt.jpg", "coffee.png"):
        (tmp_path / name).write_bytes(images[name])
        paths.append(tmp_path / name)
    maps = {p.name: _in_process_maps(explain_build, "sumsub_sd", images[p.name])["sd"] for p in paths[::2]}
    # astronaut's non-predicted label, found here (explain.onnx's logits): the served map must be that one's
    from genguard import onnx_runtime
    from genguard.preprocess import preprocess_bytes

    spec = specs.get("sumsub_sd")
    pixels = preprocess_bytes(images["astronaut.png"], {"x": spec.input})[1]["x"][None]
    logits = onnx_runtime.session(explain_build / "onnx" / spec.name / "explain.onnx").run(
        [spec.heads[0].name], {protocol.DETECTOR_INPUT: pixels})[0]
    index = 1 - int(E.predicted_index(logits, spec.heads[0].labels)[0])
    label = spec.heads[0].labels[index]
    # HTTP with a corrupt image in the batch; gRPC with one image (each answer occludes the transformers)
    for transport, batch in (("http", paths), ("grpc", paths[:1])):
        url = explain_server.http_url if transport == "http" else explain_server.grpc_url
        results = explain(batch, url, protocol=transport, labels={"sumsub_sd": label})
        assert [r.status for r in results] == ["SUCCESS", "FAILURE", "SUCCESS"][:len(batch)]
        for r in results[::2]:
            (entry,) = r.raw["explanations"]["sumsub_sd"]
            assert entry["target_label"] == label and entry["target"] == "requested"
            assert entry["labels"] == list(spec.heads[0].labels)
            np.testing.assert_allclose(np.asarray(entry["map"]), maps[Path(r.name).name][index], atol=1e-4)
        assert results[0].raw["explanations"]["sumsub_sd"][0]["predicted_label"] != label
        assert all(e["target"] == "predicted" for e in results[0].raw["explanations"]["hive_effb4"])
        with pytest.raises(ValueError, match="real, stable_diffusion"):
            explain(batch, url, protocol=transport, labels=["sumsub_sd=fake"])
    # straight to Triton: a label this server does not have fails the request, naming the valid ones
    import tritonclient.grpc as grpcclient

    batch = protocol.pack_images([images["coffee.png"]])
    inputs = [grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8"),
              grpcclient.InferInput(E.LABELS_INPUT, [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(batch)
    inputs[1].set_data_from_numpy(np.array([[b'{"sumsub_sd": {"sd": "fake"}}']], dtype=np.object_))
    with grpcclient.InferenceServerClient(explain_server.grpc_url) as c, pytest.raises(InferenceServerException) as err:
        c.infer(E.EXPLAIN_ENSEMBLE, inputs, client_timeout=600)
    assert "sumsub_sd.sd has no label 'fake': choose from real, stable_diffusion" in str(err.value)
    # the CLI
    out = tmp_path / "out"
    assert main(["explain", str(paths[0]), "--label", f"sumsub_sd={label}", "--label", "hive_effb4.ai=ai_generated",
                 "--out", str(out), "--url", explain_server.grpc_url]) == 0
    doc = json.loads((out / "astronaut.json").read_text())
    assert doc["explanations"]["sumsub_sd"][0]["target_label"] == label
    assert [e["target_label"] for e in doc["explanations"]["hive_effb4"]][0] == "ai_generated"
    assert (out / "astronaut.sumsub_sd.png").is_file()
    with pytest.raises(SystemExit) as exit_:
        main(["explain", str(paths[0]), "--label", "sumsub_sd=fake", "--out", str(out),
              "--url", explain_server.grpc_url])
    assert exit_.value.code == 2 and "choose from real, stable_diffusion" in capsys.readouterr().err


def test_explain_ensemble_takes_optional_labels(explain_build, tmp_path):
    """Offline: genguard_explain's optional EXPLAIN_LABELS input reaches postprocess_explain (cpu and GPU
    targets); genguard's own ensemble has no such input."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from genguard.export.repository import render

    names = ["sumsub_sd", "opensdi_flux"]
    for target in ("cpu", "onnx-gpu"):
        repo = render(target, explain_build, tmp_path / target, detectors=names, explain=True, copy=False)
        def parse(model, repo=repo):
            return text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())

        ensemble, post = parse(E.EXPLAIN_ENSEMBLE), parse(E.EXPLAIN_POSTPROCESS)
        for config in (ensemble, post):
            (labels,) = [i for i in config.input if i.name == E.LABELS_INPUT]
            assert labels.optional and labels.data_type == mc.TYPE_STRING and list(labels.dims) == [1]
        (step,) = [s for s in ensemble.ensemble_scheduling.step if s.model_name == E.EXPLAIN_POSTPROCESS]
        assert step.input_map[E.LABELS_INPUT] == E.LABELS_INPUT
        assert E.LABELS_INPUT not in [i.name for i in parse(protocol.ENSEMBLE).input]
        assert E.LABELS_INPUT not in [i.name for i in parse(protocol.POSTPROCESS).input]


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



@contextlib.contextmanager
def explained_in_the_page(explain_server, image: Path, tmp_path: Path):
    """The reviewer page in Chromium (1280×800) against a keyed gateway in front of `explain_server`: the key
    given, "heatmaps" checked, `image` answered and its detail view open on sumsub_sd's map. Yields (page, the
    answered document, page errors, /v1/detect URLs requested); the test asserts; browser and gateway stop."""
    from playwright.sync_api import sync_playwright

    from test_gateway import KEY, start_gateway
    from test_page import CHROMIUM

    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed")
    gw = start_gateway(explain_server.grpc_url, tmp_path, "--deadline-s", "600", keys=[KEY])
    try:
        with sync_playwright() as pw:
            args = ["--no-sandbox"] if os.geteuid() == 0 else []
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            requests_seen: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("request", lambda r: requests_seen.append(r.url) if "/v1/detect" in r.url else None)
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
            page.click(f'#rows tr[data-name="{image.name}"] td.name')
            page.locator("#d-explanations").wait_for(state="visible")
            options = page.locator("#d-explain-select option")
            index = next(i for i in range(options.count()) if options.nth(i).inner_text().startswith("sumsub_sd"))
            page.select_option("#d-explain-select", str(index))
            yield page, doc, errors, requests_seen
            browser.close()
    finally:
        gw.stop()


def canvas_pixels(page) -> np.ndarray:
    data = page.evaluate("Array.from(document.getElementById('d-explain-canvas').getContext('2d')"
                         ".getImageData(0, 0, 480, 480).data)")
    return np.asarray(data, dtype=np.float32).reshape(480, 480, 4)[..., :3]


@pytest.mark.gateway
@pytest.mark.browser
def test_reviewer_page_draws_the_overlay(explain_server, tmp_path):
    """The page with "heatmaps" checked asks /v1/detect?explain=true and draws the chosen head's overlay in
    the detail view; its pixels are the client's overlay (within the browser's own image downscaling)."""
    from PIL import Image

    from genguard.client.explain import overlay

    image = tmp_path / "astronaut.png"
    image.write_bytes(_photos()["astronaut.png"])
    with explained_in_the_page(explain_server, image, tmp_path) as (page, doc, errors, _):
        heads = sum(len(v) for v in doc["explanations"].values())
        assert page.locator("#d-explain-select option").count() == heads == 7
        assert page.locator("#d-explain-canvas").get_attribute("data-detector") == "sumsub_sd"
        size = page.evaluate("[document.getElementById('d-explain-canvas').width, "
                             "document.getElementById('d-explain-canvas').height]")
        drawn = canvas_pixels(page)
        assert errors == []
    assert size == [480, 480]
    expected = np.asarray(overlay(Image.open(image).convert("RGB").resize((480, 480), Image.Resampling.BILINEAR),
                                  doc["explanations"]["sumsub_sd"][0]), dtype=np.float32)
    plain = np.asarray(Image.open(image).convert("RGB").resize((480, 480), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(drawn - expected).mean() < 6  # the browser's downscaling differs from Pillow's by a few levels
    assert np.abs(drawn - plain).mean() > 20  # and a heatmap is drawn, not the bare image


@pytest.mark.gateway
@pytest.mark.browser
def test_reviewer_page_label_picker_switches_the_overlay(explain_server, tmp_path):
    """The detail view's label picker lists the head's labels (the predicted one marked); picking another asks
    /v1/detect?explain_label=<detector>.<head>=<label> for that image and draws that label's map (the client's
    overlay of the answered map, not the predicted one's); picking the predicted label again draws its map
    without a request."""
    from urllib.parse import unquote

    from PIL import Image

    from genguard.client.explain import overlay

    image = tmp_path / "astronaut.png"
    image.write_bytes(_photos()["astronaut.png"])
    with explained_in_the_page(explain_server, image, tmp_path) as (page, doc, errors, requests_seen):
        first = doc["explanations"]["sumsub_sd"][0]
        labels = page.locator("#d-explain-label option")
        texts = [labels.nth(i).inner_text() for i in range(labels.count())]
        assert texts == [f"{x} (predicted)" if x == first["target_label"] else x for x in first["labels"]]
        assert page.input_value("#d-explain-label") == first["target_label"]
        predicted_drawn = canvas_pixels(page)
        other = _other_label(first)
        with page.expect_response(lambda r: "explain_label=" in r.url, timeout=600_000) as chosen:
            page.select_option("#d-explain-label", other)
        assert unquote(chosen.value.url).endswith(f"/v1/detect?explain_label=sumsub_sd.sd={other}")
        assert chosen.value.status == 200
        entry = chosen.value.json()["data"][0]["explanations"]["sumsub_sd"][0]
        page.wait_for_function(f"document.getElementById('d-explain-canvas').dataset.label === {other!r}")
        other_drawn = canvas_pixels(page)
        assert other in page.locator("#d-explanations p.muted").inner_text()
        before = len(requests_seen)
        page.select_option("#d-explain-label", first["target_label"])
        page.wait_for_function("document.getElementById('d-explain-canvas').dataset.label === "
                               f"{first['target_label']!r}")
        again = canvas_pixels(page)
        assert len(requests_seen) == before  # the predicted map is the one already answered
        assert errors == []
    assert entry["target_label"] == other and entry["target"] == "requested"
    base = Image.open(image).convert("RGB").resize((480, 480), Image.Resampling.BILINEAR)
    expected = np.asarray(overlay(base, entry), dtype=np.float32)
    expected_predicted = np.asarray(overlay(base, first), dtype=np.float32)
    assert np.abs(other_drawn - expected).mean() < 6  # the browser's downscaling differs by a few levels
    assert np.abs(expected - expected_predicted).mean() > 10  # the two labels' overlays do differ
    assert np.abs(other_drawn - expected_predicted).mean() > 10  # and the picked label's is drawn
    assert np.array_equal(again, predicted_drawn)
