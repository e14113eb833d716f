"""Provenance signals read from raw bytes (genguard.provenance) and the fusion's provenance policy,
in-process. Fixtures are made here: a test CA, manifests signed with c2pa-python's Builder, tool metadata."""

from __future__ import annotations

import struct
import time

import pytest

import provenance_fixtures as F
from genguard import specs
from genguard.fusion import FusionConfig, Fuser, source_names
from genguard.provenance import Extractor, MetadataLimits, ProvenanceConfig, generators

pytest.importorskip("c2pa")  # a declared dependency (server extra); its absence is an install error elsewhere

ALL = list(specs.DETECTORS.values())


@pytest.fixture(scope="module")
def cas():
    return F.make_ca("GenGuard Test"), F.make_ca("Somewhere Else")


@pytest.fixture(scope="module")
def extractor(cas):
    return Extractor(ProvenanceConfig(trust_anchors=cas[0].pem))


def kinds(result):
    return [(s["source"], s["kind"], s["generator"]) for s in result["signals"]]


# --- C2PA -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, mime", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_c2pa_trusted_untrusted_and_without_anchors(cas, extractor, fmt, mime):
    trusted_ca, other_ca = cas
    plain = F.encode(F.picture(seed=1), fmt)
    signed = F.sign(plain, mime, trusted_ca.signer(), agent="Adobe Firefly")
    result = extractor.extract(signed)
    block = result["c2pa"]
    assert block["present"] and block["state"] == "trusted" and block["failures"] == []
    assert block["signer"] == {"issuer": "GenGuard Test", "common_name": "GenGuard Test Signer"}
    assert block["claim_generator"].startswith("GenGuard test generator")
    assert block["actions"][0] == {"action": "c2pa.created", "software_agent": "Adobe Firefly",
                                   "digital_source_type": "trainedAlgorithmicMedia"}
    assert block["digital_source_types"] == ["trainedAlgorithmicMedia"]
    assert kinds(result) == [("c2pa", "ai_generated", "firefly")]
    assert result["signals"][0]["detail"]["state"] == "trusted"
    # signed by a CA that is not an anchor: valid, but untrusted
    assert extractor.extract(F.sign(plain, mime, other_ca.signer()))["c2pa"]["state"] == "untrusted"
    # no anchors configured at all: honestly untrusted
    assert Extractor().extract(signed)["c2pa"]["state"] == "untrusted"
    # the unsigned image: looked for, none present, no signal
    unsigned = extractor.extract(plain)
    assert unsigned["c2pa"] == {"present": False} and unsigned["signals"] == []
    assert unsigned["looked_for"] == ["c2pa", "xmp", "exif", "text"]


def test_c2pa_pixels_changed_after_signing_is_invalid_with_its_codes(cas, extractor):
    signed = F.sign(F.encode(F.picture(seed=2), "JPEG"), "image/jpeg", cas[0].signer())
    block = extractor.extract(F.tamper_jpeg_pixels(signed))["c2pa"]
    assert block["state"] == "invalid"
    assert "assertion.dataHash.mismatch" in block["failures"]


def test_c2pa_capture_claim_is_a_capture_signal(cas, extractor):
    signed = F.sign(F.encode(F.picture(seed=4), "JPEG"), "image/jpeg", cas[0].signer(),
                    source_type=F.CAPTURE, agent="Test Camera Firmware")
    assert kinds(extractor.extract(signed)) == [("c2pa", "capture", None)]


def test_malformed_jumbf_is_an_error_state_not_a_failure(extractor):
    data = F.jpeg_with_segments(F.picture(), (0xEB, b"JP\x02\x11\x00\x00\x00\x01\x00\x00\x00\x20jumbc2pa garbage"))
    result = extractor.extract(data)
    assert result["c2pa"]["present"] and result["c2pa"]["state"] == "error" and result["signals"] == []


# --- XMP, EXIF, text --------------------------------------------------------------------------------------

