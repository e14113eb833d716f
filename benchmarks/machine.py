"""The machine a benchmark ran on, and its practical matrix-multiply peak measured in the same run."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata

import numpy as np

from genguard.cpus import DECIDING_FLAGS

PACKAGES = ("genguard", "numpy", "pillow", "onnx", "onnxruntime", "torch", "torchvision", "timm", "transformers",
            "tritonclient", "nvidia-pytriton", "openvino")
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in info:
                    info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        return None
    return None


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() + ("+dirty" if dirty else "")) if done.returncode == 0 else None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def describe() -> dict:
    """CPU model, cores, flags that matter to the kernels, memory, GPUs, OS, package versions, load."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu.get("model name") or platform.processor() or "unknown",
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_flags": [f for f in FLAGS if f in flags],
        # the flags that decide which CPU engine/precision option is fast here (genguard.cpus.DECIDING_FLAGS)
        "deciding_flags": {f: f in flags for f in DECIDING_FLAGS},
        "hypervisor": "hypervisor" in flags,
        "memory_gib": _memory_gib(),
        "gpus": _gpus() or ["none"],
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": versions(),
        "git_commit": _git_commit(),
    }


def describe_markdown(machine: dict, peak: dict | None = None) -> str:
    v = machine["versions"]
    lines = [
        f"- CPU: {machine['cpu']} (family/model {machine['cpu_family_model']}), {machine['usable_cpus']} usable of "
        f"{machine['logical_cpus']} logical CPUs{', virtual machine' if machine['hypervisor'] else ''}; "
        f"flags: {', '.join(machine['cpu_flags']) or 'none of note'}",
        f"- memory: {machine['memory_gib']} GiB; GPU: {', '.join(machine['gpus'])}; {machine['os']}; "
        f"load average at start: {machine['load_average_at_start']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    if machine.get("deciding_flags"):
        lines.append("- " + deciding_line(machine["deciding_flags"]))
    if machine.get("git_commit"):
        lines.append(f"- genguard commit: {machine['git_commit']}")
    if peak:
        lines.append(f"- matrix-multiply peak (measured in this run): {peak_summary(peak)}")
    return "\n".join(lines)


def deciding_line(flags: dict[str, bool]) -> str:
    """The CPU flags that decide the engine/precision options, in words: BF16 and INT8 matrix multiplies run on
    AMX tiles (amx_bf16/amx_int8) where the CPU has them, else on AVX-512 BF16 / VNNI dot products, else emulated."""
    shown = ", ".join(f"{f} {'yes' if flags.get(f) else 'no'}" for f in DECIDING_FLAGS)
    bf16 = ("AMX tiles" if flags.get("amx_bf16") else "AVX-512 BF16 dot products (no AMX)" if flags.get("avx512_bf16")
            else "no native BF16: the BF16 options are refused")
    int8 = ("AMX tiles" if flags.get("amx_int8") else "VNNI dot products (no AMX)"
            if flags.get("avx512_vnni") or flags.get("avx_vnni")
            else "no VNNI: the INT8 options that need it are refused")
    return f"flags deciding the CPU options: {shown} — BF16 on {bf16}; INT8 on {int8}"


# ---------------------------------------------------------------------------------------------------
# practical matrix-multiply peak


def _best_rate(run, flops: float, seconds: float, min_repeats: int = 3) -> float:
    """Best-of-repeats GFLOP/s of `run`, repeating for about `seconds` after one warm-up call."""
    run()
    best, started, repeats = float("inf"), time.perf_counter(), 0
    while repeats < min_repeats or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        repeats += 1
    return flops / best / 1e9


def ort_matmul_gflops(n: int = 2048, seconds: float = 2.0, threads: int | None = None, int8: bool = False) -> float:
    """ONNX Runtime's CPU GEMM (MLAS, the kernel the served detectors run) on an n x n x n FP32 MatMul, or
    with int8=True the UINT8 x INT8 MatMulInteger that dynamic INT8 models run (giga-ops/s)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if int8:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        types = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    else:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        types = (TensorProto.FLOAT,) * 3
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("A", types[0], [n, n])],
                              [helper.make_tensor_value_info("Y", types[2], [n, n])],
                              initializer=[onnx.numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _best_rate(lambda: session.run(None, {"A": a}), 2.0 * n**3, seconds)


def torch_matmul_gflops(n: int = 2048, seconds: float = 2.0) -> float | None:
    """PyTorch's CPU GEMM (oneDNN/MKL, what the reference pipelines run) on an n x n x n FP32 matmul."""
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        return _best_rate(lambda: torch.mm(a, b), 2.0 * n**3, seconds)


def matmul_peak(n: int = 2048, seconds: float = 2.0) -> dict:
    """The machine's practical FP32 matrix-multiply peak: the best of ONNX Runtime's and PyTorch's GEMM
    on a large square problem using every core — what a perfect detector could reach here. Also the
    INT8 GEMM rate (for the INT8 models)."""
    ort_fp32 = ort_matmul_gflops(n, seconds)
    torch_fp32 = torch_matmul_gflops(n, seconds)
    ort_int8 = ort_matmul_gflops(n, seconds, int8=True)
    return {
        "n": n,
        "ort_fp32_gflops": round(ort_fp32, 1),
        "torch_fp32_gflops": round(torch_fp32, 1) if torch_fp32 else None,
        "ort_int8_gops": round(ort_int8, 1),
        "fp32_peak_gflops": round(max(ort_fp32, torch_fp32 or 0.0), 1),
    }


def peak_summary(peak: dict) -> str:
    torch_part = f", PyTorch {peak['torch_fp32_gflops']:.0f}" if peak.get("torch_fp32_gflops") else ""
    return (f"FP32 {peak['fp32_peak_gflops']:.0f} GFLOP/s (n={peak['n']} GEMM: ONNX Runtime "
            f"{peak['ort_fp32_gflops']:.0f}{torch_part}); INT8 MatMulInteger {peak['ort_int8_gops']:.0f} GOP/s")
