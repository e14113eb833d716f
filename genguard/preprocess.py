"""Preprocessing compiled from the InputSpecs: Pillow + numpy, bit-exact with the references.

Used in-process (export validation, benchmarks) and by the Triton `preprocess` model. Every refusal
raises ImageRejected with a reason code and one readable sentence, so one bad image fails alone.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from genguard.specs import InputSpec

# HEIC/HEIF (iPhones) through pillow-heif's Pillow plugin; AVIF is Pillow's own.
pillow_heif.register_heif_opener()

log = logging.getLogger("genguard.preprocess")

# Above this many pixels, a shorter-side resize only computes its center crop (see prepare()).
MAX_INTERMEDIATE_PIXELS = 64_000_000
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# transformers' SiglipImageProcessor rescale_factor as its config stores it (1/255 in float64).
_TRANSFORMERS_RESCALE = 1 / 255


class ImageRejected(ValueError):
    """An input that can't be answered. `reason` is a stable code, str(self) a sentence."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """What the server accepts. Pixels are checked from the header, before any decoding."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000  # Pillow's own bomb limit is ~89 Mpx (warn) / 178 Mpx (error)
    formats: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")


@dataclass
class DecodedImage:
    image: Image.Image
    format: str
    width: int
    height: int


def _jpeg_end(data: bytes) -> int | None:
    """Offset just past the JPEG's end-of-image marker, found by walking its segments and scanning its
    entropy-coded data (where 0xFF is always followed by 0x00 or a restart marker); None if it never
    gets there. Data after EOI (motion photos append a video) is not part of the image."""
    pos, size = 2, len(data)
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            pos += 2
            continue
        if pos + 4 > size:
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: skip entropy-coded data up to the next real marker
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return None
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return None


# A file may genuinely end in a few zero bytes (RIFF's pad byte, black BMP pixels), which padding can't be
# told from: up to this many missing bytes count as such zeros rather than truncation.
_TRAILING_ZEROS_SLACK = 16


def _declared_extent(data: bytes, content: bytes, size: int, name: str) -> bytes:
    """A format with a declared file size: the image is exactly `size` bytes, padded or not, so the
    decoder sees the same bytes whether or not the request was padded."""
    if len(content) + _TRAILING_ZEROS_SLACK < size:
        raise ImageRejected("truncated", f"{name} is truncated: {len(content)} of {size} bytes")
    return data[:size].ljust(size, b"\0")


def _isobmff_end(data: bytes) -> int | None:
    """HEIF/AVIF (ISO base media file format): offset just past the last top-level box, walking the box
    sizes until the zero padding; None if a box extends past the data (truncated) or is malformed. Padding
    can't stand in for missing bytes: a box must end within the non-zero content (+ the usual slack)."""
    pos, size = 0, len(data)
    content = len(data.rstrip(b"\0")) + _TRAILING_ZEROS_SLACK
    while pos + 8 <= size:
        box, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if box == 0 and kind == b"\0\0\0\0":  # the request's zero padding
            break
        if box == 0:  # "extends to the end of the file"
            return size
        if box == 1:  # 64-bit size
            if pos + 16 > size:
                return None
            box = int.from_bytes(data[pos + 8:pos + 16], "big")
        if box < 8 or pos + box > min(size, content):
            return None
        pos += box
    return pos


def encoded_extent(data: bytes) -> bytes:
    """The image's own bytes without the zero padding of a batched request; raises for truncation.

    Padding would otherwise hide truncation: libjpeg reads the zeros as entropy data and returns a
    garbage image without error. So check each format's own end marker or declared size first.
    TIFF and GIF have neither a reliable end marker nor a declared size; their truncation is left to
    the decoder.
    """
    content = data.rstrip(b"\0")
    if content[:3] == b"\xff\xd8\xff":
        end = _jpeg_end(data)
        if end is None:
            raise ImageRejected("truncated", "JPEG is truncated: its marker structure ends before end-of-image")
        return data[:end]
    if content[:8] == b"\x89PNG\r\n\x1a\n":
        end = data.rfind(b"IEND\xaeB`\x82")
        if end < 0:
            raise ImageRejected("truncated", "PNG is truncated: no IEND chunk")
        return data[: end + 8]
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return _declared_extent(data, content, 8 + int.from_bytes(data[4:8], "little"), "WebP")
    if content[4:8] == b"ftyp":  # HEIF, AVIF
        end = _isobmff_end(data)
        if end is None:
            raise ImageRejected("truncated", "HEIF/AVIF is truncated: a box extends past the data")
        return data[:end]
    if content[:2] == b"BM" and len(data) >= 6:
        size = int.from_bytes(data[2:6], "little")  # some writers leave it 0
        return _declared_extent(data, content, size, "BMP") if size else content
    return data


