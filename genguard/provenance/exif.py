"""EXIF (TIFF-structured bytes from a JPEG APP1, PNG eXIf or WebP EXIF chunk), read with Pillow's EXIF
parser: Software, Make/Model, DateTimeOriginal, UserComment (where Stable Diffusion WebUI writes its
generation parameters in JPEG and WebP)."""

from __future__ import annotations

from PIL import Image

from genguard.provenance import generators
from genguard.provenance.text import excerpt, parameters_signal

SOFTWARE, MAKE, MODEL, EXIF_IFD = 0x0131, 0x010F, 0x0110, 0x8769
DATETIME_ORIGINAL, USER_COMMENT = 0x9003, 0x9286


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\0 \t\r\n")


def user_comment(value) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (UNICODE: UTF-16, either order)."""
    if isinstance(value, str):
        return value.strip("\0 ")
    code, body = bytes(value[:8]), bytes(value[8:])
    if code.startswith(b"UNICODE"):
        if len(body) >= 2 and body[0] == 0 and body[1] != 0:
            text = body.decode("utf-16-be", "replace")
        elif len(body) >= 2 and body[1] == 0 and body[0] != 0:
            text = body.decode("utf-16-le", "replace")
        else:
            text = body.decode("utf-16-be", "replace")
    elif code.startswith(b"ASCII") or code == b"\0" * 8:
        text = body.decode("latin-1", "replace")
    else:
        text = bytes(value).decode("utf-8", "replace")
    return text.strip("\0 ")


def signals(exif_bytes: bytes, excerpt_chars: int) -> list[dict]:
    exif = Image.Exif()
    exif.load(exif_bytes)
    sub = exif.get_ifd(EXIF_IFD)
    out = []
    software = _text(exif.get(SOFTWARE, ""))
    if software:
        generator = generators.identify(software)
        out.append({"source": "exif", "kind": "ai_generated" if generator else "software", "generator": generator,
                    "detail": {"field": "Software", "value": software[:200]}})
    make, model = _text(exif.get(MAKE, "")), _text(exif.get(MODEL, ""))
    if make or model:
        detail = {"field": "Make/Model", "make": make[:100], "model": model[:100]}
        taken = _text(sub.get(DATETIME_ORIGINAL, ""))
        if taken:
            detail["date_time_original"] = taken[:40]
        # a camera's EXIF is reported, never evidence: it is trivially copied or forged
        out.append({"source": "exif", "kind": "camera", "generator": None, "detail": detail})
    comment = sub.get(USER_COMMENT)
    if comment:
        text = user_comment(comment)
        signal = parameters_signal("exif", "UserComment", text, excerpt_chars)
        if signal is None and text:
            generator = generators.identify(text)
            signal = {"source": "exif", "kind": "ai_generated" if generator else "comment", "generator": generator,
                      "detail": {"field": "UserComment", **excerpt(text, excerpt_chars)}}
        if signal:
            out.append(signal)
    return out
