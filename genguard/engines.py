"""The CPU engines a detector can run on: ONNX Runtime (FP32, dynamic INT8, static QDQ INT8) and OpenVINO
(FP32, BF16, mixed BF16, INT8 from the QDQ file), behind one `run(outputs, feeds)`.

An option names an engine, a precision and the file it runs (next to model.onnx in build/onnx/<name>/).
Every option but `ort-fp32` changes the arithmetic, so it is served only with an accuracy record in the
export's parity.json (genguard.export.cpu_options writes it; the renderer checks it). What the CPU must
have is checked here, from /proc/cpuinfo (genguard.cpus), so that a render and a detector model both
refuse, with the same message, an option the machine cannot run: OpenVINO on a CPU without BF16
instructions would emulate BF16 slowly, or quietly run FP32, and INT8 without VNNI saturates.

Runtime code: no genguard.export import; openvino is imported only when an OpenVINO option is opened.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genguard import cpus
from genguard.checksums import sha256_file

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"   # dynamic INT8 of the MatMul/Gemm that carry the compute (export/quantize.py)
QDQ_FILE = "model.qdq.onnx"     # static INT8, QDQ with calibration on the sample photos (export/cpu_options.py)
# openvino-bf16-mixed's OpenVINO IR (+ model.bf16-mixed.bin): model.onnx with the layers of MIXED_F32_TYPES marked to
# keep f32, prepared once by export/cpu_options.py (make cpu-options) so that a detector loading it rewrites nothing
MIXED_FILE = "model.bf16-mixed.xml"


@dataclass(frozen=True)
class Option:
    name: str
    engine: str        # "onnxruntime" | "openvino"
    precision: str     # "fp32" | "int8" | "int8-qdq" | "bf16" | "bf16-mixed"
    file: str
    needs: tuple[str, ...] = ()  # genguard.cpus capabilities
    what: str = ""


OPTIONS = {o.name: o for o in (
    Option("ort-fp32", "onnxruntime", "fp32", FP32_FILE, what="the parity default"),
    Option("ort-int8", "onnxruntime", "int8", INT8_FILE,
           what="dynamic INT8 MatMul/Gemm (weights per tensor, activations per batch)"),
    Option("ort-int8-qdq", "onnxruntime", "int8-qdq", QDQ_FILE,
           what="static INT8 QDQ, calibrated on the sample photos"),
    Option("openvino-fp32", "openvino", "fp32", FP32_FILE, what="OpenVINO CPU plugin, f32 inference precision"),
    Option("openvino-bf16", "openvino", "bf16", FP32_FILE, needs=("bf16",),
           what="OpenVINO CPU plugin, bf16 inference precision (AVX-512 BF16 / AMX)"),
    Option("openvino-bf16-mixed", "openvino", "bf16-mixed", MIXED_FILE, needs=("bf16",),
           what="OpenVINO bf16 matrix multiplies; softmax, normalisation and the residual adds kept f32"),
    Option("openvino-int8", "openvino", "int8-qdq", QDQ_FILE, needs=("vnni",),
           what="the static QDQ file on OpenVINO's INT8 kernels (VNNI / AMX)"),
)}
DEFAULT = "ort-fp32"

# openvino-bf16-mixed: OpenVINO op types kept in f32 while the rest runs bf16 — the usual mixed-precision split
# (matrix multiplies low, reductions high). Measured on EVA02-448 (random weights, 23 sample images): all-bf16
# max |Δprob| 1.1e-2; these three kept f32 7.8e-3, ~10 % slower than all-bf16; keeping only some of them, or
# the first/last blocks, bought less accuracy per second lost.
MIXED_F32_TYPES = ("SoftMax", "MVN", "Add")
MARK = "DisablePrecisionConversion_0"  # how a layer marked to keep f32 shows in an OpenVINO op's rt_info


def option_files(path) -> list[Path]:
    """The files an option file is served with: itself, and an OpenVINO IR's .bin (its weights)."""
    path = Path(path)
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def files_sha256(path, digest=sha256_file) -> str:
    """The sha256 an option file is recorded and checked with: the file's own, or for an OpenVINO IR one digest over
    the pair (the sha256 of a sha256sum-style listing of the .xml and .bin digests), so that either file changing
    changes it. `digest`: the per-file sha256 (a caching one in the exporter)."""
    files = option_files(path)
    if len(files) == 1:
        return digest(files[0])
    listing = "".join(f"{digest(f)}  {f.name}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


class OptionError(ValueError):
    """An unknown option, or one this CPU cannot run."""


def get(name: str) -> Option:
    try:
        return OPTIONS[name]
    except KeyError:
        raise OptionError(f"unknown CPU option {name!r}; known: {', '.join(OPTIONS)}") from None


def missing_instructions(option: Option, caps: dict[str, bool] | None = None) -> list[str]:
    """The capabilities `option` needs that this CPU lacks (empty: it can run it)."""
    caps = cpus.capabilities() if caps is None else caps
    return [need for need in option.needs if not caps.get(need)]


def check_cpu(option: Option, caps: dict[str, bool] | None = None) -> None:
    missing = missing_instructions(option, caps)
    if missing:
        flags = "; ".join(f"{m}: one of {', '.join(cpus.CAPABILITIES[m])}" for m in missing)
        raise OptionError(f"{option.name} needs CPU instructions this machine lacks ({flags} — none in "
                          f"/proc/cpuinfo flags); serve ort-fp32 or another option instead")


class Engine:
    """An open model: run(outputs, feeds) -> list of arrays, like onnxruntime.InferenceSession.run."""

    option: Option
    output_names: list[str]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class OrtEngine(Engine):
    def __init__(self, option: Option, path, *, threads: int | None, optimization: str, arena: bool,
                 spinning: bool):
        from genguard import onnx_runtime

        self.option = option
        self.session = onnx_runtime.session(path, threads=threads, optimization=optimization, spinning=spinning,
                                            arena=arena)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, outputs, feeds):
        return self.session.run(outputs, feeds)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


