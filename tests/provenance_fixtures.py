"""Provenance fixtures made at test time: a test CA (cryptography), C2PA manifests signed with
c2pa-python's Builder, generation-tool metadata written the way the tools write it, hostile metadata."""

from __future__ import annotations

import datetime
import io
import json
import struct
import zlib
from dataclasses import dataclass

from PIL import Image
from PIL.PngImagePlugin import PngInfo

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


@dataclass
class TestCA:
    name: str
    cert: object
    key: object

    @property
    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def signer(self, common_name: str = "GenGuard Test Signer"):
        """A c2pa Signer (ES256) whose end-entity certificate this CA issued: the profile C2PA validators
        require (not a CA, digitalSignature, emailProtection EKU, key identifiers)."""
        import c2pa
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(common_name, self.name)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(signing=True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.pem.encode()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(b"es256", chain, private, None))


def _name(common_name: str, org: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])


def _key_usage(signing: bool):
    from cryptography import x509

    return x509.KeyUsage(digital_signature=signing, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
                         crl_sign=not signing, encipher_only=False, decipher_only=False)


def make_ca(org: str) -> TestCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = _name(f"{org} Root CA", org)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(signing=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return TestCA(org, cert, key)


def picture(size=(96, 64), seed: int = 0) -> Image.Image:
    """A small image with some structure (a gradient and a block), different per seed."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((40 + 50 * seed % 200, 90, 160), (10, 10, 40, 40))
    return image


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def sign(data: bytes, mime: str, signer, source_type: str = TRAINED, agent: str = "DALL-E",
         generator: str = "GenGuard test generator") -> bytes:
    """`data` with an embedded C2PA manifest: a c2pa.created action with `source_type` and `agent`."""
    import c2pa

    manifest = {"claim_generator_info": [{"name": generator, "version": "1.0"}], "title": "fixture",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": source_type,
                     "softwareAgent": {"name": agent}}]}}]}
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def tamper_jpeg_pixels(data: bytes) -> bytes:
    """The JPEG with bytes of its entropy-coded data changed after signing (it still decodes)."""
    sos = data.rfind(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    end = data.rfind(b"\xff\xd9")
    out = bytearray(data)
    for pos in range(start + (end - start) // 2, start + (end - start) // 2 + 8):
        if out[pos] not in (0xFF, 0x00) and out[pos - 1] != 0xFF:
            out[pos] ^= 0x01
    return bytes(out)


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
