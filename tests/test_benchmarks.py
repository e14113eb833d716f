"""The benchmark harness's parts on hand-made inputs, plus one minimal end-to-end `bench` and
`bench-compare` against the session's real tritonserver (tiny build)."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from genguard import cpus, onnx_runtime
from genguard.benchmarks import compare, perf_analyzer, report
from genguard.export.flops import flops_per_image, node_flops
from genguard.benchmarks.report import Timing


# ---------------------------------------------------------------------------------------------------
# perf_analyzer input data and output parsing


def test_uint8_entry_is_the_raw_image_bytes_with_its_length_as_shape():
    image = b"\xff\xd8\xff\xe0fake-jpeg\x00\x01"
    entry = perf_analyzer.input_data(perf_analyzer.image_entries([image, b"\x89PNG.."]))
    first = entry["data"][0]["IMAGE"]
    assert base64.b64decode(first["b64"]) == image
    assert first["shape"] == [len(image)]  # batch axis excluded: perf_analyzer adds it (-b 1)
    assert entry["data"][1]["IMAGE"]["shape"] == [6]


def test_fp32_entry_is_little_endian_raw_floats():
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    entry = perf_analyzer.tensor_entry(x)
    assert entry["shape"] == [3, 2, 2]
    assert np.array_equal(np.frombuffer(base64.b64decode(entry["b64"]), dtype="<f4").reshape(3, 2, 2), x)


def test_bytes_entry_is_tritons_serialized_form():
    """A BYTES b64 must hold 4-byte little-endian length + bytes per element, not the raw bytes."""
    entry = perf_analyzer.tensor_entry(np.array([b"abc", b"de"], dtype=np.object_))
    raw = base64.b64decode(entry["b64"])
    assert raw == struct.pack("<I", 3) + b"abc" + struct.pack("<I", 2) + b"de"
    assert entry["shape"] == [2]


def test_input_data_needs_entries(tmp_path):
    with pytest.raises(ValueError):
        perf_analyzer.input_data([])
    path = perf_analyzer.write_input_data(tmp_path / "sub" / "in.json", perf_analyzer.image_entries([b"x"]))
    assert json.loads(path.read_text())["data"][0]["IMAGE"]["shape"] == [1]


PA_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,10.5,48,2949,1816,234,8042,1210,2,12677,23428,23428,33069
"""


def test_parse_perf_analyzer_csv_converts_microseconds():
    (m,) = perf_analyzer.parse_csv(PA_CSV, "sumsub_sd", "grpc")
    assert (m.model, m.protocol, m.concurrency, m.throughput) == ("sumsub_sd", "grpc", 1, 10.5)
    assert m.p50_ms == pytest.approx(12.677) and m.p99_ms == pytest.approx(33.069)
    assert m.server_queue_ms == pytest.approx(1.816)
    assert m.server_compute_ms == pytest.approx((234 + 8042 + 1210) / 1000)


def test_profile_timing_uses_request_timestamps():
    ms = 1_000_000  # ns
    profile = {"experiments": [{"requests": [
        {"timestamp": 0, "response_timestamps": [10 * ms]},
        {"timestamp": 5 * ms, "response_timestamps": [3 * ms, 25 * ms]},  # streaming: the last response counts
        {"timestamp": 30 * ms, "response_timestamps": [40 * ms]},
        {"timestamp": 50 * ms, "response_timestamps": []},  # never answered: left out
    ]}]}
    t = perf_analyzer.profile_timing(profile)
    assert t.images == 3 and t.seconds == pytest.approx(0.040)
    assert sorted(t.latencies) == pytest.approx([0.010, 0.010, 0.020])
    assert t.images_per_s == pytest.approx(75.0)


def test_profile_spans_read_timestamps_without_parsing_the_inputs():
    inputs = json.dumps({"IMAGE": {"b64": "A" * 5000}})  # the export repeats each request's inputs
    text = ('{"experiments":[{"experiment":{"mode":"concurrency","value":2},"requests":['
            f'{{"timestamp":100,"request_inputs":{inputs},"response_timestamps":[150,180],"response_outputs":[]}},'
            f'{{"timestamp":200,"request_inputs":{inputs},"response_timestamps":[],"response_outputs":[]}},'
            f'{{"timestamp":300,"request_inputs":{inputs},"response_timestamps":[ 390 ],"response_outputs":[]}}'
            '],"window_boundaries":[100,390]}],"version":"2.51.0"}')
    json.loads(text)  # well-formed
    assert perf_analyzer.profile_spans(text.encode()) == [(100, 180), (300, 390)]


