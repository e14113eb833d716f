"""A clip's answer from its frames' answers: the documented aggregation, NSFW with timestamps, the timeline,
container facts and the clip's provenance, in the shape of an image's answer (`kind: "video"`).

Each sampled frame is answered by the image ensemble (its fusion, verdict rule and NSFW levels); this module
only combines those answers, so a clip can never be judged by rules an image is not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from genguard import protocol
from genguard.provenance import generators
from genguard.verdicts import source_for, verdict_for
from genguard.video import Clip

# container/stream tags that name the software that wrote the file
TOOL_TAGS = ("encoder", "encoded_by", "software", "comment", "description", "title", "handler_name",
             "com.apple.quicktime.software", "com.apple.quicktime.description", "creation_tool")


@dataclass(frozen=True)
class Aggregation:
    """How frames make the clip's P(AI): the mean of the top `top_fraction` of frames by P(AI) (at least one
    frame). 1.0 is the plain mean; a small fraction lets a few AI-generated seconds in a real clip (or the
    reverse) decide, which is what moderation wants. The verdict applies the fusion's threshold and margin
    to that mean, like an image's; `frames_over_threshold` reports the share of frames at or over it."""

    top_fraction: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], not {self.top_fraction!r}")


def _mean(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


def timeline_entry(t: float, doc: dict) -> dict:
    ok = doc["status"] == protocol.SUCCESS
    return {"t": t, "status": doc["status"], "is_ai_generated": doc.get("is_ai_generated"),
            "verdict": doc.get("verdict"), "source": doc.get("source"),
            "nsfw_level": (doc.get("nsfw") or {}).get("level") if ok else None,
            "detectors": doc.get("detectors"), "error": doc.get("error")}


def answer(index: int, clip: Clip, frame_docs: list[dict], aggregation: Aggregation = Aggregation(),
           provenance: dict | None = None) -> dict:
    """The clip's document; `frame_docs` are the ensemble's answers to clip.frames, in order."""
    timeline = [timeline_entry(f.t, d) for f, d in zip(clip.frames, frame_docs)]
    good = [(f.t, d) for f, d in zip(clip.frames, frame_docs) if d["status"] == protocol.SUCCESS]
    first = frame_docs[0] if frame_docs else {}
    doc = {"index": index, "kind": "video", "status": protocol.SUCCESS, "error": None}
    if not good:
        error = next((d.get("error") for d in frame_docs if d.get("error")), None) or {}
        doc.update(status=protocol.FAILURE, error={"reason": "no_frame_answered", "message": (
            f"none of the {len(frame_docs)} sampled frames could be answered: {error.get('message', 'no frames')}")},
            is_ai_generated=None, verdict=None, possible_sources=None, sources_given_ai=None, source=None,
            decided_by=None)
    else:
        fusion = first.get("fusion") or good[0][1]["fusion"]
        docs = sorted((d for _, d in good), key=lambda d: d["is_ai_generated"], reverse=True)
        k = max(1, math.ceil(aggregation.top_fraction * len(docs)))
        top = docs[:k]
        is_ai = sum(d["is_ai_generated"] for d in top) / k
        verdict = verdict_for(is_ai, fusion["threshold"], fusion.get("margin", 0.0))
        given = [d["sources_given_ai"] for d in top if d.get("sources_given_ai")]
        sources_given_ai = _mean(given) if given else None
        over = sum(d["is_ai_generated"] >= fusion["threshold"] for d in docs) / len(docs)
        doc.update(is_ai_generated=is_ai, verdict=verdict, possible_sources=_mean([d["possible_sources"] for d in top]),
                   sources_given_ai=sources_given_ai, source=source_for(verdict, sources_given_ai),
                   decided_by="frames", aggregation={
                       "method": "top_k_mean", **asdict(aggregation), "k": k, "frames_answered": len(docs),
                       "frames_over_threshold": over})
        nsfw = _nsfw(good)
        if nsfw:
            doc["nsfw"] = nsfw
    doc["video"] = clip.facts()
    doc["timeline"] = timeline
    if provenance is not None:
        served = list(doc.get("possible_sources") or {})
        doc["provenance"] = {**provenance, "source": generators.to_source(provenance["generator"], served)
                             if served else None,
                             "policy": next((d["provenance"].get("policy") for d in frame_docs
                                             if d.get("provenance")), provenance.get("policy"))}
    for key in ("weights", "revisions", "engines", "fusion", "warnings"):
        if key in first:
            doc[key] = first[key]
    return doc


def _nsfw(good: list[tuple[float, dict]]) -> dict | None:
    """The highest NSFW level any frame reached and when; each score is its highest over the frames, and the
    clip is NSFW when any frame is (each frame under the served rule)."""
    scored = [(t, d["nsfw"]) for t, d in good if d.get("nsfw")]
    if not scored:
        return None
    levels = list(scored[0][1]["scores"])
    rank = {level: i for i, level in enumerate(levels)}
    top = max((n["level"] for _, n in scored), key=lambda level: rank.get(level, -1))
    return {"level": top, "timestamps": [t for t, n in scored if n["level"] == top],
            "scores": {level: max(n["scores"][level] for _, n in scored) for level in levels},
            "at_least": {level: max(n["at_least"][level] for _, n in scored) for level in scored[0][1]["at_least"]},
            "is_nsfw": any(n.get("is_nsfw") for _, n in scored),
            "flagged_at": [t for t, n in scored if n.get("is_nsfw")], "rule": scored[0][1].get("rule"),
            "aggregation": "highest level over the sampled frames; scores and at_least: their highest"}


def provenance(clip: Clip, c2pa: dict | None, policy: str | None = None) -> dict:
    """The clip's `provenance` block, in the images' shape: container tags that name a tool or generator,
    and the C2PA manifest (MP4/MOV) when one is embedded. Reported only: frames decide a clip's verdict."""
    signals = []
    for key, value in sorted(clip.tags.items()):
        if key.lower() in TOOL_TAGS and value:
            generator = generators.identify(value)
            signals.append({"source": "container", "kind": "ai_generated" if generator else "software",
                            "generator": generator, "detail": {"field": key, "excerpt": value[:200]}})
    if c2pa and c2pa.get("present"):
        from genguard.provenance import manifest

        signals += manifest.signals(c2pa)
    declared = [s for s in signals if s["kind"] in ("ai_generated", "ai_composite")]
    generator = next((s.get("generator") for s in declared if s.get("generator")), None)
    looked_for = ["container tags"] + (["c2pa"] if clip.container in ("mp4", "mov") else [])
    return {"looked_for": looked_for, "signals": signals, "c2pa": c2pa, "notes": [],
            "declares_ai": bool(declared), "generator": generator, "source": None,
            "policy": policy, "effect": "none", "decided_by": None}
