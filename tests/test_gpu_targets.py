"""The GPU targets (onnx-gpu, tensorrt) without a GPU: rendered configs, the DALI pipeline's parameters
(and the pipeline itself on CPU when nvidia-dali is installed), the validate step, the TensorRT engine
cache and its refusals, trtexec command lines, and the server image's files."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from genguard import dali, protocol, specs
from genguard.export import samples
from genguard.export import tensorrt as trt
from genguard.export.repository import main, render
from genguard.preprocess import DecodeLimits, center_crop_box, preprocess_bytes, shorter_side_size, without_png_text

ROOT = Path(__file__).resolve().parents[1]
GPU_TARGETS = ("onnx-gpu", "tensorrt")
INPUTS = specs.distinct_inputs(specs.DETECTORS.values())
# Engine precision per detector, written out (the model cards: Freepik asks for BF16 on GPU; FP16 for
# the rest); onnx-gpu's TensorRT EP has no BF16, so Freepik runs FP32 there.
EXPECTED_PRECISION = {"opensdi_flux": "fp16", "sumsub_sd": "fp16", "freepik_nsfw": "bf16",
                      "imagetrust_binary": "fp16", "imagetrust_source": "fp16", "hive_effb4": "fp16"}
EXPECTED_ORT_PRECISION_MODE = {"opensdi_flux": "FP16", "sumsub_sd": "FP16", "freepik_nsfw": "FP32",
                               "imagetrust_binary": "FP16", "imagetrust_source": "FP16", "hive_effb4": "FP16"}


def read_config(folder: Path) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def repos(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-repos")
    return {target: render(target, tiny_build, root / target) for target in ("cpu", *GPU_TARGETS)}


# ---------------------------------------------------------------------------------------------------
# Rendered repositories


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_every_model_is_there_with_a_parsable_config(repos, target):
    repo = repos[target]
    names = {p.name for p in repo.iterdir() if p.is_dir()}
    assert names == {"validate", "preprocess", "postprocess", "genguard", "genguard_video", *specs.DETECTORS}
    for name in names:
        assert read_config(repo / name).name == name
        assert (repo / name / "1").is_dir()


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_detectors_run_on_gpu_with_batching_and_warmup(repos, target):
    for name, spec in specs.DETECTORS.items():
        config = read_config(repos[target] / name)
        assert config.platform == {"tensorrt": "tensorrt_plan", "onnx-gpu": "onnxruntime_onnx"}[target]
        assert not config.backend  # platform picks the backend; python would be the cpu target
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        assert config.HasField("dynamic_batching")
        preferred = list(config.dynamic_batching.preferred_batch_size)
        assert preferred[0] == 1 and preferred[-1] == config.max_batch_size and preferred == sorted(preferred)
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            ("pixels", mc.TYPE_FP32, list(spec.input.shape))]
        assert [(o.name, list(o.dims)) for o in config.output] == [(h.name, [h.num_logits]) for h in spec.heads]
        warmups = {w.batch_size: w for w in config.model_warmup}
        assert set(warmups) == {1, config.max_batch_size}
        for warmup in warmups.values():
            sample = warmup.inputs["pixels"]
            assert sample.data_type == mc.TYPE_FP32 and list(sample.dims) == list(spec.input.shape)
            assert sample.WhichOneof("input_data_type") == "random_data"


def test_tensorrt_max_batch_is_the_engine_profile_max_and_uses_cuda_graphs(repos):
    repo = repos["tensorrt"]
    for name, spec in specs.DETECTORS.items():
        config = read_config(repo / name)
        recipe = trt.Recipe.from_json((repo / name / "onnx" / "engine.json").read_text())
        assert recipe.max_batch == config.max_batch_size and recipe.min_batch == 1
        assert recipe.shape == spec.input.shape and recipe.input == "pixels"
        assert recipe.precision == EXPECTED_PRECISION[name]
        onnx = repo / name / "onnx" / "model.onnx"
        assert onnx.is_file() and not onnx.is_symlink()  # self-contained by default (copied)
        assert not (repo / name / "1" / "model.plan").exists()  # built on the serving GPU, not here
        command = trt.trtexec_command(Path("m.onnx"), Path("m.plan"), recipe, trt.Machine("9.0", "10.11.0"),
                                      timing_cache=None)
        shape = "x".join(map(str, spec.input.shape))
        assert f"--maxShapes=pixels:{config.max_batch_size}x{shape}" in command
        assert f"--minShapes=pixels:1x{shape}" in command
        cuda = config.optimization.cuda
        assert cuda.graphs
        assert sorted(g.batch_size for g in cuda.graph_spec)[-1] == config.max_batch_size
        assert all(list(g.input["pixels"].dim) == list(spec.input.shape) for g in cuda.graph_spec)
    assert trt.Recipe.from_json((repo / "freepik_nsfw" / "onnx" / "engine.json").read_text()).precision == "bf16"


def test_onnx_gpu_uses_the_tensorrt_accelerator_with_a_full_profile(repos):
    repo = repos["onnx-gpu"]
    for name, spec in specs.DETECTORS.items():
        config = read_config(repo / name)
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == ["tensorrt"]
        params = dict(accelerators[0].parameters)
        assert params["precision_mode"] == EXPECTED_ORT_PRECISION_MODE[name]
        assert params["trt_engine_cache_enable"] == "1" and params["trt_engine_cache_path"].endswith(name)
        shape = "x".join(map(str, spec.input.shape))
        assert params["trt_profile_max_shapes"] == f"pixels:{config.max_batch_size}x{shape}"
        assert params["trt_profile_min_shapes"] == f"pixels:1x{shape}"
        onnx = repo / name / "1" / "model.onnx"
        assert onnx.is_file() and not onnx.is_symlink()  # self-contained by default (copied)
        assert not config.optimization.cuda.graphs  # CUDA graphs are a TensorRT-backend option


def test_client_contract_is_identical_on_every_target(repos):
    ensembles = {t: read_config(repos[t] / "genguard") for t in repos}
    contract = {t: ([(i.name, i.data_type, list(i.dims)) for i in e.input],
                    [(o.name, o.data_type, list(o.dims), o.label_filename) for o in e.output],
                    e.max_batch_size)
                for t, e in ensembles.items()}
    assert contract["cpu"][0] == [(protocol.INPUT, mc.TYPE_UINT8, [-1])]
    assert contract["onnx-gpu"] == contract["cpu"] == contract["tensorrt"]
    for target in GPU_TARGETS:
        assert (repos[target] / "genguard" / "sources.txt").read_text() == (repos["cpu"] / "genguard" / "sources.txt").read_text()


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_ensemble_validates_then_decodes_with_dali(repos, target):
    repo = repos[target]
    steps = {s.model_name: s for s in read_config(repo / "genguard").ensemble_scheduling.step}
    order = [s.model_name for s in read_config(repo / "genguard").ensemble_scheduling.step]
    assert order[:2] == ["validate", "preprocess"] and order[-1] == "postprocess"
    assert dict(steps["validate"].input_map) == {"IMAGE": "IMAGE"}
    assert steps["preprocess"].input_map[dali.DALI_INPUT] == steps["validate"].output_map[dali.DALI_INPUT]
    assert steps["postprocess"].input_map["IMAGE_INFO"] == steps["validate"].output_map["IMAGE_INFO"]
    assert "IMAGE_INFO" not in steps["preprocess"].output_map.values()
    # every tensor a step reads is produced by an earlier step (or is the ensemble input)
    produced = {"IMAGE"}
    for step in read_config(repo / "genguard").ensemble_scheduling.step:
        assert set(step.input_map.values()) <= produced, step.model_name
        produced |= set(step.output_map.values())
        config = read_config(repo / step.model_name)
        assert set(step.input_map) == {i.name for i in config.input}
        assert set(step.output_map) <= {o.name for o in config.output}

    validate = read_config(repo / "validate")
    assert validate.backend == "python" and (repo / "validate" / "1" / "model.py").is_file()
    assert [(o.name, o.data_type, list(o.dims)) for o in validate.output] == [
        (dali.DALI_INPUT, mc.TYPE_UINT8, [-1]), ("IMAGE_INFO", mc.TYPE_STRING, [1])]
    assert json.loads(validate.parameters["limits"].string_value) == json.loads(json.dumps(
        DecodeLimits().__dict__))


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_dali_preprocess_model(repos, target):
    folder = repos[target] / "preprocess"
    config = read_config(folder)
    assert config.backend == "dali" and not config.platform
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [(dali.DALI_INPUT, mc.TYPE_UINT8, [-1])]
    params = dali.parameters_from_json((folder / "1" / "pipeline.json").read_text())
    # outputs match the pipeline's by position
    assert [o.name for o in config.output] == [protocol.pixels_tensor(p.name) for p in params]
    assert [list(o.dims) for o in config.output] == [[3, *p.size] for p in params]
    assert params == dali.pipeline_parameters(INPUTS)
    assert not config.HasField("dynamic_batching")  # a DALI batch is one request (see genguard/dali.py)
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    source = (folder / "1" / "dali.py").read_text()
    assert source.count("@autoserialize") == 1 and 'device="gpu"' in source
    assert not (folder / "1" / "model.dali").exists()  # the server serializes with its own DALI
    (warmup,) = config.model_warmup
    sample = warmup.inputs[dali.DALI_INPUT]
    data = (folder / "warmup" / sample.input_data_file).read_bytes()
    assert list(sample.dims) == [len(data)] and data[:3] == b"\xff\xd8\xff"


def test_cli_renders_gpu_targets_and_says_where(tiny_build, tmp_path, capsys):
    assert main(["--target", "tensorrt", "--build", str(tiny_build), "--out", str(tmp_path / "t"),
                 "--max-batch", "8", "--opt-batch", "4", "--copy"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "t") in out and "genguard.export.tensorrt build" in out
    recipe = trt.Recipe.from_json((tmp_path / "t" / "sumsub_sd" / "onnx" / "engine.json").read_text())
    assert (recipe.min_batch, recipe.opt_batch, recipe.max_batch) == (1, 4, 8)
    assert read_config(tmp_path / "t" / "sumsub_sd").max_batch_size == 8
    assert not (tmp_path / "t" / "sumsub_sd" / "onnx" / "model.onnx").is_symlink()


# ---------------------------------------------------------------------------------------------------
# DALI pipeline parameters and geometry


def test_pipeline_parameters_are_derived_from_the_specs():
    params = {p.name: p for p in dali.pipeline_parameters(INPUTS)}
    assert list(params) == list(INPUTS)
    for name, spec in INPUTS.items():
        p = params[name]
        assert p.size == spec.size and p.resize == spec.resize and p.exif_transpose is spec.exif_transpose is False
        assert p.interp == {"bilinear": "INTERP_LINEAR", "bicubic": "INTERP_CUBIC"}[spec.interpolation]
        assert p.mean == pytest.approx([255 * m for m in spec.mean]) and p.std == pytest.approx([255 * s for s in spec.std])
        if spec.resize == "shorter_crop":
            assert p.resize_to == (math.floor(spec.size[0] / spec.crop_pct),) * 2
        else:
            assert p.resize_to == spec.size
    assert params["tfmnv3_224"].resize_to == (256, 256) and params["effb4_320"].resize_to == (365, 365)
    assert params["eva02_448"].interp == "INTERP_CUBIC" and params["siglip224"].mean == pytest.approx((127.5,) * 3)
    assert dali.parameters_from_json(dali.parameters_json(list(params.values()))) == list(params.values())


def test_crop_anchor_rounds_half_to_even_like_torchvision():
    for diff in range(0, 400):
        assert dali.half_to_even(diff) == round(diff / 2) == center_crop_box(224 + diff, 224 + diff, 224, 224)[0]
    # where DALI's own crop_pos=0.5 (half away from zero) would be one pixel off
    assert dali.half_to_even(33) == 16 and math.floor(33 / 2 + 0.5) == 17


def test_shorter_side_size_matches_torchvision():
    rng = np.random.default_rng(0)
    sizes = [(257, 256), (256, 257), (1, 9000), (9000, 1), (4000, 3000), *rng.integers(1, 8000, (2000, 2)).tolist()]
    for w, h in sizes:
        for shorter in (256, 365):
            assert dali.shorter_side_size(w, h, shorter) == shorter_side_size(w, h, shorter), (w, h, shorter)


# ---------------------------------------------------------------------------------------------------
# The validate step


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _bad_images() -> dict[str, tuple[bytes, str]]:
    jpeg = samples.photos()["rocket.jpg"]
    bomb = _encode(Image.new("L", (9000, 9000)), "PNG")
    return {
        "empty": (b"\0" * 10, "empty"),
        "truncated": (jpeg[: len(jpeg) // 2], "truncated"),
        "pdf": (b"%PDF-1.4 not an image", "not_an_image"),
        "bomb": (bomb, "too_many_pixels"),
        "ico": (_encode(Image.new("RGB", (16, 16)), "ICO"), "unsupported_format"),
    }


def test_screen_refuses_like_the_cpu_target_and_substitutes_a_valid_placeholder():
    placeholder = Image.open(io.BytesIO(dali.placeholder()))
    placeholder.load()
    for name, (data, reason) in _bad_images().items():
        screened = dali.screen(data)
        assert screened.info["ok"] is False and screened.info["reason"] == reason, name
        assert screened.info["message"]
        assert screened.payload == dali.placeholder()
    big = dali.screen(samples.photos()["astronaut.png"], DecodeLimits(max_bytes=1000))
    assert big.info["reason"] == "too_large"


def test_screen_passes_native_images_through_and_converts_the_rest():
    photos = samples.all_images()
    jpeg = photos["rocket.jpg"]
    padded = dali.screen(jpeg + b"\0" * 4096)
    assert padded.info == {"ok": True, "width": 640, "height": 427, "format": "JPEG"} and padded.payload == jpeg
    for name in ("astronaut.png", "odd_size.webp", "rgba.png", "palette.png", "grey.jpg", "exif_rotated.jpg"):
        # as sent, less PNG text chunks (astronaut.png has some): metadata is read by genguard.provenance
        assert dali.screen(photos[name]).payload == without_png_text(photos[name]), name
    assert without_png_text(photos["astronaut.png"]) != photos["astronaut.png"]
    gif = _encode(Image.open(io.BytesIO(photos["coffee.png"])).convert("P"), "GIF")
    tiff = _encode(Image.open(io.BytesIO(photos["coffee.png"])), "TIFF", compression="tiff_lzw")
    for name, data in {"cmyk.jpg": photos["cmyk.jpg"], "grey16.png": photos["grey16.png"], "gif": gif,
                       "tiff": tiff}.items():
        screened = dali.screen(data)
        assert screened.info["ok"], name
        converted = Image.open(io.BytesIO(screened.payload))
        assert converted.format == "PNG" and converted.mode == "RGB", name
        # the PNG holds exactly the RGB the reference converts to
        reference = Image.open(io.BytesIO(data)).convert("RGB")
        assert np.array_equal(np.asarray(converted), np.asarray(reference)), name


def test_screen_decode_mode_catches_corrupt_data_the_header_check_passes():
    png = bytearray(samples.photos()["coins.png"])
    idat = png.find(b"IDAT")
    png[idat + 40: idat + 400] = bytes(360)  # right markers, broken compressed data
    assert dali.screen(bytes(png), verify="header").info["ok"] is True
    decoded = dali.screen(bytes(png), verify="decode")
    assert decoded.info["ok"] is False and decoded.info["reason"] == "corrupt"


class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _FakeMetricFamily:
    """pb_utils.MetricFamily's surface; values land in `values[(family, sorted labels)]`."""
    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"
    values: dict = {}

    def __init__(self, name, description, kind):
        self.name = name

    def Metric(self, labels=None, buckets=None):
        key = (self.name, tuple(sorted((labels or {}).items())))
        self.values.setdefault(key, 0.0)
        return types.SimpleNamespace(increment=lambda n: self.values.__setitem__(key, self.values[key] + n))


