"""Provenance through the real server: fixtures made here (test CAs, c2pa-python-signed JPEG/PNG, tool
metadata, hostile metadata) answered by the session tritonserver, which trusts the first test CA
(tests/conftest.py) and serves the default fusion policy ("evidence")."""

from __future__ import annotations

import json

import pytest
import tritonclient.grpc as grpcclient

import provenance_fixtures as F
from genguard import protocol, specs
from genguard.benchmarks.soak import tree_memory_bytes
from genguard.fusion import FusionConfig, Fuser
from genguard.provenance import generators

pytestmark = pytest.mark.server
STRENGTH = FusionConfig().provenance_strength


def infer(triton, images: list[bytes]) -> list[dict]:
    batch = protocol.pack_images(images)
    tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    result = client.infer(protocol.ENSEMBLE, [tensor], client_timeout=300)  # a hang guard, not a benchmark
    return [json.loads(x) for x in result.as_numpy(protocol.RESULT).reshape(-1)]


def pixel_answer(doc: dict) -> dict:
    """The served probabilities fused in-process without provenance: what the pixels alone say."""
    return Fuser([specs.get(n) for n in doc["detectors"]], FusionConfig(), {}).fuse(doc["detectors"])


@pytest.fixture(scope="module")
def fixtures(c2pa_cas):
    trusted, other = c2pa_cas
    signed_jpeg = F.sign(F.encode(F.picture(seed=1), "JPEG", quality=90), "image/jpeg", trusted.signer(),
                         agent="FLUX.1 [dev]")
    return {
        "trusted jpeg": signed_jpeg,
        "trusted png": F.sign(F.encode(F.picture(seed=2), "PNG"), "image/png", trusted.signer(),
                              agent="Stable Diffusion XL"),
        "untrusted jpeg": F.sign(F.encode(F.picture(seed=3), "JPEG", quality=90), "image/jpeg", other.signer(),
                                 agent="FLUX.1 [dev]"),
        "tampered jpeg": F.tamper_jpeg_pixels(signed_jpeg),
        "webui png": F.png_with_text(("tEXt", "parameters", F.WEBUI_PARAMETERS)),
        "comfyui png": F.png_with_text(("tEXt", "prompt", F.COMFY_PROMPT), ("tEXt", "workflow", "{}")),
        "xmp jpeg": F.jpeg_with_xmp(F.xmp_packet()),
        "exif software jpeg": F.encode(F.picture(seed=6), "JPEG", exif=F.exif_bytes(software="NovelAI Diffusion")),
        "camera jpeg": F.camera_jpeg(),
        "plain jpeg": F.encode(F.picture(seed=8), "JPEG", quality=90),
    }


