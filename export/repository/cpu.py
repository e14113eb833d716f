"""The cpu target: python-backend preprocess and detectors (ONNX Runtime on CPU), served by the
tritonserver bundled in PyPI nvidia-pytriton (`make serve`).

  preprocess/   python backend: encoded images -> one tensor per distinct input spec + IMAGE_INFO
  <detector>/   python backend running its ONNX file on the configured CPU engine (genguard.engines: ONNX
                Runtime FP32 by default; ORT INT8, OpenVINO FP32/BF16/INT8 by --precision), one per exported detector
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from genguard import engines, protocol, specs
from genguard.preprocess import DecodeLimits
from genguard.provenance import ProvenanceConfig

from .common import (INT8_FILE, ExportedDetector, QueuePolicy, RepositoryError, _params, _place, _tensor,
                     _write_model, apply_queue_policy, detector_tensors, label_files)


def preprocess_config(inputs: dict[str, specs.InputSpec], max_batch: int, limits: DecodeLimits,
                      decode_threads: int = 0, queue: QueuePolicy = QueuePolicy(),
                      provenance: ProvenanceConfig = ProvenanceConfig()) -> mc.ModelConfig:
    config = mc.ModelConfig(name=protocol.PREPROCESS, backend="python", max_batch_size=max_batch)
    _tensor(config.input, protocol.INPUT, mc.TYPE_UINT8, [-1])
    for name, spec in inputs.items():
        _tensor(config.output, protocol.pixels_tensor(name), mc.TYPE_FP32, spec.shape)
    _tensor(config.output, protocol.IMAGE_INFO, mc.TYPE_STRING, [1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    apply_queue_policy(config, queue)  # dynamic batching of equal-length requests, and the burst policy
    _params(config, inputs=",".join(inputs), limits=dataclasses.asdict(limits), decode_threads=str(decode_threads),
            provenance=provenance.to_json())
    return config


@dataclass(frozen=True)
class CpuOptions:
    """ONNX Runtime settings of the cpu target's detectors; off-default ones are speed options whose
    accuracy cost the benchmarks measure.

    optimization:     ORT graph optimisation level: disable, basic, extended, all.
    intra_op_threads: 0 = ORT's default (one per physical core).
    int8:             serve build/onnx/<name>/model.int8.onnx (dynamic INT8 MatMul/Gemm) instead of FP32, vouched
                      for by make quantize's record (INT8=1; --precision ort-int8 asks for the full record).
    precision:        (detector, option) pairs: a genguard.engines option, or "best" (the fastest recorded option
                      within budget that this CPU runs); detectors not named serve ort-fp32 (or INT8 with int8).
    arena:            ONNX Runtime's CPU memory arena: "auto" (the spec's cpu_arena), "on", "off".
    queue:            the entry step's queue policy for bursts.
    """

    optimization: str = "all"
    intra_op_threads: int = 0
    int8: bool = False
    precision: tuple[tuple[str, str], ...] = ()
    arena: str = "auto"
    queue: QueuePolicy = QueuePolicy()

    def arena_for(self, spec: specs.DetectorSpec) -> bool:
        return spec.cpu_arena if self.arena == "auto" else self.arena == "on"

    def onnx_file(self) -> str:
        return INT8_FILE if self.int8 else "model.onnx"

    def option_for(self, detector: str) -> str:
        """The option asked for `detector` ("best" unresolved); INT8=1 is ort-int8 on quantize's record."""
        asked = dict(self.precision).get(detector)
        return asked or ("ort-int8" if self.int8 else engines.DEFAULT)