def test_xmp_digital_source_type_and_creator_tool(extractor):
    result = extractor.extract(F.jpeg_with_xmp(F.xmp_packet(creator_tool="Midjourney v6")))
    assert kinds(result) == [("xmp", "ai_generated", None), ("xmp", "ai_generated", "midjourney")]
    assert result["signals"][0]["detail"]["digital_source_type"] == "trainedAlgorithmicMedia"
    composite = extractor.extract(F.jpeg_with_xmp(F.xmp_packet(
        "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia")))
    assert kinds(composite) == [("xmp", "ai_composite", None)]
    capture = extractor.extract(F.jpeg_with_xmp(F.xmp_packet(F.CAPTURE, creator_tool="Adobe Lightroom")))
    assert kinds(capture) == [("xmp", "capture", None), ("xmp", "software", None)]


def test_exif_software_camera_and_webui_user_comment(extractor):
    novelai = extractor.extract(F.encode(F.picture(), "JPEG", exif=F.exif_bytes(software="NovelAI")))
    assert kinds(novelai) == [("exif", "ai_generated", "novelai")]
    camera = extractor.extract(F.camera_jpeg())
    assert kinds(camera) == [("exif", "camera", None)]
    assert camera["signals"][0]["detail"] == {"field": "Make/Model", "make": "Canon", "model": "Canon EOS 5D Mark IV",
                                              "date_time_original": "2024:05:01 10:20:30"}
    for fmt in ("JPEG", "WEBP"):  # WebUI writes its parameters into EXIF UserComment in JPEG and WebP
        webui = extractor.extract(F.encode(F.picture(), fmt, exif=F.exif_bytes(user_comment=F.WEBUI_PARAMETERS)))
        assert kinds(webui) == [("exif", "ai_generated", "stable_diffusion")], fmt
        assert webui["signals"][0]["detail"]["model"] == "v1-5-pruned-emaonly"


def test_png_text_webui_comfyui_novelai_invokeai(extractor):
    webui = extractor.extract(F.png_with_text(("tEXt", "parameters", F.WEBUI_PARAMETERS)))
    assert kinds(webui) == [("text", "ai_generated", "stable_diffusion")]
    assert webui["signals"][0]["detail"]["tool"].startswith("Stable Diffusion WebUI")
    comfy = extractor.extract(F.png_with_text(("tEXt", "prompt", F.COMFY_PROMPT), ("zTXt", "workflow", "{}")))
    assert kinds(comfy) == [("text", "ai_generated", "flux"), ("text", "ai_generated", "comfyui")]
    novelai = extractor.extract(F.png_with_text(("tEXt", "Software", "NovelAI"),
                                                ("iTXt", "Comment", '{"steps": 28, "sampler": "k_euler"}')))
    assert ("text", "ai_generated", "novelai") in kinds(novelai)
    invoke = extractor.extract(F.png_with_text(("iTXt", "invokeai_metadata", '{"model": {"name": "sdxl"}}')))
    assert kinds(invoke) == [("text", "ai_generated", "stable_diffusion")]
    plain = extractor.extract(F.png_with_text(("tEXt", "Title", "holiday")))
    assert plain["signals"] == [] and plain["notes"] == []


def test_prompts_are_bounded_excerpts_unless_full_text_is_configured():
    data = F.png_with_text(("tEXt", "prompt", F.COMFY_PROMPT))
    short = Extractor(ProvenanceConfig(excerpt_chars=50)).extract(data)["signals"][0]["detail"]
    assert len(short["excerpt"]) == 50 and short["truncated"] and short["length"] == len(F.COMFY_PROMPT)
    full = Extractor(ProvenanceConfig(full_text=True)).extract(data)["signals"][0]["detail"]
    assert full["excerpt"] == F.COMFY_PROMPT and not full["truncated"]


def test_formats_without_a_reader_say_nothing_was_looked_for(extractor):
    result = extractor.extract(F.encode(F.picture(), "BMP"))
    assert result["looked_for"] == [] and result["signals"] == [] and result["notes"]


# --- HEIF / AVIF: the primary image's XMP and EXIF, the same signals as in a JPEG --------------------------