def _fake_pb_utils():
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _FakeTensor
    module.InferenceResponse = lambda output_tensors, error=None: {t.name: t.array for t in output_tensors}
    module.get_input_tensor_by_name = lambda request, name: _FakeTensor(name, request[name])
    module.MetricFamily = _FakeMetricFamily
    return module


def test_validate_model_answers_a_batch_with_bad_images(monkeypatch, repos):
    """The python-backend model as Triton calls it (triton_python_backend_utils faked)."""
    import importlib

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    module = importlib.import_module("genguard.triton_models.validate")
    model = module.TritonPythonModel()
    config = json.loads(json.dumps({"parameters": {k: {"string_value": v.string_value} for k, v in
                                                   read_config(repos["tensorrt"] / "validate").parameters.items()}}))
    model.initialize({"model_config": json.dumps(config), "model_name": "validate"})
    photos = samples.photos()
    images = [photos["chelsea.png"], _bad_images()["truncated"][0], b"", photos["rocket.jpg"]]
    (response,) = model.execute([{protocol.INPUT: protocol.pack_images(images)}])
    model.finalize()
    infos = [json.loads(row[0]) for row in response[protocol.IMAGE_INFO]]
    assert [i["ok"] for i in infos] == [True, False, False, True]
    assert {k: infos[0][k] for k in ("ok", "width", "height", "format")} == {  # + provenance (test_provenance*)
        "ok": True, "width": 451, "height": 300, "format": "PNG"}
    assert [infos[1]["reason"], infos[2]["reason"]] == ["truncated", "empty"]
    encoded = response[dali.DALI_INPUT]
    assert encoded.dtype == np.uint8 and encoded.shape[0] == 4
    assert encoded[1].tobytes().rstrip(b"\0") == dali.placeholder().rstrip(b"\0")
    assert encoded[3].tobytes()[: len(photos["rocket.jpg"])] == photos["rocket.jpg"]
    # refusals counted by reason (genguard_image_failures_total{model="validate"}); the real server's
    # counters are checked in tests/test_metrics.py
    counted = {dict(k[1])["reason"]: v for k, v in _FakeMetricFamily.values.items()
               if k[0] == "genguard_image_failures_total" and dict(k[1])["model"] == "validate"}
    assert counted["truncated"] == 1 and counted["empty"] == 1 and sum(counted.values()) == 2


