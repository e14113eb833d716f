"""Explanations (heatmaps): the answer's format, placing a map on the original image, and occlusion.

Runtime side, numpy only (no torch, no export): the explain models, the postprocess, the client and the
export's parity checks all use these functions, so the map a client draws is the map that was checked.

A map is served at its native grid (the CNN's last conv stage, or the occlusion grid), normalised to [0, 1]
per image like pytorch-grad-cam's `scale_cam_image`. `to_input_resolution` upsamples it the way
pytorch-grad-cam does (cv2 INTER_LINEAR, then min/max again); `crop_box` says where the model's input lies
in the original image (the whole image for squash inputs, the center crop for shorter-side crops).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from genguard.preprocess import center_crop_box, shorter_side_size
from genguard.specs import InputSpec

EXPLAIN_ENSEMBLE = "genguard_explain"  # same request as `genguard`, same answer plus `explanations`
EXPLAIN_POSTPROCESS = "postprocess_explain"
GRADCAM = "gradcam"
OCCLUSION = "occlusion"
EPS = 1e-7  # pytorch_grad_cam.utils.image.scale_cam_image


# build/onnx/<det>/: explain.onnx and the record that vouches for it (export/explain.py writes them)
EXPLAIN_FILE = "explain.onnx"
RECORD_FILE = "explain.json"
FAILED_RECORD_FILE = "explain.failed.json"
def load_record(folder) -> dict | None:
    """explain.json if it passed and vouches for the explain.onnx beside it (sha256), else None."""
    import json
    from pathlib import Path

    from genguard.checksums import sha256_file

    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    path = folder / EXPLAIN_FILE
    if not record.get("passed") or not path.is_file() or sha256_file(path) != record.get("onnx_sha256"):
        return None
    return record


def explain_model(detector: str) -> str:
    """The cpu target's model that answers a detector's logits and its maps."""
    return f"explain_{detector}"


def cam_output(head: str) -> str:
    """A map output of explain.onnx and of an explain model: [N, labels, h, w]."""
    return f"cam_{head}"


def cam_tensor(detector: str, head: str) -> str:
    """Ensemble tensor / postprocess_explain input carrying one head's maps."""
    return f"{detector}__cam_{head}"


def scale_map(cam: np.ndarray) -> np.ndarray:
    """(m - min) / (1e-7 + max(m - min)) over the last two axes: pytorch-grad-cam's normalisation."""
    cam = np.asarray(cam, dtype=np.float32)
    cam = cam - cam.min(axis=(-2, -1), keepdims=True)
    return (cam / (np.float32(EPS) + cam.max(axis=(-2, -1), keepdims=True))).astype(np.float32)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR along one axis: half-pixel centres, edges clamped (BORDER_REPLICATE)."""
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    x0 = np.floor(x)
    frac = (x - x0).astype(np.float32)
    x0 = x0.astype(np.int64)
    lo = np.clip(x0, 0, src - 1)
    hi = np.clip(x0 + 1, 0, src - 1)
    # left of the first centre (x < 0) cv2 takes the first pixel whole
    frac = np.where(x < 0, np.float32(0), frac)
    return lo, hi, frac


def resize_bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a [..., h, w] float map to size (height, width) as cv2.resize(INTER_LINEAR) does."""
    grid = np.asarray(grid, dtype=np.float32)
    h, w = grid.shape[-2:]
    out_h, out_w = size
    ylo, yhi, fy = _linear_taps(h, out_h)
    xlo, xhi, fx = _linear_taps(w, out_w)
    rows = grid[..., ylo, :] * (1 - fy)[:, None] + grid[..., yhi, :] * fy[:, None]
    return (rows[..., xlo] * (1 - fx) + rows[..., xhi] * fx).astype(np.float32)