GENERATOR_EXIF = F.exif_bytes(software="Midjourney v6", make="Apple", model="iPhone 15 Pro")
GENERATOR_XMP = F.xmp_packet(creator_tool="Adobe Firefly 3")


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_and_avif_metadata_gives_the_signals_a_jpeg_gives(extractor, fmt):
    data = F.heif_with(fmt, exif=GENERATOR_EXIF, xmp=GENERATOR_XMP)
    assert data[4:8] == b"ftyp"
    jpeg = F.jpeg_with_segments(F.picture(seed=3), (0xE1, GENERATOR_EXIF),
                                (0xE1, b"http://ns.adobe.com/xap/1.0/\0" + GENERATOR_XMP))
    result, same = extractor.extract(data + b"\0" * 64), extractor.extract(jpeg)  # (request padding is ignored)
    assert result["signals"] == same["signals"] and result["notes"] == [] == same["notes"]
    assert kinds(result) == [("xmp", "ai_generated", None), ("xmp", "ai_generated", "firefly"),
                             ("exif", "ai_generated", "midjourney"), ("exif", "camera", None)]
    # C2PA and text chunks are not read there: not claimed as looked for
    assert result["looked_for"] == ["xmp", "exif"] and result["c2pa"] is None
    fuser = Fuser([FLUX, SD], FusionConfig(), {})
    assert fuser.fuse(PIXELS, result)["provenance"] == fuser.fuse(PIXELS, {**same, "looked_for": ["xmp", "exif"],
                                                                            "c2pa": None})["provenance"]
    # each alone, and none at all
    assert kinds(extractor.extract(F.heif_with(fmt, xmp=GENERATOR_XMP)))[1] == ("xmp", "ai_generated", "firefly")
    assert kinds(extractor.extract(F.heif_with(fmt, exif=F.exif_bytes(software="DALL-E 3"))))[0] == \
        ("exif", "ai_generated", "dalle")
    bare = extractor.extract(F.heif_with(fmt))
    assert bare["signals"] == [] and bare["notes"] == [] and bare["looked_for"] == ["xmp", "exif"]


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heif_and_avif_metadata_within_the_limits(fmt):
    big = F.xmp_packet(creator_tool="Midjourney", body="<x:pad>" + "p" * 5000 + "</x:pad>")
    limited = Extractor(ProvenanceConfig(limits=MetadataLimits(max_xmp_bytes=4096))).extract(
        F.heif_with(fmt, exif=GENERATOR_EXIF, xmp=big))
    assert ("xmp", "ai_generated", "midjourney") not in kinds(limited)
    assert any(n.startswith(f"XMP packet of {len(big)} bytes skipped (limit 4096)") for n in limited["notes"])
    assert ("exif", "ai_generated", "midjourney") in kinds(limited)  # the rest is still read
    budget = Extractor(ProvenanceConfig(limits=MetadataLimits(max_metadata_bytes=40))).extract(
        F.heif_with(fmt, exif=GENERATOR_EXIF))
    assert budget["signals"] == [] and any(n.startswith("EXIF skipped: the image's metadata is over 40")
                                           for n in budget["notes"])
    bomb = Extractor().extract(F.heif_with(fmt, xmp=F.ENTITY_BOMB))
    assert bomb["signals"] == [] and "XMP packet skipped: DTDForbidden" in bomb["notes"]


def test_other_iso_bmff_files_are_not_read():
    mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom" + b"\0\0\0\x08free"
    result = Extractor().extract(mp4)
    assert result["looked_for"] == [] and result["signals"] == []
    assert result["notes"][0].startswith("HEIF/AVIF metadata not read: ")
    cut = F.heif_with("HEIF", xmp=GENERATOR_XMP)
    assert Extractor().extract(cut[:40])["looked_for"] == []  # truncated inside its boxes: nothing, no raise


# --- JPEG extended XMP: put together by GUID and offset, checked against its MD5 ------------------------