# ---------------------------------------------------------------------------------------------------
# The DALI pipeline itself, on CPU (nvidia-dali-cuda120 runs CPU pipelines without a GPU)

# Measured bounds in 8-bit levels (|Δ| of the normalised tensor x std x 255), DALI CPU vs genguard.preprocess
# on the 23 sample images (DALI's resampling is not Pillow's), with looser measured bounds for grey16.png
# and the OpenSDI spec on palette.png: genguard.dali.LEVELS / LEVEL_EXCEPTIONS.


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "docker" / "Dockerfile").read_text(), re.M))


def _dali():
    """The DALI the tests run must be the server image's (a pinned test dependency: never a skip)."""
    import nvidia.dali

    assert nvidia.dali.__version__ == dockerfile_args()["DALI_VERSION"], (
        f"tests run DALI {nvidia.dali.__version__}, the server image has {dockerfile_args()['DALI_VERSION']}: "
        "pip install -e '.[test]'")
    return nvidia.dali


@pytest.fixture(scope="module")
def dali_cpu():
    _dali()
    images = samples.all_images()
    names = list(images)
    params = dali.pipeline_parameters(INPUTS)
    outputs = dali.run_cpu(params, [dali.screen(images[n]).payload for n in names])
    return names, images, params, outputs


def _levels(out: np.ndarray, ref: np.ndarray, spec: specs.InputSpec) -> np.ndarray:
    """|Δ| in 8-bit levels, less float32 rounding noise (a 1-level step may read 1.00001)."""
    d = np.abs(out - ref) * np.asarray(spec.std, np.float32)[:, None, None] * 255
    return np.maximum(d - dali.LEVEL_EPS, 0)


