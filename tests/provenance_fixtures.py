"""Provenance fixtures made at test time: a test CA (cryptography), C2PA manifests signed with
c2pa-python's Builder, generation-tool metadata written the way the tools write it, hostile metadata."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from genguard.provenance.testing import (CAPTURE, TRAINED, TestCA, encode, make_ca, picture,  # noqa: F401
                                         sign, tamper_jpeg_pixels)


def jpeg_with_segments(image: Image.Image, *segments: tuple[int, bytes]) -> bytes:
    """A JPEG with extra APPn/COM segments (marker, body) inserted right after SOI."""
    data = encode(image, "JPEG", quality=90)
    extra = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body for marker, body in segments)
    return data[:2] + extra + data[2:]


def xmp_packet(source_type: str = TRAINED, creator_tool: str | None = None, body: str = "") -> bytes:
    tool = f' xmp:CreatorTool="{creator_tool}"' if creator_tool else ""
    return (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
            f' xmlns:xmp="http://ns.adobe.com/xap/1.0/"{tool}>'
            f'<Iptc4xmpExt:DigitalSourceType>{source_type}</Iptc4xmpExt:DigitalSourceType>{body}'
            f'</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def jpeg_with_xmp(packet: bytes, image: Image.Image | None = None) -> bytes:
    return jpeg_with_segments(image or picture(seed=3), (0xE1, b"http://ns.adobe.com/xap/1.0/\0" + packet))


XMP_EXTENSION = b"http://ns.adobe.com/xmp/extension/\0"


def main_xmp(guid: str) -> bytes:
    """A main (standard) XMP packet that only points at an extended one, as Photoshop writes it."""
    return (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
            f' xmpNote:HasExtendedXMP="{guid}"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def extended_packet(creator_tool: str = "Midjourney v6", filler: int = 150_000) -> bytes:
    """An extended XMP packet (a full x:xmpmeta, no packet wrapper) too large for one APP1 segment: the
    declarations, and `filler` bytes of a long field as the reason it was split."""
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
            f' xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"'
            f' xmp:CreatorTool="{creator_tool}">'
            f'<Iptc4xmpExt:DigitalSourceType>{TRAINED}</Iptc4xmpExt:DigitalSourceType>'
            f'<photoshop:History>{"x" * filler}</photoshop:History>'
            f'</rdf:Description></rdf:RDF></x:xmpmeta>').encode()


def guid_of(packet: bytes) -> str:
    return hashlib.md5(packet).hexdigest().upper()


def extension_segments(packet: bytes, guid: str | None = None, size: int = 65_000,
                       full_length: int | None = None) -> list[tuple[int, bytes]]:
    """The APP1 segments carrying `packet` as JPEG extended XMP: signature, GUID (the packet's MD5 unless
    given), full length, offset, then at most `size` bytes of it."""
    guid = guid or guid_of(packet)
    return [(0xE1, XMP_EXTENSION + guid.encode() + struct.pack(">II", full_length or len(packet), at)
             + packet[at:at + size]) for at in range(0, len(packet), size)]


def jpeg_with_extended_xmp(packet: bytes, segments: list[tuple[int, bytes]] | None = None,
                           guid: str | None = None) -> bytes:
    """A JPEG whose main XMP names `guid` (the packet's MD5 by default) and carries the extension segments
    (the packet's, in order, unless given)."""
    guid = guid or guid_of(packet)
    segments = extension_segments(packet) if segments is None else segments
    return jpeg_with_segments(picture(seed=4), (0xE1, b"http://ns.adobe.com/xap/1.0/\0" + main_xmp(guid)), *segments)


def heif_with(fmt: str, exif: bytes | None = None, xmp: bytes | None = None, seed: int = 3) -> bytes:
    """A HEIF (pillow-heif) or AVIF (Pillow) image carrying `exif` / `xmp` as their writers store them."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    options = {k: v for k, v in (("exif", exif), ("xmp", xmp)) if v is not None}
    buffer = io.BytesIO()
    picture(seed=seed).save(buffer, fmt, quality=80, **options)
    return buffer.getvalue()


def exif_bytes(software=None, make=None, model=None, user_comment: str | None = None) -> bytes:
    exif = Image.Exif()
    if software:
        exif[0x0131] = software
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if user_comment is not None:
        # how WebUI (piexif.helper.UserComment.dump) writes it: "UNICODE\0" + UTF-16BE
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + user_comment.encode("utf-16-be")
    return exif.tobytes()


def camera_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D Mark IV"
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:20:30"
    return encode(picture(seed=5), "JPEG", exif=exif.tobytes(), quality=90)


WEBUI_PARAMETERS = ("a lighthouse at dusk, volumetric light\nNegative prompt: blurry\n"
                    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 96x64, "
                    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly")
COMFY_PROMPT = json.dumps({"4": {"class_type": "CheckpointLoaderSimple",
                                 "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}},
                           "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a secret prompt " * 40}}})


def png_with_text(*items: tuple[str, str, str]) -> bytes:
    """A PNG with text chunks: (chunk type tEXt|zTXt|iTXt, keyword, text), as Pillow's PngInfo writes them."""
    info = PngInfo()
    for kind, key, value in items:
        if kind == "tEXt":
            info.add_text(key, value)
        elif kind == "zTXt":
            info.add_text(key, value, zip=True)
        else:
            info.add_itxt(key, value, zip=True)
    return encode(picture(seed=7), "PNG", pnginfo=info)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_chunks(chunks: list[bytes]) -> bytes:
    """A valid PNG with raw chunks inserted before its first IDAT."""
    data = encode(picture(seed=9), "PNG")
    at = data.find(b"IDAT") - 4
    return data[:at] + b"".join(chunks) + data[at:]


def zlib_bomb(mib: int) -> bytes:
    """A valid zlib stream of `mib` MiB of zeros (about 1 KiB compressed per MiB), built without compressing
    them all: one MiB block ended by a full flush (byte-aligned, no back-references) repeated, then an
    empty final block and the Adler-32 of L zero bytes, which is ((L mod 65521) << 16) | 1."""
    block, compressor = b"\0" * (1 << 20), zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = ((((mib << 20) % 65521) << 16) | 1)
    return first + again * (mib - 1) + b"\x03\x00" + struct.pack(">I", adler)


def zip_bomb_chunk(mib: int) -> bytes:
    """A zTXt chunk whose text inflates to `mib` MiB."""
    return png_chunk(b"zTXt", b"Comment\0\0" + zlib_bomb(mib))


ENTITY_BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
               + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                          for i in range(1, 10))
               + b']><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>')