def test_extended_xmp_is_put_together_by_guid_and_offset(extractor):
    packet = F.extended_packet("Midjourney v6")
    segments = F.extension_segments(packet)
    assert len(segments) == 3 and len(packet) > 65_533  # too large for one APP1 segment
    decoy = F.extension_segments(F.extended_packet("FLUX.1 [dev]"))  # another GUID: ignored, as the spec says
    shuffled = [segments[2], decoy[0], segments[0], decoy[1], segments[1]]
    result = extractor.extract(F.jpeg_with_extended_xmp(packet, shuffled))
    # the same signals as the packet in one piece (a PNG's iTXt has room for it)
    whole = extractor.extract(F.png_with_chunks([F.png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + packet)]))
    assert result["signals"] == whole["signals"]
    assert kinds(result) == [("xmp", "ai_generated", None), ("xmp", "ai_generated", "midjourney")]
    assert result["notes"] == ["extended XMP segments of 1 GUID(s) the main packet doesn't name ignored"]
    in_order = extractor.extract(F.jpeg_with_extended_xmp(packet))
    assert in_order["signals"] == result["signals"] and in_order["notes"] == []


def _extended_cases() -> dict[str, tuple[bytes, str, MetadataLimits]]:
    """(image, the note it earns, limits): every one a valid JPEG whose extended XMP must be refused."""
    packet = F.extended_packet("Midjourney v6")
    guid, segments = F.guid_of(packet), F.extension_segments(packet)
    tampered = bytearray(segments[1][1])
    tampered[-10] ^= 0x01
    header = len(F.XMP_EXTENSION) + 32
    overlap = (0xE1, segments[1][1][:header + 4] + (60_000).to_bytes(4, "big") + packet[60_000:61_000])
    bomb = F.ENTITY_BOMB.replace(b"<x:xmpmeta", b"<!-- -->" * 10_000 + b"<x:xmpmeta")  # > 64 KB, with a DTD
    skipped = f"extended XMP {guid} skipped: "
    past_the_end = segments[0][1][:header] + struct.pack(">II", len(packet), len(packet) - 1) + packet[:2]
    cases = {
        "a changed byte": ([segments[0], (0xE1, bytes(tampered)), segments[2]], skipped + "its MD5"),
        "a missing middle segment": ([segments[0], segments[2]], skipped + "bytes 65000-129999 are missing"),
        "a missing last segment": (segments[:2], skipped + f"incomplete: 130000 of {len(packet)} bytes"),
        "overlapping segments": (segments[:1] + [overlap] + segments[1:], skipped + "its segments overlap"),
        "lengths that disagree": (segments[:2] + F.extension_segments(packet, full_length=len(packet) + 1)[2:],
                                  skipped + "its segments declare different lengths"),
        "only a portion past its length": ([(0xE1, past_the_end)], f"malformed extended XMP segment of {guid} skipped"),
        "no segment at all": ([], skipped + "no extended XMP segment carries it"),
    }
    out = {name: (F.jpeg_with_extended_xmp(packet, segs), note, MetadataLimits())
           for name, (segs, note) in cases.items()}
    out["a DTD inside"] = (F.jpeg_with_extended_xmp(bomb), f"extended XMP {F.guid_of(bomb)} skipped: DTDForbidden",
                           MetadataLimits())
    out["over the XMP limit"] = (F.jpeg_with_extended_xmp(packet), f"extended XMP {guid} of {len(packet)} bytes "
                                 "skipped (limit 100000)", MetadataLimits(max_xmp_bytes=100_000))
    out["over the segment limit"] = (F.jpeg_with_extended_xmp(packet), "extended XMP segments past the first 2 skipped",
                                     MetadataLimits(max_xmp_extension_segments=2))
    out["over the metadata budget"] = (F.jpeg_with_extended_xmp(packet), "extended XMP segment skipped: the image's "
                                       "metadata is over 100000 bytes", MetadataLimits(max_metadata_bytes=100_000))
    out["not named by the main packet"] = (F.jpeg_with_segments(F.picture(seed=4), *segments),
                                           "3 extended XMP segment(s) skipped: no main XMP packet names them",
                                           MetadataLimits())
    out["a name that is no GUID"] = (F.jpeg_with_extended_xmp(packet, guid="x" * 5000),
                                     "an xmpNote:HasExtendedXMP that is not a GUID", MetadataLimits())
    return out


