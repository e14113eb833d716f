"""CPU engine/precision options served by the real tritonserver (tiny build): each option loads, names itself
in the answer, and answers within the budget its record vouches for; a CPU without BF16 (simulated) is
refused at render time and by the detector model itself."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from genguard import cpus, engines, protocol, specs
from genguard.export import cpu_options
from genguard.export.repository import CpuOptions, RepositoryError, render

# The slow tier (make test-all, CI): a server of its own per engine option.
pytestmark = [pytest.mark.server, pytest.mark.slow]

# one server, four options: each detector runs a different one
# (openvino-int8 loads in test_cpu_options; ImageTrust's QDQ misses the budget with the tiny random weights)
CHOSEN = {"sumsub_sd": "ort-int8-qdq", "freepik_nsfw": "openvino-bf16-mixed", "imagetrust_binary": "openvino-bf16",
          "imagetrust_source": "openvino-fp32"}


@pytest.fixture(scope="module")
def option_build(tiny_build, tmp_path_factory):
    """The tiny build, copied, with CHOSEN's options built and measured on 4 sample images."""
    from genguard.export import samples

    missing = [o for o in set(CHOSEN.values()) if engines.missing_instructions(engines.get(o))]
    if missing:
        pytest.skip(f"this CPU cannot run {missing}")
    build = tmp_path_factory.mktemp("option-build")
    shutil.copytree(tiny_build / "onnx", build / "onnx", symlinks=True)
    images = dict(list(samples.photos().items())[:4])
    for name, option in CHOSEN.items():
        cpu_options.measure_detector(build, name, [option], images=images, speed_rounds=1)
    return build


def test_each_option_loads_and_answers_within_its_recorded_budget(option_build, tmp_path, capsys):
    import tritonclient.http as httpclient
    from conftest import start_server

    from genguard import server
    from genguard.export import samples
    from genguard.preprocess import preprocess_bytes
    from genguard.scores import head_probs

    running = start_server(option_build, tmp_path, detectors=list(CHOSEN),
                           cpu=CpuOptions(precision=tuple(CHOSEN.items())))
    try:
        photos = list(samples.photos().values())[:3]
        client = httpclient.InferenceServerClient(running.http_url)
        batch = protocol.pack_images(photos)
        tensor = httpclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        result = client.infer(protocol.ENSEMBLE, [tensor])
        docs = [json.loads(x) for x in result.as_numpy(protocol.RESULT).reshape(-1)]
        client.close()
        from genguard.client import Client
        from genguard.client.cli import main as cli_main

        with Client(running.grpc_url) as genguard_client:
            health = genguard_client.health()
        assert {n: e["option"] for n, e in health.engines.items()} == CHOSEN
        assert cli_main(["health", "--url", running.grpc_url]) == 0
        shown = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
        digest = {n: json.loads((option_build / "onnx" / n / "parity.json").read_text())["cpu_options"][o]["sha256"]
                  for n, o in CHOSEN.items()}  # an IR's: over its .xml + .bin
        assert shown["freepik_nsfw"].endswith("random weights, openvino bf16-mixed, model.bf16-mixed.xml sha256 "
                                              + digest["freepik_nsfw"][:12])
        assert shown["sumsub_sd"].endswith(f"random weights, onnxruntime int8-qdq, model.qdq.onnx sha256 "
                                           f"{digest['sumsub_sd'][:12]}")
        assert {n: f["sha256"] for n, f in health.files.items()} == digest
    finally:
        server.stop_pid(running.process.pid)
    for name, option in CHOSEN.items():
        o = engines.get(option)
        assert all(d["engines"][name] == {"option": option, "engine": o.engine, "precision": o.precision} for d in docs)
        folder = option_build / "onnx" / name
        record = json.loads((folder / "parity.json").read_text())["cpu_options"][option]
        assert record["within_budget"]
        spec = specs.get(name)
        fp32 = engines.open_engine("ort-fp32", folder / "model.onnx")
        pixels = np.stack([preprocess_bytes(b, {"x": spec.input})[1]["x"] for b in photos])
        expected = [head_probs(h, x) for h, x in zip(spec.heads, fp32.run(None, {"pixels": pixels}))]
        for k, head in enumerate(spec.heads):
            served = np.array([[d["detectors"][name][head.name][label] for label in head.labels] for d in docs])
            assert np.abs(served - expected[k]).max() <= record["budget"]["max_abs_prob"], (name, option)
            # the options do change the arithmetic, except OpenVINO FP32
            if option != "openvino-fp32":
                assert np.abs(served - expected[k]).max() > 0, (name, option)


def test_a_cpu_without_bf16_is_refused_at_render_and_by_the_detector_model(option_build, tmp_path, monkeypatch):
    monkeypatch.setenv(cpus.HIDE_FLAGS_ENV, "avx512_bf16,amx_bf16")
    with pytest.raises(RepositoryError, match="freepik_nsfw: openvino-bf16-mixed needs CPU instructions this machine lacks"):
        render("cpu", option_build, tmp_path / "refused", detectors=list(CHOSEN),
               cpu=CpuOptions(precision=(("freepik_nsfw", "openvino-bf16-mixed"),)))
    # "best" skips what this CPU can't run
    repo = render("cpu", option_build, tmp_path / "best", detectors=list(CHOSEN),
                  cpu=CpuOptions(precision=(("freepik_nsfw", "best"),)))
    assert '"ort-fp32"' in (repo / "freepik_nsfw" / "config.pbtxt").read_text()
    # rendered on a BF16 machine, served on one without: the detector model refuses to load
    monkeypatch.delenv(cpus.HIDE_FLAGS_ENV)
    repo = render("cpu", option_build, tmp_path / "bf16", detectors=["sumsub_sd", "freepik_nsfw"],
                  cpu=CpuOptions(precision=(("freepik_nsfw", "openvino-bf16-mixed"),)))
    monkeypatch.setenv(cpus.HIDE_FLAGS_ENV, "avx512_bf16,amx_bf16")
    from genguard import server

    ports = server.Ports(*__import__("conftest").free_ports(3))
    log = tmp_path / "tritonserver.log"
    process = server.start(repo, tmp_path / "tritonserver", ports=ports, log_file=log)
    try:
        with pytest.raises(RuntimeError):
            server.wait_ready(process, ports, timeout=120, log_file=log)
    finally:
        server.stop_pid(process.pid)
    assert "openvino-bf16-mixed needs CPU instructions this machine lacks" in log.read_text()
    assert os.environ[cpus.HIDE_FLAGS_ENV]
