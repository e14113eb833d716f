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

import os
from dataclasses import dataclass

import numpy as np

from genguard import cpus

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"   # dynamic INT8 of the MatMul/Gemm that carry the compute (export/quantize.py)
QDQ_FILE = "model.qdq.onnx"     # static INT8, QDQ with calibration on the sample photos (export/cpu_options.py)


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
    Option("openvino-bf16-mixed", "openvino", "bf16-mixed", FP32_FILE, needs=("bf16",),
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
        core = ov.Core()
        if option.precision == "bf16-mixed":
            model, kept = keep_f32(core, path, MIXED_F32_TYPES)
        else:
            model, kept = core.read_model(os.fspath(path)), set()
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

    def run(self, outputs, feeds):
        self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        names = outputs or self.output_names
        # copies: the request's output buffers are reused by the next call
        return [np.array(self.request.get_tensor(n).data, copy=True) for n in names]


def keep_f32(core, path, op_types: tuple[str, ...]):
    """(model, names of the layers marked): `path` as an OpenVINO model whose layers of `op_types` keep f32 under
    a bf16 inference precision. The Python API cannot create OpenVINO's DisablePrecisionConversion runtime
    attribute, so the model goes through its IR (XML), where the attribute is written as the IR serialiser
    writes it, and is read back."""
    import tempfile
    import xml.etree.ElementTree as ET

    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="genguard-ov-") as tmp:
        xml_path = os.path.join(tmp, "model.xml")
        ov.save_model(core.read_model(os.fspath(path)), xml_path, compress_to_fp16=False)
        tree = ET.parse(xml_path)
        kept = set()
        for layer in tree.getroot().iter("layer"):
            if layer.get("type") not in op_types:
                continue
            rt_info = layer.find("rt_info")
            if rt_info is None:
                rt_info = ET.SubElement(layer, "rt_info")
            ET.SubElement(rt_info, "attribute", name="DisablePrecisionConversion", version="0",
                          value="dynamic:f16,bf16")
            kept.add(layer.get("name"))
        with open(os.path.join(tmp, "model.bin"), "rb") as f:
            weights = f.read()
    # read back from memory: a model read from the files keeps the (deleted) .bin mapped, and its disk held, for as
    # long as it serves
    return core.read_model(ET.tostring(tree.getroot()), weights), kept


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