def test_a_stray_malformed_segment_is_skipped_and_the_packet_still_read(extractor):
    packet = F.extended_packet("Midjourney v6")
    segments, header = F.extension_segments(packet), len(F.XMP_EXTENSION) + 32
    for stray, note in (((0xE1, F.XMP_EXTENSION + b"short"), "malformed extended XMP segment skipped (no GUID"),
                        ((0xE1, segments[0][1][:header] + struct.pack(">II", 10, 5) + b"123456"),
                         f"malformed extended XMP segment of {F.guid_of(packet)} skipped (offset 5 + 6 bytes")):
        result = extractor.extract(F.jpeg_with_extended_xmp(packet, segments[:1] + [stray] + segments[1:]))
        assert ("xmp", "ai_generated", "midjourney") in kinds(result)
        assert [n for n in result["notes"] if n.startswith(note)], result["notes"]


@pytest.mark.parametrize("case", list(_extended_cases()))
def test_malformed_or_oversized_extended_xmp_is_refused_with_a_reason(case):
    data, note, limits = _extended_cases()[case]
    result = Extractor(ProvenanceConfig(limits=limits)).extract(data)
    assert result["signals"] == [], case
    assert any(n.startswith(note) for n in result["notes"]), (case, result["notes"])
    assert all(len(n) < 300 for n in result["notes"]), case  # reasons, not echoes of the input


# --- hostile metadata: each skipped with a note, within the limits ----------------------------------------

def test_hostile_metadata_is_skipped_with_a_note(extractor):
    xxe = F.jpeg_with_xmp(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                          b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>')
    cases = {
        "entity bomb": (F.jpeg_with_xmp(F.ENTITY_BOMB), "XMP packet skipped: DTDForbidden"),
        "external entity": (xxe, "XMP packet skipped: DTDForbidden"),
        "50 MB XMP": (F.png_with_chunks([F.png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + b" " * (50 << 20))]),
                      "iTXt chunk of 52428822 bytes skipped"),
        "10,000 text chunks": (F.png_with_chunks([F.png_chunk(b"tEXt", b"k%d\0v" % i) for i in range(10_000)]),
                               "text chunks past the first 64 skipped"),
        "2 GiB zTXt": (F.png_with_chunks([F.zip_bomb_chunk(2048)]), "zTXt 'Comment' skipped: inflates past"),
    }
    for name, (data, note) in cases.items():
        result = extractor.extract(data)
        assert any(n.startswith(note) for n in result["notes"]), (name, result["notes"])
        assert result["signals"] == [], name


def test_limits_are_configurable_and_time_spent_skips_later_stages():
    data = F.png_with_text(*[("zTXt", "parameters", F.WEBUI_PARAMETERS)] * 3)
    few = Extractor(ProvenanceConfig(limits=MetadataLimits(max_text_chunks=1))).extract(data)
    assert len(few["signals"]) == 1 and any("past the first 1" in n for n in few["notes"])
    tiny = Extractor(ProvenanceConfig(limits=MetadataLimits(max_inflated_bytes=100))).extract(data)
    assert tiny["signals"] == [] and len(tiny["notes"]) == 3
    many = F.jpeg_with_segments(F.picture(), *[(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + F.xmp_packet(
        creator_tool=f"Midjourney v{i}")) for i in range(100)])
    capped = Extractor().extract(many)
    assert len(capped["signals"]) == 64 and "136 signals past the first 64 left out" in capped["notes"]
    spent = Extractor(ProvenanceConfig(limits=MetadataLimits(max_seconds=0.0)))
    result = spent.extract(F.png_with_text(("tEXt", "parameters", F.WEBUI_PARAMETERS)))
    assert result["signals"] == [] and any("time limit" in n for n in result["notes"])


def test_configuration_round_trip():
    config = ProvenanceConfig(trust_anchors="PEM", full_text=True, limits=MetadataLimits(max_text_chunks=3))
    assert ProvenanceConfig.from_json(config.to_json()) == config
    assert ProvenanceConfig.from_json("") == ProvenanceConfig()
    with pytest.raises(ValueError, match="unknown provenance"):
        ProvenanceConfig.from_json('{"trust": 1}')


# --- the generator mapping table -------------------------------------------------------------------------

