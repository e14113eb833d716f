"""Provenance signals read from an image's raw bytes, before decoding (docs/provenance.md).

One implementation for every target: the CPU target's preprocess step and the GPU targets' validate step
call Extractor.extract() on each image and put its result in IMAGE_INFO["provenance"]; postprocess fuses
it with the pixels (genguard.fusion). Each signal is `{source, kind, generator, detail}`:

  source     c2pa | xmp | exif | text (PNG tEXt/zTXt/iTXt, JPEG comment)
  kind       ai_generated, ai_composite (declarations of AI generation), capture (a camera-capture claim),
             camera (EXIF Make/Model), software, source_type (another IPTC type), comment
  generator  GenGuard's generator name (genguard.provenance.generators), or None
  detail     what was read, bounded (texts are excerpts unless full text is configured)

Never raises: a metadata block that can't be read, or one past a limit (MetadataLimits), is skipped
with a note and never fails its image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field

from genguard.provenance import containers, exif, manifest, text, xmp
from genguard.provenance.limits import MetadataLimits
from genguard.provenance.sourcetypes import AI_KINDS

__all__ = ["AI_KINDS", "Extractor", "MetadataLimits", "ProvenanceConfig"]

log = logging.getLogger("genguard.provenance")


@dataclass(frozen=True)
class ProvenanceConfig:
    """Rendered into the preprocess (cpu) and validate (GPU targets) configs as JSON.

    enabled:        look for metadata at all (False: every answer says nothing was looked for)
    trust_anchors:  PEM bundle of the C2PA trust anchors; empty: every valid manifest is "untrusted"
    full_text:      answers carry prompts/workflows in full instead of excerpts
    excerpt_chars:  excerpt length otherwise
    """

    enabled: bool = True
    trust_anchors: str = ""
    full_text: bool = False
    excerpt_chars: int = 240
    limits: MetadataLimits = field(default_factory=MetadataLimits)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text_: str) -> "ProvenanceConfig":
        if not text_:
            return cls()
        fields = json.loads(text_)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown provenance configuration fields: {', '.join(unknown)}")
        if "limits" in fields:
            fields["limits"] = MetadataLimits(**fields["limits"])
        return cls(**fields)


class Extractor:
    def __init__(self, config: ProvenanceConfig = ProvenanceConfig()):
        self.config = config
        self.reader = manifest.ManifestReader(config.trust_anchors)

    def extract(self, data: bytes) -> dict:
        """IMAGE_INFO["provenance"] for one image's encoded bytes (padding already stripped or not)."""
        if not self.config.enabled:
            return {"looked_for": [], "signals": [], "c2pa": None, "notes": []}
        try:
            return self._extract(data)
        except Exception as exc:  # a bug here must never fail the image
            log.exception("unexpected error while reading metadata")
            return {"looked_for": [], "signals": [], "c2pa": None,
                    "notes": [f"metadata not read: unexpected error ({type(exc).__name__})"]}

    def _extract(self, data: bytes) -> dict:
        limits, cfg = self.config.limits, self.config
        chars = None if cfg.full_text else cfg.excerpt_chars
        start = time.perf_counter()
        blocks = containers.find_blocks(data, limits)
        result = {"looked_for": [], "signals": [], "c2pa": None, "notes": blocks.notes}
        if blocks.container is None:
            result["notes"].append("no metadata read: only JPEG, PNG, WebP, HEIF and AVIF containers are read")
            return result
        result["looked_for"] = list(containers.LOOKED_FOR[blocks.container])

        def over_time(stage: str) -> bool:
            if time.perf_counter() - start > limits.max_seconds:
                result["notes"].append(f"{stage} skipped: metadata time limit ({limits.max_seconds} s) spent")
                return True
            return False

        signals = result["signals"]
        if blocks.c2pa_bytes:
            if blocks.c2pa_bytes > limits.max_c2pa_bytes:
                result["c2pa"] = {"present": True, "state": "error", "failures": ["too_large"]}
                result["notes"].append(f"C2PA manifest of {blocks.c2pa_bytes} bytes not read "
                                       f"(limit {limits.max_c2pa_bytes})")
            elif not over_time("C2PA"):
                result["c2pa"] = self.reader.read(data, blocks.container)
                signals += manifest.signals(result["c2pa"])
        elif "c2pa" in result["looked_for"]:  # (HEIF/AVIF: not looked for, so c2pa stays None)
            result["c2pa"] = {"present": False}
        extended: list[str] = []  # GUIDs of extended XMP named by the main packets (JPEG)
        for packet in blocks.xmp:
            if over_time("XMP"):
                break
            try:
                found = xmp.fields(packet)
            except Exception as exc:  # defusedxml refusals (DTD, entities) and malformed XML
                result["notes"].append(f"XMP packet skipped: {type(exc).__name__}")
                continue
            signals += xmp.signals_of(found)
            extended += [g.strip().upper() for g in found.get("HasExtendedXMP", [])]
        if extended or blocks.xmp_extension:
            signals += self._extended_xmp(blocks, list(dict.fromkeys(extended)), result["notes"], over_time)
        if blocks.exif is not None and not over_time("EXIF"):
            try:
                signals += exif.signals(blocks.exif, chars)
            except Exception as exc:
                result["notes"].append(f"EXIF skipped: {type(exc).__name__}")
        if blocks.texts and not over_time("text"):
            signals += text.signals(blocks.texts, "text", chars)
        if len(signals) > limits.max_signals:
            result["notes"].append(f"{len(signals) - limits.max_signals} signals past the first "
                                   f"{limits.max_signals} left out")
            del signals[limits.max_signals:]
        return result

    @staticmethod
    def _extended_xmp(blocks, guids: list[str], notes: list[str], over_time) -> list[dict]:
        """The JPEG extended XMP the main packet names (xmpNote:HasExtendedXMP), put together and checked
        (containers.extended_xmp), read as one more packet; segments of other GUIDs are ignored, as the
        XMP spec says."""
        named = [g for g in guids if len(g) == 32 and all(c in "0123456789ABCDEF" for c in g)]
        if len(named) < len(guids):
            notes.append("an xmpNote:HasExtendedXMP that is not a GUID (32 hex digits) ignored")
        guids = named
        if not guids:
            if blocks.xmp_extension:
                notes.append(f"{len(blocks.xmp_extension)} extended XMP segment(s) skipped: no main XMP packet "
                             "names them (xmpNote:HasExtendedXMP)")
            return []
        out = []
        for guid in guids[:1]:  # one extended packet per file
            if over_time("extended XMP"):
                break
            try:
                packet = containers.extended_xmp(blocks.xmp_extension, guid)
            except ValueError as exc:
                notes.append(f"extended XMP {guid} skipped: {exc}")
                continue
            try:
                out += xmp.signals(packet)
            except Exception as exc:  # defusedxml refusals and malformed XML, as for the main packet
                notes.append(f"extended XMP {guid} skipped: {type(exc).__name__}")
        others = {s.guid for s in blocks.xmp_extension} - set(guids[:1])
        if others:
            notes.append(f"extended XMP segments of {len(others)} GUID(s) the main packet doesn't name ignored")
        return out
