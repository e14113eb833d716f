"""Render a Triton model repository from the detector specs and the exported ONNX models.

Configs are built as model_config_pb2 messages and written with protobuf text_format, so every field
is checked by the schema. Layout (target cpu), under build/model_repository/cpu/ by default:

  preprocess/   python backend: encoded images -> one tensor per distinct input spec + IMAGE_INFO
  <detector>/   python backend running 1/model.onnx on ONNX Runtime (CPU), one per exported detector
  postprocess/  python backend: head logits -> fused per-image answer (JSON + numeric tensors)
  genguard/     the ensemble clients call: preprocess -> detectors (in parallel) -> postprocess

The GPU targets (onnx-gpu, tensorrt; NGC tritonserver container) keep the ensemble's name, input and
outputs, and postprocess; they differ in:

  validate/     python backend (CPU): header checks; refused images become a placeholder + FAILURE info
  preprocess/   DALI backend: 1/dali.py (autoserialized by the server) + 1/pipeline.json, GPU decode/resize
  <detector>/   onnx-gpu: platform onnxruntime_onnx on KIND_GPU with the TensorRT execution accelerator;
                tensorrt: platform tensorrt_plan, CUDA graphs, onnx/{model.onnx,engine.json} from which
                `python -m genguard.export.tensorrt build` makes 1/model.plan on the serving GPU
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from genguard import protocol, specs, triton_models
from genguard.export import sha256_file
from genguard.fusion import FusionConfig, nsfw_labels, source_names
from genguard.provenance import ProvenanceConfig
from genguard.preprocess import DecodeLimits
from genguard.specs import DetectorSpec

TARGETS = ("cpu", "onnx-gpu", "tensorrt")
GPU_TARGETS = ("onnx-gpu", "tensorrt")
DEFAULT_MAX_BATCH = 16
VALIDATE = "validate"  # the GPU targets' first step (python backend) before the DALI preprocess
INT8_FILE = "model.int8.onnx"
RENDERED_MARKER = ".genguard-repository"  # marks a folder render() made: the only kind it will replace


class RepositoryError(RuntimeError):
    """The build can't make a servable repository (missing or failed exports)."""


@dataclass(frozen=True)
class ExportedDetector:
    spec: DetectorSpec  # with the label order the ONNX was exported with
    onnx: Path
    weights: str  # "real" | "random"
    checkpoint: str
    revision: str | None = None  # hub commit the export loaded (None: local path or random)
    parity: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # its parity.json

    def checked_onnx(self, int8: bool = False) -> tuple[Path, str]:
        """The ONNX file to serve and its sha256, refusing one that no passing check vouches for."""
        if not int8:
            return self.onnx, self.parity["onnx_sha256"]
        path, check = self.onnx.with_name(INT8_FILE), self.parity.get("int8")
        name = self.spec.name
        if not path.is_file():
            raise RepositoryError(f"{name}: {path} is missing (make quantize writes the INT8 models)")
        if not check or not check.get("passed"):
            raise RepositoryError(f"{name}: no passing INT8 check recorded in parity.json for {path} "
                                  "(run make quantize)")
        if check.get("fp32_sha256") != self.parity["onnx_sha256"]:
            raise RepositoryError(f"{name}: {path} was quantised from another FP32 export; run make quantize again")
        actual = sha256_file(path)
        if check.get("onnx_sha256") != actual:
            raise RepositoryError(f"{name}: {path} (sha256 {actual[:12]}) is not the file its INT8 check vouched "
                                  f"for (sha256 {str(check.get('onnx_sha256'))[:12]}); run make quantize again")
        return path, actual


def find_exports(build: Path, detectors: list[str] | None = None) -> list[ExportedDetector]:
    """Exported detectors under build/onnx, in spec order. Every required detector must be there
    (optional ones only if exported), each with a passing parity.json; otherwise RepositoryError."""
    found, problems = [], []
    names = detectors or [s.name for s in specs.DETECTORS.values()]
    for name in names:
        spec = specs.get(name)
        folder = build / "onnx" / name
        onnx_path, parity_path = folder / "model.onnx", folder / "parity.json"
        if not onnx_path.is_file() or not parity_path.is_file():
            if spec.optional and not detectors:
                continue
            problems.append(f"{name}: no export in {folder} (run: make export, or make export WEIGHTS=random)")
            continue
        parity = json.loads(parity_path.read_text())
        if not parity.get("passed"):
            problems.append(f"{name}: export failed its parity check ({parity_path})")
            continue
        actual = sha256_file(onnx_path)
        if parity.get("onnx_sha256") != actual:
            problems.append(f"{name}: {onnx_path} (sha256 {actual[:12]}) is not the file its parity check vouched "
                            f"for (sha256 {str(parity.get('onnx_sha256'))[:12]}); export it again")
            continue
        meta = _onnx_metadata(onnx_path)
        for head, labels in meta["heads"].items():
            spec = specs.with_labels(spec, head, tuple(labels))
        found.append(ExportedDetector(spec, onnx_path.resolve(), meta["weights"], meta["checkpoint"],
                                      revision=meta.get("revision"), parity=parity))
    if problems:
        raise RepositoryError("cannot render the repository:\n  " + "\n  ".join(problems))
    return found


