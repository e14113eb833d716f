"""CPU engine/precision options: the CPU capability check (real /proc/cpuinfo and simulated CPUs), each
engine opening a real exported detector, and the accuracy records the renderer relies on (built and
measured on a copy of the tiny build)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from genguard import cpus, engines
from genguard.export import cpu_options

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile
processor\t: 1
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile
"""


def test_flags_and_capabilities_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    flags = cpus.cpu_flags(info, hide="")
    assert {"avx512_bf16", "avx512_vnni"} <= flags
    assert cpus.capabilities(flags) == {"bf16": True, "vnni": True}
    older = cpus.cpu_flags(info, hide="avx512_bf16, avx512_vnni")
    assert cpus.capabilities(older) == {"bf16": False, "vnni": False}
    assert cpus.cpu_flags(tmp_path / "absent", hide="") == frozenset()


def test_hidden_flags_come_from_one_environment_variable(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    monkeypatch.setenv(cpus.HIDE_FLAGS_ENV, "avx512_bf16,amx_bf16")
    assert "avx512_bf16" not in cpus.cpu_flags(info)
    assert cpus.capabilities(cpus.cpu_flags(info))["bf16"] is False


def test_an_option_the_cpu_cannot_run_is_refused_naming_the_instructions():
    no_bf16 = {"bf16": False, "vnni": True}
    with pytest.raises(engines.OptionError, match=r"openvino-bf16 needs .*bf16: one of avx512_bf16, amx_bf16"):
        engines.open_engine("openvino-bf16", "/nonexistent.onnx", caps=no_bf16)
    assert engines.missing_instructions(engines.get("openvino-int8"), {"bf16": True, "vnni": False}) == ["vnni"]
    assert engines.missing_instructions(engines.get("ort-int8"), {"bf16": False, "vnni": False}) == []
    with pytest.raises(engines.OptionError, match="unknown CPU option 'openvino-fp8'"):
        engines.get("openvino-fp8")


def test_precision_map_parsing():
    dets = ["freepik_nsfw", "sumsub_sd"]
    assert cpu_options.parse_precision(["best"], dets) == {"freepik_nsfw": "best", "sumsub_sd": "best"}
    assert cpu_options.parse_precision(["ort-fp32", "freepik_nsfw=openvino-bf16"], dets) == {
        "freepik_nsfw": "openvino-bf16", "sumsub_sd": "ort-fp32"}
    assert cpu_options.parse_precision(["freepik_nsfw=openvino-bf16,sumsub_sd=ort-int8-qdq"], dets)["sumsub_sd"] == "ort-int8-qdq"
    with pytest.raises(engines.OptionError, match="no detector 'hive'"):
        cpu_options.parse_precision(["hive=ort-fp32"], dets)
    with pytest.raises(engines.OptionError, match="unknown CPU option"):
        cpu_options.parse_precision(["sumsub_sd=bf16"], dets)


@pytest.fixture(scope="module")
def measured(tiny_build, tmp_path_factory):
    """sumsub_sd (a CNN) of the tiny build, copied, with every option this CPU runs built and measured
    on 6 sample images."""
    from genguard.export import samples

    build = tmp_path_factory.mktemp("cpu-options")
    shutil.copytree(tiny_build / "onnx" / "sumsub_sd", build / "onnx" / "sumsub_sd")
    images = dict(list(samples.all_images().items())[:6])
    options = ["ort-int8-qdq", "openvino-fp32", "openvino-bf16", "openvino-bf16-mixed", "openvino-int8"]
    records = cpu_options.measure_detector(build, "sumsub_sd", options, images=images, speed_rounds=1)
    return build / "onnx" / "sumsub_sd", records


def test_each_option_is_measured_against_fp32_and_the_reference(measured):
    folder, records = measured
    parity = json.loads((folder / "parity.json").read_text())
    assert set(parity["cpu_options"]) >= set(records)
    caps = cpus.capabilities()
    for name, r in records.items():
        if engines.missing_instructions(engines.get(name), caps):
            assert "lacks" in r["skipped"]
            continue
        if name == "openvino-bf16-mixed":  # a CNN's residual adds fuse into its bf16 convolutions: nothing kept f32
            assert "it would be openvino-bf16" in r["skipped"] and "vs_fp32" not in r
            continue
        for side in ("vs_fp32", "vs_reference"):
            assert r[side]["images"] == 6 and 0 <= r[side]["max_abs_prob"] <= 1
            assert r[side]["worst_image"]
        assert r["sha256"] == cpu_options.sha256_file(folder / r["file"])
        assert r["speed"]["images_per_s"] > 0 and r["speed"]["fp32_images_per_s"] > 0
        assert r["within_budget"] == cpu_options.within_budget(r)
    # the QDQ file exists, is INT8 and keeps the metadata the detector model checks
    import onnx

    qdq = onnx.load(str(folder / engines.QDQ_FILE))
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key for p in qdq.metadata_props}
    assert {"genguard.detector", "genguard.weights", "genguard.quantization"} <= meta
    # OpenVINO FP32 computes what ORT FP32 does; BF16 and INT8 cost more but stay in budget on a CNN
    if "vs_fp32" in records["openvino-fp32"]:
        assert records["openvino-fp32"]["vs_fp32"]["max_abs_prob"] < 1e-4
    assert records["ort-int8-qdq"]["within_budget"], records["ort-int8-qdq"]


