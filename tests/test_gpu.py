"""GPU-only checks (`make gpu-check` = pytest -m gpu): TensorRT engines vs ONNX Runtime FP32, DALI on
the GPU vs the reference preprocessing, and a perf_analyzer throughput run against a GPU server.
Each skips with a one-line reason where its GPU, TensorRT, DALI or server is missing.

Tolerances (max |Δprob| vs ONNX Runtime FP32 on identical tensors): genguard.export.tensorrt.PROB_TOLERANCE
(FP32 1e-3, FP16 1e-2, BF16 3e-2), and top-1 agreement >= 0.9 on the sample photos.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from genguard import specs
from genguard.export import dali, samples
from genguard.export import tensorrt as trt
from genguard.preprocess import preprocess_bytes
from genguard.scores import head_probs

pytestmark = pytest.mark.gpu
INPUTS = specs.distinct_inputs(specs.DETECTORS.values())


def _machine_or_skip() -> trt.Machine:
    try:
        capability, name = trt.gpu_capability()
    except trt.EngineError as exc:
        pytest.skip(f"no NVIDIA GPU: {exc}")
    try:
        return trt.Machine(capability, trt.tensorrt_version(), name)
    except trt.EngineError as exc:
        pytest.skip(f"no TensorRT: {exc}")


@pytest.fixture(scope="module")
def machine():
    return _machine_or_skip()


@pytest.fixture(scope="module")
def trtexec(machine):
    try:
        return trt.find_trtexec()
    except trt.EngineError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def engines(tiny_build, tmp_path_factory, machine, trtexec):
    from genguard.export.repository import render

    root = tmp_path_factory.mktemp("trt")
    repo = render("tensorrt", tiny_build, root / "repo", max_batch=4)
    trt.build(repo, root / "cache", machine, trtexec=trtexec)
    assert trt.check(repo, machine) == {}
    return repo


def _run_plan(trtexec: str, plan: Path, batch: np.ndarray, workdir: Path) -> dict[str, np.ndarray]:
    """Run a plan once with trtexec on `batch` and read its outputs back (--exportOutput JSON)."""
    inputs, outputs = workdir / "pixels.bin", workdir / "outputs.json"
    np.ascontiguousarray(batch, dtype=np.float32).tofile(inputs)
    shape = "x".join(map(str, batch.shape))
    result = subprocess.run([trtexec, f"--loadEngine={plan}", f"--shapes=pixels:{shape}",
                             f"--loadInputs=pixels:{inputs}", f"--exportOutput={outputs}",
                             "--iterations=1", "--warmUp=0", "--duration=0"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = {}
    for entry in json.loads(outputs.read_text()):
        dims = [int(d) for d in str(entry["dimensions"]).split("x")]
        out[entry["name"]] = np.asarray(entry["values"], dtype=np.float32).reshape(dims)
    return out


@pytest.mark.parametrize("name", list(specs.DETECTORS))
def test_engine_matches_onnxruntime_fp32(engines, trtexec, tmp_path, name):
    from genguard import onnx_runtime

    spec = specs.DETECTORS[name]
    images = list(samples.photos().values())[:4]
    batch = np.stack([preprocess_bytes(b, {"x": spec.input})[1]["x"] for b in images])
    reference = onnx_runtime.session(engines / name / "onnx" / "model.onnx").run(None, {"pixels": batch})
    served = _run_plan(trtexec, engines / name / "1" / "model.plan", batch, tmp_path)
    precision = json.loads((engines / name / "1" / "model.plan.json").read_text())["precision"]
    for head, ref_logits in zip(spec.heads, reference):
        p_ref, p_trt = head_probs(head, ref_logits), head_probs(head, served[head.name])
        delta = float(np.abs(p_ref - p_trt).max())
        print(f"{name}.{head.name} {precision}: max |Δprob| {delta:.2e}")
        assert delta <= trt.PROB_TOLERANCE[precision], (name, head.name, precision, delta)
        if p_ref.shape[1] > 1:
            assert np.mean(p_ref.argmax(1) == p_trt.argmax(1)) >= 0.9


def test_dali_on_the_gpu_matches_the_reference():
    _machine_or_skip()
    pytest.importorskip("nvidia.dali", reason="nvidia-dali not installed")
    images = samples.all_images()
    names = list(images)
    params = dali.pipeline_parameters(INPUTS)
    pipe = dali.pipeline(params, device="gpu", batch_size=len(names), device_id=0)
    pipe.build()
    pipe.feed_input(dali.DALI_INPUT, [np.frombuffer(dali.screen(images[n]).payload, np.uint8) for n in names])
    outputs = pipe.run()
    from test_gpu_targets import LEVELS, SKIP, _levels

    for p, out in zip(params, outputs):
        spec = INPUTS[p.name]
        cpu = out.as_cpu()
        for i, name in enumerate(names):
            if (p.name, name) in SKIP:
                continue
            ref = preprocess_bytes(images[name], {"x": spec})[1]["x"]
            d = _levels(np.asarray(cpu[i]), ref, spec)
            # nvJPEG's IDCT/upsampling is not libjpeg-turbo's: up to 2 more levels on JPEG sources
            extra = 2.0 if name.endswith(".jpg") else 0.0
            print(f"{p.name:12s} {name:22s} max {d.max():5.1f} inside {d[:, 2:-2, 2:-2].max():5.1f}")
            bound = LEVELS["bilinear_inside"] if spec.interpolation == "bilinear" else LEVELS["bicubic"]
            assert d[:, 2:-2, 2:-2].max() <= bound + extra, (p.name, name)
            assert d.mean() <= 2 * LEVELS["mean"], (p.name, name)


def test_perf_analyzer_throughput(tmp_path):
    """Against a running GPU server (the image): GENGUARD_GPU_URL=host:8001 (gRPC)."""
    url = os.environ.get("GENGUARD_GPU_URL")
    if not url:
        pytest.skip("no GPU server to measure: set GENGUARD_GPU_URL=host:8001 (docker run the image)")
    binary = shutil.which("perf_analyzer")
    if not binary:
        pytest.skip("perf_analyzer not on PATH (NGC tritonserver:<tag>-py3-sdk image)")
    image = samples.photos()["rocket.jpg"]
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"IMAGE": {"content": list(image), "shape": [len(image)]}}]}))
    csv = tmp_path / "perf.csv"
    result = subprocess.run([binary, "-m", "genguard", "-u", url, "-i", "grpc", "--input-data", str(data),
                             "-b", "8", "--concurrency-range", "4", "--measurement-interval", "5000",
                             "-f", str(csv)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header, row = csv.read_text().splitlines()[:2]
    throughput = float(dict(zip(header.split(","), row.split(",")))["Inferences/Second"])
    print(f"genguard ensemble, batch 8, concurrency 4: {throughput:.1f} images/s")
    assert throughput > 0