def _onnx_metadata(path: Path) -> dict:
    from genguard import onnx_runtime

    return onnx_runtime.decode_metadata(onnx_runtime.metadata(path))


def _params(config: mc.ModelConfig, **values) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value if isinstance(value, str) else json.dumps(value)


def _tensor(message, name: str, dtype: int, dims, label_filename: str | None = None):
    entry = message.add(name=name, data_type=dtype, dims=list(dims))
    if label_filename:
        entry.label_filename = label_filename
    return entry


@dataclass(frozen=True)
class QueuePolicy:
    """What the ensemble's entry step (preprocess on cpu, validate on the GPU targets) does with bursts
    beyond capacity: requests past `max_queue_size` are refused at once with UNAVAILABLE "Exceeds maximum
    queue size", and requests that waited `timeout_s` are refused; the client retries with backoff.

    Only the entry step: in Triton 2.51 a request that a *composing* model's queue rejects mid-ensemble is
    never answered (the client waits for its deadline), measured in tests/test_soak.py's history.
    """

    max_queue_size: int = 128
    timeout_s: float = 30.0


def apply_queue_policy(config: mc.ModelConfig, queue: QueuePolicy) -> None:
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = int(queue.timeout_s * 1e6)
    policy.allow_timeout_override = True
    policy.max_queue_size = queue.max_queue_size


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
    _tensor(config.input, protocol.DETECTOR_INPUT, mc.TYPE_FP32, spec.input.shape)
    for head in spec.heads:
        _tensor(config.output, head.name, mc.TYPE_FP32, [head.num_logits],
                f"{head.name}_labels.txt" if head.activation == "softmax" else None)
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    _params(config, detector=spec.name, onnx_file=options.onnx_file(), weights=det.weights,
            checkpoint=det.checkpoint, intra_op_threads=str(options.intra_op_threads),
            optimization=options.optimization, onnx_sha256=onnx_sha256)
    return config


def postprocess_config(dets: list[ExportedDetector], max_batch: int, fusion: FusionConfig) -> mc.ModelConfig:
    detector_specs = [d.spec for d in dets]
    config = mc.ModelConfig(name=protocol.POSTPROCESS, backend="python", max_batch_size=max_batch)
    _tensor(config.input, protocol.IMAGE_INFO, mc.TYPE_STRING, [1])
    for det in dets:
        for head in det.spec.heads:
            _tensor(config.input, protocol.head_tensor(det.spec.name, head.name), mc.TYPE_FP32, [head.num_logits])
    for name, dtype, dims, labels in output_tensors(detector_specs):
        _tensor(config.output, name, dtype, dims, labels)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    _params(config,
            detectors={d.spec.name: {h.name: list(h.labels) for h in d.spec.heads} for d in dets},
            weights={d.spec.name: d.weights for d in dets},
            revisions={d.spec.name: d.revision for d in dets},
            fusion=fusion.to_json())
    return config


def output_tensors(detector_specs: list[DetectorSpec]):
    """(name, type, dims, label file) of what postprocess and the ensemble return."""
    outputs = [
        (protocol.RESULT, mc.TYPE_STRING, [1], None),
        (protocol.IS_AI_GENERATED, mc.TYPE_FP32, [1], None),
        (protocol.POSSIBLE_SOURCES, mc.TYPE_FP32, [len(source_names(detector_specs))], "sources.txt"),
        (protocol.STATUS, mc.TYPE_INT32, [1], None),
    ]
    if nsfw_labels(detector_specs):
        outputs.append((protocol.NSFW_SCORES, mc.TYPE_FP32, [len(nsfw_labels(detector_specs))], "nsfw_levels.txt"))
    return outputs


