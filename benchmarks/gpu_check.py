"""`make gpu-check`: everything the GPU path needs a GPU for, measured in one run, printed as one table.

    python -m genguard.benchmarks.gpu_check [--build build] [--url host:8001] [--concurrency 1,4,16]

Rows (each with its measurement, its bound and ok/FAIL):

  engine      per detector: a TensorRT engine built from build/onnx/<detector>/model.onnx in the precision
              the tensorrt target chooses (BF16/FP16/FP32, genguard.export.tensorrt.effective_precision) vs
              ONNX Runtime FP32 on the same tensors (the sample photos, GenGuard's bit-exact preprocessing):
              max |Δprob| over every head (bound PROB_TOLERANCE[precision]) and top-1 agreement on the
              images whose reference top-1 leads by more than the tolerance (bound MIN_TOP1).
  dali        per input spec: the GPU preprocess pipeline (nvJPEG "mixed" decode, resize, crop,
              normalise) vs genguard.preprocess on the 23 sample images, in 8-bit levels
              (bounds: genguard.dali.level_bounds, measured on CPU, + JPEG_GPU_EXTRA on JPEGs).
  throughput  the `genguard` ensemble through a running GPU tritonserver (the image), perf_analyzer at a
              few concurrencies, images/s and p99 latency (no bound: recorded).

Engines are built with trtexec where it is (the NGC tritonserver image), else with TensorRT's Python API
(PyPI: pip install -e '.[gpu]', which `make gpu-check` does on a GPU machine) and run through the CUDA
driver API. A part whose tools are missing is listed under "skipped" with the reason; an error in a part
that runs fails the check. Without a GPU: one line, exit 0. Exit 1 when a bound is missed or anything
fails.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genguard import specs
from genguard.export import tensorrt as trt

MIN_TOP1 = 0.9
# nvJPEG's IDCT/upsampling is not libjpeg-turbo's: extra levels allowed on JPEG sources on the GPU.
JPEG_GPU_EXTRA = 2.0
DEFAULT_CONCURRENCY = (1, 4, 16)
CHECK_MAX_BATCH = 16


@dataclass
class Row:
    check: str
    item: str
    precision: str
    measured: str
    bound: str
    ok: bool

    @property
    def result(self) -> str:
        return "ok" if self.ok else "FAIL"


HEADER = ("check", "item", "precision", "measured", "bound", "result")


def format_table(rows: list[Row], skipped: list[str], title: str) -> str:
    """The one table `make gpu-check` prints (docs/gpu.md shows its format)."""
    cells = [HEADER] + [(r.check, r.item, r.precision, r.measured, r.bound, r.result) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    line = lambda c: "| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |"  # noqa: E731
    out = [title, line(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells[1:]]
    out += [f"skipped: {s}" for s in skipped]
    failed = sum(not r.ok for r in rows)
    out.append(f"{'FAILED' if failed else 'PASSED'}: {len(rows) - failed}/{len(rows)} within bounds"
               + (f", {len(skipped)} part(s) skipped" if skipped else ""))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# Probability comparison (shared with tests/test_gpu.py)


def compare_heads(spec: specs.DetectorSpec, reference: dict[str, np.ndarray], served: dict[str, np.ndarray],
                  tolerance: float) -> tuple[float, float, int]:
    """(max |Δprob| over heads, top-1 agreement, images counted for it). Top-1 counts only images whose
    reference top-1 leads its runner-up by more than 2 x tolerance: a near tie may flip within the
    tolerance without either answer being wrong (random-weight exports are full of them)."""
    from genguard.scores import head_probs

    delta, agree, counted = 0.0, 0, 0
    for head in spec.heads:
        p_ref = head_probs(head, reference[head.name])
        p_out = head_probs(head, served[head.name])
        delta = max(delta, float(np.abs(p_ref - p_out).max()))
        if p_ref.shape[1] > 1:
            top2 = np.sort(p_ref, axis=1)[:, -2:]
            decided = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
            counted += int(decided.sum())
            agree += int((p_ref.argmax(1) == p_out.argmax(1))[decided].sum())
    return delta, (agree / counted if counted else 1.0), counted


# ---------------------------------------------------------------------------------------------------
# Engines: trtexec (NGC image) or TensorRT's Python API (PyPI)


def run_plan_trtexec(trtexec: str, plan: Path, batch: np.ndarray, workdir: Path, input_name: str = "pixels"
                     ) -> dict[str, np.ndarray]:
    """Run a plan once with trtexec on `batch` and read its outputs back (--exportOutput JSON)."""
    inputs, outputs = workdir / "pixels.bin", workdir / "outputs.json"
    np.ascontiguousarray(batch, dtype=np.float32).tofile(inputs)
    shape = "x".join(map(str, batch.shape))
    result = subprocess.run([trtexec, f"--loadEngine={plan}", f"--shapes={input_name}:{shape}",
                             f"--loadInputs={input_name}:{inputs}", f"--exportOutput={outputs}",
                             "--iterations=1", "--warmUp=0", "--duration=0"], capture_output=True, text=True)
    if result.returncode != 0:
        raise trt.EngineError(f"trtexec --loadEngine={plan} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    out = {}
    for entry in json.loads(outputs.read_text()):
        dims = [int(d) for d in str(entry["dimensions"]).split("x")]
        out[entry["name"]] = np.asarray(entry["values"], dtype=np.float32).reshape(dims)
    return out


def build_plan_python(onnx: Path, recipe: trt.Recipe, machine: trt.Machine) -> bytes:
    """The plan trtexec_command() describes, built with TensorRT's Python API (same profile, precision,
    workspace)."""
    import tensorrt

    logger = tensorrt.Logger(tensorrt.Logger.WARNING)
    builder = tensorrt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode from TensorRT 10
    parser = tensorrt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise trt.EngineError(f"{recipe.detector}: TensorRT's ONNX parser refused {onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(tensorrt.MemoryPoolType.WORKSPACE, recipe.workspace_mib << 20)
    precision = trt.effective_precision(recipe, machine)
    if precision == "fp16":
        config.set_flag(tensorrt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(tensorrt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    shape = lambda batch: (batch, *recipe.shape)  # noqa: E731
    profile.set_shape(recipe.input, shape(recipe.min_batch), shape(recipe.opt_batch), shape(recipe.max_batch))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise trt.EngineError(f"{recipe.detector}: TensorRT could not build an engine from {onnx}")
    return bytes(plan)


class _CudaDriver:
    """The few CUDA driver calls needed to feed an engine (libcuda through ctypes: no CUDA Python
    package, whose CUDA major version would have to match the driver's)."""

    def __init__(self, device: int = 0):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuMemcpyHtoD_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t]
        self.lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
        self.lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        self.check(self.lib.cuInit(0), "cuInit")
        handle = ctypes.c_int()
        self.check(self.lib.cuDeviceGet(ctypes.byref(handle), device), "cuDeviceGet")
        self.context = ctypes.c_void_p()
        # the runtime API (TensorRT) works in the device's primary context: make it current here
        self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), handle), "cuDevicePrimaryCtxRetain")
        self.check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    @staticmethod
    def check(status: int, what: str) -> None:
        if status != 0:
            raise trt.EngineError(f"{what} failed (CUDA error {status})")

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        self.check(self.lib.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(nbytes)), "cuMemAlloc")
        return pointer.value

    def upload(self, pointer: int, array: np.ndarray) -> None:
        self.check(self.lib.cuMemcpyHtoD_v2(pointer, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")

    def download(self, array: np.ndarray, pointer: int) -> None:
        self.check(self.lib.cuMemcpyDtoH_v2(array.ctypes.data, pointer, array.nbytes), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        self.check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")

    def free(self, pointer: int) -> None:
        self.lib.cuMemFree_v2(pointer)


def run_plan_python(plan: bytes, batch: np.ndarray, input_name: str = "pixels") -> dict[str, np.ndarray]:
    """Run a plan once on `batch` with TensorRT's Python API; float32 outputs by name."""
    import tensorrt

    cuda = _CudaDriver()
    logger = tensorrt.Logger(tensorrt.Logger.WARNING)
    engine = tensorrt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise trt.EngineError("TensorRT could not deserialize the plan it just built")
    context = engine.create_execution_context()
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    context.set_input_shape(input_name, batch.shape)
    pointers, outputs = [], {}
    try:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == tensorrt.TensorIOMode.INPUT:
                pointer = cuda.alloc(batch.nbytes)
                cuda.upload(pointer, batch)
            else:
                if engine.get_tensor_dtype(name) != tensorrt.DataType.FLOAT:
                    raise trt.EngineError(f"output {name} is {engine.get_tensor_dtype(name)}, not FLOAT")
                outputs[name] = np.empty(tuple(context.get_tensor_shape(name)), np.float32)
                pointer = cuda.alloc(outputs[name].nbytes)
            pointers.append(pointer)
            context.set_tensor_address(name, pointer)
        if not context.execute_async_v3(0):
            raise trt.EngineError("TensorRT execute_async_v3 failed")
        cuda.synchronize()
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name in outputs:
                cuda.download(outputs[name], pointers[i])
    finally:
        for pointer in pointers:
            cuda.free(pointer)
    return outputs


def engine_tool() -> tuple[str, str]:
    """("trtexec", path) in the NGC image, ("python", tensorrt version) with PyPI TensorRT; EngineError
    naming what to install when neither is here."""
    try:
        return "trtexec", trt.find_trtexec()
    except trt.EngineError:
        pass
    try:
        import tensorrt
    except ImportError:
        raise trt.EngineError("no trtexec and no TensorRT Python module: run inside the NGC tritonserver "
                              "image, or pip install -e '.[gpu]' (PyPI tensorrt)") from None
    return "python", tensorrt.__version__


def sample_batch(spec: specs.DetectorSpec) -> np.ndarray:
    from genguard.export import samples
    from genguard.preprocess import preprocess_bytes

    photos = list(samples.photos().values())[:CHECK_MAX_BATCH]
    return np.stack([preprocess_bytes(b, {"x": spec.input})[1]["x"] for b in photos])


def check_engines(build: Path, machine: trt.Machine, workdir: Path, log=print, cache: Path | None = None
                  ) -> list[Row]:
    from genguard import onnx_runtime
    from genguard.export.repository import find_exports, render

    kind, tool = engine_tool()
    log(f"engines: {kind} ({tool}), {machine.gpu}")
    dets = find_exports(build)
    repo = render("tensorrt", build, workdir / "tensorrt", max_batch=CHECK_MAX_BATCH)
    rows = []
    if kind == "trtexec":
        trt.build(repo, cache or workdir / "engine-cache", machine, trtexec=tool, log=log)
    for det in dets:
        spec = det.spec
        model = repo / spec.name
        recipe = trt.Recipe.from_json((model / trt.ONNX_FOLDER / trt.RECIPE_FILE).read_text())
        precision = trt.effective_precision(recipe, machine)
        batch = sample_batch(spec)
        session = onnx_runtime.session(model / trt.ONNX_FOLDER / "model.onnx")
        names = [o.name for o in session.get_outputs()]
        reference = dict(zip(names, session.run(None, {recipe.input: batch})))
        if kind == "trtexec":
            served = run_plan_trtexec(tool, model / "1" / trt.PLAN, batch, workdir, recipe.input)
        else:
            started = time.monotonic()
            plan = build_plan_python(model / trt.ONNX_FOLDER / "model.onnx", recipe, machine)
            log(f"  {spec.name}: built in {time.monotonic() - started:.0f} s")
            served = run_plan_python(plan, batch, recipe.input)
        tolerance = trt.PROB_TOLERANCE[precision]
        delta, top1, counted = compare_heads(spec, reference, served, tolerance)
        rows.append(Row("engine vs ORT FP32", spec.name, precision,
                        f"max|dprob| {delta:.1e}, top-1 {top1:.2f} (n={counted})",
                        f"<= {tolerance:g}, >= {MIN_TOP1:g}", delta <= tolerance and top1 >= MIN_TOP1))
    return rows


# ---------------------------------------------------------------------------------------------------
# DALI on the GPU


def dali_levels(out: np.ndarray, ref: np.ndarray, spec: specs.InputSpec) -> np.ndarray:
    """|Δ| in 8-bit levels of the normalised tensor, less float32 rounding noise."""
    from genguard.dali import LEVEL_EPS

    d = np.abs(out - ref) * np.asarray(spec.std, np.float32)[:, None, None] * 255
    return np.maximum(d - LEVEL_EPS, 0)


def dali_gpu_outputs(device_id: int = 0):
    """(names, images, params, outputs[input][image]) of the GPU pipeline on the 23 sample images."""
    from genguard import dali
    from genguard.export import samples

    images = samples.all_images()
    names = list(images)
    params = dali.pipeline_parameters(specs.distinct_inputs(specs.DETECTORS.values()))
    pipe = dali.pipeline(params, device="gpu", batch_size=len(names), device_id=device_id)
    pipe.build()
    pipe.feed_input(dali.DALI_INPUT, [np.frombuffer(dali.screen(images[n]).payload, np.uint8) for n in names])
    outputs = pipe.run()
    arrays = [[np.asarray(out.as_cpu()[i]) for i in range(len(names))] for out in outputs]
    return names, images, params, arrays


def check_dali(log=print) -> list[Row]:
    import nvidia.dali

    from genguard.dali import level_bounds
    from genguard.preprocess import preprocess_bytes

    log(f"dali: {nvidia.dali.__version__}")
    inputs = specs.distinct_inputs(specs.DETECTORS.values())
    names, images, params, outputs = dali_gpu_outputs()
    rows = []
    for p, batch in zip(params, outputs):
        spec = inputs[p.name]
        worst = [0.0, 0.0, 0.0]
        ok = True
        for name, out in zip(names, batch):
            ref = preprocess_bytes(images[name], {"x": spec})[1]["x"]
            d = dali_levels(out, ref, spec)
            measured = (float(d.max()), float(d[:, 2:-2, 2:-2].max()), float(d.mean()))
            worst = [max(a, b) for a, b in zip(worst, measured)]
            bound = level_bounds(p.name, spec.interpolation, name)
            extra = JPEG_GPU_EXTRA if name.endswith(".jpg") else 0.0
            ok &= (measured[0] <= bound["max"] + extra and measured[1] <= bound["inside"] + extra
                   and measured[2] <= 2 * bound["mean"])
        general = level_bounds(p.name, spec.interpolation, "")
        rows.append(Row("DALI GPU vs reference", p.name, "uint8",
                        f"max {worst[0]:.0f}, inside {worst[1]:.0f}, mean {worst[2]:.2f} levels",
                        f"{general['max']:.0f}/{general['inside']:.0f}/{2 * general['mean']:.1f} (+{JPEG_GPU_EXTRA:.0f} JPEG; "
                        "per-image exceptions)", ok))
    return rows


# ---------------------------------------------------------------------------------------------------
# Throughput through a running GPU server


def check_throughput(url: str, concurrencies, workdir: Path, log=print, download: bool = True) -> list[Row]:
    """download=False (tests): use an already-fetched perf_analyzer only."""
    from genguard.benchmarks import perf_analyzer
    from genguard.export import samples

    pa = perf_analyzer.obtain(download=download)
    photos = list(samples.photos().values())
    data = perf_analyzer.write_input_data(workdir / "perf" / "input.json", perf_analyzer.image_entries(photos))
    rows = []
    for concurrency in concurrencies:
        m = perf_analyzer.run(pa, "genguard", url, "grpc", concurrency, data, workdir / "perf")
        log(f"  c={concurrency}: {m.throughput:.1f} images/s")
        rows.append(Row("throughput (perf_analyzer)", f"genguard c={concurrency}", "-",
                        f"{m.throughput:.1f} images/s, p99 {m.p99_ms:.0f} ms", "recorded", m.throughput > 0))
    return rows


# ---------------------------------------------------------------------------------------------------


def ensure_exports(build: Path, log=print) -> None:
    """Full-size random-weight exports where build/onnx has none (a fresh clone)."""
    from genguard.export.repository import RepositoryError, find_exports

    try:
        find_exports(build)
        return
    except RepositoryError:
        pass
    log(f"no exports in {build}/onnx: exporting every detector with random weights (full size) ...")
    done = subprocess.run([sys.executable, "-m", "genguard.export", "--weights", "random", "--build", str(build)])
    if done.returncode != 0:
        raise RuntimeError(f"python -m genguard.export --weights random failed (exit {done.returncode})")


def run(build: Path, url: str | None, concurrencies, log=print) -> tuple[list[Row], list[str], str]:
    """Every check this machine can run: (rows, skipped parts with reasons, title)."""
    capability, name, memory = trt.gpu_info()
    try:
        machine = trt.Machine(capability, trt.tensorrt_version(), name, memory)
    except trt.EngineError:
        machine = None
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="genguard-gpu-check-") as tmp:
        workdir = Path(tmp)
        try:
            kind, _ = engine_tool()
        except trt.EngineError as exc:
            skipped.append(f"engines: {exc}")
        else:
            if machine is None:
                if kind != "python":
                    raise trt.EngineError("trtexec is here but TensorRT's library (libnvinfer) can't be loaded")
                import tensorrt

                machine = trt.Machine(capability, ".".join(tensorrt.__version__.split(".")[:3]), name, memory)
            ensure_exports(build, log)
            rows += check_engines(build, machine, workdir, log, cache=build / "engine-cache")
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            skipped.append("DALI: nvidia-dali is not installed (pip install -e '.[test]')")
        else:
            rows += check_dali(log)
        if not url:
            skipped.append("throughput: no GPU server to measure (docker run the image, then "
                           "GENGUARD_GPU_URL=host:8001 make gpu-check)")
        else:
            rows += check_throughput(url, concurrencies, workdir, log)
    title = (f"gpu-check: {name} (compute capability {capability}, {memory} MiB), TensorRT "
             f"{machine.tensorrt if machine else 'absent'}")
    return rows, skipped, title


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--url", default=os.environ.get("GENGUARD_GPU_URL"),
                        help="gRPC address of a running GPU server (default $GENGUARD_GPU_URL)")
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)))
    args = parser.parse_args(argv)
    try:
        absent = trt.gpu_absent_reason()
    except trt.EngineError as exc:
        print(f"gpu-check: FAILED: {exc}")
        return 1
    if absent:
        print(f"gpu-check: no GPU here ({absent}); nothing to check")
        return 0
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    try:
        rows, skipped, title = run(args.build, args.url, [int(c) for c in args.concurrency.split(",")], log)
    except Exception:
        traceback.print_exc()
        print("gpu-check: FAILED with an error (above)")
        return 1
    print(format_table(rows, skipped, title))
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
