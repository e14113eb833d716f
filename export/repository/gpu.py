"""The GPU targets (onnx-gpu, tensorrt), served by the NGC tritonserver container (docker/). They keep the
ensemble's name, input and outputs, and postprocess; they differ from the cpu target in:

  validate/     python backend (CPU): header checks; refused images become a placeholder + FAILURE info
  preprocess/   DALI backend: 1/dali.py (autoserialized by the server) + 1/pipeline.json, GPU decode/resize
  <detector>/   onnx-gpu: platform onnxruntime_onnx on KIND_GPU with the TensorRT execution accelerator;
                tensorrt: platform tensorrt_plan, CUDA graphs, onnx/{model.onnx,engine.json} from which
                `python -m genguard.export.tensorrt build` makes 1/model.plan on the serving GPU
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from genguard import dali, protocol, specs
from genguard.dali import DALI_INPUT
from genguard.export.families import gpu_precision
from genguard.preprocess import DecodeLimits
from genguard.protocol import HTTP_PORT, METRICS_PORT
from genguard.provenance import ProvenanceConfig
from genguard.specs import DetectorSpec

from .common import (DEFAULT_MAX_BATCH, GPU_TARGETS, VALIDATE, ExportedDetector, QueuePolicy, _params, _place,
                     _tensor, _write_model, apply_queue_policy, detector_tensors, label_files)


@dataclass(frozen=True)
class GpuOptions:
    """Settings of the GPU targets' models.

    instances:        model instances per GPU for each detector (instance_group KIND_GPU).
    gpus:             GPU ids for the detectors and DALI (empty: every GPU the server sees).
    opt_batch:        TensorRT profile's opt batch (0: max_batch_size, for throughput under load).
    queue_delay_us:   dynamic batcher's max queue delay.
    verify:           validate step: "header" (header checks only) or "decode" (also a full Pillow decode
                      per image: closes the corrupt-payload hole at a CPU cost; see genguard/dali.py).
    dali_threads:     DALI CPU threads (decode of PNG/WebP, argument computation).
    ort_cache:        onnx-gpu: where ONNX Runtime's TensorRT EP keeps its engines and timing cache.
    workspace_mib:    TensorRT builder workspace.
    queue:            the entry step's queue policy for bursts.
    """

    instances: int = 1
    gpus: tuple[int, ...] = ()
    opt_batch: int = 0
    queue_delay_us: int = 2000
    verify: str = "header"
    dali_threads: int = 4
    ort_cache: str = "/engine-cache/onnxruntime"
    workspace_mib: int = 4096
    queue: QueuePolicy = QueuePolicy()


def _gpu_group(config: mc.ModelConfig, count: int, gpus: tuple[int, ...]) -> None:
    group = config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=count)
    group.gpus.extend(gpus)


def _batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... up to max_batch, and max_batch itself: the dynamic batcher's preferred sizes and
    the CUDA graphs captured for them."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


def _detector_warmup(config: mc.ModelConfig, spec: DetectorSpec, max_batch: int) -> None:
    """Warm-up requests at batch 1 and max_batch: the model is READY only after both ran (TensorRT:
    context + CUDA graphs; ONNX Runtime's TensorRT EP: its engine build)."""
    for batch in sorted({1, max_batch}):
        sample = config.model_warmup.add(name=f"random_batch_{batch}", batch_size=batch)
        sample.inputs[protocol.DETECTOR_INPUT].data_type = mc.TYPE_FP32
        sample.inputs[protocol.DETECTOR_INPUT].dims.extend(spec.input.shape)
        sample.inputs[protocol.DETECTOR_INPUT].random_data = True


def _gpu_detector_base(det: ExportedDetector, max_batch: int, gpu: GpuOptions) -> mc.ModelConfig:
    spec = det.spec
    config = mc.ModelConfig(name=spec.name, max_batch_size=max_batch)
    detector_tensors(config, spec)
    config.dynamic_batching.max_queue_delay_microseconds = gpu.queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(_batch_sizes(max_batch))
    _gpu_group(config, gpu.instances, gpu.gpus)
    _detector_warmup(config, spec, max_batch)
    _params(config, detector=spec.name, weights=det.weights, checkpoint=det.checkpoint)
    return config


def engine_recipe(det: ExportedDetector, max_batch: int, gpu: GpuOptions = GpuOptions()):
    """The TensorRT build recipe for one detector: profile min 1 / opt / max == max_batch_size."""
    from genguard.export.tensorrt import Recipe

    return Recipe(detector=det.spec.name, input=protocol.DETECTOR_INPUT, shape=tuple(det.spec.input.shape),
                  max_batch=max_batch, opt_batch=gpu.opt_batch or max_batch,
                  precision=gpu_precision(det.spec), workspace_mib=gpu.workspace_mib)


def tensorrt_detector_config(det: ExportedDetector, max_batch: int, gpu: GpuOptions = GpuOptions()) -> mc.ModelConfig:
    config = _gpu_detector_base(det, max_batch, gpu)
    config.platform = "tensorrt_plan"
    cuda = config.optimization.cuda
    cuda.graphs = True
    for batch in _batch_sizes(max_batch):
        graph = cuda.graph_spec.add(batch_size=batch)
        graph.input[protocol.DETECTOR_INPUT].dim.extend(det.spec.input.shape)
    recipe = engine_recipe(det, max_batch, gpu)
    _params(config, precision=recipe.precision)
    return config


def onnx_gpu_detector_config(det: ExportedDetector, max_batch: int, gpu: GpuOptions = GpuOptions()) -> mc.ModelConfig:
    """ONNX Runtime on CUDA with its TensorRT execution provider. The backend maps precision_mode to
    trt_fp16_enable and takes FP32/FP16/INT8 only, so a BF16 detector (Freepik) runs FP32 here."""
    config = _gpu_detector_base(det, max_batch, gpu)
    config.platform = "onnxruntime_onnx"
    shape = "x".join(str(d) for d in det.spec.input.shape)
    profile = lambda batch: f"{protocol.DETECTOR_INPUT}:{batch}x{shape}"  # noqa: E731
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    cache = f"{gpu.ort_cache.rstrip('/')}/{det.spec.name}"
    accelerator.parameters.update({
        "precision_mode": "FP16" if gpu_precision(det.spec) == "fp16" else "FP32",
        "max_workspace_size_bytes": str(gpu.workspace_mib << 20),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        # one engine for every batch size (without a profile ORT rebuilds when a larger batch arrives)
        "trt_profile_min_shapes": profile(1),
        "trt_profile_opt_shapes": profile(gpu.opt_batch or max_batch),
        "trt_profile_max_shapes": profile(max_batch),
    })
    return config


def validate_config(max_batch: int, limits: DecodeLimits, verify: str = "header",
                    queue: QueuePolicy = QueuePolicy(),
                    provenance: ProvenanceConfig = ProvenanceConfig()) -> mc.ModelConfig:
    config = mc.ModelConfig(name=VALIDATE, backend="python", max_batch_size=max_batch)
    _tensor(config.input, protocol.INPUT, mc.TYPE_UINT8, [-1])
    _tensor(config.output, DALI_INPUT, mc.TYPE_UINT8, [-1])
    _tensor(config.output, protocol.IMAGE_INFO, mc.TYPE_STRING, [1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    apply_queue_policy(config, queue)
    _params(config, limits=dataclasses.asdict(limits), verify=verify, provenance=provenance.to_json())
    return config


def dali_preprocess_config(inputs: dict[str, specs.InputSpec], max_batch: int, gpu: GpuOptions = GpuOptions(),
                           warmup_bytes: int | None = None) -> mc.ModelConfig:
    """The DALI backend's config. Outputs are matched to the pipeline's outputs by position: the order of
    `inputs`, as in pipeline.json. No dynamic batching, on purpose: a DALI batch is one request, so an
    image that slips past validate and fails its decode fails only the request that sent it."""
    config = mc.ModelConfig(name=protocol.PREPROCESS, backend="dali", max_batch_size=max_batch)
    _tensor(config.input, DALI_INPUT, mc.TYPE_UINT8, [-1])
    for name, spec in inputs.items():
        _tensor(config.output, protocol.pixels_tensor(name), mc.TYPE_FP32, spec.shape)
    _gpu_group(config, 1, gpu.gpus)  # DALI backend: more than one instance multiplies its memory
    _params(config, num_threads=str(gpu.dali_threads))
    if warmup_bytes:
        sample = config.model_warmup.add(name="jpeg", batch_size=1)
        sample.inputs[DALI_INPUT].data_type = mc.TYPE_UINT8
        sample.inputs[DALI_INPUT].dims.append(warmup_bytes)
        sample.inputs[DALI_INPUT].input_data_file = "warmup.jpg"
    return config


def render_gpu(target: str, out: Path, dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec],
                max_batch: int, limits: DecodeLimits, gpu: GpuOptions, copy: bool,
                provenance: ProvenanceConfig = ProvenanceConfig()) -> None:
    from genguard.export.tensorrt import ONNX_FOLDER, RECIPE_FILE

    _write_model(out, validate_config(max_batch, limits, gpu.verify, gpu.queue, provenance), model_py=VALIDATE)
    warmup = dali.warmup_jpeg()
    _write_model(out, dali_preprocess_config(inputs, max_batch, gpu, warmup_bytes=len(warmup)))
    dali.write_model(out / protocol.PREPROCESS, dali.pipeline_parameters(inputs))
    (out / protocol.PREPROCESS / "warmup").mkdir(exist_ok=True)
    (out / protocol.PREPROCESS / "warmup" / "warmup.jpg").write_bytes(warmup)
    for det in dets:
        labels = label_files(det.spec)
        if target == "onnx-gpu":
            _write_model(out, onnx_gpu_detector_config(det, max_batch, gpu), labels, onnx=det.onnx, copy=copy)
        else:
            _write_model(out, tensorrt_detector_config(det, max_batch, gpu), labels)
            source = out / det.spec.name / ONNX_FOLDER
            source.mkdir()
            _place(det.onnx, source / "model.onnx", copy)
            (source / RECIPE_FILE).write_text(engine_recipe(det, max_batch, gpu).to_json() + "\n")


MIB = 1 << 20
SHM_MARGIN = 256 * MIB  # python backend's own regions, IMAGE_INFO/RESULT strings, allocator slack


def shm_bytes(target: str, max_batch: int, limits: DecodeLimits, inputs: dict[str, specs.InputSpec]) -> int:
    """/dev/shm a server needs so a full batch of the largest accepted images passes through its
    python-backend steps (Triton's python backend hands every tensor to and from its stub processes in
    /dev/shm; Docker's default is 64 MiB).

    GPU targets: the validate step holds its input IMAGE [max_batch, max_bytes] and its output ENCODED
    (at most as large) at once. cpu target: the preprocess step's input, plus its float32 outputs, which
    the python-backend detectors receive again through /dev/shm."""
    encoded = max_batch * limits.max_bytes
    if target in GPU_TARGETS:
        need = 2 * encoded
    else:
        pixels = sum(4 * max_batch * 3 * spec.size[0] * spec.size[1] for spec in inputs.values())
        need = encoded + 2 * pixels
    return need + SHM_MARGIN


def docker_run_command(target: str, repository: str | Path, *, max_batch: int = DEFAULT_MAX_BATCH,
                       limits: DecodeLimits = DecodeLimits(), inputs: dict[str, specs.InputSpec] | None = None,
                       image: str = "genguard-server:latest", cache_volume: str = "genguard-engines") -> list[str]:
    """The `docker run` that serves a rendered repository with the server image (docker/README.md)."""
    inputs = inputs if inputs is not None else specs.distinct_inputs(specs.DETECTORS.values())
    shm_mib = -(-shm_bytes(target, max_batch, limits, inputs) // MIB)
    command = ["docker", "run", "--rm"]
    if target in GPU_TARGETS:
        command.append("--gpus=all")
    command += [f"--shm-size={shm_mib}m", "-p", f"{HTTP_PORT}-{METRICS_PORT}:{HTTP_PORT}-{METRICS_PORT}",
                # writable: the engine builder links plans into <detector>/1/ (uid 1000 in the image)
                "-v", f"{Path(repository).resolve()}:/models/{target}",
                "-v", f"{cache_volume}:/engine-cache", "-e", f"GENGUARD_TARGET={target}", image]
    return command