def test_generator_names_map_onto_served_possible_sources():
    served_all = source_names(ALL)  # none, flux, stable_diffusion, gan, diffusion, other, dalle, midjourney
    assert generators.identify("DALL·E 3") == "dalle" and generators.identify("ChatGPT") == "dalle"
    assert generators.identify("Adobe Photoshop 25.0") is None
    assert generators.to_source("dalle", served_all) == "dalle"
    assert generators.to_source("firefly", served_all) == "diffusion"
    assert generators.to_source("novelai", served_all) == "stable_diffusion"
    two = source_names([specs.get("opensdi_flux"), specs.get("sumsub_sd")])  # none, flux, stable_diffusion
    assert generators.to_source("dalle", two) is None and generators.to_source("comfyui", two) == "stable_diffusion"
    assert generators.to_source("midjourney", ["none", "unknown"]) == "unknown"
    for generator in generators.GENERATORS:  # every family named exists among some served names
        assert set(generator.families) <= set(served_all), generator.name


# --- fusion policy ------------------------------------------------------------------------------------------

FLUX, SD = specs.get("opensdi_flux"), specs.get("sumsub_sd")
PIXELS = {"opensdi_flux": {"flux": {"Real_Image": 0.8, "Flux.1_Generated": 0.2}},
          "sumsub_sd": {"sd": {"real": 0.9, "stable_diffusion": 0.1}}}  # is_ai 0.15: not AI by the pixels


def declaration(source="xmp", state=None, generator=None, kind="ai_generated"):
    detail = {"state": state} if state else {}
    return {"looked_for": ["c2pa", "xmp", "exif", "text"], "notes": [],
            "c2pa": {"present": source == "c2pa", "state": state},
            "signals": [{"source": source, "kind": kind, "generator": generator, "detail": detail}]}


def test_trusted_manifest_decides_and_names_the_source():
    for policy in ("evidence", "decide"):
        answer = Fuser([FLUX, SD], FusionConfig(provenance=policy), {}).fuse(
            PIXELS, declaration("c2pa", "trusted", "flux"))
        assert answer["verdict"] == "ai_generated" and answer["decided_by"] == "c2pa"
        assert answer["is_ai_generated"] == 1.0 and answer["source"] == "flux"
        assert answer["possible_sources"] == {"none": 0.0, "flux": 1.0, "stable_diffusion": 0.0}
        assert answer["provenance"]["pixel_is_ai_generated"] == pytest.approx(0.15)
        assert answer["provenance"]["effect"] == "decided"


def test_untrusted_declarations_follow_the_policy():
    untrusted = declaration("c2pa", "untrusted", "stable_diffusion")
    off = Fuser([FLUX, SD], FusionConfig(provenance="off"), {}).fuse(PIXELS, untrusted)
    assert off["is_ai_generated"] == pytest.approx(0.15) and off["verdict"] == "not_ai_generated"
    assert off["decided_by"] is None and off["provenance"]["declares_ai"] and off["provenance"]["effect"] == "none"
    evidence = Fuser([FLUX, SD], FusionConfig(provenance="evidence", provenance_strength=0.5), {}).fuse(
        PIXELS, untrusted)
    assert evidence["is_ai_generated"] == pytest.approx(1 - 0.85 * 0.5) and evidence["decided_by"] is None
    assert evidence["verdict"] == "ai_generated" and evidence["source"] == "stable_diffusion"
    assert sum(evidence["sources_given_ai"].values()) == pytest.approx(1.0)
    decide = Fuser([FLUX, SD], FusionConfig(provenance="decide"), {}).fuse(PIXELS, declaration("text"))
    assert decide["decided_by"] == "metadata" and decide["is_ai_generated"] == 1.0
    # an invalid manifest's declaration is never trusted
    invalid = Fuser([FLUX, SD], FusionConfig(provenance="off"), {}).fuse(PIXELS, declaration("c2pa", "invalid"))
    assert invalid["decided_by"] is None and invalid["is_ai_generated"] == pytest.approx(0.15)


