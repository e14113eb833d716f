"""Signed fixtures made at run time, for the tests and the provenance benchmark: a test CA made with
`cryptography` (a test dependency) and C2PA manifests signed with c2pa-python's Builder. Nothing here is
used when serving."""

from __future__ import annotations

import datetime
import io
from dataclasses import dataclass

from PIL import Image

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