class OpenVinoEngine(Engine):
    def __init__(self, option: Option, path, *, threads: int | None):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.option = option
        self.path = Path(path)
        core = ov.Core()
        if option.precision == "bf16-mixed" and self.path.suffix != ".xml":
            raise OptionError(f"{option.name} runs its prepared OpenVINO IR ({MIXED_FILE} + .bin, which make "
                              f"cpu-options builds from model.onnx), not {self.path.name}")
        # bf16-mixed: the IR as prepared (its marked layers carry DisablePrecisionConversion); nothing is rewritten
        self.model = model = core.read_model(os.fspath(path))
        kept = marked_f32(model) if option.precision == "bf16-mixed" else set()
        config = {
            # Explicit: on a BF16-capable CPU the plugin's default inference precision is already bf16.
            # A QDQ file keeps its INT8 where it says so; f32 elsewhere.
            hints.inference_precision: ov.Type.bf16 if option.precision.startswith("bf16") else ov.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,  # one stream: Triton batches, not OpenVINO
            hints.enable_cpu_pinning: False,  # several detector processes share the cores
        }
        if threads:
            config[props.inference_num_threads] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self.precision = str(self.compiled.get_property(hints.inference_precision))
        self.kept_f32 = kept  # the layers marked to keep f32 (bf16-mixed), by name
        self.f32_layers = runtime_f32_layers(self.compiled, kept)
        if kept and not self.f32_layers:
            # the marks were not honoured (another OpenVINO), or every marked layer was fused into a bf16 one
            # (a CNN's residual adds into its convolutions): either way this would be plain bf16 under another name
            raise OptionError(f"{option.name}: OpenVINO {ov.get_version()} runs none of the {len(kept)} layers "
                              f"marked f32 ({', '.join(MIXED_F32_TYPES)}) in f32 for this model (fused into bf16 "
                              "layers, or the marks are not honoured): it would be openvino-bf16; serve that instead")

    def metadata(self) -> dict[str, str]:
        """The ONNX file's custom metadata (genguard.*), which OpenVINO keeps in an IR's rt_info["framework"]."""
        if self.path.suffix != ".xml":
            from genguard import onnx_runtime

            return onnx_runtime.metadata(self.path)
        framework = self.model.get_rt_info()["framework"] if self.model.has_rt_info(["framework"]) else {}
        return {k: v.astype(str) for k, v in framework.items()}

    def run(self, outputs, feeds):
        self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        names = outputs or self.output_names
        # copies: the request's output buffers are reused by the next call
        return [np.array(self.request.get_tensor(n).data, copy=True) for n in names]


def marked_f32(model) -> set[str]:
    """The names of `model`'s layers marked to keep f32 under a bf16 inference precision (see
    genguard.export.cpu_options.build_mixed_ir)."""
    return {op.get_friendly_name() for op in model.get_ops() if MARK in op.get_rt_info()}


def runtime_f32_layers(compiled, names: set[str]) -> int:
    """How many of the compiled model's layers that carry one of the original layers `names` run in f32."""
    count = 0
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        original = set(info["originalLayersNames"].astype(str).split(",")) if "originalLayersNames" in info else set()
        if original & names and info["runtimePrecision"].astype(str) == "f32":
            count += 1
    return count


def open_engine(option: Option | str, path, *, threads: int | None = None, optimization: str = "all",
                arena: bool = True, spinning: bool = True, caps: dict[str, bool] | None = None) -> Engine:
    """Open `path` with `option`'s engine and precision; refuses an option this CPU cannot run."""
    option = get(option) if isinstance(option, str) else option
    check_cpu(option, caps)
    if option.engine == "onnxruntime":
        return OrtEngine(option, path, threads=threads, optimization=optimization, arena=arena, spinning=spinning)
    return OpenVinoEngine(option, path, threads=threads)


def openvino_version() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()