def test_missing_metadata_and_camera_claims_are_not_evidence():
    fuser = Fuser([FLUX, SD], FusionConfig(), {})
    bare = fuser.fuse(PIXELS)
    nothing = fuser.fuse(PIXELS, {"looked_for": ["c2pa", "xmp", "exif", "text"], "signals": [], "notes": [],
                                  "c2pa": {"present": False}})
    camera = fuser.fuse(PIXELS, declaration("exif", kind="camera"))
    for answer in (nothing, camera):
        assert answer["is_ai_generated"] == bare["is_ai_generated"] and answer["decided_by"] is None
    # a trusted capture claim is reported, and decides only when configured to
    capture = declaration("c2pa", "trusted", kind="capture")
    high = {"opensdi_flux": {"flux": {"Real_Image": 0.1, "Flux.1_Generated": 0.9}},
            "sumsub_sd": {"sd": {"real": 0.1, "stable_diffusion": 0.9}}}
    assert fuser.fuse(high, capture)["verdict"] == "ai_generated"
    trusted = Fuser([FLUX, SD], FusionConfig(trust_capture=True), {}).fuse(high, capture)
    assert trusted["verdict"] == "not_ai_generated" and trusted["decided_by"] == "c2pa" and trusted["source"] == "none"


def test_policy_configuration_is_validated():
    with pytest.raises(ValueError, match="provenance policy"):
        FusionConfig(provenance="sometimes")
    with pytest.raises(ValueError, match="provenance_strength"):
        FusionConfig(provenance_strength=1.5)


def test_extraction_of_a_plain_image_is_fast_enough_to_not_matter(extractor):
    """A generous hang guard, not a benchmark (benchmarks/provenance.py measures)."""
    data = F.encode(F.picture(size=(640, 480)), "JPEG", quality=90)
    start = time.perf_counter()
    for _ in range(20):
        extractor.extract(data)
    assert time.perf_counter() - start < 20


def test_trust_anchors_and_limits_are_rendered_into_preprocess_and_validate():
    from genguard.export.repository import preprocess_config, validate_config
    from genguard.preprocess import DecodeLimits

    config = ProvenanceConfig(trust_anchors="-----BEGIN CERTIFICATE-----", limits=MetadataLimits(max_text_chunks=7))
    inputs = specs.distinct_inputs([FLUX])
    for rendered in (preprocess_config(inputs, 4, DecodeLimits(), provenance=config),
                     validate_config(4, DecodeLimits(), provenance=config)):
        assert ProvenanceConfig.from_json(rendered.parameters["provenance"].string_value) == config


def _fake_pb_utils():
    """triton_python_backend_utils' surface the entry steps use (no Triton needed)."""
    import types

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class MetricFamily:
        COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"

        def __init__(self, *args, **kwargs):
            pass

        def Metric(self, labels=None, buckets=None):
            return types.SimpleNamespace(increment=lambda n: None, set=lambda v: None, observe=lambda v: None)

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = Tensor
    module.InferenceResponse = lambda output_tensors, error=None: {t.name: t.array for t in output_tensors}
    module.get_input_tensor_by_name = lambda request, name: Tensor(name, request[name])
    module.MetricFamily = MetricFamily
    return module


def test_cpu_preprocess_and_gpu_validate_report_the_same_provenance(monkeypatch, cas):
    """One implementation: the cpu target's preprocess and the GPU targets' validate step, as Triton calls
    them, put the same provenance into IMAGE_INFO for the same bytes (and none for a refused image)."""
    import importlib
    import json
    import sys

    from genguard import protocol
    from genguard.export.repository import preprocess_config, validate_config
    from genguard.preprocess import DecodeLimits

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    config = ProvenanceConfig(trust_anchors=cas[0].pem)
    images = [F.sign(F.encode(F.picture(seed=1), "JPEG"), "image/jpeg", cas[0].signer()),
              b"not an image", F.png_with_text(("tEXt", "parameters", F.WEBUI_PARAMETERS))]
    rendered = {"preprocess": preprocess_config(specs.distinct_inputs([FLUX]), 4, DecodeLimits(), provenance=config),
                "validate": validate_config(4, DecodeLimits(), provenance=config)}
    reported = {}
    for name, model_config in rendered.items():
        # a fresh import bound to this fake, dropped afterwards (monkeypatch restores any earlier one), so no
        # other test gets a model module bound to it
        monkeypatch.delitem(sys.modules, f"genguard.triton_models.{name}", raising=False)
        try:
            module = importlib.import_module(f"genguard.triton_models.{name}")
        finally:
            sys.modules.pop(f"genguard.triton_models.{name}", None)
        model = module.TritonPythonModel()
        params = {k: {"string_value": v.string_value} for k, v in model_config.parameters.items()}
        model.initialize({"model_config": json.dumps({"parameters": params}), "model_name": name})
        (response,) = model.execute([{protocol.INPUT: protocol.pack_images(images)}])
        model.finalize()
        reported[name] = [json.loads(row[0]) for row in response[protocol.IMAGE_INFO]]
    for infos in reported.values():
        assert [i["ok"] for i in infos] == [True, False, True] and "provenance" not in infos[1]
        assert infos[0]["provenance"]["c2pa"]["state"] == "trusted"
        assert kinds(infos[2]["provenance"]) == [("text", "ai_generated", "stable_diffusion")]
    assert [i.get("provenance") for i in reported["preprocess"]] == [i.get("provenance") for i in reported["validate"]]