def test_engine_answers_within_its_recorded_budget(measured):
    from genguard import preprocess, specs
    from genguard.export import samples
    from genguard.scores import head_probs

    folder, records = measured
    spec = specs.get("sumsub_sd")
    photos = list(samples.photos().values())[:2]
    pixels = np.stack([preprocess.preprocess_bytes(b, {"x": spec.input})[1]["x"] for b in photos])
    base = engines.open_engine("ort-fp32", folder / "model.onnx").run(None, {"pixels": pixels})
    for name, r in records.items():
        if "vs_fp32" not in r:
            continue
        out = engines.open_engine(name, folder / r["file"]).run(None, {"pixels": pixels})
        diff = np.abs(head_probs(spec.heads[0], out[0]) - head_probs(spec.heads[0], base[0])).max()
        assert diff <= r["budget"]["max_abs_prob"], (name, diff)


def test_renderer_check_refuses_missing_stale_out_of_budget_and_unrunnable(measured, tmp_path):
    src, records = measured
    folder = tmp_path / "sumsub_sd"
    shutil.copytree(src, folder)
    path, digest = cpu_options.check_option(folder, "ort-int8-qdq")
    assert path.name == engines.QDQ_FILE and digest == records["ort-int8-qdq"]["sha256"]
    assert cpu_options.check_option(folder, "ort-fp32") == (folder / "model.onnx", "")
    with pytest.raises(cpu_options.OptionRefused, match="sumsub_sd: ort-int8: no accuracy record"):
        cpu_options.check_option(folder, "ort-int8")
    with pytest.raises(cpu_options.OptionRefused, match="sumsub_sd: openvino-bf16 needs CPU instructions"):
        cpu_options.check_option(folder, "openvino-bf16", caps={"bf16": False, "vnni": True})
    parity = json.loads((folder / "parity.json").read_text())
    parity["cpu_options"]["ort-int8-qdq"]["within_budget"] = False
    (folder / "parity.json").write_text(json.dumps(parity))
    with pytest.raises(cpu_options.OptionRefused, match="ort-int8-qdq is outside its accuracy budget"):
        cpu_options.check_option(folder, "ort-int8-qdq")
    parity["cpu_options"]["ort-int8-qdq"]["within_budget"] = True
    (folder / "parity.json").write_text(json.dumps(parity))
    with open(folder / engines.QDQ_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(cpu_options.OptionRefused, match="record is stale"):
        cpu_options.check_option(folder, "ort-int8-qdq")


def test_best_picks_the_fastest_runnable_option_within_budget(tmp_path, measured):
    src, _ = measured
    folder = tmp_path / "sumsub_sd"
    shutil.copytree(src, folder)
    parity = json.loads((folder / "parity.json").read_text())
    recs = parity["cpu_options"]
    runnable = [n for n, r in recs.items() if "vs_fp32" in r and r["within_budget"]]
    assert runnable
    for i, name in enumerate(runnable):
        recs[name]["speed"]["vs_fp32"] = 1.5 + i  # the last one is the fastest
    (folder / "parity.json").write_text(json.dumps(parity))
    assert cpu_options.best_option(folder) == runnable[-1]
    if runnable[-1] == "openvino-bf16":  # a CPU without BF16 gets the next one
        assert cpu_options.best_option(folder, caps={"bf16": False, "vnni": True}) == runnable[-2]
    for name in runnable:
        recs[name]["speed"]["vs_fp32"] = 0.9  # nothing beats FP32: FP32
    (folder / "parity.json").write_text(json.dumps(parity))
    assert cpu_options.best_option(folder) == "ort-fp32"


def test_report_lists_each_record_and_what_best_serves(measured):
    folder, records = measured
    text = cpu_options.report(folder.parent.parent, ["sumsub_sd"])
    lines = [line for line in text.splitlines() if line.startswith("| sumsub_sd |")]
    assert {line.split(" | ")[1] for line in lines} == set(records) | {"best"}
    best = next(line for line in lines if line.split(" | ")[1] == "best")
    assert best.rstrip(" |").endswith(cpu_options.best_option(folder))
    qdq = next(line for line in lines if line.split(" | ")[1] == "ort-int8-qdq")
    assert "| yes | yes |" in qdq  # within budget, servable


def test_mixed_bf16_ir_marks_the_layers_it_keeps_f32(tiny_build, tmp_path):
    """build_mixed_ir runs anywhere (no BF16 needed): the marked layers of its IR carry OpenVINO's
    DisablePrecisionConversion attribute when read back, nothing else is marked, and the IR names the model.onnx it
    was built from and keeps its genguard.* metadata."""
    import openvino as ov

    onnx = tiny_build / "onnx" / "freepik_nsfw" / "model.onnx"
    xml = tmp_path / engines.MIXED_FILE
    settings = cpu_options.build_mixed_ir(onnx, xml)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bf16-mixed.bin", "model.bf16-mixed.xml"]
    model = ov.Core().read_model(xml)
    marked = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops() if engines.MARK in op.get_rt_info()}
    assert set(marked) == engines.marked_f32(model) and len(marked) == settings["marked_layers"] > 0
    assert set(marked.values()) == {"Softmax", "MVN", "Add"}  # IR "SoftMax" is opset8 Softmax
    assert cpu_options._ir_made_from(xml) == cpu_options.sha256_file(onnx) == settings["fp32_sha256"]
    assert json.loads(model.get_rt_info()["framework"]["genguard.detector"].astype(str)) == "freepik_nsfw"


