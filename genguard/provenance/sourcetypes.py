"""IPTC digital source types (the vocabulary C2PA and XMP both use) -> signal kinds."""

from __future__ import annotations

IPTC_PREFIX = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# what counts as a declaration of AI generation: made by a trained model, or composited with its output
AI_TYPES = {"trainedAlgorithmicMedia": "ai_generated", "compositeWithTrainedAlgorithmicMedia": "ai_composite"}
CAPTURE_TYPES = {"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "print"}
AI_KINDS = frozenset(AI_TYPES.values())


def short_name(value: str) -> str:
    """http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia -> trainedAlgorithmicMedia"""
    return value.rstrip("/").rsplit("/", 1)[-1].strip()


def kind_of(value: str) -> str:
    name = short_name(value)
    if name in AI_TYPES:
        return AI_TYPES[name]
    if name in CAPTURE_TYPES:
        return "capture"
    return "source_type"  # algorithmicMedia, digitalArt, composite, screenCapture, ...: reported only


def source_type_signal(source: str, value: str, detail: dict | None = None) -> dict:
    return {"source": source, "kind": kind_of(value), "generator": None,
            "detail": {**(detail or {}), "digital_source_type": short_name(value)[:100]}}