def test_benchmark_measures_both_sets_and_writes_its_report(tmp_path):
    import json

    from genguard.benchmarks import provenance as bench

    assert bench.ensemble_ms_from_results() > 0  # the committed full-size run it compares against
    assert bench.main(["--repeats", "1", "--ensemble-ms", "1000", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "provenance.json").read_text())
    assert result["sets"]["no C2PA"]["c2pa_states"] == ["absent"]
    assert result["sets"]["C2PA"]["c2pa_states"] == ["trusted"]
    assert all(row["calls"] == 16 and row["p99_ms"] >= row["median_ms"] > 0 for row in result["sets"].values())
    assert "| no C2PA | 16 |" in (tmp_path / "provenance.md").read_text()


def test_client_result_carries_provenance_and_keeps_a_decision_under_any_threshold():
    from genguard.client import Result

    doc = Fuser([FLUX, SD], FusionConfig(trust_capture=True), {}).answer(
        0, {"ok": True, "width": 1, "height": 1, "format": "JPEG",
            "provenance": declaration("c2pa", "trusted", kind="capture")},
        {("opensdi_flux", "flux"): [0.0, 3.0], ("sumsub_sd", "sd"): [0.0, 3.0]})
    result = Result.from_json(doc, 0, "x.jpg")
    assert result.decided_by == "c2pa" and result.provenance["effect"] == "decided"
    assert result.verdict == "not_ai_generated" and result.with_threshold(0.0).verdict == "not_ai_generated"
    from genguard.client import hive_view

    assert hive_view([result]) == {"data": [{"index": 0, "is_ai_generated": 0.0, "status": "SUCCESS",
                                             "possible_sources": doc["possible_sources"]}]}  # Hive's shape
    undecided = Result.from_json(Fuser([FLUX, SD], FusionConfig(), {}).answer(
        0, {"ok": True, "provenance": declaration("exif", kind="camera")},
        {("opensdi_flux", "flux"): [0.0, 3.0], ("sumsub_sd", "sd"): [0.0, 3.0]}), 0, "y.jpg")
    assert undecided.decided_by is None and undecided.provenance["signals"][0]["kind"] == "camera"
    assert undecided.with_threshold(0.999).verdict == "not_ai_generated"  # the threshold still applies


def test_repository_cli_renders_trust_anchors_and_the_provenance_file(tiny_build, tmp_path, cas):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from genguard.export.repository import main

    anchors, settings = tmp_path / "anchors.pem", tmp_path / "provenance.json"
    anchors.write_text(cas[0].pem)
    settings.write_text('{"full_text": true, "limits": {"max_text_chunks": 5}}')
    out = tmp_path / "repo"
    assert main(["--build", str(tiny_build), "--out", str(out), "--trust-anchors", str(anchors),
                 "--provenance", str(settings)]) == 0
    config = text_format.Parse((out / "preprocess" / "config.pbtxt").read_text(), mc.ModelConfig())
    rendered = ProvenanceConfig.from_json(config.parameters["provenance"].string_value)
    assert rendered == ProvenanceConfig(trust_anchors=cas[0].pem, full_text=True,
                                        limits=MetadataLimits(max_text_chunks=5))