def test_level_bounds_are_the_measured_ones():
    """The bounds written out: general per interpolation, looser only for the two measured exceptions."""
    assert dali.level_bounds("siglip224", "bilinear", "rocket.jpg") == {"max": 12.0, "inside": 1.0, "mean": 0.3}
    assert dali.level_bounds("eva02_448", "bicubic", "rocket.jpg") == {"max": 11.0, "inside": 11.0, "mean": 0.3}
    assert dali.level_bounds("siglip224", "bilinear", "palette.png") == {"max": 9.0, "inside": 9.0, "mean": 0.3}
    assert dali.level_bounds("imagenet224", "bilinear", "palette.png")["inside"] == 1.0  # no exception there
    assert dali.level_bounds("eva02_448", "bicubic", "grey16.png") == {"max": 29.0, "inside": 29.0, "mean": 0.1}
    assert dali.level_bounds("tfmnv3_224", "bilinear", "grey16.png")["max"] == 12.0  # within the general bound


def test_dali_cpu_pipeline_is_close_to_the_reference(dali_cpu):
    names, images, params, outputs = dali_cpu
    worst = {}
    for p, batch in zip(params, outputs):
        spec = INPUTS[p.name]
        for name, out in zip(names, batch):
            ref = preprocess_bytes(images[name], {"x": spec})[1]["x"]
            assert out.shape == ref.shape == spec.shape and out.dtype == np.float32
            d = _levels(out, ref, spec)
            measured = (float(d.max()), float(d[:, 2:-2, 2:-2].max()), float(d.mean()))
            worst[(p.name, name)] = measured
            bound = dali.level_bounds(p.name, spec.interpolation, name)
            assert measured[0] <= bound["max"], (p.name, name, measured)
            assert measured[1] <= bound["inside"], (p.name, name, measured)
            assert measured[2] <= bound["mean"], (p.name, name, measured)
            if spec.resize == "shorter_crop" and spec.interpolation == "bilinear":
                assert d.max() <= 1.0, (p.name, name)  # the crop removes the borders where kernels differ
    assert len(worst) == len(params) * len(names)  # every input spec on every sample image: none skipped
    by_input = {}
    for (inp, _), (mx, inside, mean) in worst.items():
        a = by_input.setdefault(inp, [0.0, 0.0, 0.0])
        by_input[inp] = [max(a[0], mx), max(a[1], inside), max(a[2], mean)]
    print("\nDALI CPU vs genguard.preprocess, 8-bit levels (max, max inside, worst mean):")
    for inp, (mx, inside, mean) in by_input.items():
        print(f"  {inp:12s} {INPUTS[inp].resize:12s} {INPUTS[inp].interpolation:8s} {mx:5.1f} {inside:5.1f} {mean:.3f}")


def test_dali_center_crop_anchor_is_torchvisions_on_the_half_pixel_case():
    _dali()
    # 257x256 -> shorter side 256 -> 257x256 resized, crop 224: diff 33, anchor 16 (DALI's own: 17)
    stripes = np.zeros((256, 257, 3), np.uint8)
    stripes[:, ::2] = 255
    data = _encode(Image.fromarray(stripes), "PNG")
    spec = INPUTS["tfmnv3_224"]
    (out,), = dali.run_cpu(dali.pipeline_parameters({"tfmnv3_224": spec}), [data])
    ref = preprocess_bytes(data, {"x": spec})[1]["x"]
    assert _levels(out, ref, spec).max() <= 1.0
    shifted = np.roll(ref, -1, axis=2)[:, :, :-1]  # what an anchor one pixel to the right would give
    assert _levels(out[:, :, :-1], shifted, spec).max() > 100


def test_validated_batch_never_throws_but_an_unvalidated_bad_image_does():
    _dali()
    params = dali.pipeline_parameters({"imagenet224": INPUTS["imagenet224"]})
    photos = samples.photos()
    corrupt = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"
    batch = [photos["coffee.png"], corrupt, photos["rocket.jpg"]]
    (outs,) = dali.run_cpu(params, [dali.screen(b).payload for b in batch])
    ref = preprocess_bytes(photos["rocket.jpg"], {"x": INPUTS["imagenet224"]})[1]["x"]
    assert _levels(outs[2], ref, INPUTS["imagenet224"])[:, 2:-2, 2:-2].max() <= 1.0
    with pytest.raises(Exception):
        dali.run_cpu(params, batch)  # why validate exists: one bad image fails the whole DALI batch


# ---------------------------------------------------------------------------------------------------
# TensorRT engine cache, metadata and refusals (fake machines, fake trtexec)