@pytest.mark.skipif(not cpus.capabilities()["bf16"], reason="needs a CPU with AVX-512 BF16 or AMX (OpenVINO bf16)")
def test_mixed_bf16_runs_the_marked_layers_f32_and_refuses_when_nothing_stays_f32(tiny_build, tmp_path):
    from genguard import preprocess, specs
    from genguard.export import samples

    folder = tiny_build / "onnx" / "freepik_nsfw"
    xml = tmp_path / engines.MIXED_FILE
    cpu_options.build_mixed_ir(folder / "model.onnx", xml)
    mixed = engines.open_engine("openvino-bf16-mixed", xml)
    plain = engines.open_engine("openvino-bf16", folder / "model.onnx")
    assert mixed.precision == plain.precision and "bfloat16" in mixed.precision
    # the marked layers run f32 in the mixed model; the same layers run bf16 in the plain one
    assert mixed.f32_layers > 0 and engines.runtime_f32_layers(plain.compiled, mixed.kept_f32) == 0
    spec = specs.get("freepik_nsfw")
    pixels = np.stack([preprocess.preprocess_bytes(b, {"x": spec.input})[1]["x"]
                       for b in list(samples.photos().values())[:2]])
    fp32 = engines.open_engine("ort-fp32", folder / "model.onnx").run(None, {"pixels": pixels})[0]
    out = {name: e.run(None, {"pixels": pixels})[0] for name, e in (("mixed", mixed), ("plain", plain))}
    assert not np.array_equal(out["mixed"], out["plain"])  # the marks changed the arithmetic
    assert np.abs(out["mixed"] - fp32).max() < 0.1 * (np.abs(fp32).max() + 1)
    # sumsub_sd's adds all fuse into bf16 convolutions: the option would be plain bf16 under another name
    cnn = tmp_path / "cnn" / engines.MIXED_FILE
    cnn.parent.mkdir()
    cpu_options.build_mixed_ir(tiny_build / "onnx" / "sumsub_sd" / "model.onnx", cnn)
    with pytest.raises(engines.OptionError, match="it would be openvino-bf16"):
        engines.open_engine("openvino-bf16-mixed", cnn)
    # the option runs its prepared IR only: model.onnx would have to be rewritten at load
    with pytest.raises(engines.OptionError, match="runs its prepared OpenVINO IR"):
        engines.open_engine("openvino-bf16-mixed", folder / "model.onnx")