# ---------------------------------------------------------------------------------------------------
# arithmetic: timings, ratios, agreement, targets


def test_timing_percentiles_and_sums():
    t = Timing(4, 2.0, (0.1, 0.2, 0.3, 0.4))
    assert t.images_per_s == 2.0
    assert t.p50_ms == pytest.approx(250.0)
    assert t.p99_ms == pytest.approx(397.0)  # linear interpolation: 0.3 + 0.97 * 0.1
    both = t + Timing(2, 2.0, (1.0,))
    assert (both.images, both.seconds, both.images_per_s) == (6, 4.0, 1.5)
    assert np.isnan(Timing(0, 0.0, ()).images_per_s)


def test_ratio_and_overhead():
    assert report.ratio(3.0, 2.0) == 1.5
    assert report.ratio(None, 2.0) is None and report.ratio(1.0, 0.0) is None
    assert report.ratio(1.0, float("nan")) is None
    assert report.overhead(9.0, 10.0) == pytest.approx(0.10)
    assert report.overhead(11.0, 10.0) == pytest.approx(-0.10)  # served faster than in-process


def test_agreement_on_hand_made_probabilities():
    ref = [np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.7, 0.3], [1.0, 0.0]])]
    ours = [np.array([[0.89, 0.11], [0.6, 0.4], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.7, 0.3], [0.99, 0.01]])]
    a = report.agreement(ref, ours)
    assert a["max_abs_prob"] == pytest.approx(0.2)
    assert a["top1_agreement"] == pytest.approx(2 / 3)  # image 1 flips on head 0


def row(detector, mode, ips, p50=1.0, of_peak=None):
    return {"detector": detector, "mode": mode, "images_per_s": ips, "p50_ms": p50, "p99_ms": 2 * p50,
            "of_peak": of_peak}


def test_summary_ratios_pick_each_sides_best_mode():
    rows = [row("ensemble", "reference b1", 0.30), row("ensemble", "reference b8", 0.40),
            row("ensemble", "ours b1", 0.45), row("ensemble", "ours b8", 0.50),
            row("ensemble", "served c1", 0.40), row("ensemble", "served c2", 0.48, of_peak=0.2),
            row("ensemble", "served c4", 0.46)]
    s = compare.summarize(rows, "ensemble")
    assert (s["reference_best"], s["ours_best"], s["served_best"]) == ("reference b8", "ours b8", "served c2")
    assert s["served_vs_reference"] == pytest.approx(1.2)
    assert s["served_vs_reference_b1"] == pytest.approx(1.6)
    assert s["served_vs_ours"] == pytest.approx(0.96)
    assert s["triton_overhead"] == pytest.approx(0.04)
    assert s["of_peak"] == 0.2


def test_targets_say_met_or_missed_and_by_how_much():
    summary = {"served_vs_reference": 0.9, "triton_overhead": 0.04}
    fp32 = {t["fmt"]: t for t in compare.targets(summary, {"max_abs_prob": 2e-6}, int8=False)}
    assert not fp32["x"]["met"] and fp32["x"]["by"] == pytest.approx(-0.1)
    assert fp32["sci"]["met"] and fp32["pct"]["met"]
    int8 = {t["fmt"]: t for t in compare.targets({"served_vs_reference": 2.5, "triton_overhead": 0.15},
                                                 {"max_abs_prob": 3e-3}, int8=True)}
    assert int8["x"]["met"] and int8["x"]["goal"] == 2.0 and int8["sci"]["met"]
    assert not int8["pct"]["met"] and int8["pct"]["by"] == pytest.approx(-0.05)
    shown = compare.target_rows(list(fp32.values()))
    assert shown[0]["status"] == "MISSED (10% short)" and shown[0]["shown"] == "0.90×"
    assert shown[2]["status"] == "met (6.0 points to spare)"


# ---------------------------------------------------------------------------------------------------
# writers


def test_int8_targets_follow_what_the_server_serves_not_the_tag():
    from pathlib import Path

    def served(*files):
        return [compare.Detector(spec=None, params={}, onnx=Path(f"onnx/d{i}/{f}"), fp32_onnx=Path(f"onnx/d{i}/model.onnx"),
                                 checkpoint="", reference=None, session=None, flops=0) for i, f in enumerate(files)]

    assert not compare.serves_int8(served("model.onnx", "model.onnx"))
    assert compare.serves_int8(served("model.onnx", "model.int8.onnx"))
    assert compare.served_tag(served("model.onnx")) == "fp32"
    # main() passes serves_int8(...) to targets(); a user's --tag "int8-try" on an FP32 server keeps FP32 goals
    source = (Path(compare.__file__).parent / "cli.py").read_text()
    assert "targets(summary[0], agree, serves_int8(detectors), serves_options(detectors))" in source and 'tag.startswith("int8")' not in source