H100 = trt.Machine("9.0", "10.11.0", "NVIDIA H100 80GB HBM3", 81559)
H100_PCIE = trt.Machine("9.0", "10.11.0", "NVIDIA H100 PCIe", 81559)
H200 = trt.Machine("9.0", "10.11.0", "NVIDIA H200", 143771)
L4 = trt.Machine("8.9", "10.11.0", "NVIDIA L4", 23034)
NEWER_TRT = trt.Machine("9.0", "10.13.3", "NVIDIA H100 80GB HBM3", 81559)
T4 = trt.Machine("7.5", "10.11.0", "Tesla T4", 15360)


class FakeTrtexec:
    """Records commands; writes a plan whose bytes name the command (so plans differ per build)."""

    def __init__(self):
        self.commands = []

    def __call__(self, command):
        self.commands.append(command)
        plan = Path(next(a for a in command if a.startswith("--saveEngine=")).split("=", 1)[1])
        plan.write_bytes(("PLAN " + " ".join(command)).encode())
        return subprocess.CompletedProcess(command, 0, "&&&& PASSED", "")


@pytest.fixture()
def trt_repo(repos, tmp_path):
    import shutil

    repo = tmp_path / "tensorrt"
    shutil.copytree(repos["tensorrt"], repo, symlinks=True)
    return repo


def test_version_and_key_helpers():
    assert trt.decode_trt_version(101100) == "10.11.0" and trt.decode_trt_version(8601) == "8.6.1"
    assert H100.key == "sm90-trt10.11.0-nvidia-h100-80gb-hbm3-81559m" and T4.capability == (7, 5)
    # same compute capability and TensorRT, other device models: other keys (plans are device-specific)
    assert H100_PCIE.key == "sm90-trt10.11.0-nvidia-h100-pcie-81559m"
    assert H200.key == "sm90-trt10.11.0-nvidia-h200-143771m"
    recipe = trt.Recipe("sumsub_sd", "pixels", (3, 224, 224), 16, 16, "fp16")
    a, b = trt.cache_key(H100, "a" * 64, recipe), trt.cache_key(H100, "b" * 64, recipe)
    assert a != b and a.startswith("sm90-trt10.11.0-nvidia-h100-80gb-hbm3-81559m/sumsub_sd-aaaaaaaaaaaaaaaa-")
    assert len({trt.cache_key(m, "a" * 64, recipe) for m in (H100, H100_PCIE, H200)}) == 3
    assert trt.cache_key(L4, "a" * 64, recipe) != a and trt.cache_key(NEWER_TRT, "a" * 64, recipe) != a
    other = trt.Recipe("sumsub_sd", "pixels", (3, 224, 224), 32, 32, "fp16")
    assert trt.cache_key(H100, "a" * 64, other) != a
    with pytest.raises(ValueError):
        trt.Recipe("x", "pixels", (3, 2, 2), max_batch=4, opt_batch=8, precision="fp16")


def test_trtexec_command_line():
    recipe = trt.Recipe("freepik_nsfw", "pixels", (3, 448, 448), max_batch=16, opt_batch=8, precision="bf16")
    command = trt.trtexec_command(Path("/r/m.onnx"), Path("/c/model.plan"), recipe, H100,
                                  timing_cache=Path("/c/timing.cache"), trtexec="/usr/src/tensorrt/bin/trtexec")
    assert command[0] == "/usr/src/tensorrt/bin/trtexec"
    assert {"--onnx=/r/m.onnx", "--saveEngine=/c/model.plan", "--minShapes=pixels:1x3x448x448",
            "--optShapes=pixels:8x3x448x448", "--maxShapes=pixels:16x3x448x448", "--bf16",
            "--timingCacheFile=/c/timing.cache", "--skipInference", "--memPoolSize=workspace:4096"} <= set(command)
    assert "--fp16" not in command
    # BF16 needs compute capability 8.0: a T4 builds this detector in FP32 (no precision flag)
    t4 = trt.trtexec_command(Path("m.onnx"), Path("p"), recipe, T4, timing_cache=None)
    assert not {"--bf16", "--fp16"} & set(t4) and not any(a.startswith("--timingCacheFile") for a in t4)
    fp16 = trt.trtexec_command(Path("m.onnx"), Path("p"), trt.Recipe("sumsub_sd", "pixels", (3, 224, 224), 4, 4, "fp16"),
                               T4, timing_cache=None)
    assert "--fp16" in fp16


def test_engine_cache_builds_once_reuses_and_rebuilds_on_new_keys(trt_repo, tmp_path):
    cache, fake = tmp_path / "cache", FakeTrtexec()
    reports = trt.build(trt_repo, cache, H100, run=fake, trtexec="trtexec", log=lambda *_: None)
    assert len(reports) == len(specs.DETECTORS) and all(r.built for r in reports)
    assert len(fake.commands) == len(specs.DETECTORS)
    assert all(f"--timingCacheFile={cache / H100.key / 'timing.cache'}" in c for c in fake.commands)
    for name in specs.DETECTORS:
        plan = trt_repo / name / "1" / "model.plan"
        assert plan.is_symlink() and plan.resolve().parent.parent == (cache / H100.key).resolve()
        meta = json.loads((trt_repo / name / "1" / "model.plan.json").read_text())
        assert meta["compute_capability"] == "9.0" and meta["tensorrt"] == "10.11.0" and meta["detector"] == name
        assert meta["gpu"] == "NVIDIA H100 80GB HBM3" and meta["memory_mib"] == 81559
        assert meta["onnx_sha256"] == trt.sha256_file(trt_repo / name / "onnx" / "model.onnx")
        assert meta["plan_sha256"] == trt.sha256_file(plan)
    assert trt.check(trt_repo, H100) == {}

    # a restart on the same machine reuses every engine
    again = trt.build(trt_repo, cache, H100, run=fake, trtexec="trtexec", log=lambda *_: None)
    assert not any(r.built for r in again) and len(fake.commands) == len(specs.DETECTORS)

    # another GPU (or TensorRT) gets its own engines; the H100 ones stay in the cache
    l4 = trt.build(trt_repo, cache, L4, run=fake, trtexec="trtexec", log=lambda *_: None)
    assert all(r.built and r.key.startswith("sm89-") for r in l4)
    assert trt.check(trt_repo, L4) == {}
    # an H200 (same compute capability and TensorRT as the H100) builds its own on the shared cache
    h200 = trt.build(trt_repo, cache, H200, run=fake, trtexec="trtexec", log=lambda *_: None)
    assert all(r.built and "nvidia-h200" in r.key for r in h200)
    assert trt.check(trt_repo, H200) == {}
    assert len(list((cache / H100.key).iterdir())) >= len(specs.DETECTORS)

    # a new ONNX export (another sha256) rebuilds that detector only
    onnx = trt_repo / "sumsub_sd" / "onnx" / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()
    onnx.write_bytes(data + b"\0")
    rebuilt = {r.detector: r.built for r in trt.build(trt_repo, cache, L4, run=fake, trtexec="trtexec",
                                                       log=lambda *_: None)}
    assert rebuilt == {name: name == "sumsub_sd" for name in specs.DETECTORS}


