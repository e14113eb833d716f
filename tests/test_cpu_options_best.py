"""Issue 34: `make cpu-options` on a build that lacks exports, and `PRECISION=best` that says what it chose and
why — no records, stale records (another model.onnx, another CPU), every faster option outside the budget — in
the start-up output, in the rendered repository, in `genguard health` and in bench-compare's report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genguard import cpus, engines
from genguard.export import cpu_options, samples

ROOT = Path(__file__).resolve().parents[1]
FEW = 4  # sample photos per measurement: the mechanism, not the figures


def copy_build(tiny_build: Path, dst: Path, names: list[str]) -> Path:
    for name in names:
        shutil.copytree(tiny_build / "onnx" / name, dst / "onnx" / name)
        shutil.copytree(tiny_build / "checkpoints" / name, dst / "checkpoints" / name)
    return dst


@pytest.fixture(scope="module")
def measured(tiny_build, tmp_path_factory):
    """sumsub_sd of the tiny build, copied, with ort-int8-qdq (within budget on a CNN) and openvino-fp32 measured."""
    build = copy_build(tiny_build, tmp_path_factory.mktemp("best"), ["sumsub_sd"])
    images = dict(list(samples.photos().items())[:FEW])
    cpu_options.measure_detector(build, "sumsub_sd", ["ort-int8-qdq", "openvino-fp32"], images=images,
                                 speed_rounds=1)
    return build / "onnx" / "sumsub_sd"


def edited(src: Path, tmp_path: Path, edit) -> Path:
    """A copy of `src` whose cpu_options records went through edit(records)."""
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    parity = json.loads((folder / "parity.json").read_text())
    edit(parity[cpu_options.RECORD_KEY])
    (folder / "parity.json").write_text(json.dumps(parity))
    return folder


def fast(records):
    """ort-int8-qdq measured 2× FP32: what `best` picks when its record is current."""
    records["ort-int8-qdq"]["speed"]["vs_fp32"] = 2.0


# ---------------------------------------------------------------------------------------------------
# make cpu-options


def make_line(*args: str) -> str:
    """The command `make -n ARGS` would run for the genguard module in it (continuation lines joined)."""
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return next(x for x in out.replace("\\\n", " ").splitlines() if "-m genguard.export." in x)


def test_make_cpu_options_passes_what_make_serve_exports_from():
    line = make_line("cpu-options", "WEIGHTS=random", "BUILD=/x/b", "DETECTORS=sumsub_sd", "CHECKPOINTS=sumsub_sd=/c",
                     "REVISIONS=sumsub_sd=v1", "LABELS=sumsub_sd=sd:a,b")
    assert "genguard.export.cpu_options" in line
    for flag in ("--weights random", "--build /x/b", "--detectors sumsub_sd", "--checkpoint sumsub_sd=/c",
                 "--revision sumsub_sd=v1", "--labels sumsub_sd=sd:a,b"):
        assert flag in line, (flag, line)
    serve = make_line("serve", "PRECISION=best", "MEASURE=no")
    assert "genguard.export.serve" in serve and "--precision best" in serve and "--measure no" in serve
    assert "--measure auto" in make_line("serve", "PRECISION=best")


def test_an_empty_build_without_weights_is_an_error_not_a_silent_success(tmp_path):
    done = subprocess.run([sys.executable, "-m", "genguard.export.cpu_options", "--build", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1
    assert "nothing to measure" in done.stderr and "make cpu-options WEIGHTS=" in done.stderr
    assert "recorded in" not in done.stdout


def test_measuring_nothing_exits_non_zero(tiny_build, tmp_path, monkeypatch):
    """A CPU without BF16 or VNNI (simulated) asked only for the options that need them: everything is skipped."""
    build = copy_build(tiny_build, tmp_path, ["sumsub_sd"])
    monkeypatch.setenv(cpus.HIDE_FLAGS_ENV, "avx512_bf16,amx_bf16,avx512_vnni,avx_vnni,amx_int8")
    monkeypatch.setattr(samples, "all_images", lambda: dict(list(samples.photos().items())[:FEW]))
    assert cpu_options.main(["--build", str(build), "--options", "openvino-bf16,openvino-int8"]) == 1
    records = json.loads((build / "onnx" / "sumsub_sd" / "parity.json").read_text())["cpu_options"]
    assert {r["skipped"] for r in records.values()} == {"this CPU lacks bf16 instructions",
                                                       "this CPU lacks vnni instructions"}


@pytest.mark.slow
def test_make_cpu_options_exports_an_empty_build_then_measures_it(tmp_path):
    """The CLI `make cpu-options WEIGHTS=random DETECTORS=imagetrust_source` runs (plus --tiny), on a build
    folder that does not exist yet: it exports, says so, shows progress per option, and records."""
    build = tmp_path / "fresh"
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "genguard.export.cpu_options", "--weights", "random",
                           "--tiny", "--build", str(build), "--detectors", "imagetrust_source",
                           "--options", "ort-int8-qdq,openvino-fp32", "--speed-rounds", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "make cpu-options: exporting imagetrust_source" in done.stderr
    assert "imagetrust_source [1/2] ort-int8-qdq: building model.qdq.onnx" in done.stderr
    assert "imagetrust_source [2/2] openvino-fp32:" in done.stderr and "(estimated)" in done.stderr
    folder = build / "onnx" / "imagetrust_source"
    records = json.loads((folder / "parity.json").read_text())["cpu_options"]
    assert set(records) == {"ort-int8-qdq", "openvino-fp32"}
    assert all(r["fp32_sha256"] == cpu_options.sha256_file(folder / "model.onnx") for r in records.values())
    assert all(r["cpu_model"] == cpus.cpu_model() for r in records.values())
    assert records["openvino-fp32"]["vs_fp32"]["max_abs_prob"] < 1e-4
    assert f"PRECISION=best on {cpus.describe()}:" in done.stdout
    assert cpu_options.choose_best(folder).line() in done.stdout
    # a second run exports nothing: the build is current
    again = subprocess.run([sys.executable, "-W", "ignore", "-m", "genguard.export.cpu_options", "--weights", "random",
                            "--tiny", "--build", str(build), "--detectors", "imagetrust_source",
                            "--options", "openvino-fp32", "--speed-rounds", "1"],
                           capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "the build holds current exports of imagetrust_source" in again.stderr
    assert "exporting" not in again.stderr


# ---------------------------------------------------------------------------------------------------
# best: what it chose and why


def test_best_names_the_fastest_option_within_budget_and_its_figure(measured, tmp_path):
    folder = edited(measured, tmp_path, fast)
    choice = cpu_options.choose_best(folder)
    assert choice.option == "ort-int8-qdq" and not choice.remeasure
    assert "the fastest option within budget on this CPU: measured 2.00× FP32" in choice.why
    assert choice.line().startswith("sumsub_sd: ort-int8-qdq — ")


def test_best_without_records_says_so(tiny_build, tmp_path):
    folder = copy_build(tiny_build, tmp_path, ["sumsub_sd"]) / "onnx" / "sumsub_sd"
    choice = cpu_options.choose_best(folder)
    assert (choice.option, choice.why) == ("ort-fp32", "no cpu-options record for this build; run `make cpu-options`")
    assert choice.remeasure == "no cpu-options record"


def test_records_of_another_model_onnx_are_stale_never_reused(measured, tmp_path):
    """A new checkpoint, revision or label order is a new model.onnx: the records made for the old one are stale."""
    def other_weights(records):
        fast(records)
        for r in records.values():
            r["fp32_sha256"] = "0" * 64

    choice = cpu_options.choose_best(edited(measured, tmp_path, other_weights))
    assert choice.option == "ort-fp32"
    assert choice.why.startswith("stale cpu-options record (")
    assert "measured for another model.onnx (sha256 differs)" in choice.why
    assert "ort-int8-qdq" in choice.why and "run `make cpu-options`" in choice.why
    assert choice.remeasure.startswith("stale records")


def test_a_changed_option_file_or_another_cpu_makes_a_record_stale(measured, tmp_path):
    def elsewhere(records):
        fast(records)
        records["ort-int8-qdq"]["cpu_model"] = "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143)"

    choice = cpu_options.choose_best(edited(measured, tmp_path / "cpu", elsewhere))
    assert choice.option != "ort-int8-qdq"
    assert "ort-int8-qdq: measured on another CPU (Intel(R) Xeon(R) Platinum 8480+" in choice.why
    folder = edited(measured, tmp_path / "file", fast)
    with open(folder / engines.QDQ_FILE, "ab") as f:
        f.write(b"\0")
    choice = cpu_options.choose_best(folder)
    assert choice.option != "ort-int8-qdq" and "model.qdq.onnx changed since it was measured" in choice.why


def test_records_measured_with_other_threads_are_stale(measured, tmp_path):
    """make serve ORT_THREADS=1 serves every engine single-threaded: records timed on every core do not rank it."""
    folder = edited(measured, tmp_path, fast)
    assert cpu_options.choose_best(folder).option == "ort-int8-qdq"
    choice = cpu_options.choose_best(folder, threads=1)
    assert choice.option == "ort-fp32" and choice.remeasure
    assert "measured with the engines' default threads, served with 1 thread" in choice.why
    assert "--threads 1" in make_line("cpu-options", "ORT_THREADS=1")


def test_options_are_timed_as_served(tiny_build, tmp_path, monkeypatch):
    """No spinning ONNX Runtime threads (the served setting; a spinning pool steals the cores from the engine timed
    next), the served thread count, and the load average while timing, in the record."""
    build = copy_build(tiny_build, tmp_path, ["sumsub_sd"])
    opened = []
    real = engines.open_engine
    monkeypatch.setattr(engines, "open_engine", lambda *a, **kw: opened.append(kw) or real(*a, **kw))
    images = dict(list(samples.photos().items())[:2])
    record = cpu_options.measure_detector(build, "sumsub_sd", ["openvino-fp32"], images=images, speed_rounds=1,
                                          threads=1)["openvino-fp32"]
    assert len(opened) == 2 and all(kw["spinning"] is False and kw["threads"] == 1 for kw in opened)
    assert record["threads"] == 1 and record["speed"]["usable_cpus"] >= 1
    assert record["speed"]["busy"] == cpu_options.is_busy(record["speed"]["load_average"], cpus.available_cpus())
    assert not cpu_options.is_busy(2.0, 2) and cpu_options.is_busy(6.0, 2)


def test_every_faster_option_outside_the_budget_is_named(measured, tmp_path):
    def outside(records):
        fast(records)
        records["ort-int8-qdq"]["within_budget"] = False
        records["openvino-fp32"]["speed"]["vs_fp32"] = 0.9

    choice = cpu_options.choose_best(edited(measured, tmp_path, outside))
    assert choice.option == "ort-fp32" and not choice.remeasure
    assert choice.why.startswith("every faster option misses the budget: ort-int8-qdq 2.00× (max |Δprob| ")
    assert "openvino-fp32 0.90×" in choice.why


def test_a_qdq_file_made_from_another_model_onnx_is_rebuilt(measured, tmp_path):
    folder = tmp_path / "onnx" / "sumsub_sd"
    shutil.copytree(measured, folder)
    sha = cpu_options.sha256_file(folder / "model.onnx")
    assert cpu_options._made_from(folder / engines.QDQ_FILE) == sha
    import onnx

    qdq = onnx.load(str(folder / engines.QDQ_FILE))
    prop = next(p for p in qdq.metadata_props if p.key == "genguard.quantization")
    prop.value = json.dumps({**json.loads(prop.value), "fp32_sha256": "0" * 64})
    onnx.save(qdq, str(folder / engines.QDQ_FILE))
    stale_digest = cpu_options.sha256_file(folder / engines.QDQ_FILE)
    images = dict(list(samples.photos().items())[:FEW])
    record = cpu_options.measure_detector(tmp_path, "sumsub_sd", ["ort-int8-qdq"], images=images,
                                          speed_rounds=1)["ort-int8-qdq"]
    assert record["quantization"]["fp32_sha256"] == sha and record["sha256"] != stale_digest


def test_an_int8_file_that_quantises_nothing_is_not_measured(tiny_build, tmp_path):
    """EVA02's dynamic INT8 search can end with no MatMul quantised: model.int8.onnx is then FP32 under another
    name; it is recorded as skipped, saying why, not timed as an option."""
    folder = copy_build(tiny_build, tmp_path, ["opensdi_flux"]) / "onnx" / "opensdi_flux"
    shutil.copyfile(folder / "model.onnx", folder / engines.INT8_FILE)
    parity = json.loads((folder / "parity.json").read_text())
    parity["int8"] = {"passed": True, "candidates": 84, "quantized_nodes": 0, "budget_max_abs_prob": 0.005,
                      "fp32_sha256": cpu_options.sha256_file(folder / "model.onnx"),
                      "onnx_sha256": cpu_options.sha256_file(folder / engines.INT8_FILE)}
    (folder / "parity.json").write_text(json.dumps(parity))
    images = dict(list(samples.photos().items())[:2])
    record = cpu_options.measure_detector(tmp_path, "opensdi_flux", ["ort-int8"], images=images, speed_rounds=1,
                                          reference=False)["ort-int8"]
    assert record["skipped"] == ("none of its 84 MatMul/Gemm could be quantised within the INT8 budget (max |Δprob| "
                                 "0.005): model.int8.onnx computes what FP32 does")


def test_best_choices_measures_missing_records_once_with_an_estimate(tiny_build, tmp_path, monkeypatch):
    """make serve PRECISION=best: records missing -> measured first (said, with an estimate); then reused."""
    build = copy_build(tiny_build, tmp_path, ["imagetrust_source"])
    monkeypatch.setattr(samples, "all_images", lambda: dict(list(samples.photos().items())[:FEW]))
    monkeypatch.setattr(cpu_options, "default_options", lambda: ["ort-int8-qdq", "openvino-fp32"])
    lines = []
    choices = cpu_options.best_choices(build, ["imagetrust_source"], measure=True, log=lines.append)
    text = "\n".join(lines)
    assert "PRECISION=best: measuring the CPU options of imagetrust_source (no cpu-options record) first" in text
    assert "(estimated)" in text and "imagetrust_source [2/2] openvino-fp32" in text
    choice = choices["imagetrust_source"]
    assert not choice.remeasure and "no cpu-options record" not in choice.why
    lines.clear()
    assert cpu_options.best_choices(build, ["imagetrust_source"], measure=True, log=lines.append) == choices
    assert lines == []  # current records: nothing measured again
    # measure=False (MEASURE=no) on missing records: FP32, said
    other = copy_build(tiny_build, tmp_path / "other", ["sumsub_sd"])
    choice = cpu_options.best_choices(other, ["sumsub_sd"], measure=False, log=lines.append)["sumsub_sd"]
    assert choice.option == "ort-fp32" and "no cpu-options record" in choice.why and lines == []


def test_render_names_bests_choice_and_reason_for_health(measured, tmp_path):
    from genguard.export.repository import CpuOptions, render

    def other_weights(records):
        for r in records.values():
            r["fp32_sha256"] = "0" * 64

    build = tmp_path / "build"
    edited(measured, build / "onnx", other_weights)
    repo = render("cpu", build, tmp_path / "repo", detectors=["sumsub_sd"],
                  cpu=CpuOptions(precision=(("sumsub_sd", "best"),)))
    assert '"ort-fp32"' in (repo / "sumsub_sd" / "config.pbtxt").read_text()
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((repo / "postprocess" / "config.pbtxt").read_text(), mc.ModelConfig())
    best = json.loads(config.parameters["precision_best"].string_value)
    assert best["cpu"] == cpus.describe()
    assert best["detectors"]["sumsub_sd"]["option"] == "ort-fp32"
    assert "stale cpu-options record" in best["detectors"]["sumsub_sd"]["why"]
    # not asked for: no such parameter
    plain = render("cpu", build, tmp_path / "plain", detectors=["sumsub_sd"])
    assert "precision_best" not in (plain / "postprocess" / "config.pbtxt").read_text()


def test_bench_compare_report_names_the_cpu_and_bests_choices():
    from genguard.benchmarks import machine
    from genguard.benchmarks.compare.loading import Served, served_options
    from genguard.benchmarks.compare.writing import served_options_section

    served = Served("h", "g", "2.51", {"sumsub_sd": {"cpu_option": "ort-fp32"}, "opensdi_flux": {}}, None,
                    {"cpu": "AMD EPYC (family 26, model 2): avx512_bf16", "detectors": {
                        "sumsub_sd": {"option": "ort-fp32", "why": "no cpu-options record for this build"}}})
    rows = served_options(served)
    assert rows[0] == {"detector": "sumsub_sd", "option": "ort-fp32", "asked": "best",
                       "why": "no cpu-options record for this build"}
    assert rows[1]["why"] == "the default (PRECISION not set)"
    text = "\n".join(served_options_section({"served": {"cpu_options": rows, "best_cpu": served.best["cpu"]}}))
    assert "`PRECISION=best` chose these on AMD EPYC (family 26, model 2)" in text
    assert "| sumsub_sd | ort-fp32 | no cpu-options record for this build |" in text
    line = machine.deciding_line({"avx512_bf16": True, "avx512_vnni": True})
    assert "amx_bf16 no" in line and "avx512_bf16 yes" in line and "BF16 on AVX-512 BF16 dot products (no AMX)" in line
    assert "BF16 on AMX tiles" in machine.deciding_line({"amx_bf16": True, "amx_int8": True})


# ---------------------------------------------------------------------------------------------------
# make serve PRECISION=best with no records: start-up output and `genguard health`


@pytest.mark.slow
@pytest.mark.server
def test_serve_best_without_records_names_the_fallback_at_start_and_in_health(tiny_build, tmp_path, capsys):
    from conftest import free_ports

    from genguard import server
    from genguard.client.cli import main as cli_main
    from genguard.export.serve import main as serve_main

    names = ["sumsub_sd", "imagetrust_binary"]
    build = copy_build(tiny_build, tmp_path / "build", names)
    http, grpc, metrics = free_ports(3)
    status = serve_main(["--weights", "random", "--build", str(build), "--detectors", ",".join(names),
                         "--precision", "best", "--measure", "no", "--http-port", str(http), "--grpc-port", str(grpc),
                         "--metrics-port", str(metrics), "--gateway-port", "0", "--timeout", "180"])
    pid = int((build / "tritonserver.pid").read_text()) if (build / "tritonserver.pid").exists() else None
    try:
        started = capsys.readouterr().out
        assert status == 0, started
        assert f"PRECISION=best on {cpus.describe()}:" in started
        for name in names:
            assert f"  {name}: ort-fp32 — no cpu-options record for this build; run `make cpu-options`" in started
        assert cli_main(["health", "--url", f"127.0.0.1:{grpc}"]) == 0
        health = capsys.readouterr().out
        assert f"PRECISION=best on {cpus.describe()}:" in health
        for name in names:
            assert f"  {name}: ort-fp32 — no cpu-options record for this build; run `make cpu-options`" in health
        assert not any(json.loads((build / "onnx" / n / "parity.json").read_text()).get("cpu_options") for n in names)
    finally:
        if pid:
            server.stop_pid(pid)


# ---------------------------------------------------------------------------------------------------
# benchmarks/bf16_why.py: the side-by-side table that explains the BF16 figures


def test_bf16_why_names_the_cpu_and_measures_every_engine(tiny_build, tmp_path):
    from genguard.benchmarks import bf16_why

    out = tmp_path / "bf16-why.md"
    assert bf16_why.main(["--build", str(tiny_build), "--detectors", "sumsub_sd", "--batches", "1", "--rounds", "1",
                          "--calls", "1", "--ratio-images", "1", "--gemm-n", "128", "--no-contention",
                          "--out", str(out)]) == 0
    text = out.read_text()
    assert f"- CPU: {cpus.cpu_model().split(' (')[0]}" in text and "flags deciding the CPU options:" in text
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["detectors"][0]["side_by_side"]["1"]
    expected = {"pytorch-fp32", "pytorch-bf16-autocast", "pytorch-bf16 (model.to)", "ort-fp32", "openvino-fp32"}
    if cpus.capabilities()["bf16"]:
        expected.add("openvino-bf16")
        methods = {r["method"] for r in result["detectors"][0]["cpu_options_ratio"]}
        assert "now: alternating, ORT not spinning" in methods
        assert set(result["detectors"][0]["profile"]) == {"f32", "bf16"}
    assert set(rows) == expected and all(r["images_per_s"] > 0 for r in rows.values())
    assert {r["precision"] for r in result["gemm"]} == {"f32", "bf16", "float32", "bfloat16"}