def test_markdown_table_formats_cells():
    rows = [{"name": "a|b", "x": 1234.5678, "r": 1.234, "p": 0.051, "e": 3.2e-3},
            {"name": "c", "x": None, "r": float("nan"), "p": None, "e": 0.0}]
    cols = [("name", "name", "sig3"), ("x", "img/s", "sig3"), ("r", "ratio", "x"), ("p", "share", "pct"),
            ("e", "err", "sci")]
    lines = report.markdown_table(rows, cols).splitlines()
    assert lines[0] == "| name | img/s | ratio | share | err |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| a\\|b | 1,235 | 1.23× | 5.1 % | 3.2e-03 |"
    assert lines[3] == "| c | — | — | — | 0 |"
    assert report.fmt(0.0123) == "0.0123" and report.fmt(12.34) == "12.3" and report.fmt(3) == "3.00"


def test_csv_writer_keeps_raw_numbers_and_every_key(tmp_path):
    path = report.write_csv(tmp_path / "r.csv", [{"a": 1, "b": 0.123456789}, {"a": 2, "c": None, "d": [1, 2]}],
                            ["b", "a"])
    lines = path.read_text().splitlines()
    assert lines == ["b,a,c,d", "0.123457,1,,", ",2,,1 2"]


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    series = {"genguard": [{"protocol": p, "concurrency": c, "throughput": c * 1.5, "p50_ms": 10 * c, "p99_ms": 20 * c}
                           for p in ("http", "grpc") for c in (1, 2, 4)]}
    path = report.plot_latency_throughput(tmp_path / "p.png", series, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------
# FLOP counting


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_flops_of_matmul_gemm_and_convs_on_a_hand_made_graph():
    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),                 # 3 -> 8, 3x3, 16x16
        helper.make_node("Conv", ["c1", "w2"], ["c2"], group=8, strides=[2, 2]),           # depthwise 3x3 -> 7x7
        helper.make_node("Flatten", ["c2"], ["f"]),                                         # [N, 392]
        helper.make_node("Gemm", ["f", "w3"], ["g"], transB=1),                            # 392 -> 10
        helper.make_node("Reshape", ["g", "shape"], ["r"]),                                # [N, 2, 5]
        helper.make_node("MatMul", ["r", "w4"], ["y"]),                                    # [N, 2, 5] x [5, 3]
    ]
    inits = [w("w1", 8, 3, 3, 3), w("w2", 8, 1, 3, 3), w("w3", 10, 392), w("w4", 5, 3),
             numpy_helper.from_array(np.array([-1, 2, 5], dtype=np.int64), "shape")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 3])], inits)
    expected = 2 * (8 * 16 * 16 * 3 * 9 + 8 * 7 * 7 * 1 * 9 + 392 * 10 + 2 * 5 * 3)
    assert flops_per_image(model) == expected
    counted = {n.op_type: n for n in node_flops(model, batch=3)}
    assert counted["Gemm"].flops == 3 * 2 * 392 * 10 and counted["Gemm"].has_constant_weight
    assert sum(n.flops for n in node_flops(model, batch=3)) == 3 * expected


def test_matmul_of_two_activations_is_counted_with_broadcast_batch():
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"])]  # [N, 4, 6, 8] x [N, 4, 8, 6]
    model = _model(nodes, [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 4, 6, 8]),
                           helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", 4, 8, 6])],
                   [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 4, 6, 6])], [])
    (node,) = node_flops(model, batch=1)
    assert node.flops == 2 * 4 * 6 * 8 * 6 and not node.has_constant_weight