def test_check_refuses_plans_whose_keys_do_not_match_the_machine(trt_repo, tmp_path):
    fake = FakeTrtexec()
    trt.build(trt_repo, tmp_path / "cache", H100, run=fake, trtexec="trtexec", log=lambda *_: None)
    assert trt.check(trt_repo, H100) == {}
    for machine, words in ((L4, "compute capability 9.0, this GPU is 8.9"),
                           (NEWER_TRT, "TensorRT 10.11.0, this server has 10.13.3"),
                           (H200, "built on a NVIDIA H100 80GB HBM3 (81559 MiB), this GPU is a NVIDIA H200"),
                           (H100_PCIE, "this GPU is a NVIDIA H100 PCIe")):
        problems = trt.check(trt_repo, machine)
        assert set(problems) == set(specs.DETECTORS)
        assert all(any(words in p for p in found) for found in problems.values())
    # a plan swapped behind its metadata's back, a missing plan, a plan without metadata
    plan = trt_repo / "imagetrust_binary" / "1" / "model.plan"
    target = plan.resolve()
    plan.unlink()
    plan.write_bytes(target.read_bytes() + b"x")
    (trt_repo / "sumsub_sd" / "1" / "model.plan").unlink()
    (trt_repo / "opensdi_flux" / "1" / "model.plan.json").unlink()
    problems = trt.check(trt_repo, H100)
    assert "sha256 differs" in problems["imagetrust_binary"][0]
    assert "no " in problems["sumsub_sd"][0] and "metadata" in problems["opensdi_flux"][0]
    assert set(problems) == {"imagetrust_binary", "sumsub_sd", "opensdi_flux"}
    # the CLI's refusal path: exit 2 and a message naming the detectors
    meta = json.loads(target.with_name("model.plan.json").read_text())
    assert trt.metadata_problems(meta, H100) == [] and trt.metadata_problems(meta, T4)


def test_failed_trtexec_leaves_no_plan(trt_repo, tmp_path):
    def failing(command):
        return subprocess.CompletedProcess(command, 1, "", "[E] Error[4]: unsupported operator")

    with pytest.raises(trt.EngineError, match="(?s)sumsub_sd: trtexec failed.*unsupported operator"):
        trt.ensure_engine(trt_repo / "sumsub_sd", tmp_path / "cache", H100, run=failing, trtexec="trtexec")
    assert not list((tmp_path / "cache").rglob("model.plan"))


def test_a_dangling_onnx_link_is_an_engine_error_naming_the_file(repos, tiny_build, tmp_path):
    """What `make repository TARGET=tensorrt` used to write (absolute symlinks into build/) copied onto a
    volume elsewhere: the builder names the missing file instead of dying with FileNotFoundError."""
    linked = render("tensorrt", tiny_build, tmp_path / "linked", copy=False)
    onnx = linked / "sumsub_sd" / "onnx" / "model.onnx"
    assert onnx.is_symlink()
    onnx.unlink()
    onnx.symlink_to(tmp_path / "elsewhere" / "model.onnx")  # the build machine's path, absent here
    with pytest.raises(trt.EngineError, match=r"sumsub_sd: no ONNX model at .*model\.onnx.*symlink"):
        trt.ensure_engine(linked / "sumsub_sd", tmp_path / "cache", H100, run=FakeTrtexec(), trtexec="trtexec")


def test_gpu_targets_render_self_contained_by_default(tiny_build, tmp_path, capsys):
    for target in GPU_TARGETS:
        repo = render(target, tiny_build, tmp_path / target)
        onnx = sorted(repo.glob("*/*/model.onnx"))
        assert len(onnx) == len(specs.DETECTORS) and not any(p.is_symlink() for p in repo.rglob("*")), target
    # cpu stays linked (served in place); --link asks for links on a GPU target
    cpu = render("cpu", tiny_build, tmp_path / "cpu")
    assert (cpu / "sumsub_sd" / "1" / "model.onnx").is_symlink()
    assert main(["--target", "tensorrt", "--build", str(tiny_build), "--out", str(tmp_path / "l"), "--link"]) == 0
    assert (tmp_path / "l" / "sumsub_sd" / "onnx" / "model.onnx").is_symlink()


