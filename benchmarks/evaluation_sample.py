"""The labelled set behind benchmarks/results/evaluation-sample/: the parity photos as `real/`, and
procedurally rendered images as `ai/procedural/`.

real/: the 23 parity images (export/samples.py): 12 photos scikit-image ships, and 11 edge cases made
from them (portrait, panorama, 32x32, 4000x3000, greyscale, RGBA, palette, CMYK, EXIF-rotated, 16-bit,
WebP).
ai/procedural/: 12 images rendered here by code (smooth noise, gradients, shapes). They are NOT the
output of a generative model: no such image ships offline. They stand in for the AI-generated class
so that the two-class metrics and plots have something to show; with random-weight detectors the
figures show the machinery, not detector quality.

    python -m genguard.benchmarks.evaluation_sample --out build/evaluation-sample
    genguard evaluate build/evaluation-sample --perturb jpeg:90,jpeg:70,resize:0.5,crop:0.8 \
        --out benchmarks/results/evaluation-sample
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RENDERS = 12


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    coarse = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def render(index: int, size: int = 256) -> bytes:
    """One deterministic procedural image (PNG or JPEG bytes)."""
    rng = np.random.default_rng(1000 + index)
    kind = index % 3
    if kind == 0:  # smooth multi-scale noise
        img = sum(_smooth_noise(rng, size, c) / (i + 1) for i, c in enumerate((4, 16, 64)))
        img = 255 * (img - img.min()) / max(1e-9, np.ptp(img))
        image = Image.fromarray(img.astype(np.uint8))
    elif kind == 1:  # radial gradient with a colour ramp
        y, x = np.mgrid[0:size, 0:size] / size
        cx, cy = rng.random(2)
        r = np.hypot(x - cx, y - cy)
        phase = rng.random(3) * 2 * np.pi
        img = np.stack([127.5 * (1 + np.sin(8 * r * (1 + rng.random()) + p)) for p in phase], axis=-1)
        image = Image.fromarray(img.astype(np.uint8))
    else:  # flat shapes on a gradient
        base = np.linspace(0, 255, size)[None, :, None] * rng.random(3)[None, None, :]
        image = Image.fromarray(np.broadcast_to(base, (size, size, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x0, y0 = rng.integers(0, size - 20, 2)
            w, h = rng.integers(10, size // 2, 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if index % 2 == 0 else "JPEG", quality=90)
    return buffer.getvalue()


def build(out: Path) -> Path:
    from genguard.export.samples import all_images

    (out / "real").mkdir(parents=True, exist_ok=True)
    (out / "ai" / "procedural").mkdir(parents=True, exist_ok=True)
    for name, data in all_images().items():
        (out / "real" / name).write_bytes(data)
    for i in range(RENDERS):
        (out / "ai" / "procedural" / f"render{i:02d}.{'png' if i % 2 == 0 else 'jpg'}").write_bytes(render(i))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.evaluation_sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/evaluation-sample"))
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
