"""render(): the repository for one target, built in a staging folder and swapped into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from genguard import specs
from genguard.export import layout
from genguard.fusion import FusionConfig, nsfw_labels, source_names
from genguard.preprocess import DecodeLimits
from genguard.provenance import ProvenanceConfig

from .common import (DEFAULT_MAX_BATCH, GPU_TARGETS, RENDERED_MARKER, TARGETS, ExportedDetector, RepositoryError,
                     _write_model, ensemble_config, find_exports, postprocess_config)
from .cpu import CpuOptions, render_cpu
from .gpu import GpuOptions, render_gpu
from .video import VideoOptions, render_video


def render(target: str, build: Path, out: Path | None = None, *, detectors: list[str] | None = None,
           max_batch: int = DEFAULT_MAX_BATCH, fusion: FusionConfig = FusionConfig(),
           limits: DecodeLimits = DecodeLimits(), cpu: CpuOptions = CpuOptions(), copy: bool | None = None,
           gpu: GpuOptions = GpuOptions(), provenance: ProvenanceConfig = ProvenanceConfig(),
           explain: bool = False, video: VideoOptions = VideoOptions()) -> Path:
    """Render build/model_repository/<target>/ (or `out`) and return its path.

    copy: copy model.onnx files (True) or symlink them to build/onnx (False). Default (None): copies for
    the GPU targets, which are meant to be copied onto a volume or into an image where a symlink into
    this machine's build/ would dangle; symlinks for the cpu target served in place by `make serve`.
    cpu: options of the cpu target; gpu: options of the onnx-gpu and tensorrt targets.
    provenance: metadata reading in preprocess/validate (trust anchors, limits, full text).
    explain: also render the `genguard_explain` ensemble (export/repository/explain.py).
    video: limits, sampling defaults and aggregation of `genguard_video` (export/repository/video.py).
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
    out = Path(out) if out else layout.repository_folder(build, target)
    _check_replaceable(out)
    staging = out.parent / f".{out.name}.rendering-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        _render_into(staging, target, dets, max_batch, fusion, limits, cpu, copy, gpu, provenance, explain, video)
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
                 provenance: ProvenanceConfig = ProvenanceConfig(), explain: bool = False,
                 video: VideoOptions = VideoOptions()) -> None:
    inputs = specs.distinct_inputs([d.spec for d in dets])
    detector_specs = [d.spec for d in dets]
    chosen: dict[str, str] = {}
    best: dict = {}
    served: dict[str, dict] | None = None  # the GPU targets serve (or build their engine from) model.onnx
    if target in GPU_TARGETS:
        render_gpu(target, out, dets, inputs, max_batch, limits, gpu, copy, provenance)
    else:
        chosen, best, served = render_cpu(out, dets, inputs, max_batch, limits, cpu, copy, provenance)
    post_files = {"sources.txt": "\n".join(source_names(detector_specs)) + "\n"}
    if nsfw_labels(detector_specs):
        post_files["nsfw_levels.txt"] = "\n".join(nsfw_labels(detector_specs)) + "\n"
    _write_model(out, postprocess_config(dets, max_batch, fusion, chosen, best, served), post_files,
                 model_py="postprocess")
    _write_model(out, ensemble_config(dets, inputs, max_batch, validate=target in GPU_TARGETS), post_files)
    render_video(out, max_batch, video, provenance)
    if explain:
        from .explain import render_explain

        render_explain(out, dets, inputs, max_batch, fusion, chosen, copy, cpu.intra_op_threads, target=target,
                       gpu=gpu)
