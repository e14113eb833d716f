"""What the server serves, and the matching detectors: the ONNX file, the reference pipeline on the same
checkpoint, an in-process session; the sample photos."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from genguard import engines, onnx_runtime, protocol, specs
from genguard.benchmarks.compare.common import PIPELINE_MODELS
from genguard.export.flops import flops_per_image


@dataclass
class Served:
    url_http: str
    url_grpc: str
    version: str
    detectors: dict[str, dict]  # name -> config parameters
    fusion: str | None
    best: dict = field(default_factory=dict)  # PRECISION=best: {"cpu", "detectors": {name: {option, why}}} (render's)


def discover(http_url: str, grpc_url: str) -> Served:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    if not client.is_server_ready():
        raise RuntimeError(f"no ready server at {http_url}: start one with `make serve` (WEIGHTS=random works)")
    version = client.get_server_metadata().get("version", "?")
    names = [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]
    if protocol.ENSEMBLE not in names:
        client.close()
        raise RuntimeError(f"{http_url} serves no `{protocol.ENSEMBLE}` ensemble (models: {names})")
    params = lambda name: {k: v["string_value"] for k, v in client.get_model_config(name).get("parameters", {}).items()}  # noqa: E731
    detectors = {n: params(n) for n in names if n not in PIPELINE_MODELS and n in specs.DETECTORS}
    post = params(protocol.POSTPROCESS)
    fusion = post.get("fusion")
    client.close()
    try:
        best = json.loads(post.get("precision_best") or "{}")
    except ValueError:
        best = {}
    return Served(http_url, grpc_url, version, detectors, fusion, best)


def served_options(served: Served) -> list[dict]:
    """Per served detector: the CPU option it runs and why (`best`'s reason, or "asked for"/"the default")."""
    chosen = served.best.get("detectors", {})
    out = []
    for name, params in served.detectors.items():
        option = params.get("cpu_option", engines.DEFAULT)
        why = (chosen[name]["why"] if name in chosen else
               "the default (PRECISION not set)" if option == engines.DEFAULT else "asked for by name (PRECISION)")
        out.append({"detector": name, "option": option, "asked": "best" if name in chosen else "", "why": why})
    return out


@dataclass
@dataclass
class Detector:
    spec: specs.DetectorSpec
    params: dict
    onnx: Path          # the file the server serves (FP32 or INT8)
    fp32_onnx: Path
    checkpoint: str
    reference: object   # export.reference.ReferencePipeline
    session: object
    flops: int
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def threads(self) -> int | None:
        return int(self.params.get("intra_op_threads", "0")) or None

    @property
    def optimization(self) -> str:
        return self.params.get("optimization", "all")


def load_detector(name: str, params: dict, build: Path) -> Detector:
    """The served detector's spec (labels as exported), its ONNX in `build`, and its reference pipeline
    on the checkpoint the served config names."""
    from genguard.export.checkpoints import load
    from genguard.export.reference import ReferencePipeline

    folder = build / "onnx" / name
    onnx_path, fp32 = folder / params.get("onnx_file", "model.onnx"), folder / "model.onnx"
    if not onnx_path.is_file():
        raise RuntimeError(f"{name}: the server serves {onnx_path.name} but {onnx_path} is missing: "
                           f"pass the --build the server was started from")
    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(onnx_path))
    if meta.get("checkpoint") != params.get("checkpoint"):
        raise RuntimeError(f"{name}: {onnx_path} was exported from {meta.get('checkpoint')} but the server serves "
                           f"{params.get('checkpoint')}: pass the --build the server was started from")
    spec = specs.as_exported(specs.get(name), meta.get("heads", {}))
    checkpoint = params["checkpoint"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning; the tables say "random" already
        module = load(spec, checkpoint)
    reference = ReferencePipeline(spec, module, checkpoint)
    threads = int(params.get("intra_op_threads", "0")) or None
    # the served engine and precision (genguard.engines), as its config says
    session = engines.open_engine(params.get("cpu_option", engines.DEFAULT), onnx_path, threads=threads,
                                  arena=params.get("arena", "1") != "0", optimization=params.get("optimization", "all"),
                                   spinning=False)
    return Detector(spec, params, onnx_path, fp32, checkpoint, reference, session, flops_per_image(fp32))


def sample_images(count: int) -> dict[str, bytes]:
    """`count` of the real photos scikit-image ships (cycled when more are asked for)."""
    from genguard.export import samples

    photos = samples.photos()
    names = [list(photos)[i % len(photos)] for i in range(count)]
    return {f"{i:02d}-{n}": photos[n] for i, n in enumerate(names)}


def serves_int8(detectors: list[Detector]) -> bool:
    """Whether the running server serves any detector's INT8 model (read from its configs, not a tag)."""
    from genguard.engines import INT8_FILE

    return any(d.onnx.name == INT8_FILE for d in detectors)


def serves_options(detectors: list[Detector]) -> bool:
    """Whether some detector runs an engine/precision option beyond FP32 and INT8=1 (make serve PRECISION=...)."""
    return any(d.params.get("cpu_option", engines.DEFAULT) not in (engines.DEFAULT, "ort-int8") for d in detectors)


def served_tag(detectors: list[Detector]) -> str:
    tag = "options" if serves_options(detectors) else "int8" if serves_int8(detectors) else "fp32"
    opt = {d.optimization for d in detectors}
    threads = {d.threads for d in detectors}
    if opt != {"all"}:
        tag += "-opt_" + "_".join(sorted(opt))
    if threads != {None}:
        tag += "-threads_" + "_".join(str(t or 0) for t in sorted(threads, key=lambda t: t or 0))
    return tag


