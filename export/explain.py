"""Grad-CAM inside the exported graph for the CNN detectors: build/onnx/<det>/explain.onnx + explain.json.

For these heads the target layer A [B, K, h, w] (the last conv stage) reaches the logits only through a
global average pool p = mean_ij A (then a Linear, or a small MLP). So d y_c / d A_kij = (d y_c / d p_k) / hw
at every position, and Grad-CAM's channel weight alpha_ck = mean_ij d y_c / d A_kij = (d y_c / d p_k) / hw.
d y / d p is a closed form: the head's Linear / 1x1-conv weights chained with the elementwise derivatives
of its activations (ReLU, Hardswish) at the forward values; Dropout and Flatten are the identity in eval.
No autograd: the graph is MatMul/Mul/Where/Reduce ops that run on ONNX Runtime and TensorRT alike.

explain.onnx takes `pixels` like model.onnx and answers the same logits outputs (same names) plus
`cam_<head>` [B, L, h, w] for every label L of every head (a one-logit sigmoid head gets two maps: its
first label scores -logit), each ReLU'd and min/max normalised like pytorch-grad-cam. Parity is checked
against pytorch-grad-cam's GradCAM (same target layer, ClassifierOutputTarget = the raw logit) on the
sample photos, at input resolution, after the same upsampling (genguard.explanations.to_input_resolution).

python -m genguard.export.explain --build build [--detectors a,b]: exports every CNN detector found in
build/onnx whose checkpoint is known (parity.json's "checkpoint").
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genguard import explanations, onnx_runtime, specs
from genguard.export import samples
from genguard.checksums import sha256_file as sha256
from genguard.export.checkpoints import HeadsModule, is_random, load
from genguard.export.families import family_of, is_cnn
from genguard.export import layout
from genguard.export.layout import install_checked
from genguard.export.onnx_export import OPSET
from genguard.protocol import DETECTOR_INPUT
from genguard.preprocess import preprocess_bytes
from genguard.specs import DetectorSpec

from genguard.explanations import EXPLAIN_FILE, FAILED_RECORD_FILE, RECORD_FILE, cam_output, load_record  # noqa: F401

log = logging.getLogger("genguard.export")

CAM_ATOL = 1e-3  # max |dmap| vs pytorch-grad-cam at input resolution (issue 16)
REF_CHUNK = 3  # images per pytorch-grad-cam call
LOGIT_ATOL = 1e-4  # explain.onnx's logits vs model.onnx's (the same computation, another graph)


# ---------------------------------------------------------------------------------------------------
# the closed form


def _act_derivative(layer: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """d layer(z) / dz elementwise, with PyTorch's own conventions at the kinks."""
    if isinstance(layer, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(layer, nn.Hardswish):  # aten hardswish_backward: 0 below -3, x/3 + 1/2 up to 3, then 1
        return torch.where(z < -3, torch.zeros_like(z), torch.where(z <= 3, z / 3 + 0.5, torch.ones_like(z)))
    if isinstance(layer, nn.SiLU):
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    raise TypeError(f"no closed-form derivative for {type(layer).__name__}")


_IDENTITY = (nn.Dropout, nn.Flatten, nn.Identity)
_ACTIVATIONS = (nn.ReLU, nn.Hardswish, nn.SiLU)


def _linear_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        return layer.weight.flatten(1), layer.bias
    raise TypeError(f"not a linear layer: {type(layer).__name__}")


def head_jacobian(layers: list[nn.Module], pooled: torch.Tensor) -> torch.Tensor:
    """d logits / d pooled [B, C, K] for a chain of Linear/1x1-conv, activations and identities."""
    x, steps = pooled, []
    for layer in layers:
        if isinstance(layer, _IDENTITY):
            continue
        if isinstance(layer, _ACTIVATIONS):
            steps.append((layer, x))
            x = layer(x.clone())  # timm's activations are inplace: keep z for the derivative
        else:
            weight, bias = _linear_weight(layer)
            steps.append((weight, None))
            x = F.linear(x, weight, bias)
    jac = None
    for step, z in reversed(steps):
        if z is None:  # linear: J <- J @ W
            jac = step.unsqueeze(0) * torch.ones_like(pooled[:, :1]).unsqueeze(-1) if jac is None else jac @ step
        else:  # activation: J <- J * f'(z)
            jac = jac * _act_derivative(step, z).unsqueeze(1)
    return jac


class GradCamModule(nn.Module):
    """A loaded CNN detector -> (logits per head..., cam per head...)."""

    def __init__(self, heads: HeadsModule):
        super().__init__()
        self.heads = heads
        self.spec = heads.spec
        gradcam = family_of(self.spec).gradcam
        if gradcam is None:
            raise TypeError(f"{self.spec.name}: no in-graph Grad-CAM for format {self.spec.format}")
        parts = gradcam(heads.model)  # its checkpoint family knows the last conv stage and the heads
        self.target_layer, self.features_and_logits = parts.target_layer, parts.split

    def layer(self) -> nn.Module:
        """The target layer module (for pytorch-grad-cam)."""
        return self.heads.model.get_submodule(self.target_layer)

    def forward(self, pixels: torch.Tensor):
        a, heads = self.features_and_logits(pixels)
        b, k, h, w = a.shape
        pooled = a.mean(dim=(2, 3))
        flat = a.flatten(2)  # [B, K, hw]
        logits, cams = [], []
        for head, (y, chain) in zip(self.spec.heads, heads):
            jac = head_jacobian(chain, pooled) / (h * w)  # Grad-CAM's channel weights, [B, C, K]
            if head.activation == "sigmoid":  # labels (negative, positive): scores -logit, +logit
                jac = torch.cat([-jac, jac], dim=1)
            cam = torch.relu(jac @ flat).reshape(b, jac.shape[1], h, w)
            cam = cam - cam.amin(dim=(2, 3), keepdim=True)
            cam = cam / (explanations.EPS + cam.amax(dim=(2, 3), keepdim=True))
            logits.append(y)
            cams.append(cam)
        return (*logits, *cams)


def export_explain_onnx(module: GradCamModule, path: Path, metadata: dict) -> Path:
    import onnx

    spec = module.spec
    example = torch.randn(2, *spec.input.shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, opset_version=OPSET,
            input_names=[DETECTOR_INPUT],
            output_names=[h.name for h in spec.heads] + [cam_output(h.name) for h in spec.heads],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"genguard.{key}", json.dumps(value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------------
# parity vs pytorch-grad-cam


class _OneHead(nn.Module):
    def __init__(self, heads: HeadsModule, index: int):
        super().__init__()
        self.heads, self.index = heads, index

    def forward(self, pixels):
        return self.heads(pixels)[self.index]


def reference_cams(module: GradCamModule, pixels: torch.Tensor, head_index: int, label_index: int) -> np.ndarray:
    """pytorch-grad-cam GradCAM at input resolution for one label of one head: [N, H, W]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    head = module.spec.heads[head_index]
    if head.activation == "sigmoid":
        sign = 1.0 if label_index == 1 else -1.0
        target = lambda out: sign * out[0]  # noqa: E731  (the one logit, or its negative for labels[0])
    else:
        target = ClassifierOutputTarget(label_index)
    with GradCAM(model=_OneHead(module.heads, head_index), target_layers=[module.layer()]) as cam:
        return cam(input_tensor=pixels, targets=[target] * len(pixels))


def parity(module: GradCamModule, session, images: dict[str, bytes]) -> dict:
    """Per head: max |dmap| at input resolution vs pytorch-grad-cam over every label and image, and the
    logits of explain.onnx vs model.onnx's module."""
    spec = module.spec
    names = list(images)
    pixels = np.stack([preprocess_bytes(images[n], {"x": spec.input})[1]["x"] for n in names])
    outputs = session.run(None, {DETECTOR_INPUT: pixels})
    n_heads = len(spec.heads)
    with torch.no_grad():
        torch_logits = [t.numpy() for t in module.heads(torch.from_numpy(pixels))]
    figures = {"images": len(names), "heads": {}}
    worst_logit = 0.0
    for i, head in enumerate(spec.heads):
        worst_logit = max(worst_logit, float(np.abs(outputs[i] - torch_logits[i]).max()))
        cams = outputs[n_heads + i]
        deltas = []
        for c, label in enumerate(head.labels):
            # in chunks: pytorch-grad-cam backpropagates through the whole network (GBs at batch 12)
            ref = np.concatenate([reference_cams(module, torch.from_numpy(pixels[k:k + REF_CHUNK]), i, c)
                                  for k in range(0, len(pixels), REF_CHUNK)])
            ours = explanations.to_input_resolution(cams[:, c], spec.input.size)
            deltas.append(float(np.abs(ours - ref).max()))
        figures["heads"][head.name] = {
            "max_abs_map": max(deltas),
            "per_label": dict(zip(head.labels, deltas)),
            "grid": list(cams.shape[2:]),
        }
    figures["max_abs_logit_vs_pytorch"] = worst_logit
    figures["max_abs_map"] = max(h["max_abs_map"] for h in figures["heads"].values())
    return figures


# ---------------------------------------------------------------------------------------------------
# export


def export_explain(spec: DetectorSpec, source: str | Path, out_dir: Path, *, images: dict[str, bytes] | None = None,
                   module: HeadsModule | None = None) -> dict:
    """Export build/onnx/<det>/explain.onnx and explain.json, atomically, only if parity passes."""
    started = time.perf_counter()
    heads = module if module is not None else load(spec, source)
    cam = GradCamModule(heads).eval()
    folder = out_dir / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / EXPLAIN_FILE
    partial = folder / f".explain.{os.getpid()}.partial.onnx"
    try:
        export_explain_onnx(cam, partial, metadata={"detector": spec.name, "method": explanations.GRADCAM,
                                                    "target_layer": cam.target_layer})
        session = onnx_runtime.session(partial)
        figures = parity(cam, session, images or samples.photos())
        record = {
            "detector": spec.name,
            "method": explanations.GRADCAM,
            "weights": "random" if is_random(source) else "real",
            "checkpoint": str(source),
            "target_layer": cam.target_layer,
            "outputs": {h.name: cam_output(h.name) for h in spec.heads},
            "labels": {h.name: list(h.labels) for h in spec.heads},
            "grid": next(iter(figures["heads"].values()))["grid"],
            "onnx": str(final),
            "onnx_sha256": sha256(partial),
            "opset": OPSET,
            "reference": "pytorch-grad-cam GradCAM (ClassifierOutputTarget: the raw logit)",
            "tolerance": {"max_abs_map": CAM_ATOL, "max_abs_logit": LOGIT_ATOL},
            **figures,
            "passed": figures["max_abs_map"] <= CAM_ATOL and figures["max_abs_logit_vs_pytorch"] <= LOGIT_ATOL,
            "seconds": round(time.perf_counter() - started, 1),
        }
        install_checked(partial, final, record, folder / RECORD_FILE, folder / FAILED_RECORD_FILE)
        if not record["passed"]:
            raise RuntimeError(f"{spec.name}: explain.onnx outside tolerance (map {figures['max_abs_map']:.3g}, "
                               f"logits {figures['max_abs_logit_vs_pytorch']:.3g}); figures in {FAILED_RECORD_FILE}")
        return record
    finally:
        partial.unlink(missing_ok=True)


def recorded_checkpoint(build: Path, name: str) -> str:
    """The checkpoint model.onnx was exported from; a random build moved elsewhere keeps its checkpoints
    under <build>/checkpoints/<name>."""
    source = layout.read_parity(layout.onnx_folder(build, name))["checkpoint"]
    local = layout.checkpoint_folder(build, name)
    if not Path(source).exists() and local.is_dir() and is_random(local):
        return str(local)
    return source


def export_missing(build: Path, names: list[str] | None = None) -> dict[str, str]:
    """Export explain.onnx for every CNN detector of `build` (or of `names`) that lacks a passing record
    (make serve EXPLAIN=1). Returns detector -> problem for those that could not be exported: they are
    then served without maps, saying why."""
    problems = {}
    for name in names or layout.exported(build):
        spec = specs.get(name)
        if not is_cnn(spec) or not layout.read_parity(layout.onnx_folder(build, name)) or load_record(
                layout.onnx_folder(build, name)):
            continue
        try:
            export_explain(spec, recorded_checkpoint(build, name), layout.onnx_dir(build))
        except Exception as exc:  # the others still export; render marks this one unavailable
            problems[name] = str(exc)
            log.error("%s: explain.onnx not exported: %s", name, exc)
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.export.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "every CNN exported")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH_OR_HUB_ID",
                        help="checkpoint for one detector (default: the one its parity.json records)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wanted = layout.chosen(args.detectors, lambda: layout.exported(args.build, keep=lambda n: is_cnn(specs.get(n))))
    given = dict(v.split("=", 1) for v in args.checkpoint)
    status = 0
    print(f"{'detector':<20} {'head':<8} {'max |dmap| vs pytorch-grad-cam':>31} {'photos':>7}")
    for name in wanted:
        spec = specs.get(name)
        if not is_cnn(spec):
            print(f"{name}: not a CNN (served with occlusion, nothing to export)", file=sys.stderr)
            continue
        try:
            record = export_explain(spec, given.get(name) or recorded_checkpoint(args.build, name),
                                    layout.onnx_dir(args.build))
        except Exception as exc:  # one detector's failure is reported, the others still export
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
            continue
        for head, fig in record["heads"].items():
            print(f"{name:<20} {head:<8} {fig['max_abs_map']:>31.2e} {record['images']:>7}")
        gc.collect()  # the traced module and the reference's graph of this detector
    return status


if __name__ == "__main__":
    sys.exit(main())
