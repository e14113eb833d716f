"""Checkpoint -> ONNX, validated against PyTorch and against the seed's reference pipeline.

export_detector() is the whole flow for one spec; the CLI (python -m genguard.export) loops over specs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from genguard import onnx_runtime, protocol
from genguard.engines import FP32_FILE, INT8_FILE
from genguard.export import samples
from genguard.checksums import sha256_file as sha256
from genguard.export.checkpoints import HeadsModule, is_random, load
from genguard.export.layout import FAILED_PARITY_FILE, PARITY_FILE, install_checked
from genguard.export.reference import ReferencePipeline, open_rgb
from genguard.preprocess import preprocess_bytes
from genguard.scores import head_probs
from genguard.specs import DetectorSpec

log = logging.getLogger("genguard.export")

OPSET = 18
VALIDATION_BATCHES = (1, 4)


def export_onnx(module: HeadsModule, path: Path, *, metadata: dict, opset: int = OPSET) -> Path:
    """Trace `module` with the dynamo exporter: one input `pixels` [batch, 3, H, W], one output per head.

    Trace with batch 2: torch.export specialises dimensions of size 0 and 1, which would freeze the batch.
    All weights stay inside the file (external_data=False): every detector is under protobuf's 2 GB.
    """
    import onnx

    spec = module.spec
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, *spec.input.shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[protocol.DETECTOR_INPUT],
            output_names=[head.name for head in spec.heads],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"genguard.{key}", json.dumps(value)
    onnx.checker.check_model(model, full_check=True)
    batch_dims = [model.graph.input[0].type.tensor_type.shape.dim[0]] + [
        out.type.tensor_type.shape.dim[0] for out in model.graph.output
    ]
    if any(dim.dim_param == "" for dim in batch_dims):
        raise RuntimeError(f"{spec.name}: exported ONNX has a static batch axis")
    onnx.save(model, str(path))
    return path


def _max_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(max(np.abs(x - y).max() for x, y in zip(a, b)))


def _top1(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x.argmax(1) == y.argmax(1)) for x, y in zip(a, b)]))


def validate(spec: DetectorSpec, module: HeadsModule, onnx_path: Path, images: dict[str, bytes]) -> dict:
    """Figures for parity.json.

    onnx_vs_pytorch: the same preprocessed tensors through PyTorch and ONNX Runtime, in batches of 1 and 4.
    reference:       the seed's whole reference pipeline (card preprocessing + PyTorch) on each image vs
                     GenGuard's (Pillow/numpy preprocessing + ONNX Runtime): what a user would see.
    """
    session = onnx_runtime.session(onnx_path)
    names = list(images)
    ours = np.stack([preprocess_bytes(images[n], {"x": spec.input})[1]["x"] for n in names])
    reference = ReferencePipeline(spec, module, module_source(module))
    ref_pixels = reference.tensors([open_rgb(images[n]) for n in names])

    figures = {}
    # ONNX vs PyTorch on identical tensors, in each validation batch size
    torch_logits, ort_logits = [], []
    for size in VALIDATION_BATCHES:
        batch = ref_pixels[:size]
        torch_logits.append(reference.logits(batch))
        ort_logits.append(session.run(None, {protocol.DETECTOR_INPUT: batch.numpy()}))
    flat = lambda runs: [np.concatenate([run[h] for run in runs]) for h in range(len(spec.heads))]  # noqa: E731
    t_logits, o_logits = flat(torch_logits), flat(ort_logits)
    t_probs = [head_probs(h, x) for h, x in zip(spec.heads, t_logits)]
    o_probs = [head_probs(h, x) for h, x in zip(spec.heads, o_logits)]
    figures["onnx_vs_pytorch"] = {
        "batches": list(VALIDATION_BATCHES),
        "max_abs_logit": _max_abs(t_logits, o_logits),
        "max_abs_prob": _max_abs(t_probs, o_probs),
        "top1_agreement": _top1(t_probs, o_probs),
    }

    # the whole pipeline: reference (card) vs GenGuard, image by image in batches of 4
    ref_probs, our_probs = [], []
    for start in range(0, len(names), 4):
        ref_logits = reference.logits(ref_pixels[start : start + 4])
        our_logits = session.run(None, {protocol.DETECTOR_INPUT: ours[start : start + 4]})
        ref_probs.append([head_probs(h, x) for h, x in zip(spec.heads, ref_logits)])
        our_probs.append([head_probs(h, x) for h, x in zip(spec.heads, our_logits)])
    r = [np.concatenate([b[h] for b in ref_probs]) for h in range(len(spec.heads))]
    o = [np.concatenate([b[h] for b in our_probs]) for h in range(len(spec.heads))]
    per_image = np.max([np.abs(x - y).max(axis=1) for x, y in zip(r, o)], axis=0)
    figures["reference"] = {
        "images": len(names),
        "preprocess_max_abs": float(np.abs(ref_pixels.numpy() - ours).max()),
        "max_abs_prob": float(per_image.max()),
        "worst_image": names[int(per_image.argmax())],
        "top1_agreement": _top1(r, o),
    }
    return figures


def module_source(module: HeadsModule) -> str | None:
    return getattr(module, "source", None)


def export_detector(
    spec: DetectorSpec,
    source: str | Path | None,
    out_dir: Path,
    *,
    images: dict[str, bytes] | None = None,
) -> dict:
    """Load spec's checkpoint from `source`, export build/onnx/<name>/model.onnx, validate, write parity.json.

    The ONNX file is written to a temporary sibling, checked and validated there, and moved into place only
    when it passes: parity.json records the sha256 of the very file it vouches for, and rendering refuses a
    model.onnx whose hash differs. A failing export raises RuntimeError, leaves the previous good export
    (model.onnx + parity.json) untouched, and writes its figures to parity.failed.json for inspection.
    """
    started = time.perf_counter()
    module = load(spec, source)
    module.source = str(source)
    weights = "random" if is_random(source) else "real"
    folder = out_dir / spec.name
    onnx_path = folder / FP32_FILE
    partial = folder / f".model.{os.getpid()}.partial.onnx"  # keeps the .onnx suffix the exporter expects
    try:
        export_onnx(
            module,
            partial,
            metadata={
                "detector": spec.name,
                "weights": weights,
                "checkpoint": str(source),
                "checkpoint_identity": checkpoint_identity(source),
                "revision": getattr(module, "revision", None),  # hub commit loaded; None for local paths
                "heads": {h.name: list(h.labels) for h in spec.heads},
                "input": spec.input.name,
            },
        )
        figures = validate(spec, module, partial, images or samples.all_images())
        worst = max(figures["onnx_vs_pytorch"]["max_abs_prob"], figures["reference"]["max_abs_prob"])
        parity = {
            "detector": spec.name,
            "weights": weights,
            "checkpoint": str(source),
            "checkpoint_identity": checkpoint_identity(source),
            "revision": getattr(module, "revision", None),
            "onnx": str(onnx_path),
            "onnx_sha256": sha256(partial),
            "opset": OPSET,
            "tolerance": {"max_abs_prob": spec.prob_atol},
            **figures,
            "passed": worst <= spec.prob_atol,
            "seconds": round(time.perf_counter() - started, 1),
        }
        if parity["passed"]:  # an INT8 model quantised from the previous FP32 model has no check that vouches for it
            (folder / INT8_FILE).unlink(missing_ok=True)
        install_checked(partial, onnx_path, parity, folder / PARITY_FILE, folder / FAILED_PARITY_FILE)
        if not parity["passed"]:
            kept = "the previous export is untouched" if onnx_path.is_file() else "nothing was installed"
            raise RuntimeError(
                f"{spec.name}: export outside tolerance: max |dprob| {worst:.3g} > {spec.prob_atol}; {kept} "
                f"(figures in {folder / FAILED_PARITY_FILE})"
            )
        return parity
    finally:
        partial.unlink(missing_ok=True)


def checkpoint_identity(source: str | Path | None) -> str:
    """What the export was made from, to tell whether a later request names the same checkpoint: a hub id
    as given; a local path resolved, with each weights file's size and modification time."""
    if source is None:
        return ""
    path = Path(str(source)).expanduser()
    if not path.exists():
        return str(source)
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    stamps = ",".join(f"{p.relative_to(path) if p != path else p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                      for p in files)
    return f"{path.resolve()}|{stamps}"
