"""The cpu target: python-backend preprocess and detectors (ONNX Runtime on CPU), served by the
tritonserver bundled in PyPI nvidia-pytriton (`make serve`).

  preprocess/   python backend: encoded images -> one tensor per distinct input spec + IMAGE_INFO
  <detector>/   python backend running 1/model.onnx on ONNX Runtime (CPU), one per exported detector
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from genguard import protocol, specs
from genguard.preprocess import DecodeLimits
from genguard.provenance import ProvenanceConfig

from .common import (INT8_FILE, ExportedDetector, QueuePolicy, _params, _tensor, _write_model, apply_queue_policy,
                     detector_tensors, label_files)


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
    int8:             serve build/onnx/<name>/model.int8.onnx (dynamic INT8 MatMul/Gemm) instead of FP32.
    queue:            the entry step's queue policy for bursts.
    """

    optimization: str = "all"
    intra_op_threads: int = 0
    int8: bool = False
    queue: QueuePolicy = QueuePolicy()

    def onnx_file(self) -> str:
        return INT8_FILE if self.int8 else "model.onnx"


def detector_config(det: ExportedDetector, max_batch: int, options: CpuOptions = CpuOptions(),
                    onnx_sha256: str = "") -> mc.ModelConfig:
    spec = det.spec
    config = mc.ModelConfig(name=spec.name, backend="python", max_batch_size=max_batch)
    detector_tensors(config, spec)
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    _params(config, detector=spec.name, onnx_file=options.onnx_file(), weights=det.weights,
            checkpoint=det.checkpoint, intra_op_threads=str(options.intra_op_threads),
            optimization=options.optimization, onnx_sha256=onnx_sha256)
    return config


def render_cpu(out: Path, dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec], max_batch: int,
               limits: DecodeLimits, cpu: CpuOptions, copy: bool, provenance: ProvenanceConfig) -> None:
    _write_model(out, preprocess_config(inputs, max_batch, limits, queue=cpu.queue, provenance=provenance),
                 model_py="preprocess")
    for det in dets:
        onnx, digest = det.checked_onnx(cpu.int8)
        _write_model(out, detector_config(det, max_batch, cpu, onnx_sha256=digest), label_files(det.spec),
                     model_py="detector", onnx=onnx, copy=copy)
