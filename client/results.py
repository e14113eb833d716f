"""Typed per-image answers, mirroring the server's RESULT JSON (genguard/fusion.py).

A Result is built from the server's document for one image, or by the client for an image it could
not send (unreadable file, timeout); both look the same to the caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from genguard.protocol import FAILURE, NSFW_LEVELS, SUCCESS
from genguard.verdicts import source_for, verdict_for



@dataclass(frozen=True)
class ErrorInfo:
    reason: str   # stable code: not_an_image, corrupt, too_large, not_found, permission_denied, timeout ...
    message: str  # one readable sentence


@dataclass(frozen=True)
class ImageInfo:
    width: int | None
    height: int | None
    format: str | None


@dataclass(frozen=True)
class NsfwResult:
    level: str                   # the most likely level
    scores: dict[str, float]     # neutral, low, medium, high
    at_least: dict[str, float]   # P(level or more explicit), for low, medium, high
    flagged: bool | None = None  # the server's is_nsfw under its configured rule (`rule`)
    rule: str | None = None
    timestamps: list[float] | None = None  # a clip's: when its sampled frames reached `level` (seconds)

    def is_nsfw(self, level: str = "medium", threshold: float = 0.5) -> bool:
        """Freepik card semantics: NSFW when P(at least `level`) >= threshold."""
        if level not in NSFW_LEVELS[1:]:
            raise ValueError(f"nsfw level must be one of {', '.join(NSFW_LEVELS[1:])}, not {level!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], not {threshold}")
        return self.at_least[level] >= threshold

    @classmethod
    def from_json(cls, doc: dict) -> "NsfwResult":
        scores = {k: float(v) for k, v in doc["scores"].items()}
        at_least = doc.get("at_least")
        if at_least is None:  # derive it: cumulative from the most explicit level down
            levels = [lvl for lvl in NSFW_LEVELS if lvl in scores]
            at_least = {lvl: sum(scores[x] for x in levels[i:]) for i, lvl in enumerate(levels) if i > 0}
        return cls(level=doc.get("level") or max(scores, key=scores.get), scores=scores,
                   at_least={k: float(v) for k, v in at_least.items()},
                   flagged=doc.get("is_nsfw"), rule=doc.get("rule"), timestamps=doc.get("timestamps"))


@dataclass(frozen=True)
class Result:
    index: int                     # position in the caller's (flattened) input list
    name: str                      # the input: its path, or "<bytes 3>", "<PIL image 4>", "-" (stdin)
    status: str                    # SUCCESS | FAILURE
    error: ErrorInfo | None = None
    is_ai_generated: float | None = None  # fused P(AI-generated)
    verdict: str | None = None     # ai_generated | not_ai_generated | uncertain (threshold in `fusion`)
    possible_sources: dict[str, float] | None = None  # Hive's: none = 1 - P(AI), generators share P(AI); sums to 1
    source: str | None = None      # from the verdict: the most likely generator ("unknown" if no head names
                                   # one) when ai_generated, "none" when not_ai_generated, None when uncertain
    sources_given_ai: dict[str, float] | None = None  # P(generator | AI-generated), sums to 1
    nsfw: NsfwResult | None = None
    detectors: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    image: ImageInfo | None = None
    weights: dict[str, str] = field(default_factory=dict)  # detector -> "real" | "random"
    revisions: dict[str, str | None] = field(default_factory=dict)  # detector -> hub commit (None: local/random)
    fusion: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    decided_by: str | None = None  # "c2pa" | "metadata" when provenance decided the verdict (docs/provenance.md)
    provenance: dict[str, Any] | None = None  # signals read from the image's metadata, and their effect
    kind: str = "image"            # "video" for a clip answered by genguard_video (docs/video.md)
    video: dict[str, Any] | None = None  # a clip's container facts: container, codec, size, duration_s, fps, frames
    timeline: list[dict[str, Any]] | None = None  # a clip's sampled frames: t, is_ai_generated, source, nsfw_level
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the server's document, as sent

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS

    def is_nsfw(self, level: str = "medium", threshold: float = 0.5) -> bool | None:
        """See NsfwResult.is_nsfw; None when there is no NSFW answer (failure, or no NSFW detector)."""
        return self.nsfw.is_nsfw(level, threshold) if self.nsfw else None

    def verdict_at(self, threshold: float) -> str | None:
        """The verdict for a client-side threshold on is_ai_generated (no uncertain band)."""
        if self.is_ai_generated is None:
            return None
        return verdict_for(self.is_ai_generated, threshold)

    def with_threshold(self, threshold: float) -> "Result":
        """This answer under a client-side threshold (no uncertain band): the verdict and everything that
        depends on it (source, the fusion block's threshold) recomputed with the server's rules."""
        if not self.ok or self.is_ai_generated is None or self.decided_by:  # a decision has no threshold
            return self
        verdict = self.verdict_at(threshold)
        source = source_for(verdict, self.sources_given_ai)
        fusion = {**self.fusion, "threshold": threshold, "margin": 0.0, "threshold_applied_by": "client"}
        raw = {**self.raw, "verdict": verdict, "source": source, "fusion": fusion}
        return dataclasses.replace(self, verdict=verdict, source=source, fusion=fusion, raw=raw)

    def to_dict(self, threshold: float | None = None) -> dict[str, Any]:
        """The server's document with the caller's index and the input's name (JSON-ready); with
        `threshold`, the document as with_threshold(threshold) recomputes it."""
        result = self.with_threshold(threshold) if threshold is not None else self
        doc = {"index": self.index, "name": self.name, **{k: v for k, v in result.raw.items() if k != "index"}}
        if threshold is not None and self.ok:
            doc["threshold"] = threshold
        return doc

    def to_hive(self) -> dict[str, Any]:
        """One item of Hive's NIM response."""
        return {"index": self.index, "is_ai_generated": self.is_ai_generated,
                "possible_sources": self.possible_sources, "status": self.status}

    @classmethod
    def from_json(cls, doc: dict, index: int, name: str) -> "Result":
        error = doc.get("error")
        image = doc.get("image")
        nsfw = doc.get("nsfw")
        ai = doc.get("is_ai_generated")
        return cls(
            index=index, name=name, status=doc.get("status", FAILURE),
            error=ErrorInfo(error.get("reason") or "unknown", error.get("message") or "") if error else None,
            is_ai_generated=None if ai is None else float(ai),
            verdict=doc.get("verdict"),
            possible_sources=doc.get("possible_sources"),
            source=doc.get("source"),
            sources_given_ai=doc.get("sources_given_ai"),
            nsfw=NsfwResult.from_json(nsfw) if nsfw else None,
            detectors=doc.get("detectors") or {},
            image=ImageInfo(image.get("width"), image.get("height"), image.get("format")) if image else None,
            weights=doc.get("weights") or {},
            revisions=doc.get("revisions") or {},
            fusion=doc.get("fusion") or {},
            warnings=list(doc.get("warnings") or []),
            decided_by=doc.get("decided_by"),
            provenance=doc.get("provenance"),
            kind=doc.get("kind", "image"),
            video=doc.get("video"),
            timeline=doc.get("timeline"),
            raw=doc,
        )

    @classmethod
    def failure(cls, index: int, name: str, reason: str, message: str) -> "Result":
        """A FAILURE the client decided (the document has the server's failure shape)."""
        doc = {"index": index, "status": FAILURE, "error": {"reason": reason, "message": message},
               "is_ai_generated": None, "verdict": None, "possible_sources": None, "sources_given_ai": None,
               "source": None}
        return cls.from_json(doc, index, name)


def hive_view(results: list[Result]) -> dict[str, list[dict[str, Any]]]:
    """Results in the shape of Hive's NIM API response, for code migrating from it."""
    return {"data": [r.to_hive() for r in results]}


def is_nsfw(result: Result | NsfwResult, level: str = "medium", threshold: float = 0.5) -> bool | None:
    """Function form of Result.is_nsfw / NsfwResult.is_nsfw."""
    return result.is_nsfw(level, threshold)
