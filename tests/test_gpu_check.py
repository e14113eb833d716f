"""`make gpu-check` (genguard.benchmarks.gpu_check) on a machine without a GPU: its one line without a GPU, its
failure on a broken driver, its table, exit status and skipped parts with the GPU parts faked, and the
probability comparison on hand-computed logits. The GPU parts themselves run in tests/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

from genguard import specs
from genguard.benchmarks import gpu_check
from genguard.export import tensorrt as trt


class FakeCuda:
    def __init__(self, init: int):
        self.init = init

    def cuInit(self, flags):
        return self.init

    def cuDeviceGetCount(self, pointer):
        pointer._obj.value = 1
        return 0


def test_without_a_gpu_one_line_and_exit_0(monkeypatch, capsys):
    monkeypatch.setattr(trt, "_libcuda", lambda: None)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("gpu-check: no GPU here (no NVIDIA driver")


def test_a_broken_driver_fails(monkeypatch, capsys):
    monkeypatch.setattr(trt, "_libcuda", lambda: FakeCuda(999))  # CUDA_ERROR_UNKNOWN: a GPU, unusable
    assert gpu_check.main([]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.fixture()
def fake_gpu(monkeypatch):
    """A GPU without trtexec or TensorRT (engines skipped) and no server (throughput skipped)."""
    monkeypatch.setattr(trt, "gpu_absent_reason", lambda: None)
    monkeypatch.setattr(trt, "gpu_info", lambda device=0: ("9.0", "NVIDIA H200", 143771))
    monkeypatch.setattr(trt, "tensorrt_version", lambda: (_ for _ in ()).throw(trt.EngineError("no libnvinfer")))

    def no_engine_tool():
        raise trt.EngineError("no trtexec and no TensorRT Python module")

    monkeypatch.setattr(gpu_check, "engine_tool", no_engine_tool)
    monkeypatch.delenv("GENGUARD_GPU_URL", raising=False)


def _dali_rows(ok: bool):
    return lambda log=print: [gpu_check.Row("DALI GPU vs reference", "siglip224", "uint8", "max 3", "12/1/0.6", True),
                              gpu_check.Row("DALI GPU vs reference", "eva02_448", "uint8", "max 40", "11", ok)]


def test_a_missed_bound_fails_and_the_table_says_which(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "check_dali", _dali_rows(ok=False))
    assert gpu_check.main([]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "gpu-check: NVIDIA H200 (compute capability 9.0, 143771 MiB), TensorRT absent"
    assert [c.strip() for c in out[1].split("|")[1:-1]] == list(gpu_check.HEADER)
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out[3:5]]
    assert rows == [["DALI GPU vs reference", "siglip224", "uint8", "max 3", "12/1/0.6", "ok"],
                    ["DALI GPU vs reference", "eva02_448", "uint8", "max 40", "11", "FAIL"]]
    assert "skipped: engines: no trtexec and no TensorRT Python module" in out
    assert any(line.startswith("skipped: throughput: no GPU server") for line in out)
    assert out[-1] == "FAILED: 1/2 within bounds, 2 part(s) skipped"


def test_within_bounds_passes(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "check_dali", _dali_rows(ok=True))
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "PASSED: 2/2 within bounds, 2 part(s) skipped"


def test_an_error_in_a_part_that_runs_fails(fake_gpu, monkeypatch, capsys):
    def broken(log=print):
        raise RuntimeError("nvJPEG: CUDA error 700")

    monkeypatch.setattr(gpu_check, "check_dali", broken)
    assert gpu_check.main([]) == 1
    captured = capsys.readouterr()
    assert "FAILED with an error" in captured.out and "CUDA error 700" in captured.err


def test_nothing_checked_on_a_gpu_fails(fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "check_dali", lambda log=print: [])
    assert gpu_check.main([]) == 1


def test_compare_heads_on_hand_computed_logits():
    spec = specs.DETECTORS["sumsub_sd"]  # one softmax head, 2 labels
    reference = {"sd": np.array([[2.0, 0.0], [0.0, 0.001]])}
    served = {"sd": np.array([[2.0, 0.01], [0.001, 0.0]])}
    # p(label 1): image 1 sigmoid(-2) = 0.1192029 vs sigmoid(-1.99) = 0.1202570; image 2 0.50025 vs 0.49975
    delta, top1, counted = gpu_check.compare_heads(spec, reference, served, tolerance=1e-2)
    assert delta == pytest.approx(0.0010541, abs=1e-6)
    assert (top1, counted) == (1.0, 1)  # image 2 is a near tie (0.0005 apart): not counted
    delta, top1, counted = gpu_check.compare_heads(spec, reference, served, tolerance=1e-5)
    assert (top1, counted) == (0.5, 2)  # at a tighter tolerance it is decided, and flipped


def test_gpu_tests_fail_rather_than_skip_on_a_gpu_without_tensorrt(tiny_build, tmp_path):
    """tests/test_gpu.py on a (faked) GPU machine with neither trtexec nor TensorRT: the engine test fails
    with the reason; it does not skip."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = f"""
import sys
import pytest
from genguard.benchmarks import gpu_check
from genguard.export import tensorrt as trt
trt.gpu_absent_reason = lambda: None
trt.gpu_info = lambda device=0: ("9.0", "NVIDIA H200", 143771)
def engine_tool():
    raise trt.EngineError("no trtexec and no TensorRT Python module")
gpu_check.engine_tool = engine_tool
sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", "--basetemp", {str(tmp_path / "t")!r},
                      {str(root / "tests" / "test_gpu.py")!r}, "-k", "engines"]))
"""
    env = {**os.environ, "GENGUARD_TEST_BUILD": str(tiny_build)}  # this run's build: the inner run makes none
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root, env=env)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "no trtexec and no TensorRT Python module" in done.stdout and "skipped" not in done.stdout.lower()
