"""Metadata blocks found by walking an encoded image's container, never decoding its pixels.

JPEG: APP1 Exif and XMP segments (the extended XMP's segments too), COM comments, APP11 JUMBF (C2PA).
PNG: tEXt, zTXt, iTXt (XMP in iTXt "XML:com.adobe.xmp"), eXIf, caBX (C2PA). WebP: EXIF, "XMP " and C2PA
chunks. HEIF and AVIF: the primary image's Exif and XMP items, as pillow-heif (HEIF) and Pillow (AVIF)
read them when they open the file (libheif, libavif: the container's boxes, not the pixels). Every limit
of MetadataLimits is applied here: a block past a limit is skipped with a note; nothing raises.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass, field

from genguard.provenance.limits import MetadataLimits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\0"
XMP_JPEG_EXTENDED = b"http://ns.adobe.com/xmp/extension/\0"
XMP_PNG_KEYWORD = "XML:com.adobe.xmp"
# What each container can carry and is looked for (the answer's `looked_for`).
LOOKED_FOR = {"jpeg": ["c2pa", "xmp", "exif", "text"], "png": ["c2pa", "xmp", "exif", "text"],
              "webp": ["c2pa", "xmp", "exif", "text"], "heif": ["xmp", "exif"], "avif": ["xmp", "exif"]}


@dataclass(frozen=True)
class XmpExtension:
    """One JPEG extended-XMP segment (XMP spec part 3, 1.1.3.1): a portion of the extended packet."""
    guid: str            # 32 hex digits, upper case: the MD5 of the whole extended packet
    full_length: int     # the whole extended packet's length, as the segment declares it
    offset: int          # where this portion goes in it
    portion: bytes


@dataclass
class Blocks:
    container: str | None = None            # a key of LOOKED_FOR | None (other formats: nothing read)
    exif: bytes | None = None               # TIFF-structured EXIF (the "Exif\0\0" prefix removed)
    xmp: list[bytes] = field(default_factory=list)
    xmp_extension: list[XmpExtension] = field(default_factory=list)  # JPEG extended-XMP segments kept
    xmp_extension_segments: int = 0         # extended-XMP segments seen (kept or not)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (keyword, text): PNG text chunks, JPEG COM
    c2pa_bytes: int = 0                     # bytes of C2PA/JUMBF boxes seen (0: no manifest embedded)
    notes: list[str] = field(default_factory=list)
    read_bytes: int = 0                     # metadata bytes taken (after inflation)

    def take(self, size: int, what: str, limits: MetadataLimits) -> bool:
        """Count `size` metadata bytes against the per-image budget; False (and a note) past it."""
        if self.read_bytes + size > limits.max_metadata_bytes:
            self.notes.append(f"{what} skipped: the image's metadata is over {limits.max_metadata_bytes} bytes")
            return False
        self.read_bytes += size
        return True


def inflate(data: bytes, limit: int) -> bytes | None:
    """zlib data inflated to at most `limit` bytes; None if it would inflate past it (a zip bomb stops
    after `limit` bytes of output) or is corrupt."""
    try:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or inflater.unconsumed_tail:
        return None
    return out


def find_blocks(data: bytes, limits: MetadataLimits) -> Blocks:
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data, limits)
    if data[:8] == PNG_SIGNATURE:
        return _png(data, limits)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, limits)
    if data[4:8] == b"ftyp":
        return _isobmff(data, limits)
    return Blocks()


def _jpeg(data: bytes, limits: MetadataLimits) -> Blocks:
    blocks, pos, size, segments = Blocks("jpeg"), 2, len(data), 0
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: metadata comes before
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        body = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        segments += 1
        if segments > limits.max_blocks:
            blocks.notes.append(f"metadata after {limits.max_blocks} JPEG segments skipped")
            break
        if marker == 0xE1 and body.startswith(b"Exif\0\0"):
            if blocks.exif is None and blocks.take(len(body), "EXIF", limits):
                blocks.exif = body[6:]
        elif marker == 0xE1 and body.startswith(XMP_JPEG):
            packet = body[len(XMP_JPEG):]
            if _xmp_fits(blocks, packet, limits):
                blocks.xmp.append(packet)
        elif marker == 0xE1 and body.startswith(XMP_JPEG_EXTENDED):
            _xmp_extension(blocks, body[len(XMP_JPEG_EXTENDED):], limits)
        elif marker == 0xEB and body[:2] == b"JP":  # APP11: JUMBF, how C2PA manifests are embedded in JPEG
            blocks.c2pa_bytes += len(body)
        elif marker == 0xFE:
            _add_text(blocks, "Comment", body.decode("utf-8", "replace"), limits)
    return blocks


_GUID = re.compile(rb"[0-9A-Fa-f]{32}")


def _note_once(blocks: Blocks, note: str) -> None:
    if note not in blocks.notes:
        blocks.notes.append(note)


def _xmp_extension(blocks: Blocks, body: bytes, limits: MetadataLimits) -> None:
    """Keep one extended-XMP segment (GUID, full length, offset, portion) if it is well formed and within
    the limits; the packet is put together later, once the main packet has named its GUID."""
    blocks.xmp_extension_segments += 1
    if blocks.xmp_extension_segments > limits.max_xmp_extension_segments:
        _note_once(blocks, f"extended XMP segments past the first {limits.max_xmp_extension_segments} skipped")
        return
    if len(body) < 40 or not _GUID.fullmatch(body[:32]):
        blocks.notes.append("malformed extended XMP segment skipped (no GUID, length and offset header)")
        return
    guid = body[:32].decode("ascii").upper()
    full_length, offset = struct.unpack(">II", body[32:40])
    portion = body[40:]
    if full_length > limits.max_xmp_bytes:  # refused before any of it is kept
        _note_once(blocks, f"extended XMP {guid} of {full_length} bytes skipped (limit {limits.max_xmp_bytes})")
        return
    if not portion or offset + len(portion) > full_length:
        blocks.notes.append(f"malformed extended XMP segment of {guid} skipped (offset {offset} + "
                            f"{len(portion)} bytes outside its declared {full_length} bytes)")
        return
    if blocks.take(len(portion), "extended XMP segment", limits):
        blocks.xmp_extension.append(XmpExtension(guid, full_length, offset, portion))


def extended_xmp(segments: list[XmpExtension], guid: str) -> bytes:
    """The extended XMP packet named `guid`, put together from its segments by offset; ValueError (the
    reason) unless they cover it exactly once, agree on its length, and its MD5 is the GUID (XMP spec)."""
    mine = sorted((s for s in segments if s.guid == guid), key=lambda s: s.offset)
    if not mine:
        raise ValueError("no extended XMP segment carries it")
    lengths = {s.full_length for s in mine}
    if len(lengths) > 1:
        raise ValueError(f"its segments declare different lengths ({', '.join(map(str, sorted(lengths)))})")
    packet = bytearray()
    for segment in mine:
        if segment.offset < len(packet):
            raise ValueError(f"its segments overlap at offset {segment.offset}")
        if segment.offset > len(packet):
            raise ValueError(f"bytes {len(packet)}-{segment.offset - 1} are missing")
        packet += segment.portion
    if len(packet) != lengths.pop():
        raise ValueError(f"incomplete: {len(packet)} of {mine[0].full_length} bytes")
    digest = hashlib.md5(packet, usedforsecurity=False).hexdigest().upper()
    if digest != guid:
        raise ValueError(f"its MD5 ({digest}) is not its GUID")
    return bytes(packet)


def _xmp_fits(blocks: Blocks, packet: bytes, limits: MetadataLimits) -> bool:
    if len(packet) > limits.max_xmp_bytes:
        blocks.notes.append(f"XMP packet of {len(packet)} bytes skipped (limit {limits.max_xmp_bytes})")
        return False
    return blocks.take(len(packet), "XMP packet", limits)


def _text_count_ok(blocks: Blocks, limits: MetadataLimits) -> bool:
    if len(blocks.texts) >= limits.max_text_chunks:
        if not any(n.startswith("text chunks past") for n in blocks.notes):
            blocks.notes.append(f"text chunks past the first {limits.max_text_chunks} skipped")
        return False
    return True


def _add_text(blocks: Blocks, keyword: str, text: str, limits: MetadataLimits) -> None:
    if _text_count_ok(blocks, limits) and blocks.take(len(text), f"text chunk {keyword!r}", limits):
        blocks.texts.append((keyword, text))


def _png(data: bytes, limits: MetadataLimits) -> Blocks:
    blocks, pos, size, chunks = Blocks("png"), 8, len(data), 0
    while pos + 8 <= size:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body_at = pos + 8
        pos = body_at + length + 4
        chunks += 1
        if kind == b"IEND" or pos > size:
            break
        if chunks > limits.max_blocks:
            blocks.notes.append(f"chunks after the first {limits.max_blocks} PNG chunks skipped")
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            if not _text_count_ok(blocks, limits):
                continue
            if length > limits.max_metadata_bytes:  # never copied, never parsed
                blocks.notes.append(f"{kind.decode()} chunk of {length} bytes skipped "
                                    f"(limit {limits.max_metadata_bytes})")
                continue
            _png_text(blocks, kind, data[body_at:body_at + length], limits)
        elif kind == b"eXIf":
            if blocks.exif is None and blocks.take(length, "EXIF", limits):
                blocks.exif = data[body_at:body_at + length]
        elif kind == b"caBX":
            blocks.c2pa_bytes += length
    return blocks


def _png_text(blocks: Blocks, kind: bytes, body: bytes, limits: MetadataLimits) -> None:
    keyword, sep, rest = body.partition(b"\0")
    if not sep or not 1 <= len(keyword) <= 79:
        blocks.notes.append(f"malformed {kind.decode()} chunk skipped")
        return
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        raw, encoding = rest, "latin-1"
    elif kind == b"zTXt":
        raw = inflate(rest[1:], limits.max_inflated_bytes)
        encoding = "latin-1"
        if raw is None:
            blocks.notes.append(f"zTXt {key!r} skipped: inflates past {limits.max_inflated_bytes} bytes or is corrupt")
            return
    else:  # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
        if len(rest) < 2:
            blocks.notes.append(f"malformed iTXt {key!r} skipped")
            return
        compressed, tail = rest[0], rest[2:]
        parts = tail.split(b"\0", 2)
        if len(parts) < 3:
            blocks.notes.append(f"malformed iTXt {key!r} skipped")
            return
        raw, encoding = parts[2], "utf-8"
        if compressed:
            raw = inflate(raw, limits.max_inflated_bytes)
            if raw is None:
                blocks.notes.append(f"iTXt {key!r} skipped: inflates past {limits.max_inflated_bytes} bytes or is corrupt")
                return
    if key == XMP_PNG_KEYWORD:
        if _xmp_fits(blocks, raw, limits):
            blocks.xmp.append(raw)
        return
    _add_text(blocks, key, raw.decode(encoding, "replace"), limits)


def _webp(data: bytes, limits: MetadataLimits) -> Blocks:
    blocks, pos, size, chunks = Blocks("webp"), 12, min(len(data), 8 + int.from_bytes(data[4:8], "little")), 0
    while pos + 8 <= size:
        kind = data[pos:pos + 4]
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        body_at = pos + 8
        pos += 8 + length + (length & 1)
        chunks += 1
        if chunks > limits.max_blocks:
            blocks.notes.append(f"chunks after the first {limits.max_blocks} WebP chunks skipped")
            break
        if kind == b"EXIF":
            if blocks.exif is None and blocks.take(length, "EXIF", limits):
                body = data[body_at:body_at + length]
                blocks.exif = body[6:] if body.startswith(b"Exif\0\0") else body
        elif kind == b"XMP ":
            if length > limits.max_xmp_bytes:
                blocks.notes.append(f"XMP packet of {length} bytes skipped (limit {limits.max_xmp_bytes})")
            elif _xmp_fits(blocks, data[body_at:body_at + length], limits):
                blocks.xmp.append(data[body_at:body_at + length])
        elif kind == b"C2PA":
            blocks.c2pa_bytes += length
    return blocks


def _isobmff(data: bytes, limits: MetadataLimits) -> Blocks:
    """HEIF (pillow-heif) or AVIF (Pillow): opening parses the container, not the pixels; the primary
    image's Exif and XMP come as the libraries give them, then go through the same limits."""
    import warnings

    import pillow_heif
    from PIL import Image

    if "HEIF" not in Image.OPEN:
        pillow_heif.register_heif_opener()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=("HEIF", "AVIF"))
    except Exception as exc:  # another ISO-BMFF file (MP4, JPEG 2000...), or one the library refuses
        blocks = Blocks()
        blocks.notes.append(f"HEIF/AVIF metadata not read: {type(exc).__name__}")
        return blocks
    with image:
        blocks = Blocks(image.format.lower())
        exif, xmp = image.info.get("exif"), image.info.get("xmp")
    if exif:
        exif = exif[6:] if exif.startswith(b"Exif\0\0") else exif
        if blocks.take(len(exif), "EXIF", limits):
            blocks.exif = exif
    if xmp:
        xmp = xmp.encode() if isinstance(xmp, str) else bytes(xmp)
        if _xmp_fits(blocks, xmp, limits):
            blocks.xmp.append(xmp)
    return blocks