_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def without_png_text(data: bytes) -> bytes:
    """A PNG without its text chunks (the pixels are the same); anything else unchanged.

    Metadata is read from the raw bytes by genguard.provenance within its own limits. Pillow parses text
    chunks when it opens a PNG and refuses the whole image when one inflates past its MAX_TEXT_CHUNK: a
    hostile text chunk must not fail the image, so the decoder never sees them.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return data
    pos, keep, size, dropped = 8, [slice(0, 8)], len(data), False
    while pos + 8 <= size:
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] in _PNG_TEXT_CHUNKS:
            dropped = True
        else:
            keep.append(slice(pos, end))
        pos = end
    if not dropped:
        return data
    if pos < size:
        keep.append(slice(pos, size))
    return b"".join(data[s] for s in keep)


# No accepted format fits a whole image in fewer bytes before its trailing zeros (a 1x1 BMP's header alone
# reaches byte 29; PNG, GIF, JPEG and WebP end in non-zero markers and are longer).
MIN_IMAGE_BYTES = 8


def open_checked(data: bytes, limits: DecodeLimits = DecodeLimits()) -> tuple[Image.Image, bytes]:
    """The header checks made before any pixel is decoded (byte limit, zero padding, truncation markers,
    format, pixel count; Pillow's header parse), or ImageRejected. Returns the opened image (not yet
    decoded) and the bytes it was opened from (the image's extent, PNG text chunks dropped).

    Trailing zero bytes are allowed: a batched request pads every image to the longest one. The cpu
    target's decode() and the GPU targets' screening (genguard.dali.screen) both start here.
    """
    # Padding doesn't count against the byte limit: a small image batched with a large one stays small.
    size = len(data.rstrip(b"\0"))
    if size == 0:
        raise ImageRejected("empty", "empty input: no image bytes were sent")
    if size < MIN_IMAGE_BYTES:
        # Decided on the unpadded length: padded, b"|" would read as a DIB header size (124) and b"\n" as
        # a PCX header, so the same bytes would get another answer in a batch than alone.
        raise ImageRejected("not_an_image", f"{size} bytes: too short to be an image")
    if size > limits.max_bytes:
        raise ImageRejected("too_large", f"image is {size} bytes, over the limit of {limits.max_bytes} bytes")
    data = without_png_text(encoded_extent(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_many_pixels", "image dimensions exceed the decompression-bomb limit") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageRejected("corrupt", f"unreadable image header: {exc}") from None
    if image.format not in limits.formats:
        raise ImageRejected(
            "unsupported_format",
            f"format {image.format} is not accepted (accepted: {', '.join(limits.formats)})",
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected("corrupt", f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}",
        )
    return image, data


def decode(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Open and fully decode the first frame of an encoded image, or raise ImageRejected."""
    image, _ = open_checked(data, limits)
    width, height = image.size
    try:
        image.seek(0)  # first frame of animations (GIF, WebP, multi-page TIFF)
        image.load()
    except Exception as exc:
        raise ImageRejected("corrupt", f"image data is corrupt or truncated: {exc}") from None
    return DecodedImage(image=image, format=image.format, width=width, height=height)


def _composite_on_white(image: Image.Image) -> Image.Image:
    """transformers.image_transforms.convert_to_rgb: transparency (alpha band, or the colour Pillow
    records in info["transparency"]) composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_rgb(image: Image.Image, alpha: str, exif_transpose: bool = False) -> Image.Image:
    """RGB the way the reference pipeline makes it (see InputSpec.alpha)."""
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    if alpha == "white":
        return _composite_on_white(image)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if alpha == "drop_then_white":
        # Pillow's P->RGB convert keeps the transparent colour in info, which transformers then whitens
        return _composite_on_white(rgb)
    return rgb


def shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `shorter`, the longer one is truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int]:
    """torchvision CenterCrop's (left, top): Python round, i.e. half-to-even."""
    return int(round((width - crop_w) / 2.0)), int(round((height - crop_h) / 2.0))


def prepare(rgb: Image.Image, spec: InputSpec) -> np.ndarray:
    """An RGB image -> the float32 CHW tensor the model takes."""
    out_h, out_w = spec.size
    resample = _FILTERS[spec.interpolation]
    if spec.resize == "squash":
        resized = rgb.resize((out_w, out_h), resample)
        pixels = np.asarray(resized, dtype=np.uint8)
    else:
        # timm transforms_imagenet_eval, crop_mode="center": Resize(floor(size / crop_pct)), CenterCrop(size)
        scale_h, scale_w = (math.floor(s / spec.crop_pct) for s in spec.size)
        if scale_h == scale_w:
            new_size = shorter_side_size(rgb.width, rgb.height, scale_h)
        else:
            new_size = (scale_w, scale_h)
        left, top = center_crop_box(*new_size, out_w, out_h)
        if new_size[0] * new_size[1] <= MAX_INTERMEDIATE_PIXELS:
            resized = rgb.resize(new_size, resample)
            pixels = np.asarray(resized, dtype=np.uint8)[top : top + out_h, left : left + out_w]
        else:
            # Extreme aspect ratios (1x10000 -> 256x2560000) would make the reference allocate gigabytes.
            # Resample only the crop with Pillow's box resize at the same scale. Not bit-exact: measured
            # within 1 level for bilinear, up to ~20 levels for bicubic (its overshoot is clipped at a
            # different intermediate stage); only images past ~1:250 aspect ratio take this path.
            sx, sy = rgb.width / new_size[0], rgb.height / new_size[1]
            box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
            pixels = np.asarray(rgb.resize((out_w, out_h), resample, box=box), dtype=np.uint8)
    chw = pixels.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    if spec.arithmetic == "transformers":
        scaled = (chw.astype(np.float64) * _TRANSFORMERS_RESCALE).astype(np.float32)
    else:
        scaled = chw.astype(np.float32) / np.float32(255)
    return np.ascontiguousarray((scaled - mean) / std, dtype=np.float32)


def preprocess(decoded: DecodedImage, inputs: dict[str, InputSpec]) -> dict[str, np.ndarray]:
    """One decoded image -> one tensor per input spec; RGB conversions shared between specs."""
    rgb_cache: dict[tuple[str, bool], Image.Image] = {}
    tensors = {}
    for name, spec in inputs.items():
        key = (spec.alpha, spec.exif_transpose)
        if key not in rgb_cache:
            rgb_cache[key] = to_rgb(decoded.image, *key)
        tensors[name] = prepare(rgb_cache[key], spec)
    return tensors


def preprocess_bytes(
    data: bytes, inputs: dict[str, InputSpec], limits: DecodeLimits = DecodeLimits()
) -> tuple[DecodedImage, dict[str, np.ndarray]]:
    decoded = decode(data, limits)
    try:
        return decoded, preprocess(decoded, inputs)
    except ImageRejected:
        raise
    except (OSError, ValueError) as exc:  # Pillow's word for a mode it can't convert, or data it can't read
        raise ImageRejected("unconvertible", f"image could not be converted to RGB: {exc}") from None
    except Exception as exc:  # anything else is a bug: its own reason, and the traceback in the log
        log.exception("unexpected error while preprocessing an image")
        raise ImageRejected("internal", f"unexpected error while preprocessing the image "
                                        f"({type(exc).__name__}: {exc}); please report it") from exc