def test_signals_policy_and_verdicts_through_the_server(triton, fixtures):
    names = list(fixtures)
    images = [fixtures[n] for n in names]
    docs = infer(triton, images[:5] + [b"not an image at all"] + images[5:])
    bad = docs.pop(5)
    assert bad["status"] == "FAILURE" and bad["error"]["reason"] == "not_an_image"  # fails alone
    by = dict(zip(names, docs))
    for name, doc in by.items():
        assert doc["status"] == "SUCCESS", (name, doc.get("error"))
        prov = doc["provenance"]
        assert prov["looked_for"] == ["c2pa", "xmp", "exif", "text"], name
        assert prov["pixel_is_ai_generated"] == pytest.approx(pixel_answer(doc)["is_ai_generated"], abs=1e-9)
        assert sum(doc["possible_sources"].values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(doc["sources_given_ai"].values()) == pytest.approx(1.0, abs=1e-6)
    served = list(by["plain jpeg"]["possible_sources"])

    # a valid manifest from the trusted test CA declaring trainedAlgorithmicMedia decides, its generator the source
    for name, generator in (("trusted jpeg", "flux"), ("trusted png", "stable_diffusion")):
        doc = by[name]
        assert doc["provenance"]["c2pa"]["state"] == "trusted", name
        assert doc["provenance"]["c2pa"]["signer"]["common_name"] == "GenGuard Test Signer"
        assert doc["decided_by"] == "c2pa" and doc["verdict"] == "ai_generated" and doc["is_ai_generated"] == 1.0
        assert doc["source"] == generators.to_source(generator, served) == generator
        assert doc["possible_sources"]["none"] == 0.0

    # untrusted signer, or pixels changed after signing: evidence beside the pixel score, never a decision
    untrusted, tampered = by["untrusted jpeg"], by["tampered jpeg"]
    assert untrusted["provenance"]["c2pa"]["state"] == "untrusted"
    assert tampered["provenance"]["c2pa"]["state"] == "invalid"
    assert "assertion.dataHash.mismatch" in tampered["provenance"]["c2pa"]["failures"]
    for name in ("untrusted jpeg", "tampered jpeg", "webui png", "comfyui png", "xmp jpeg", "exif software jpeg"):
        doc = by[name]
        pixels = doc["provenance"]["pixel_is_ai_generated"]
        assert doc["decided_by"] is None and doc["provenance"]["declares_ai"], name
        assert doc["provenance"]["effect"] == "evidence" and doc["provenance"]["policy"] == "evidence"
        assert doc["is_ai_generated"] == pytest.approx(1 - (1 - pixels) * (1 - STRENGTH), abs=1e-9), name
        assert doc["verdict"] == "ai_generated", name
    assert by["webui png"]["provenance"]["generator"] == "stable_diffusion"
    assert by["comfyui png"]["provenance"]["generator"] == "flux"
    assert by["exif software jpeg"]["provenance"]["generator"] == "novelai"
    assert [s["source"] for s in by["xmp jpeg"]["provenance"]["signals"]] == ["xmp"]
    # prompts travel as bounded excerpts by default
    prompt = next(s for s in by["comfyui png"]["provenance"]["signals"] if s["detail"]["field"] == "prompt")
    assert prompt["detail"]["truncated"] and len(prompt["detail"]["excerpt"]) == 240

    # camera EXIF is reported and never evidence; no metadata is no evidence either way
    camera, plain = by["camera jpeg"], by["plain jpeg"]
    assert [s["kind"] for s in camera["provenance"]["signals"]] == ["camera"]
    for doc in (camera, plain):
        assert doc["provenance"]["effect"] == "none" and doc["decided_by"] is None
        assert doc["is_ai_generated"] == pytest.approx(doc["provenance"]["pixel_is_ai_generated"], abs=1e-12)
        assert doc["verdict"] == pixel_answer(doc)["verdict"]
    assert plain["provenance"]["signals"] == [] and plain["provenance"]["c2pa"] == {"present": False}


def test_heif_avif_and_extended_xmp_through_the_server(triton):
    """A generator named in HEIF XMP, AVIF EXIF or a JPEG's extended XMP counts as it does in a JPEG's XMP."""
    heif = F.heif_with("HEIF", xmp=F.xmp_packet(creator_tool="Midjourney v6"))
    avif = F.heif_with("AVIF", exif=F.exif_bytes(software="NovelAI Diffusion"))
    extended = F.jpeg_with_extended_xmp(F.extended_packet("Midjourney v6"))
    jpeg = F.jpeg_with_xmp(F.xmp_packet(creator_tool="Midjourney v6"))
    docs = infer(triton, [heif, avif, extended, jpeg])
    assert [d["status"] for d in docs] == ["SUCCESS"] * 4, [d.get("error") for d in docs]
    heif_doc, avif_doc, extended_doc, jpeg_doc = docs
    assert heif_doc["image"]["format"] == "HEIF" and avif_doc["image"]["format"] == "AVIF"
    assert heif_doc["provenance"]["signals"] == jpeg_doc["provenance"]["signals"]
    assert heif_doc["provenance"]["looked_for"] == avif_doc["provenance"]["looked_for"] == ["xmp", "exif"]
    assert extended_doc["provenance"]["notes"] == []
    for doc, generator in ((heif_doc, "midjourney"), (avif_doc, "novelai"), (extended_doc, "midjourney"),
                           (jpeg_doc, "midjourney")):
        prov = doc["provenance"]
        assert prov["declares_ai"] and prov["generator"] == generator and prov["effect"] == "evidence"
        assert doc["is_ai_generated"] == pytest.approx(1 - (1 - prov["pixel_is_ai_generated"]) * (1 - STRENGTH),
                                                       abs=1e-9)
        assert doc["verdict"] == "ai_generated"


def hostile_metadata() -> dict[str, tuple[bytes, str]]:
    """(image, the note its metadata earns): every one a valid image whose metadata is hostile."""
    return {
        "xml entity bomb": (F.jpeg_with_xmp(F.ENTITY_BOMB), "XMP packet skipped: DTDForbidden"),
        "3 MB XMP packet": (F.png_with_chunks([F.png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + b" " * (3 << 20))]),
                            "XMP packet of 3145728 bytes skipped"),
        "10,000 text chunks": (F.png_with_chunks([F.png_chunk(b"tEXt", b"k%d\0v" % i) for i in range(10_000)]),
                               "text chunks past the first 64 skipped"),
        "2 GiB zTXt": (F.png_with_chunks([F.zip_bomb_chunk(2048)]), "zTXt 'Comment' skipped: inflates past"),
        "malformed JUMBF": (F.jpeg_with_segments(F.picture(), (0xEB, b"JP\x02\x11\x00\x00\x00\x01jumbc2pa junk")), ""),
        "extended XMP whose MD5 isn't its GUID": (F.jpeg_with_extended_xmp(
            F.extended_packet(), F.extension_segments(F.extended_packet(), guid="0" * 32), guid="0" * 32),
            f"extended XMP {'0' * 32} skipped: its MD5"),
    }


def test_hostile_metadata_is_answered_per_image_with_memory_steady(triton):
    cases = hostile_metadata()
    good = F.encode(F.picture(seed=11), "JPEG", quality=90)

    def one_round():
        for name, (data, note) in cases.items():  # each beside a good neighbour
            docs = infer(triton, [good, data])
            assert [d["status"] for d in docs] == ["SUCCESS", "SUCCESS"], (name, docs[1].get("error"))
            prov = docs[1]["provenance"]
            assert prov["signals"] == [] and prov["decided_by"] is None, name
            if note:
                assert any(n.startswith(note) for n in prov["notes"]), (name, prov["notes"])
            else:
                assert prov["c2pa"]["state"] == "error", name
            assert docs[0]["provenance"]["signals"] == []

    one_round()  # warm up: the baseline is the steady state
    baseline = tree_memory_bytes(triton.process.pid)
    for _ in range(2):
        one_round()
    growth = (tree_memory_bytes(triton.process.pid) - baseline) / 2**20
    print(f"\nserver memory (PSS): baseline {baseline / 2**20:.0f} MB, growth after 2 rounds of hostile metadata: "
          f"{growth:+.1f} MB")
    assert growth < 150, f"server memory grew by {growth:.0f} MB"
    assert grpcclient.InferenceServerClient(triton.grpc_url).is_server_ready()