def test_unwritable_engine_cache_is_a_clear_error(trt_repo, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(trt.EngineError, match=r"engine cache .* is not writable by uid \d+ gid \d+.*Fix:.*chown -R"):
        trt.build(trt_repo, blocker / "cache", H100, run=FakeTrtexec(), trtexec="trtexec", log=lambda *_: None)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(trt.tempfile, "mkstemp", refuse)  # as an NFS volume that ignores fsGroup answers
    with pytest.raises(trt.EngineError, match="Permission denied.*fsGroup"):
        trt.build(trt_repo, tmp_path / "cache", H100, run=FakeTrtexec(), trtexec="trtexec", log=lambda *_: None)


def test_gpu_absent_only_without_a_driver_or_device(monkeypatch):
    """Tests and `make gpu-check` skip only when there is no GPU; a broken driver is an error."""

    class FakeCuda:
        def __init__(self, init, count=1):
            self.init, self.count = init, count

        def cuInit(self, flags):
            return self.init

        def cuDeviceGetCount(self, pointer):
            pointer._obj.value = self.count
            return 0

    monkeypatch.setattr(trt, "_libcuda", lambda: None)
    assert "no NVIDIA driver" in trt.gpu_absent_reason()
    monkeypatch.setattr(trt, "_libcuda", lambda: FakeCuda(100))
    assert "CUDA_ERROR_NO_DEVICE" in trt.gpu_absent_reason()
    monkeypatch.setattr(trt, "_libcuda", lambda: FakeCuda(0, count=0))
    assert "0 GPUs" in trt.gpu_absent_reason()
    monkeypatch.setattr(trt, "_libcuda", lambda: FakeCuda(0, count=2))
    assert trt.gpu_absent_reason() is None
    monkeypatch.setattr(trt, "_libcuda", lambda: FakeCuda(35))  # CUDA_ERROR_INSUFFICIENT_DRIVER
    with pytest.raises(trt.EngineError, match="CUDA error 35"):
        trt.gpu_absent_reason()


def test_cli_without_a_gpu_says_why(trt_repo, capsys, monkeypatch):
    monkeypatch.setattr(trt, "_load_first", lambda names: None)  # as on a machine without driver/TensorRT
    assert trt.main(["build", "--repository", str(trt_repo), "--cache", "/nonexistent"]) == 1
    assert "GPU" in capsys.readouterr().err


def test_cli_check_exit_codes(trt_repo, tmp_path, capsys, monkeypatch):
    trt.build(trt_repo, tmp_path / "cache", H100, run=FakeTrtexec(), trtexec="trtexec", log=lambda *_: None)
    monkeypatch.setattr(trt, "this_machine", lambda device=0: H100)
    assert trt.main(["check", "--repository", str(trt_repo)]) == 0
    monkeypatch.setattr(trt, "this_machine", lambda device=0: L4)
    assert trt.main(["check", "--repository", str(trt_repo)]) == 2
    assert "refusing to serve" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Server image


def test_dockerfile_pins_an_ngc_release_whose_dali_the_tests_run():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    args = dockerfile_args()
    base = re.search(r"^FROM (\S+)$", text, re.M).group(1)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    # the versions, written out with their sources in the Dockerfile, docker/README.md and docs/gpu.md
    assert base == "nvcr.io/nvidia/tritonserver:26.06-py3"
    assert (args["TRITON_VERSION"], args["DALI_VERSION"], args["ORT_VERSION"], args["CUDA_VERSION"]) == (
        "2.70.0", "2.1.1", "1.24.4", "13.3.0")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"nvidia-dali-cuda120=={args["DALI_VERSION"]}"' in pyproject  # tests pin exactly the image's DALI
    assert _dali().__version__ == args["DALI_VERSION"]
    for name in ("docs/gpu.md", "docker/README.md"):
        doc = (ROOT / name).read_text()
        assert all(v in doc for v in ("26.06", "2.70.0", "2.1.1", "1.24.4", "13.3.0")), name
    # the build fails on a pipeline the container's DALI can't build, not the first start
    assert re.search(r"python3 -m genguard\.dali serialize --expect-version \"\$\{DALI_VERSION\}\"", text)
    assert "GENGUARD_ENGINE_CACHE=/engine-cache" in text
    for port in ("8000", "8001", "8002"):
        assert port in re.search(r"^EXPOSE (.+)$", text, re.M).group(1)


def test_image_runs_as_the_kubernetes_uid_through_nvidias_entrypoint():
    import yaml

    text = (ROOT / "docker" / "Dockerfile").read_text()
    user = re.search(r"^USER (\S+)$", text, re.M).group(1)
    uid, gid = (dockerfile_args()[m.group(1)] if (m := re.fullmatch(r"\$\{(\w+)\}", part)) else part
                for part in user.split(":"))
    deployment = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert int(uid) == pod["runAsUser"] == 1000 and int(gid) == pod["runAsGroup"] == 1000
    assert re.search(r'chown "\$\{GENGUARD_UID\}:\$\{GENGUARD_UID\}" "\$GENGUARD_ENGINE_CACHE" /models', text)
    # NVIDIA's entrypoint (CUDA forward compatibility) runs first and then execs GenGuard's
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.+\])$", text, re.M).group(1))
    assert entrypoint == ["/opt/nvidia/nvidia_entrypoint.sh", "/opt/genguard/docker/entrypoint.sh"]
    assert json.loads(re.search(r"^CMD (\[.+\])$", text, re.M).group(1)) == ["serve"]


