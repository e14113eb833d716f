"""Perturbations for robustness checks: `jpeg:Q`, `resize:F`, `crop:F` (comma-separated lists).

jpeg:Q    re-encode as JPEG at quality Q (1-100), after converting to RGB (greyscale stays greyscale)
resize:F  scale both sides by F (bicubic), sent as PNG (lossless, so only the resize changes pixels)
crop:F    keep the centred F x F fraction of each side, sent as PNG
"""

from __future__ import annotations

import io

NONE = "none"
KINDS = ("jpeg", "resize", "crop")


def parse(spec: str) -> list[str]:
    """'jpeg:90, resize:0.5' -> ['jpeg:90', 'resize:0.5'] (normalised); ValueError if malformed."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        kind, _, value = part.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS or not value:
            raise ValueError(f"unknown perturbation {part!r}: jpeg:Q, resize:F or crop:F")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value!r} is not a number") from None
        if kind == "jpeg" and not (number.is_integer() and 1 <= number <= 100):
            raise ValueError(f"{part!r}: JPEG quality must be an integer in 1..100")
        if kind == "resize" and not 0 < number <= 4:
            raise ValueError(f"{part!r}: resize factor must be in (0, 4]")
        if kind == "crop" and not 0 < number <= 1:
            raise ValueError(f"{part!r}: crop fraction must be in (0, 1]")
        name = f"{kind}:{int(number)}" if kind == "jpeg" else f"{kind}:{number:g}"
        if name not in out:
            out.append(name)
    return out


def apply(data: bytes, perturbation: str) -> bytes:
    """The perturbed copy of one encoded image, encoded again (raises if the image can't be opened)."""
    from PIL import Image

    from genguard.client.inputs import encode_png

    if perturbation == NONE:
        return data
    kind, _, value = perturbation.partition(":")
    image = Image.open(io.BytesIO(data))
    image.load()
    if kind == "jpeg":
        image = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(value))
        return buffer.getvalue()
    factor = float(value)
    if kind == "resize":
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return encode_png(image.resize(size, Image.Resampling.BICUBIC))
    if kind == "crop":
        w, h = max(1, round(image.width * factor)), max(1, round(image.height * factor))
        left, top = (image.width - w) // 2, (image.height - h) // 2
        return encode_png(image.crop((left, top, left + w, top + h)))
    raise ValueError(f"unknown perturbation {perturbation!r}")
