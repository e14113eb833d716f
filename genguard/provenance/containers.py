"""Metadata blocks found by walking an encoded image's container, never decoding its pixels.

JPEG: APP1 Exif and XMP segments, COM comments, APP11 JUMBF (C2PA). PNG: tEXt, zTXt, iTXt (XMP in
iTXt "XML:com.adobe.xmp"), eXIf, caBX (C2PA). WebP: EXIF, "XMP " and C2PA chunks. Every limit of
MetadataLimits is applied here: a block past a limit is skipped with a note; nothing raises.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from genguard.provenance.limits import MetadataLimits

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\0"
XMP_JPEG_EXTENDED = b"http://ns.adobe.com/xmp/extension/\0"
XMP_PNG_KEYWORD = "XML:com.adobe.xmp"


@dataclass
class Blocks:
    container: str | None = None            # "jpeg" | "png" | "webp" | None (other formats: nothing read)
    exif: bytes | None = None               # TIFF-structured EXIF (the "Exif\0\0" prefix removed)
    xmp: list[bytes] = field(default_factory=list)
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
            blocks.notes.append("extended XMP segments not read")
        elif marker == 0xEB and body[:2] == b"JP":  # APP11: JUMBF, how C2PA manifests are embedded in JPEG
            blocks.c2pa_bytes += len(body)
        elif marker == 0xFE:
            _add_text(blocks, "Comment", body.decode("utf-8", "replace"), limits)
    return blocks


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