def ensemble_config(dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec], max_batch: int,
                    *, validate: bool = False) -> mc.ModelConfig:
    """The `genguard` ensemble. validate=True (GPU targets): IMAGE -> validate -> (ENCODED -> DALI
    preprocess, IMAGE_INFO -> postprocess); the client-facing input and outputs are the same."""
    config = mc.ModelConfig(name=protocol.ENSEMBLE, platform="ensemble", max_batch_size=max_batch)
    _tensor(config.input, protocol.INPUT, mc.TYPE_UINT8, [-1])
    outputs = output_tensors([d.spec for d in dets])
    for name, dtype, dims, labels in outputs:
        _tensor(config.output, name, dtype, dims, labels)
    steps = config.ensemble_scheduling.step
    if validate:
        from genguard.export.dali import DALI_INPUT

        check = steps.add(model_name=VALIDATE, model_version=-1)
        check.input_map[protocol.INPUT] = protocol.INPUT
        check.output_map[DALI_INPUT] = DALI_INPUT
        check.output_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
        pre = steps.add(model_name=protocol.PREPROCESS, model_version=-1)
        pre.input_map[DALI_INPUT] = DALI_INPUT
    else:
        pre = steps.add(model_name=protocol.PREPROCESS, model_version=-1)
        pre.input_map[protocol.INPUT] = protocol.INPUT
    for name in inputs:
        pre.output_map[protocol.pixels_tensor(name)] = protocol.pixels_tensor(name)
    if not validate:
        pre.output_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
    post = mc.ModelEnsembling.Step(model_name=protocol.POSTPROCESS, model_version=-1)
    post.input_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
    for det in dets:
        step = steps.add(model_name=det.spec.name, model_version=-1)
        step.input_map[protocol.DETECTOR_INPUT] = protocol.pixels_tensor(det.spec.input.name)
        for head in det.spec.heads:
            tensor = protocol.head_tensor(det.spec.name, head.name)
            step.output_map[head.name] = tensor
            post.input_map[tensor] = tensor
    for name, *_ in outputs:
        post.output_map[name] = name
    steps.append(post)
    return config


def _write_model(root: Path, config: mc.ModelConfig, files: dict[str, str | Path] | None = None,
                 model_py: str | None = None, onnx: Path | None = None, copy: bool = False) -> None:
    folder = root / config.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(text_format.MessageToString(config))
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    if model_py:
        shutil.copyfile(Path(triton_models.__file__).parent / f"{model_py}.py", folder / "1" / "model.py")
    if onnx:
        target = folder / "1" / onnx.name
        if target.is_symlink() or target.exists():
            target.unlink()
        if copy:
            shutil.copyfile(onnx, target)
        else:
            os.symlink(onnx, target)


# ---------------------------------------------------------------------------------------------------
# GPU targets (onnx-gpu, tensorrt): NGC tritonserver container


