"""Hostile and odd inputs, as encoded bytes, with the outcome GenGuard must give each.

expected: "SUCCESS" (a correct answer is required), or the FAILURE reason code.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from genguard.export import samples


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 frame header is patched to claim width x height."""
    data = bytearray(_save(Image.new("RGB", (16, 16), (200, 10, 10)), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corrupt_body(data: bytes, seed: int = 0) -> bytes:
    """Keep the first 20% (headers) intact, scramble bytes of the rest."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    start = len(out) // 5
    for i in rng.integers(start, len(out) - 16, 40):
        out[i] = int(rng.integers(0, 256))
    return bytes(out)


def png_with_bad_crc(data: bytes) -> bytes:
    out = bytearray(data)
    idat = out.index(b"IDAT")
    out[idat + 10] ^= 0xFF  # inside the first IDAT: its CRC no longer matches
    return bytes(out)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 48), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def with_zip_appended(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.txt", "polyglot " * 20)
    return data + buf.getvalue()


def cases(max_bytes: int) -> dict[str, tuple[bytes, str]]:
    photos, edge = samples.photos(), samples.edge_cases()
    rocket, astronaut = photos["rocket.jpg"], photos["astronaut.png"]
    small = Image.open(io.BytesIO(photos["coffee.png"])).convert("RGB").resize((120, 80))
    side = int((max_bytes / 3) ** 0.5) + 64  # uncompressed PNG of noise: just over max_bytes
    noise = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return {
        "empty": (b"", "empty"),
        "random_bytes": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not_an_image"),
        "truncated_jpeg": (rocket[: len(rocket) // 2], "truncated"),
        "truncated_png": (astronaut[: len(astronaut) // 3], "truncated"),
        "png_bad_crc": (png_with_bad_crc(_save(small, "PNG")), "corrupt"),
        "png_bomb_100k": (png_claiming(100_000, 100_000), "too_many_pixels"),
        "jpeg_bomb_65k": (jpeg_claiming(65_000, 65_000), "too_many_pixels"),
        "over_byte_limit": (_save(Image.fromarray(noise), "PNG", compress_level=0), "too_large"),
        "animated_gif": (animated("GIF"), "SUCCESS"),
        "animated_webp": (animated("WEBP"), "SUCCESS"),
        "cmyk_jpeg": (edge["cmyk.jpg"], "SUCCESS"),
        "grey16_png": (edge["grey16.png"], "SUCCESS"),
        "greyscale": (edge["grey.jpg"], "SUCCESS"),
        "rgba": (edge["rgba.png"], "SUCCESS"),
        "palette": (edge["palette.png"], "SUCCESS"),
        "exif_rotated": (edge["exif_rotated.jpg"], "SUCCESS"),
        "one_pixel": (_save(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), "SUCCESS"),
        "one_by_10000": (_save(Image.new("RGB", (1, 10000), (50, 60, 70)), "PNG"), "SUCCESS"),
        "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                "not_an_image"),
        "html": (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "not_an_image"),
        "pdf": (b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF", "not_an_image"),
        "ico": (_save(small, "ICO"), "unsupported_format"),
        "png_then_html": (_save(small, "PNG") + b"<html><script>alert(1)</script></html>", "SUCCESS"),
        "jpeg_then_zip": (with_zip_appended(_save(small, "JPEG")), "SUCCESS"),
    }