def resolve_option(det: ExportedDetector, options: CpuOptions) -> tuple[str, Path, str, str | None]:
    """(option, file, sha256, why) to serve for `det`, refusing with RepositoryError an option that is unknown,
    that this CPU can't run, or whose accuracy record is missing, stale or outside its budget. `why` is `best`'s
    reason for its choice (genguard.export.cpu_options.choose_best), None for an option asked for by name."""
    from genguard.export import cpu_options

    folder = det.onnx.parent
    asked = dict(options.precision).get(det.spec.name)
    if asked is None:  # the defaults keep their own checks: FP32 parity, or INT8=1's quantize record
        path, digest = det.checked_onnx(options.int8)
        return ("ort-int8" if options.int8 else engines.DEFAULT), path, digest, None
    why = None
    if asked == "best":
        choice = cpu_options.choose_best(folder, threads=options.intra_op_threads)
        option, why = choice.option, choice.why
    else:
        option = asked
    if option == engines.DEFAULT:
        path, digest = det.checked_onnx(False)
        return option, path, digest, why
    try:
        path, digest = cpu_options.check_option(folder, option)
    except cpu_options.OptionRefused as exc:
        raise RepositoryError(f"--precision refused: {exc}") from None
    return option, path, digest, why


def detector_config(det: ExportedDetector, max_batch: int, options: CpuOptions = CpuOptions(),
                    onnx_sha256: str = "", option: str | None = None, onnx_file: str | None = None,
                    files_sha256: dict[str, str] | None = None) -> mc.ModelConfig:
    """files_sha256: each served file's sha256 where the option serves several (an OpenVINO IR's .xml and .bin;
    onnx_sha256 is then the digest over the pair), so that the detector model names the one that changed."""
    spec = det.spec
    config = mc.ModelConfig(name=spec.name, backend="python", max_batch_size=max_batch)
    detector_tensors(config, spec)
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    option = engines.get(option or ("ort-int8" if options.int8 else engines.DEFAULT))
    _params(config, detector=spec.name, onnx_file=onnx_file or options.onnx_file(), weights=det.weights,
            checkpoint=det.checkpoint, intra_op_threads=str(options.intra_op_threads),
            optimization=options.optimization, onnx_sha256=onnx_sha256, cpu_option=option.name,
            engine=option.engine, precision=option.precision, arena="1" if options.arena_for(spec) else "0")
    if files_sha256:
        _params(config, files_sha256=files_sha256)
    if spec.cpu_run_batch:
        _params(config, run_batch=str(spec.cpu_run_batch))
    return config


def render_cpu(out: Path, dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec], max_batch: int,
               limits: DecodeLimits, cpu: CpuOptions, copy: bool, provenance: ProvenanceConfig
               ) -> tuple[dict[str, str], dict, dict[str, dict]]:
    """Writes preprocess and the detectors; returns each detector's CPU option (for the answer), when some
    asked for `best`, what it chose on this CPU and why ({"cpu": ..., "detectors": {name: {option, why}}},
    for `genguard health` and bench-compare; {} otherwise), and each detector's served file and its sha256
    ({name: {file, sha256}}, the digest its config carries; for `genguard health` and GET /v1/models)."""
    from genguard import cpus
    from genguard.export import cpu_options

    _write_model(out, preprocess_config(inputs, max_batch, limits, queue=cpu.queue, provenance=provenance),
                 model_py="preprocess")
    chosen, best, served = {}, {}, {}
    for det in dets:
        option, onnx, digest, why = resolve_option(det, cpu)
        chosen[det.spec.name] = option
        served[det.spec.name] = {"file": onnx.name, "sha256": digest}
        if why is not None:
            best[det.spec.name] = {"option": option, "why": why}
        # the served file keeps its own name (model.qdq.onnx...): the detector model opens params["onnx_file"];
        # an OpenVINO IR (bf16-mixed, prepared by make cpu-options) is served as its .xml + .bin pair
        files = engines.option_files(onnx)
        each = {f.name: cpu_options._file_sha256(f) for f in files} if len(files) > 1 else None
        _write_model(out, detector_config(det, max_batch, cpu, onnx_sha256=digest, option=option, onnx_file=onnx.name,
                                          files_sha256=each),
                     label_files(det.spec), model_py="detector", onnx=onnx, copy=copy)
        for extra in files[1:]:
            _place(extra, out / det.spec.name / "1" / extra.name, copy)
    return chosen, ({"cpu": cpus.describe(), "detectors": best} if best else {}), served
