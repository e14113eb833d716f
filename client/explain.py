"""Heatmap overlays for the `explanations` block of an answer (numpy and Pillow only, no cv2).

overlay() places a served map on the original image (genguard.explanations.place_on_image: the whole image
for squash inputs, the center crop for shorter-side crops), then blends it the way pytorch-grad-cam's
show_cam_on_image(img, mask, use_rgb=True) does: OpenCV's COLORMAP_JET of uint8(255 * mask), then
(1 - image_weight) * heatmap + image_weight * image, divided by its maximum. The JET table is OpenCV's, built
with OpenCV's own float32 arithmetic, so the colours equal cv2.applyColorMap's (tested against cv2).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from genguard.explanations import place_on_image, resize_bilinear, scale_map  # noqa: F401 (re-exported)


@lru_cache(maxsize=1)
def jet_lut() -> np.ndarray:
    """[256, 3] uint8 RGB, equal to cv2.applyColorMap(x, cv2.COLORMAP_JET) (which answers BGR).

    OpenCV defines Jet as GNU Octave's jet(256) stored as float32, resampled onto linspace(0, 1, 256) by its
    interp1 (float32), then converted with convertTo(CV_8U, 255): round half to even. Reproduced step by step.
    """
    f = np.float32
    j = np.arange(256)
    step = f(f(1) / f(255))
    x = (np.arange(256, dtype=f) * step).astype(f)  # OpenCV linspace: x0 + i * step in float
    lo, hi = np.maximum(j - 1, 0), np.maximum(j, 1)  # interp1's binary search lands on (i - 1, i)
    channels = []
    for centre in (3, 2, 1):  # red, green, blue: clip(1.5 - |4x - centre|, 0, 1)
        y = np.clip(1.5 - np.abs(4 * j / 255 - centre), 0, 1).astype(f)
        value = (y[lo] + (x - x[lo]) * (y[hi] - y[lo]) / (x[hi] - x[lo])).astype(f)
        channels.append(np.rint(value * f(255)))
    return np.stack(channels, axis=1).astype(np.uint8)


def show_cam_on_image(img: np.ndarray, mask: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """pytorch_grad_cam.utils.image.show_cam_on_image(img, mask, use_rgb=True, COLORMAP_JET) without cv2.

    img: float RGB [H, W, 3] in [0, 1]; mask: [H, W] in [0, 1]. Returns uint8 RGB.
    """
    if np.max(img) > 1:
        raise ValueError("the image should be float in [0, 1]")
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight should be in [0, 1], got {image_weight}")
    heatmap = jet_lut()[np.uint8(255 * mask)].astype(np.float32) / 255
    cam = (1 - image_weight) * heatmap + image_weight * img
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def overlay(image: Image.Image | str | Path | bytes, explanation: dict, image_weight: float = 0.5) -> Image.Image:
    """The original image with one served explanation blended on the region the model saw."""
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    elif isinstance(image, (bytes, bytearray)):
        import io

        image = Image.open(io.BytesIO(image))
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    height, width = rgb.shape[:2]
    geo = dict(explanation["geometry"])
    grid = np.asarray(explanation["map"], dtype=np.float32)
    if geo.get("resize") != "squash" and "crop_box" in geo:
        left, top, right, bottom = geo["crop_box"]
        sx, sy = width / geo["image_size"][0], height / geo["image_size"][1]
        x0, y0 = max(0, int(round(left * sx))), max(0, int(round(top * sy)))
        x1, y1 = min(width, int(round(right * sx))), min(height, int(round(bottom * sy)))
    else:
        x0, y0, x1, y1 = 0, 0, width, height
    out = np.uint8(np.rint(rgb * 255))
    if x1 > x0 and y1 > y0:  # outside a center crop the model saw nothing: the image is left as it is
        mask = place_on_image(grid, {"resize": "squash"}, x1 - x0, y1 - y0)
        out[y0:y1, x0:x1] = show_cam_on_image(rgb[y0:y1, x0:x1], mask, image_weight)
    return Image.fromarray(out)


def write_explanations(image: Image.Image | str | Path | bytes, result: dict, out_dir: Path, name: str) -> list[Path]:
    """<name>.<detector>[.<head>].png for every explanation of one answer, and <name>.json (the answer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    explanations = result.get("explanations") or {}
    for detector, entries in explanations.items():
        for entry in entries if isinstance(entries, list) else [entries]:
            if "map" not in entry:
                continue
            suffix = detector if len(entries) == 1 else f"{detector}.{entry['head']}"
            path = out_dir / f"{name}.{suffix}.png"
            overlay(image, entry).save(path)
            written.append(path)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    written.append(path)
    return written


def explain(inputs, url: str | None = None, *, labels=None, **client_kwargs) -> list:
    """Client.detect() through the `genguard_explain` ensemble: one Result per image, in input order, whose
    `raw["explanations"]` holds the maps (per detector, one entry per head). labels: the label to map per
    head instead of the predicted one ({detector: label} for a one-head detector, {detector: {head: label}},
    or ["detector=label", "detector.head=label"]; ValueError naming the valid ones). Takes Client's
    arguments (protocol, timeout, tls...); the server must serve genguard_explain (make serve EXPLAIN=1)."""
    from genguard.explanations import EXPLAIN_ENSEMBLE

    from .sync import Client

    client_kwargs.setdefault("timeout", 600.0)  # occlusion of a transformer takes tens of forward passes
    with Client(url, model=EXPLAIN_ENSEMBLE, **client_kwargs) as client:
        return client.detect(inputs, explain_labels=labels)
