"""What every target's repository shares: the exported detectors it serves, config-building helpers,
the postprocess step and the `genguard` ensemble.

Configs are built as model_config_pb2 messages and written with protobuf text_format, so every field
is checked by the schema.
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
from genguard.checksums import sha256_file
from genguard.engines import FP32_FILE, INT8_FILE
from genguard.export import layout
from genguard.fusion import FusionConfig, nsfw_labels, source_names
from genguard.specs import DetectorSpec

TARGETS = ("cpu", "onnx-gpu", "tensorrt")
GPU_TARGETS = ("onnx-gpu", "tensorrt")
DEFAULT_MAX_BATCH = 16
VALIDATE = "validate"  # the GPU targets' first step (python backend) before the DALI preprocess
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
        folder = layout.onnx_folder(build, name)
        onnx_path, parity_path = folder / FP32_FILE, folder / layout.PARITY_FILE
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
        spec = specs.as_exported(spec, meta["heads"])
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


def label_files(spec: DetectorSpec) -> dict[str, str]:
    """A detector model's label files: one per softmax head, in the exported label order."""
    return {f"{h.name}_labels.txt": "\n".join(h.labels) + "\n" for h in spec.heads if h.activation == "softmax"}


def detector_tensors(config: mc.ModelConfig, spec: DetectorSpec) -> None:
    """A detector model's input (the preprocessed pixels) and its heads' logits, on every target."""
    _tensor(config.input, protocol.DETECTOR_INPUT, mc.TYPE_FP32, spec.input.shape)
    for head in spec.heads:
        _tensor(config.output, head.name, mc.TYPE_FP32, [head.num_logits],
                f"{head.name}_labels.txt" if head.activation == "softmax" else None)


def postprocess_config(dets: list[ExportedDetector], max_batch: int, fusion: FusionConfig,
                       cpu_options: dict[str, str] | None = None, best: dict | None = None,
                       served: dict[str, dict] | None = None) -> mc.ModelConfig:
    """cpu_options: detector -> genguard.engines option served (cpu target), named in every answer.
    best: what `--precision best` chose on the rendering CPU and why ({"cpu", "detectors": {name: {option, why}}}),
    a parameter `genguard health` and bench-compare read (not in the answers).
    served: detector -> {file, sha256}, the model file each detector serves and the sha256 its config carries and
    its model checks at load (default: model.onnx and its parity.json digest; an OpenVINO IR's digest is over
    its .xml + .bin), a parameter `genguard health` and GET /v1/models read (not in the answers)."""
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
            files=served or {d.spec.name: {"file": d.onnx.name, "sha256": d.parity.get("onnx_sha256", "")}
                             for d in dets},
            fusion=fusion.to_json())
    if cpu_options:
        _params(config, engines={name: engine_label(option) for name, option in cpu_options.items()})
    if best:
        _params(config, precision_best=best)
    return config


def engine_label(option: str) -> dict[str, str]:
    from genguard import engines

    o = engines.get(option)
    return {"option": o.name, "engine": o.engine, "precision": o.precision}


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


def ensemble_entry(name: str, dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec], max_batch: int,
                   validate: bool):
    """An ensemble's input, outputs and entry steps, shared by `genguard` and `genguard_explain`.
    validate=True (GPU targets): IMAGE -> validate -> (ENCODED -> DALI preprocess, IMAGE_INFO -> onwards);
    else IMAGE -> preprocess (pixels + IMAGE_INFO). Returns (config, its outputs, its steps)."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    _tensor(config.input, protocol.INPUT, mc.TYPE_UINT8, [-1])
    outputs = output_tensors([d.spec for d in dets])
    for output, dtype, dims, labels in outputs:
        _tensor(config.output, output, dtype, dims, labels)
    steps = config.ensemble_scheduling.step
    if validate:
        from genguard.dali import DALI_INPUT

        check = steps.add(model_name=VALIDATE, model_version=-1)
        check.input_map[protocol.INPUT] = protocol.INPUT
        check.output_map[DALI_INPUT] = DALI_INPUT
        check.output_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
        pre = steps.add(model_name=protocol.PREPROCESS, model_version=-1)
        pre.input_map[DALI_INPUT] = DALI_INPUT
    else:
        pre = steps.add(model_name=protocol.PREPROCESS, model_version=-1)
        pre.input_map[protocol.INPUT] = protocol.INPUT
        pre.output_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
    for pixels in inputs:
        pre.output_map[protocol.pixels_tensor(pixels)] = protocol.pixels_tensor(pixels)
    return config, outputs, steps


def last_step(steps, post: mc.ModelEnsembling.Step, outputs) -> None:
    """The ensemble's final step answers every ensemble output."""
    for output, *_ in outputs:
        post.output_map[output] = output
    steps.append(post)


def ensemble_config(dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec], max_batch: int,
                    *, validate: bool = False) -> mc.ModelConfig:
    """The `genguard` ensemble: entry steps -> detectors (in parallel) -> postprocess."""
    config, outputs, steps = ensemble_entry(protocol.ENSEMBLE, dets, inputs, max_batch, validate)
    post = mc.ModelEnsembling.Step(model_name=protocol.POSTPROCESS, model_version=-1)
    post.input_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
    for det in dets:
        step = steps.add(model_name=det.spec.name, model_version=-1)
        step.input_map[protocol.DETECTOR_INPUT] = protocol.pixels_tensor(det.spec.input.name)
        for head in det.spec.heads:
            tensor = protocol.head_tensor(det.spec.name, head.name)
            step.output_map[head.name] = tensor
            post.input_map[tensor] = tensor
    last_step(steps, post, outputs)
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
        _place(onnx, folder / "1" / onnx.name, copy)


def _place(source: Path, target: Path, copy: bool) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    if copy:
        shutil.copyfile(source, target)
    else:
        os.symlink(source, target)