def test_docker_run_command_sizes_shm_for_a_full_batch(tiny_build, tmp_path, capsys):
    """Docker's default /dev/shm (64 MiB) can't hold a full batch through the python-backend steps."""
    from genguard.export.repository import docker_run_command, shm_bytes

    # validate holds IMAGE and ENCODED, each max_batch x max_bytes: 2 x 16 x 32 MiB + 256 MiB margin
    assert shm_bytes("tensorrt", 16, DecodeLimits(), INPUTS) == (2 * 16 * 32 + 256) << 20
    command = docker_run_command("tensorrt", tmp_path / "repo")
    assert "--shm-size=1280m" in command and "--gpus=all" in command
    assert command[command.index("-v") + 1] == f"{(tmp_path / 'repo').resolve()}:/models/tensorrt"
    assert "GENGUARD_TARGET=tensorrt" in command and command[-1] == "genguard-server:latest"
    small = docker_run_command("onnx-gpu", "/r", max_batch=4, limits=DecodeLimits(max_bytes=8 << 20))
    assert "--shm-size=320m" in small  # 2 x 4 x 8 MiB + 256 MiB
    # the CLI prints it after rendering a GPU target (max batch 8: 2 x 8 x 32 MiB + 256 MiB)
    assert main(["--target", "tensorrt", "--build", str(tiny_build), "--out", str(tmp_path / "t"),
                 "--max-batch", "8"]) == 0
    assert "docker run --rm --gpus=all --shm-size=768m" in capsys.readouterr().out
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "--shm-size=1280m" in readme
    # the Kubernetes pods' memory-backed /dev/shm holds the same full batch
    import yaml

    pod = yaml.safe_load((ROOT / "deploy" / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    (dshm,) = [v["emptyDir"] for v in pod["volumes"] if v["name"] == "dshm"]
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", dshm["sizeLimit"]).groups()
    assert dshm["medium"] == "Memory" and int(number) << {"Mi": 20, "Gi": 30}[unit] >= (1280 << 20)


def test_entrypoint_builds_engines_then_execs_tritonserver_with_genguard_flags(repos, tmp_path):
    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "python3 -m genguard.export.tensorrt build --repository" in script
    assert "genguard.server args" in script and "--production" in script and "--host 0.0.0.0" in script
    assert 'GPU_FLAG=(--gpu)' in script and '"${GPU_FLAG[@]}"' in script  # --gpu for every target but cpu
    assert 'GENGUARD_ENGINE_CACHE:-/engine-cache' in script
    # run it: fake tritonserver records its flags; python3 is this venv's (GenGuard importable)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tritonserver").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/flags\n")
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for tool in ("tritonserver", "python3"):
        os.chmod(bin_dir / tool, 0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GENGUARD_REPOSITORY": str(repos["onnx-gpu"]),
           "GENGUARD_ENGINE_CACHE": str(tmp_path / "cache"), "GENGUARD_ADMIN_KEY": "k"}
    subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh")], env=env, check=True, timeout=60)
    flags = (tmp_path / "flags").read_text().split("\n")[:-1]
    from genguard import server

    assert flags == server.server_args(repos["onnx-gpu"], host="0.0.0.0", production=True, admin_key="k", gpu=True)
    # a tensorrt repository without a GPU: the engine build fails and the server is never started
    (tmp_path / "flags").unlink()
    env["GENGUARD_REPOSITORY"] = str(repos["tensorrt"])
    result = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and not (tmp_path / "flags").exists()
    # any other command runs as given (Kubernetes init containers)
    echo = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh"), "echo", "init"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert echo.stdout == "init\n"
    # an engine cache this user can't write: refused with the fix before anything else runs
    (tmp_path / "file").write_text("")
    env.update(GENGUARD_REPOSITORY=str(repos["onnx-gpu"]), GENGUARD_ENGINE_CACHE=str(tmp_path / "file" / "cache"))
    refused = subprocess.run(["bash", str(ROOT / "docker" / "entrypoint.sh")], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 73 and not (tmp_path / "flags").exists()
    assert "not writable by uid" in refused.stderr and "chown -R" in refused.stderr


def test_dali_model_file_autoserializes_the_gpu_pipeline(repos):
    """What the DALI backend does with preprocess/1/dali.py (its `python3 -c` autoserialize command),
    except device_id=None: there is no GPU here, and the server rebuilds with its own device anyway."""
    _dali()
    import importlib.util

    from nvidia.dali._utils.autoserialize import _discover_autoserialize

    path = repos["tensorrt"] / "preprocess" / "1" / "dali.py"
    spec = importlib.util.spec_from_file_location("autoserialize_mod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (function,) = _discover_autoserialize(module, visited=[])  # exactly one, as the backend requires
    serialized = function(device_id=None).serialize()
    assert b"decoders__Image" in serialized and b"mixed" in serialized  # decoded on the GPU


def test_dali_arguments_follow_the_schema_of_the_running_dali(monkeypatch, capsys):
    """DALI 2.1.1 (the image's) has no adjust_orientation: passing it, as the pipeline did, fails the
    whole pipeline and the server's start. It is passed only where the operator's schema has it."""
    _dali()
    assert not dali.has_argument(dali.DECODER_SCHEMA, "adjust_orientation")  # 2.1.1's schema
    assert not dali.has_argument(dali.PEEK_SCHEMA, "adjust_orientation")
    assert dali.orientation_arguments(dali.DECODER_SCHEMA, False) == {}
    with pytest.raises(ValueError, match="no adjust_orientation"):
        dali.orientation_arguments(dali.PEEK_SCHEMA, True)  # refused, not served unrotated
    assert dali.decoder_arguments(False) == {"jpeg_fancy_upsampling": True}
    serialized = dali.serialize()  # what `docker build` runs: every argument is known to this DALI
    assert b"adjust_orientation" not in serialized and b"jpeg_fancy_upsampling" in serialized
    # a DALI whose schemas define it (2.4) gets it, False: the references never apply EXIF orientation
    real = dali.has_argument
    monkeypatch.setattr(dali, "has_argument", lambda schema, arg: arg == "adjust_orientation" or real(schema, arg))
    assert dali.orientation_arguments(dali.PEEK_SCHEMA, False) == {"adjust_orientation": False}
    assert dali.decoder_arguments(False) == {"adjust_orientation": False, "jpeg_fancy_upsampling": True}
    monkeypatch.undo()
    # the build-time check: right version serializes, another version fails the build
    assert dali.main(["serialize", "--expect-version", dockerfile_args()["DALI_VERSION"]]) == 0
    assert "serializes" in capsys.readouterr().out
    assert dali.main(["serialize", "--expect-version", "1.49.0"]) == 1
    assert "expected 1.49.0" in capsys.readouterr().err


def test_dali_decodes_zero_padded_rows_like_the_unpadded_images():
    """Triton hands the DALI model validate's ENCODED rows zero-padded to the longest: same pixels."""
    _dali()
    params = dali.pipeline_parameters({"imagenet224": INPUTS["imagenet224"], "tfmnv3_224": INPUTS["tfmnv3_224"]})
    photos = samples.all_images()
    payloads = [dali.screen(photos[n]).payload for n in ("rocket.jpg", "coins.png", "odd_size.webp")]
    padded = dali.pack(payloads)
    assert padded.shape == (3, max(map(len, payloads))) and min(map(len, payloads)) < padded.shape[1]
    plain = dali.run_cpu(params, payloads)
    rows = dali.run_cpu(params, [row.tobytes() for row in padded])
    for a, b in zip(plain, rows):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)


def test_gpu_modules_import_without_tensorrt_or_dali():
    """A fresh interpreter where `nvidia.dali` and `tensorrt` can't be imported: the GPU-side modules still
    import, and rendering the GPU targets' configs still works (only running them needs the libraries)."""
    import subprocess
    import sys

    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorrt', 'nvidia') and name != 'nvidia':
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
for blocked in ('tensorrt', 'nvidia.dali'):
    try:
        __import__(blocked)
    except ImportError:
        pass
    else:
        raise SystemExit(blocked + ' was importable: the block failed')
import genguard.export.tensorrt, genguard.dali, genguard.export.repository, genguard.benchmarks.gpu_check
from genguard.export.repository import dali_preprocess_config, validate_config
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