@dataclass(frozen=True)
class GpuOptions:
    """Settings of the GPU targets' models.

    instances:        model instances per GPU for each detector (instance_group KIND_GPU).
    gpus:             GPU ids for the detectors and DALI (empty: every GPU the server sees).
    opt_batch:        TensorRT profile's opt batch (0: max_batch_size, for throughput under load).
    queue_delay_us:   dynamic batcher's max queue delay.
    verify:           validate step: "header" (header checks only) or "decode" (also a full Pillow decode
                      per image: closes the corrupt-payload hole at a CPU cost; see genguard/export/dali.py).
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
    _tensor(config.input, protocol.DETECTOR_INPUT, mc.TYPE_FP32, spec.input.shape)
    for head in spec.heads:
        _tensor(config.output, head.name, mc.TYPE_FP32, [head.num_logits],
                f"{head.name}_labels.txt" if head.activation == "softmax" else None)
    config.dynamic_batching.max_queue_delay_microseconds = gpu.queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(_batch_sizes(max_batch))
    _gpu_group(config, gpu.instances, gpu.gpus)
    _detector_warmup(config, spec, max_batch)
    _params(config, detector=spec.name, weights=det.weights, checkpoint=det.checkpoint)
    return config


def engine_recipe(det: ExportedDetector, max_batch: int, gpu: GpuOptions = GpuOptions()):
    """The TensorRT build recipe for one detector: profile min 1 / opt / max == max_batch_size."""
    from genguard.export.tensorrt import Recipe, precision_for

    return Recipe(detector=det.spec.name, input=protocol.DETECTOR_INPUT, shape=tuple(det.spec.input.shape),
                  max_batch=max_batch, opt_batch=gpu.opt_batch or max_batch,
                  precision=precision_for(det.spec.name), workspace_mib=gpu.workspace_mib)


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
    from genguard.export.tensorrt import precision_for

    config = _gpu_detector_base(det, max_batch, gpu)
    config.platform = "onnxruntime_onnx"
    shape = "x".join(str(d) for d in det.spec.input.shape)
    profile = lambda batch: f"{protocol.DETECTOR_INPUT}:{batch}x{shape}"  # noqa: E731
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    cache = f"{gpu.ort_cache.rstrip('/')}/{det.spec.name}"
    accelerator.parameters.update({
        "precision_mode": "FP16" if precision_for(det.spec.name) == "fp16" else "FP32",
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
    from genguard.export.dali import DALI_INPUT

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
    from genguard.export.dali import DALI_INPUT

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


def _render_gpu(target: str, out: Path, dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec],
                max_batch: int, limits: DecodeLimits, gpu: GpuOptions, copy: bool,
                provenance: ProvenanceConfig = ProvenanceConfig()) -> None:
    from genguard.export import dali
    from genguard.export.tensorrt import ONNX_FOLDER, RECIPE_FILE

    _write_model(out, validate_config(max_batch, limits, gpu.verify, gpu.queue, provenance), model_py=VALIDATE)
    warmup = dali.warmup_jpeg()
    _write_model(out, dali_preprocess_config(inputs, max_batch, gpu, warmup_bytes=len(warmup)))
    dali.write_model(out / protocol.PREPROCESS, dali.pipeline_parameters(inputs))
    (out / protocol.PREPROCESS / "warmup").mkdir(exist_ok=True)
    (out / protocol.PREPROCESS / "warmup" / "warmup.jpg").write_bytes(warmup)
    for det in dets:
        labels = {f"{h.name}_labels.txt": "\n".join(h.labels) + "\n" for h in det.spec.heads if h.activation == "softmax"}
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
    command += [f"--shm-size={shm_mib}m", "-p", "8000-8002:8000-8002",
                # writable: the engine builder links plans into <detector>/1/ (uid 1000 in the image)
                "-v", f"{Path(repository).resolve()}:/models/{target}",
                "-v", f"{cache_volume}:/engine-cache", "-e", f"GENGUARD_TARGET={target}", image]
    return command


def _place(source: Path, target: Path, copy: bool) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    if copy:
        shutil.copyfile(source, target)
    else:
        os.symlink(source, target)


def render(target: str, build: Path, out: Path | None = None, *, detectors: list[str] | None = None,
           max_batch: int = DEFAULT_MAX_BATCH, fusion: FusionConfig = FusionConfig(),
           limits: DecodeLimits = DecodeLimits(), cpu: CpuOptions = CpuOptions(), copy: bool | None = None,
           gpu: GpuOptions = GpuOptions(), provenance: ProvenanceConfig = ProvenanceConfig()) -> Path:
    """Render build/model_repository/<target>/ (or `out`) and return its path.

    copy: copy model.onnx files (True) or symlink them to build/onnx (False). Default (None): copies for
    the GPU targets, which are meant to be copied onto a volume or into an image where a symlink into
    this machine's build/ would dangle; symlinks for the cpu target served in place by `make serve`.
    cpu: options of the cpu target; gpu: options of the onnx-gpu and tensorrt targets.
    provenance: metadata reading in preprocess/validate (trust anchors, limits, full text).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    if copy is None:
        copy = target in GPU_TARGETS
    dets = find_exports(build, detectors)
    try:
        fusion.check_detectors([d.spec for d in dets])
    except ValueError as exc:
        raise RepositoryError(f"cannot render the repository: {exc}") from None
    out = Path(out) if out else build / "model_repository" / target
    _check_replaceable(out)
    staging = out.parent / f".{out.name}.rendering-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        _render_into(staging, target, dets, max_batch, fusion, limits, cpu, copy, gpu, provenance)
        (staging / RENDERED_MARKER).write_text(f"rendered by genguard.export.repository for target {target}\n")
        _swap_into_place(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _check_replaceable(out: Path) -> None:
    """render() replaces only what it made: an empty folder or one carrying its marker. Anything else is
    someone's data, and it is refused before any work is done."""
    if out.exists() and not out.is_dir():
        raise RepositoryError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RENDERED_MARKER).is_file():
        raise RepositoryError(f"--out {out} is a non-empty folder that GenGuard did not render; refusing to replace "
                              "it (choose an empty or new folder)")


