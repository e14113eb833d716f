"""Render a Triton model repository from the detector specs and the exported ONNX models.

`python -m genguard.export.repository --target TARGET` writes build/model_repository/<target>/ (by default):

  preprocess/   the entry step: encoded images -> one tensor per distinct input spec + IMAGE_INFO
                (cpu: python backend; GPU targets: validate/ (python) then the DALI backend)
  <detector>/   one per exported detector (cpu: python backend running ONNX Runtime; onnx-gpu: ONNX Runtime
                with its TensorRT accelerator; tensorrt: a TensorRT plan built on the serving GPU)
  postprocess/  python backend: head logits -> fused per-image answer (JSON + numeric tensors)
  genguard/     the ensemble clients call: preprocess -> detectors (in parallel) -> postprocess

Modules: common (exported detectors, config helpers, postprocess, ensemble), cpu, gpu (onnx-gpu,
tensorrt, docker run), render (staging + swap), cli. model_repository/ holds a rendered example per target.
"""

from .common import (DEFAULT_MAX_BATCH, GPU_TARGETS, INT8_FILE, RENDERED_MARKER, TARGETS, VALIDATE,
                     ExportedDetector, QueuePolicy, RepositoryError, apply_queue_policy, ensemble_config,
                     find_exports, output_tensors, postprocess_config)
from .cpu import CpuOptions, detector_config, preprocess_config
from .gpu import (GpuOptions, dali_preprocess_config, docker_run_command, engine_recipe, onnx_gpu_detector_config,
                  shm_bytes, tensorrt_detector_config, validate_config)
from .render import render
from .cli import main  # noqa: E402  (after render: cli imports it)

__all__ = [
    "DEFAULT_MAX_BATCH", "GPU_TARGETS", "INT8_FILE", "RENDERED_MARKER", "TARGETS", "VALIDATE", "CpuOptions",
    "ExportedDetector", "GpuOptions", "QueuePolicy", "RepositoryError", "apply_queue_policy",
    "dali_preprocess_config", "detector_config", "docker_run_command", "engine_recipe", "ensemble_config",
    "find_exports", "main", "onnx_gpu_detector_config", "output_tensors", "postprocess_config",
    "preprocess_config", "render", "shm_bytes", "tensorrt_detector_config", "validate_config",
]