def to_input_resolution(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The served grid map at the model's input size, as pytorch-grad-cam's GradCAM returns it."""
    return scale_map(resize_bilinear(grid, size))


def crop_box(spec: InputSpec, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the model's input in the original image's pixel coordinates."""
    if spec.resize == "squash":
        return 0.0, 0.0, float(width), float(height)
    out_h, out_w = spec.size
    scale_h, scale_w = (math.floor(s / spec.crop_pct) for s in spec.size)
    new_w, new_h = shorter_side_size(width, height, scale_h) if scale_h == scale_w else (scale_w, scale_h)
    left, top = center_crop_box(new_w, new_h, out_w, out_h)
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy


def geometry(spec: InputSpec, width: int | None = None, height: int | None = None) -> dict:
    """How a client places the map on the original image."""
    geo = {"resize": spec.resize, "input_size": list(spec.size)}
    if spec.resize == "shorter_crop":
        geo["crop_pct"] = spec.crop_pct
    if width and height:
        geo["image_size"] = [int(width), int(height)]
        geo["crop_box"] = [round(v, 3) for v in crop_box(spec, width, height)]
    return geo


def place_on_image(grid: np.ndarray, geo: dict, width: int, height: int) -> np.ndarray:
    """The map at the original image's resolution (height, width); 0 outside a center crop."""
    if geo.get("resize") == "squash" or "crop_box" not in geo:
        if geo.get("resize") == "squash":
            return to_input_resolution(grid, (height, width))
        raise ValueError("a shorter_crop map needs its crop_box to be placed")
    left, top, right, bottom = geo["crop_box"]
    sx, sy = width / geo["image_size"][0], height / geo["image_size"][1]
    x0, y0 = max(0, int(round(left * sx))), max(0, int(round(top * sy)))
    x1, y1 = min(width, int(round(right * sx))), min(height, int(round(bottom * sy)))
    out = np.zeros((height, width), dtype=np.float32)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = to_input_resolution(grid, (y1 - y0, x1 - x0))
    return out


# ---------------------------------------------------------------------------------------------------
# occlusion (transformer detectors)


# Transformer detectors: (model patch size, occlusion windows per side). Windows are whole patches, so an
# occluded window replaces whole tokens: SigLIP2 224/16 = 14 patches -> 7x7 windows of 2x2 patches;
# EVA02 448/14 = 32 patches -> 8x8 windows of 4x4 patches. Cost: 1 + cells^2 forward passes per image.
OCCLUSION_GRIDS = {"siglip": (16, 7), "eva02_base_patch14_448": (14, 8)}


def occlusion_window(spec) -> int:
    """A DetectorSpec's occlusion window side in pixels."""
    patch, cells = OCCLUSION_GRIDS[spec.architecture]
    return occlusion_grid(spec.input, patch, cells)


def occlusion_grid(spec: InputSpec, patch: int, cells: int) -> int:
    """Window side in pixels: a whole number of the model's patches, `cells` windows per side."""
    side = spec.size[0]
    if spec.size[0] != spec.size[1] or side % patch:
        raise ValueError(f"occlusion needs a square input of whole patches, got {spec.size} / {patch}")
    per_window = max(1, (side // patch) // cells)
    if (side // patch) % per_window:
        raise ValueError(f"{cells} windows don't tile {side // patch} patches")
    return per_window * patch


def occlusion_masks(size: tuple[int, int], window: int) -> np.ndarray:
    """[G*G, H, W] boolean masks, one non-overlapping window each, row-major."""
    h, w = size
    gh, gw = h // window, w // window
    masks = np.zeros((gh * gw, h, w), dtype=bool)
    for i in range(gh):
        for j in range(gw):
            masks[i * gw + j, i * window:(i + 1) * window, j * window:(j + 1) * window] = True
    return masks


def occlusion(
    scores: Callable[[np.ndarray], np.ndarray],
    pixels: np.ndarray,
    window: int,
    *,
    batch: int = 16,
    fill: float = 0.0,
) -> np.ndarray:
    """Occlusion maps for every class: [N, C, G, G], each normalised like a Grad-CAM map.

    scores(pixels [B, 3, H, W]) -> [B, C] target scores (the raw logits, as Grad-CAM's target). A window is
    replaced by `fill` in normalised space (0 = the dataset mean colour); a cell's importance for class c is
    how much the score drops, ReLU'd: the evidence *for* c there. Cost: 1 + G*G forward passes per image,
    in batches of `batch`.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    n, _, h, w = pixels.shape
    masks = occlusion_masks((h, w), window)
    g = (h // window, w // window)
    base = scores(pixels)  # [N, C]
    drops = np.zeros((n, base.shape[1], masks.shape[0]), dtype=np.float32)
    for i in range(n):
        for start in range(0, len(masks), batch):
            chunk = masks[start:start + batch]
            occluded = np.repeat(pixels[i:i + 1], len(chunk), axis=0)
            occluded[np.broadcast_to(chunk[:, None], occluded.shape)] = fill
            drops[i, :, start:start + len(chunk)] = (base[i][:, None] - scores(occluded).T)
    return scale_map(np.maximum(drops, 0).reshape(n, base.shape[1], *g))


def head_scores(logits: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Per-label target scores from one head's logits: the logit itself (pytorch-grad-cam's
    ClassifierOutputTarget); a one-logit sigmoid head scores its first label (the negative) as -logit."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.shape[1] == 1 and len(labels) == 2:
        return np.concatenate([-logits, logits], axis=1)
    return logits


def predicted_index(logits: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """The predicted label's index per image (the argmax of head_scores)."""
    return head_scores(logits, labels).argmax(axis=1)


def entry(
    grid_map: np.ndarray,
    *,
    method: str,
    head: str,
    target_label: str,
    target_index: int,
    predicted: bool,
    geo: dict,
    target_layer: str | None = None,
    cost: int | None = None,
) -> dict:
    """One detector head's explanation in the answer."""
    grid_map = np.asarray(grid_map, dtype=np.float32)
    out = {
        "method": method,
        "head": head,
        "target_label": target_label,
        "target_index": int(target_index),
        "target": "predicted" if predicted else "requested",
        "grid": list(grid_map.shape),
        "map": [[round(float(v), 4) for v in row] for row in grid_map],
        "geometry": geo,
    }
    if target_layer is not None:
        out["target_layer"] = target_layer
    if cost is not None:
        out["forward_passes"] = cost
    return out


# ---------------------------------------------------------------------------------------------------
# a requested label (rather than the predicted one)

# genguard_explain's optional input, BYTES [1] per image: JSON {detector: {head: label}}. Absent (or a head not
# named in it): the predicted label's map, as before.
LABELS_INPUT = "EXPLAIN_LABELS"


def parse_labels(choice, detectors: Sequence) -> dict[str, dict[str, str]]:
    """A request's label choice as {detector: {head: label}}; ValueError naming the valid choices otherwise.

    choice: a mapping {detector: label} (a one-head detector), {detector: {head: label}} or
    {"detector.head": label}; or strings "detector=label" / "detector.head=label" (the gateway's query form).
    detectors: the DetectorSpecs that may be named (every head of each, with its labels).
    """
    by_name = {spec.name: spec for spec in detectors}
    pairs: list[tuple[str, object]] = []
    if isinstance(choice, dict):
        pairs = list(choice.items())
    else:
        for item in choice or []:
            key, sep, label = str(item).partition("=")
            if not sep or not key or not label:
                raise ValueError(f"{item!r} is not <detector>=<label> or <detector>.<head>=<label>")
            pairs.append((key, label))
    out: dict[str, dict[str, str]] = {}
    for key, value in pairs:
        detector, _, head = str(key).partition(".")
        spec = by_name.get(detector)
        if spec is None:
            raise ValueError(f"unknown detector {detector!r}: choose from {', '.join(by_name)}")
        heads = {h.name: h for h in spec.heads}
        if isinstance(value, dict) and not head:
            chosen = list(value.items())
        elif head or len(heads) == 1:
            chosen = [(head or spec.heads[0].name, value)]
        else:
            raise ValueError(f"{detector} has heads {', '.join(heads)}: name one, as {detector}.<head>=<label>")
        for head_name, label in chosen:
            if head_name not in heads:
                raise ValueError(f"{detector} has no head {head_name!r}: its heads are {', '.join(heads)}")
            labels = heads[head_name].labels
            if not isinstance(label, str) or label not in labels:
                raise ValueError(f"{detector}.{head_name} has no label {label!r}: choose from {', '.join(labels)}")
            previous = out.setdefault(detector, {}).setdefault(head_name, label)
            if previous != label:
                raise ValueError(f"{detector}.{head_name} is given two labels, {previous!r} and {label!r}")
    return out