def _swap_into_place(staging: Path, out: Path) -> None:
    """Move the finished repository into place; the previous one (if any) is removed only afterwards."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    old = out.parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    if old.exists():
        shutil.rmtree(old)


def _render_into(out: Path, target: str, dets: list[ExportedDetector], max_batch: int, fusion: FusionConfig,
                 limits: DecodeLimits, cpu: CpuOptions, copy: bool, gpu: GpuOptions,
                 provenance: ProvenanceConfig = ProvenanceConfig()) -> None:
    inputs = specs.distinct_inputs([d.spec for d in dets])
    detector_specs = [d.spec for d in dets]
    if target in GPU_TARGETS:
        _render_gpu(target, out, dets, inputs, max_batch, limits, gpu, copy, provenance)
    else:
        _write_model(out, preprocess_config(inputs, max_batch, limits, queue=cpu.queue, provenance=provenance),
                     model_py="preprocess")
    for det in dets if target == "cpu" else ():
        labels = {f"{h.name}_labels.txt": "\n".join(h.labels) + "\n" for h in det.spec.heads if h.activation == "softmax"}
        onnx, digest = det.checked_onnx(cpu.int8)
        _write_model(out, detector_config(det, max_batch, cpu, onnx_sha256=digest), labels, model_py="detector",
                     onnx=onnx, copy=copy)
    post_files = {"sources.txt": "\n".join(source_names(detector_specs)) + "\n"}
    if nsfw_labels(detector_specs):
        post_files["nsfw_levels.txt"] = "\n".join(nsfw_labels(detector_specs)) + "\n"
    _write_model(out, postprocess_config(dets, max_batch, fusion), post_files, model_py="postprocess")
    _write_model(out, ensemble_config(dets, inputs, max_batch, validate=target in GPU_TARGETS), post_files)


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m genguard.export.repository", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cpu", choices=TARGETS)
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--out", type=Path, default=None, help="default: BUILD/model_repository/TARGET")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH)
    parser.add_argument("--fusion", type=Path, default=None, help="JSON file of FusionConfig fields")
    parser.add_argument("--trust-anchors", type=Path, default=None,
                        help="PEM bundle of C2PA trust anchors (default: none; valid manifests are 'untrusted')")
    parser.add_argument("--provenance", type=Path, default=None,
                        help="JSON of ProvenanceConfig fields (full_text, excerpt_chars, limits, enabled)")
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--copy", dest="copy", action="store_const", const=True, default=None,
                       help="copy model.onnx files (default for the GPU targets: a self-contained repository)")
    files.add_argument("--link", dest="copy", action="store_const", const=False,
                       help="symlink model.onnx files to BUILD/onnx (default for cpu; only where BUILD stays)")
    gpu_args = parser.add_argument_group("GPU targets (onnx-gpu, tensorrt)")
    gpu_args.add_argument("--instances", type=int, default=1, help="instances of each detector per GPU")
    gpu_args.add_argument("--gpus", default="", help="comma-separated GPU ids (default: all)")
    gpu_args.add_argument("--opt-batch", type=int, default=0, help="TensorRT profile opt batch (default: max)")
    gpu_args.add_argument("--verify", choices=("header", "decode"), default="header",
                          help="validate step: header checks only, or also a full CPU decode per image")
    gpu_args.add_argument("--ort-cache", default=GpuOptions.ort_cache, help="onnx-gpu: ORT TensorRT EP engine cache")
    args = parser.parse_args(argv)
    fusion = FusionConfig.from_json(args.fusion.read_text()) if args.fusion else FusionConfig()
    provenance = ProvenanceConfig.from_json(args.provenance.read_text()) if args.provenance else ProvenanceConfig()
    if args.trust_anchors:
        provenance = dataclasses.replace(provenance, trust_anchors=args.trust_anchors.read_text())
    gpu = GpuOptions(instances=args.instances, gpus=tuple(int(g) for g in args.gpus.split(",") if g.strip()),
                     opt_batch=args.opt_batch, verify=args.verify, ort_cache=args.ort_cache)
    try:
        out = render(args.target, args.build, args.out, max_batch=args.max_batch, fusion=fusion, copy=args.copy,
                     gpu=gpu, provenance=provenance)
    except RepositoryError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"rendered the {args.target} repository: {out}")
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        print(f"  {folder.name}/")
    if args.target == "tensorrt":
        print("engines are built on the serving GPU: python -m genguard.export.tensorrt build "
              f"--repository {out} --cache /engine-cache (the server image's entrypoint does this)")
    if args.target in GPU_TARGETS:
        import shlex

        print("serve it with the server image (make image):\n  " + shlex.join(docker_run_command(
            args.target, out, max_batch=args.max_batch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