def test_flops_of_exported_detectors(tiny_build):
    """The exported MobileNetV3's count equals torch's FlopCounterMode on the model it came from; the
    (tiny, 2-layer) SigLIP's equals the closed form of a ViT-B/16 at 224."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from conftest import checkpoint_path
    from genguard import specs
    from genguard.export.checkpoints import load

    spec = specs.get("sumsub_sd")
    with pytest.warns(UserWarning):
        module = load(spec, checkpoint_path(tiny_build, "sumsub_sd"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *spec.input.shape))
    assert flops_per_image(tiny_build / "onnx" / "sumsub_sd" / "model.onnx") == counter.get_total_flops()

    tokens, width, mlp, heads, layers = 196, 768, 3072, 12, specs.get("opensdi_flux").tiny["num_hidden_layers"]
    per_layer = 2 * tokens * width * width * 4 + 2 * tokens * width * mlp * 2 + 2 * 2 * heads * tokens * tokens * (width // heads)
    patch_embed = 2 * tokens * width * 3 * 16 * 16
    classifier = 2 * width * 2
    assert flops_per_image(tiny_build / "onnx" / "opensdi_flux" / "model.onnx") == (
        layers * per_layer + patch_embed + classifier)


# ---------------------------------------------------------------------------------------------------
# INT8 quantisation


def _copy_export(tiny_build, tmp_path, name):
    dst = tmp_path / "onnx" / name
    shutil.copytree(tiny_build / "onnx" / name, dst)
    return dst


def test_int8_keeps_metadata_and_records_its_accuracy_cost(tiny_build, tmp_path):
    from genguard.export import samples
    from genguard.export.quantize import INT8_FILE, quantize_detector

    folder = _copy_export(tiny_build, tmp_path, "opensdi_flux")
    images = dict(list(samples.photos().items())[:4])
    figures = quantize_detector(tmp_path, "opensdi_flux", images=images)

    fp32_meta = onnx_runtime.metadata(folder / "model.onnx")
    int8_meta = onnx_runtime.metadata(folder / INT8_FILE)
    assert {k: v for k, v in int8_meta.items() if k != "genguard.quantization"} == fp32_meta
    assert json.loads(int8_meta["genguard.quantization"])["quantized_nodes"] == figures["quantized_nodes"] > 0
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["int8"] == figures and parity["passed"]  # the FP32 figures are kept
    assert figures["vs_fp32"]["images"] == 4
    assert 0 < figures["vs_fp32"]["max_abs_prob"] <= figures["tolerance"]["max_abs_prob"] == 1e-2
    assert figures["passed"] and figures["onnx_sha256"] != figures["fp32_sha256"]
    # what the served detector model checks: same outputs, a quantised graph
    session = onnx_runtime.session(folder / INT8_FILE)
    assert [o.name for o in session.get_outputs()] == ["flux"]
    ops = {n.op_type for n in onnx.load(str(folder / INT8_FILE)).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}


def test_int8_search_keeps_early_nodes_fp32_to_stay_within_budget(tiny_build, tmp_path):
    from genguard.export import samples
    from genguard.export.quantize import quantize_detector

    _copy_export(tiny_build, tmp_path, "opensdi_flux")
    images = dict(list(samples.photos().items())[:2])
    everything = quantize_detector(tmp_path, "opensdi_flux", images=images, budget=1.0)
    assert everything["fp32_leading_nodes"] == 0 and everything["quantized_nodes"] == everything["candidates"]
    assert len(everything["search"]) == 1  # the first attempt was within budget
    nothing = quantize_detector(tmp_path, "opensdi_flux", images=images, budget=0.0)
    assert onnx_runtime.metadata(tmp_path / "onnx" / "opensdi_flux" / "model.int8.onnx")["genguard.detector"]
    assert nothing["quantized_nodes"] == 0 and nothing["fp32_leading_nodes"] == nothing["candidates"]
    assert len(nothing["search"]) >= 2 and all(t["max_abs_prob"] > 0 for t in nothing["search"])
    assert nothing["vs_fp32"]["max_abs_prob"] == 0.0


def test_int8_leaves_a_cnn_unquantised_and_says_so(tiny_build, tmp_path):
    from genguard.export import samples
    from genguard.export.quantize import quantize_detector

    folder = _copy_export(tiny_build, tmp_path, "sumsub_sd")
    figures = quantize_detector(tmp_path, "sumsub_sd", images=dict(list(samples.photos().items())[:2]))
    assert figures["quantized_nodes"] == 0 and figures["quantized_flops_share"] == 0
    assert figures["vs_fp32"]["max_abs_prob"] == 0.0 and figures["passed"]
    # the served detector model checks these: an unquantised INT8 file must carry them too
    fp32_meta = onnx_runtime.metadata(folder / "model.onnx")
    int8_meta = onnx_runtime.metadata(folder / "model.int8.onnx")
    assert {k: v for k, v in int8_meta.items() if k != "genguard.quantization"} == fp32_meta
    assert fp32_meta["genguard.detector"] == '"sumsub_sd"'


# ---------------------------------------------------------------------------------------------------
# perf_analyzer binary, and the two commands end to end against the real server


@pytest.fixture(scope="module")
def pa():
    """The already-fetched perf_analyzer 2.51.0 (.ci/run fetches it before the tests); tests never download:
    without it they skip, saying how to fetch it."""
    try:
        return perf_analyzer.obtain(download=False)
    except perf_analyzer.NotFetched as exc:
        pytest.skip(str(exc))


def test_obtain_never_downloads_when_told_not_to(tmp_path, monkeypatch):
    monkeypatch.setenv("GENGUARD_CACHE", str(tmp_path))

    def download(binary):
        raise AssertionError("downloaded")

    monkeypatch.setattr(perf_analyzer, "_download", download)
    with pytest.raises(perf_analyzer.NotFetched, match="python -m genguard.benchmarks.perf_analyzer fetch"):
        perf_analyzer.obtain(download=False)
    assert not any(tmp_path.iterdir())


def test_perf_analyzer_runs_here(pa):
    assert pa.version == perf_analyzer.VERSION
    lib = pa.binary.parent.parent / "lib"
    assert (lib / "libb64.so.0d").resolve().is_file() and (lib / "libcudart.so.12").resolve().is_file()


def test_perf_analyzer_unusable_binary_is_explained(tmp_path):
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(perf_analyzer.PerfAnalyzerUnavailable, match="does not run on this machine"):
        perf_analyzer.obtain(fake)


@pytest.mark.server
@pytest.mark.slow  # a perf_analyzer sweep
def test_bench_end_to_end(triton, pa, tmp_path):
    from genguard.benchmarks import perf

    out = tmp_path / "results"
    assert perf.main(["--build", str(tmp_path), "--http-url", triton.http_url, "--grpc-url", triton.grpc_url,
                      "--models", "genguard,sumsub_sd", "--quick", "--out", str(out)]) == 0
    rows = (out / "perf-fp32.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # models x protocols x concurrencies
    result = json.loads((out / "perf-fp32.json").read_text())
    assert all(r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in result["rows"])
    assert "| genguard | http | 1 |" in (out / "perf-fp32.md").read_text()


@pytest.mark.server
@pytest.mark.slow  # every table of bench-compare, references included
def test_bench_compare_end_to_end(triton, tiny_build, pa, tmp_path):
    out = tmp_path / "results"
    assert compare.main(["--build", str(tiny_build), "--scratch", str(tmp_path / "scratch"),
                         "--http-url", triton.http_url, "--grpc-url", triton.grpc_url, "--quick",
                         "--detectors", "sumsub_sd", "--concurrency", "1,2", "--detector-concurrency", "2",
                         "--peak-seconds", "0.1", "--no-preprocessing", "--out", str(out)]) == 0
    result = json.loads((out / "compare-fp32.json").read_text())
    modes = {(r["detector"], r["mode"]) for r in result["ensemble"] + result["detectors"]}
    assert {("ensemble", "reference b1"), ("ensemble", "reference b2"), ("ensemble", "ours b2"),
            ("ensemble", "served c1"), ("ensemble", "served c2"), ("sumsub_sd", "served c2")} <= modes
    # the served answers are the reference's, to the export tolerance, on every detector and fused
    agree = result["agreement"]
    assert agree["images"] == 2 and agree["max_abs_prob"] <= 1e-4 and agree["verdict_agreement"] == 1.0
    assert set(agree["detectors"]) == set(result["served"]["detectors"])
    ensemble = result["summary"][0]
    assert ensemble["detector"] == "ensemble" and ensemble["served_vs_reference"] > 0
    assert result["peak"]["fp32_peak_gflops"] > 0 and result["flops"]["sumsub_sd"] > 0
    text = (out / "compare-fp32.md").read_text()
    assert "## Targets" in text and "Triton overhead over in-process" in text
    # issue 34: the CPU with the flags that decide the options, and the option each detector served, and why
    assert f"- CPU: {result['machine']['cpu']}" in text and "flags deciding the CPU options: amx_bf16 " in text
    assert "## CPU options served" in text and "| sumsub_sd | ort-fp32 | the default (PRECISION not set) |" in text


# ---------------------------------------------------------------------------------------------------
# issue 20: engine/precision options, memory


def test_ensemble_of_options_adds_up_model_times_and_picks_in_budget_options():
    from genguard.benchmarks.compare import options

    rows = [{"detector": "a", "option": "opt=all", "images_per_s": 10.0, "max_abs_prob": 1e-6},
            {"detector": "a", "option": "openvino-bf16", "images_per_s": 20.0, "within_budget": True, "max_abs_prob": 3e-3},
            {"detector": "a", "option": "INT8, every MatMul", "images_per_s": 40.0, "max_abs_prob": 0.2},
            {"detector": "b", "option": "opt=all", "images_per_s": 5.0, "max_abs_prob": 1e-6},
            {"detector": "b", "option": "ort-int8-qdq", "images_per_s": 50.0, "within_budget": False, "max_abs_prob": 0.03}]
    fp32, best = options.ensemble_rows(rows, {"a": 5.0, "b": 5.0})
    assert fp32["images_per_s"] == pytest.approx(1 / (1 / 10 + 1 / 5))
    assert best["images_per_s"] == pytest.approx(1 / (1 / 20 + 1 / 5))  # no out-of-budget option picked
    assert best["note"] == "a: openvino-bf16, b: opt=all" and best["max_abs_prob"] == 3e-3
    assert best["vs_reference"] == pytest.approx(best["images_per_s"] / 2.5)
    assert best["speedup"] == pytest.approx(best["images_per_s"] / fp32["images_per_s"])
    assert options.ensemble_rows(rows, {"a": 5.0}) == []  # a detector without its reference: no sum


def test_options_target_is_three_times_within_the_budget():
    items = {t["fmt"]: t for t in compare.targets({"served_vs_reference": 2.7, "triton_overhead": 0.05},
                                                  {"max_abs_prob": 4e-3}, int8=False, options=True)}
    assert items["x"]["goal"] == 3.0 and not items["x"]["met"] and "options" in items["x"]["target"]
    assert items["sci"]["goal"] == 1e-2 and items["sci"]["met"]


def test_peak_memory_is_measured_and_can_be_reset():
    # In a fresh process: a long test session's freed-but-resident heap would blur the 64 MiB step.
    code = """