def _fake_pb_utils():
    """triton_python_backend_utils' surface a detector model's initialize uses (no Triton needed)."""
    import types

    class TritonModelException(Exception):
        pass

    class MetricFamily:  # the detector's failure counter (genguard.triton_models.metrics); nothing is counted here
        COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"

        def __init__(self, name, description, kind):
            pass

        def Metric(self, labels=None, buckets=None):
            return types.SimpleNamespace(increment=lambda n: None)

    module = types.ModuleType("triton_python_backend_utils")
    module.TritonModelException = TritonModelException
    module.Logger = types.SimpleNamespace(log_warn=lambda message: None)
    module.MetricFamily = MetricFamily
    return module


def _load_detector(monkeypatch, repo: Path, name: str):
    """The rendered detector model's initialize, as Triton's python backend calls it."""
    import importlib
    import sys

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2 as mc

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.delitem(sys.modules, "genguard.triton_models.detector", raising=False)
    detector = importlib.import_module("genguard.triton_models.detector")
    config = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
    model = detector.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
                      "model_name": name, "model_repository": str(repo / name), "model_version": "1"})
    return model, sys.modules["triton_python_backend_utils"].TritonModelException


@pytest.mark.skipif(not cpus.capabilities()["bf16"], reason="needs a CPU with AVX-512 BF16 or AMX (OpenVINO bf16)")
def test_mixed_bf16_ir_is_built_once_rendered_as_files_and_loaded_without_rewriting(tiny_build, tmp_path,
                                                                                    monkeypatch):
    """make cpu-options builds openvino-bf16-mixed's IR once and records one sha256 over the .xml + .bin pair (and
    each file's); the renderer places the pair beside the detector model, whose loading reads it as is (no IR is
    rewritten: building one here fails the test) and still checks the marked layers run f32; a tampered .bin is
    refused by name at render time, by `best`, and by the detector model itself."""
    from genguard.export import samples
    from genguard.export.repository import CpuOptions, RepositoryError, render

    build = tmp_path / "build"
    shutil.copytree(tiny_build / "onnx" / "freepik_nsfw", build / "onnx" / "freepik_nsfw")
    folder = build / "onnx" / "freepik_nsfw"
    images = dict(list(samples.photos().items())[:4])
    option = "openvino-bf16-mixed"
    record = cpu_options.measure_detector(build, "freepik_nsfw", [option], images=images, speed_rounds=1)[option]
    xml, binary = folder / engines.MIXED_FILE, folder / "model.bf16-mixed.bin"
    assert record["file"] == engines.MIXED_FILE and record["within_budget"]
    assert record["files_sha256"] == {p.name: cpu_options.sha256_file(p) for p in (xml, binary)}
    assert record["sha256"] == engines.files_sha256(xml) != record["files_sha256"][xml.name]
    assert record["mixed_precision"]["fp32_sha256"] == record["fp32_sha256"]
    assert record["mixed_precision"]["runtime_f32_layers"] > 0
    # measured again: the IR made from this model.onnx is reused, not rebuilt
    built = [(p.stat().st_mtime_ns, p.stat().st_ino) for p in (xml, binary)]
    monkeypatch.setattr(cpu_options, "build_mixed_ir", lambda *a, **k: pytest.fail("the IR was built again"))
    cpu_options.measure_detector(build, "freepik_nsfw", [option], images=images, speed_rounds=1)
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in (xml, binary)] == built

    repo = render("cpu", build, tmp_path / "repo", detectors=["freepik_nsfw"], copy=True,
                  cpu=CpuOptions(precision=(("freepik_nsfw", option),)))
    version = repo / "freepik_nsfw" / "1"
    assert {p.name for p in version.iterdir()} >= {xml.name, binary.name}
    assert not any(p.is_symlink() for p in version.iterdir())
    config = (repo / "freepik_nsfw" / "config.pbtxt").read_text()
    assert record["sha256"] in config and record["files_sha256"][binary.name] in config

    # loading reads the IR as is: nothing writes a temporary IR (keep_f32 used to, in a genguard-ov- folder)
    import tempfile

    monkeypatch.setattr(tempfile, "TemporaryDirectory", lambda *a, **k: pytest.fail("a temporary folder at load"))
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: pytest.fail("a temporary folder at load"))
    before = sorted(p.name for p in version.iterdir())
    model, refused = _load_detector(monkeypatch, repo, "freepik_nsfw")
    assert model.session.option.name == option and model.session.f32_layers > 0
    assert model.session.kept_f32 == engines.marked_f32(model.session.model)
    assert sorted(p.name for p in version.iterdir()) == before
    assert "genguard-ov-" not in Path("/proc/self/maps").read_text()
    monkeypatch.undo()

    # a tampered .bin: refused by name by the detector model, the renderer and `best`
    copy = bytearray((version / binary.name).read_bytes())
    copy[-1] ^= 0xFF
    (version / binary.name).write_bytes(bytes(copy))
    with pytest.raises(Exception, match=r"model\.bf16-mixed\.bin changed since the repository was rendered") as error:
        _load_detector(monkeypatch, repo, "freepik_nsfw")
    assert type(error.value).__name__ == refused.__name__ == "TritonModelException"
    binary.write_bytes(bytes(copy))
    stale = r"openvino-bf16-mixed: the record is stale \(model\.bf16-mixed\.bin changed"
    with pytest.raises(RepositoryError, match=stale):
        render("cpu", build, tmp_path / "again", detectors=["freepik_nsfw"],
               cpu=CpuOptions(precision=(("freepik_nsfw", option),)))
    assert cpu_options.choose_best(folder).remeasure == (
        "stale records (openvino-bf16-mixed: model.bf16-mixed.bin changed since it was measured (sha256 differs))")
    binary.unlink()
    assert "model.bf16-mixed.bin is missing" in cpu_options.choose_best(folder).remeasure


