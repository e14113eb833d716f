"""Test images: real photos shipped by scikit-image, plus generated edge cases, all as encoded bytes."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# Files that scikit-image ships inside its wheel (no download needed).
PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
    "motorcycle_left.png", "ihc.png", "camera.png", "coins.png", "grass.png", "brick.png",
)


def _data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@lru_cache(maxsize=None)
def photos() -> dict[str, bytes]:
    """Real photos as their original encoded files (PNG/JPEG, RGB and greyscale)."""
    return {name: (_data_dir() / name).read_bytes() for name in PHOTOS}


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@lru_cache(maxsize=None)
def edge_cases() -> dict[str, bytes]:
    """Shapes and modes that break naive preprocessing."""
    base = Image.open(io.BytesIO(photos()["astronaut.png"])).convert("RGB")
    coffee = Image.open(io.BytesIO(photos()["coffee.png"])).convert("RGB")
    rgba = base.copy()
    alpha = np.tile(np.linspace(0, 255, base.width, dtype=np.uint8), (base.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    palette = base.quantize(64)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    grey16 = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    return {
        "portrait.jpg": _encode(base.resize((300, 520)), "JPEG", quality=92),
        "panorama.png": _encode(coffee.resize((1600, 300)), "PNG"),
        "tiny32.png": _encode(base.resize((32, 32)), "PNG"),
        "large4000x3000.jpg": _encode(coffee.resize((4000, 3000), Image.Resampling.BICUBIC), "JPEG", quality=90),
        "grey.jpg": _encode(base.convert("L"), "JPEG"),
        "rgba.png": _encode(rgba, "PNG"),
        "palette.png": _encode(palette, "PNG", transparency=0),
        "cmyk.jpg": _encode(coffee.convert("CMYK"), "JPEG"),
        "exif_rotated.jpg": _encode(base.resize((400, 300)), "JPEG", exif=exif),
        "grey16.png": _encode(grey16, "PNG"),
        "odd_size.webp": _encode(coffee.resize((333, 217)), "WEBP", quality=90),
    }


def all_images() -> dict[str, bytes]:
    return {**photos(), **edge_cases()}