import sys
import numpy as np
from genguard.benchmarks.compare import memory
if not memory.reset_peak():
    sys.exit(3)
before = memory.peak_bytes()
block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB touched
assert memory.peak_bytes() >= before + (60 << 20), (memory.peak_bytes(), before)
del block
memory.release()
assert memory.reset_peak()
assert memory.peak_bytes() < before + (60 << 20) and memory.process_peak_bytes() >= before + (60 << 20)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if result.returncode == 3:
        pytest.skip("this kernel refuses or ignores clear_refs: peaks are the process's so far")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.server
@pytest.mark.slow  # every engine option measured
def test_bench_compare_options_table_with_engines_and_memory(triton, tiny_build, pa, tmp_path):
    out = tmp_path / "results"
    assert compare.main(["--build", str(tiny_build), "--scratch", str(tmp_path / "scratch"),
                         "--http-url", triton.http_url, "--grpc-url", triton.grpc_url, "--images", "2", "--batch", "2",
                         "--min-seconds", "0.1", "--rounds", "1", "--detector-rounds", "1", "--options-rounds", "1",
                         "--detectors", "sumsub_sd", "--detector-concurrency", "1", "--no-ensemble",
                         "--peak-seconds", "0.1", "--no-preprocessing", "--out", str(out)]) == 0
    result = json.loads((out / "compare-fp32.json").read_text())
    options = {r["option"]: r for r in result["options"]}
    assert options["opt=all"]["images_per_s"] > 0 and options["opt=all"]["peak_mb"] > 0
    assert options["openvino-fp32"]["images_per_s"] > 0 and options["openvino-fp32"]["max_abs_prob"] < 1e-4
    assert "no accuracy record" in options["openvino-fp32"]["note"]  # the tiny build has none
    assert options["ort-int8-qdq"]["note"].startswith("not built")
    if cpus.capabilities()["bf16"]:  # a CNN's adds fuse into bf16 convolutions: mixed would be plain bf16
        assert "it would be openvino-bf16" in options["openvino-bf16-mixed"]["note"]
        assert "images_per_s" not in options["openvino-bf16-mixed"]
    assert options["openvino-fp32"]["vs_reference"] > 0
    mem = result["memory"]
    assert 0 < mem["process_peak_bytes"] <= mem["limit_bytes"] and mem["served_stack_pss_bytes"] > 0
    peak_target = next(t for t in result["targets"] if "peak memory" in t["target"])
    assert peak_target["met"]
    assert "## Memory" in (out / "compare-fp32.md").read_text()