def test_a_mixed_bf16_record_measured_on_model_onnx_is_stale(tiny_build, tmp_path):
    """Before its IR was prepared by make cpu-options, openvino-bf16-mixed rewrote model.onnx at every load and was
    recorded with file model.onnx: such a record is stale for `best` and refused by the renderer."""
    folder = tmp_path / "freepik_nsfw"
    shutil.copytree(tiny_build / "onnx" / "freepik_nsfw", folder)
    fp32 = cpu_options.sha256_file(folder / "model.onnx")
    parity = json.loads((folder / "parity.json").read_text())
    vs = {"images": 4, "max_abs_prob": 1e-3, "top1_agreement": 1.0, "worst_image": "x"}
    parity["cpu_options"] = {"openvino-bf16-mixed": {
        "file": "model.onnx", "sha256": fp32, "fp32_sha256": fp32, "cpu_model": cpus.cpu_model(), "threads": 0,
        "vs_fp32": vs, "vs_reference": vs, "within_budget": True,
        "speed": {"vs_fp32": 2.0, "fp32_images_per_s": 1.0, "images_per_s": 2.0}}}
    (folder / "parity.json").write_text(json.dumps(parity))
    choice = cpu_options.choose_best(folder)
    assert choice.option == "ort-fp32"
    assert choice.remeasure == ("stale records (openvino-bf16-mixed: measured on model.onnx, served from "
                                "model.bf16-mixed.xml)")
    with pytest.raises(cpu_options.OptionRefused, match=r"stale \(measured on model\.onnx, served from "
                                                         r"model\.bf16-mixed\.xml\)"):
        cpu_options.check_option(folder, "openvino-bf16-mixed", {"bf16": True, "vnni": True})
