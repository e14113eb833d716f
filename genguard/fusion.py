"""Postprocessing: per-head probabilities -> one per-image answer (a superset of Hive's NIM item).

The rule (documented in docs/protocol.md, "How answers are fused"):

  p_d        P(AI-generated) from detector d's binary head (softmax of its positive label, or sigmoid)
  w_d        the detector's weight (1 unless configured; 0 = the detector never counts, in every rule)
  is_ai      weighted_mean: sum_d w_d p_d / sum_d w_d     (default)
             max:           max_d (w_d / max_w) p_d       (equal weights: the plain max)
             logit_mean:    sigmoid(sum_d w_d logit(p_d) / sum_d w_d)
             stacked:       sigmoid(intercept + sum_d c_d logit(p_d))  (c_d: `coefficients`, fitted by
                            `genguard calibrate`; w_d still weighs the generator evidence)
  verdict    "ai_generated" if is_ai >= threshold + margin, "not_ai_generated" if < threshold - margin,
             else "uncertain" (margin 0 by default: no uncertain band)
  evidence   e(g) = sum over binary heads naming generator g of w_d p_d
                  + sum over source heads of w_d p_d(label of g)     (the real label is excluded)
  given_ai   sources_given_ai[g] = e(g) / sum_g e(g): P(generator | AI-generated) (uniform without
             evidence; {"unknown": 1} when no served head names generators)
  sources    possible_sources (Hive's distribution, sums to 1): [none] = 1 - is_ai, [g] = is_ai * given_ai[g]
  source     from the verdict (genguard/verdicts.py): ai_generated -> argmax_g given_ai[g] (or "unknown"),
             not_ai_generated -> "none", uncertain -> null
  provenance metadata read from the bytes (genguard.provenance; docs/provenance.md): a C2PA manifest that
             validates, from a trusted signer, declaring AI generation decides (is_ai = 1, verdict
             ai_generated, decided_by "c2pa", its generator the source); any other declaration of AI
             generation (untrusted or invalid manifest, XMP, EXIF, generation-tool text) acts by
             `provenance`: off (reported only), evidence (is_ai <- 1 - (1 - is_ai)(1 - s), given_ai <-
             (1 - s) given_ai + s onehot(its generator); s = provenance_strength), decide (as a trusted
             manifest, decided_by "metadata"). A trusted manifest claiming camera capture decides
             not_ai_generated only with trust_capture. Missing metadata is never evidence either way.
  nsfw       level = argmax; at_least[l] = sum of the probabilities of l and every higher level
             (Freepik card); is_nsfw = at_least[nsfw_level] >= nsfw_threshold
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from genguard import protocol, specs
from genguard.scores import head_probs
from genguard.specs import DetectorSpec
from genguard.provenance import generators
from genguard.verdicts import AI, NONE, NOT_AI, UNKNOWN, source_for, verdict_for


PROVENANCE_POLICIES = ("off", "evidence", "decide")
AI_DECLARATIONS = ("ai_generated", "ai_composite")  # signal kinds that declare AI generation


@dataclass(frozen=True)
class FusionConfig:
    rule: str = "weighted_mean"
    weights: dict[str, float] = field(default_factory=dict)  # detector -> weight (default 1.0)
    threshold: float = 0.5
    margin: float = 0.0
    nsfw_level: str = "medium"
    nsfw_threshold: float = 0.5
    # rule "stacked" (written by `genguard calibrate`): logistic regression on the detectors' logits
    coefficients: dict[str, float] = field(default_factory=dict)  # detector -> c_d
    intercept: float = 0.0
    id: str = ""  # named in every answer's `fusion` block (default: derived from the configuration)
    training: dict = field(default_factory=dict)  # how it was fitted: set size, date, target FPR ... (informative)
    # provenance (docs/provenance.md): what an untrusted or metadata-only declaration of AI generation does
    provenance: str = "evidence"  # off | evidence | decide
    provenance_strength: float = 0.9  # s in evidence mode: how far a declaration moves is_ai towards 1
    trust_capture: bool = False  # a trusted C2PA camera-capture claim decides not_ai_generated

    def __post_init__(self):
        if self.rule not in ("weighted_mean", "max", "logit_mean", "stacked"):
            raise ValueError(f"unknown fusion rule {self.rule!r}: weighted_mean, max, logit_mean or stacked")
        if self.rule == "stacked" and not self.coefficients:
            raise ValueError("the stacked rule needs coefficients (write them with `genguard calibrate`)")
        if not all(math.isfinite(c) for c in [*self.coefficients.values(), self.intercept]):
            raise ValueError("stacked coefficients and intercept must be finite")
        if self.provenance not in PROVENANCE_POLICIES:
            raise ValueError(f"unknown provenance policy {self.provenance!r}: {', '.join(PROVENANCE_POLICIES)}")
        if not 0.0 <= self.provenance_strength <= 1.0:
            raise ValueError("provenance_strength must be in [0, 1]")
        if not 0.0 <= self.threshold <= 1.0 or self.margin < 0:
            raise ValueError("threshold must be in [0, 1] and margin >= 0")
        if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ValueError("fusion weights must be finite and >= 0")
        unknown = sorted(set(self.weights) - set(specs.DETECTORS))
        if unknown:
            raise ValueError(f"fusion weights name unknown detectors: {', '.join(unknown)} "
                             f"(known: {', '.join(specs.DETECTORS)})")

    def check_detectors(self, detectors: list[DetectorSpec]) -> None:
        """Refuse a configuration that can't mean what it says for the served detectors: weights for a
        detector that isn't served, or every binary-head detector weighted 0 (nothing would decide)."""
        served = {s.name for s in detectors}
        absent = sorted(set(self.weights) - served)
        if absent:
            raise ValueError(f"fusion weights name detectors that are not served: {', '.join(absent)} "
                             f"(served: {', '.join(sorted(served))})")
        deciding = [s.name for s in detectors if s.head("binary") is not None]
        if self.rule == "stacked" and set(self.coefficients) != set(deciding):
            raise ValueError(f"stacked coefficients name {', '.join(sorted(self.coefficients))}, but the served "
                             f"detectors with a binary head are {', '.join(sorted(deciding))}: calibrate again "
                             "against this server")
        if deciding and not any(self.weight(name) > 0 for name in deciding):
            raise ValueError(f"fusion weights are all 0 for the detectors that decide ({', '.join(deciding)}): "
                             "at least one must be > 0")

    @property
    def fusion_id(self) -> str:
        """`id` if set, else a digest of the configuration (so every answer names what fused it)."""
        if self.id:
            return self.id
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def weight(self, detector: str) -> float:
        return float(self.weights.get(detector, 1.0))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FusionConfig":
        if not text:
            return cls()
        fields = json.loads(text)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown fusion configuration fields: {', '.join(unknown)}")
        return cls(**fields)


def source_name(label: str) -> str:
    """Head label -> generator name in possible_sources ("Diffusion" -> "diffusion")."""
    return label.strip().lower().replace(" ", "_").replace("-", "_")


def source_names(detectors: list[DetectorSpec]) -> list[str]:
    """possible_sources order: none first, then generators in spec order ("unknown" when no head names one)."""
    names = [NONE]
    for spec in detectors:
        for head in spec.heads:
            if head.role == "binary" and head.generator:
                candidates = [head.generator]
            elif head.role == "source":
                candidates = [source_name(label) for label in head.labels if label != head.real_label]
            else:
                continue
            names += [n for n in candidates if n not in names]
    return names if len(names) > 1 else [NONE, UNKNOWN]


def nsfw_labels(detectors: list[DetectorSpec]) -> list[str]:
    head = next((h for s in detectors for h in s.heads if h.role == "nsfw"), None)
    return list(head.labels) if head else []


def _trusted(signal: dict) -> bool:
    """A signal from a C2PA manifest that validated and chains to a configured trust anchor."""
    return signal.get("source") == "c2pa" and (signal.get("detail") or {}).get("state") == "trusted"


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


class Fuser:
    """Fuses one image's head logits into its answer; built once per served configuration."""

    def __init__(self, detectors: list[DetectorSpec], config: FusionConfig, weights: dict[str, str],
                 revisions: dict[str, str | None] | None = None, engines: dict[str, dict] | None = None):
        self.detectors = detectors
        self.config = config
        self.weights_used = weights  # detector -> "real" | "random"
        self.revisions = revisions or {}  # detector -> hub commit served (None: local path or random)
        self.engines = engines or {}  # detector -> {option, engine, precision} (cpu target)
        self.sources = source_names(detectors)
        self.nsfw = nsfw_labels(detectors)
        if self.nsfw and config.nsfw_level not in self.nsfw[1:]:
            raise ValueError(f"nsfw_level must be one of {self.nsfw[1:]}")
        if not any(h.role == "binary" for s in detectors for h in s.heads):
            raise ValueError("fusion needs at least one detector with a binary head")
        config.check_detectors(detectors)
        random = sorted(d for d, w in weights.items() if w == "random")
        self.warnings = (
            [f"RANDOM WEIGHTS: {', '.join(random)} run random weights; these scores are meaningless"]
            if random else []
        )

    def probabilities(self, logits: dict[tuple[str, str], np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
        """(detector, head) -> [k] logits for one image -> detector -> head -> label -> probability."""
        out = {}
        for spec in self.detectors:
            out[spec.name] = {}
            for head in spec.heads:
                probs = head_probs(head, np.asarray(logits[(spec.name, head.name)], dtype=np.float64)[None, :])[0]
                out[spec.name][head.name] = {label: float(p) for label, p in zip(head.labels, probs)}
        return out

    def fuse(self, probs: dict[str, dict[str, dict[str, float]]], provenance: dict | None = None) -> dict:
        cfg = self.config
        binary, evidence = [], {name: 0.0 for name in self.sources[1:]}
        for spec in self.detectors:
            w = cfg.weight(spec.name)
            for head in spec.heads:
                p = probs[spec.name][head.name]
                if head.role == "binary":
                    binary.append((w, p[head.positive]))
                    if head.generator:
                        evidence[head.generator] += w * p[head.positive]
                elif head.role == "source":
                    for label, value in p.items():
                        if label != head.real_label:
                            evidence[source_name(label)] += w * value
        total_w = sum(w for w, _ in binary)  # > 0: check_detectors refused all-zero weights
        if cfg.rule == "max":
            max_w = max(w for w, _ in binary)
            is_ai = max(w / max_w * p for w, p in binary)
        elif cfg.rule == "stacked":
            z = cfg.intercept + sum(cfg.coefficients[s.name] * _logit(probs[s.name][h.name][h.positive])
                                    for s in self.detectors for h in s.heads if h.role == "binary")
            is_ai = 0.5 * (1.0 + math.tanh(0.5 * z))  # sigmoid, stable for large |z|
        elif cfg.rule == "logit_mean":
            is_ai = 1 / (1 + math.exp(-sum(w * _logit(p) for w, p in binary) / total_w))
        else:
            is_ai = sum(w * p for w, p in binary) / total_w

        total_e = sum(evidence.values())
        given_ai = {name: (e / total_e if total_e > 1e-12 else 1.0 / len(evidence)) for name, e in evidence.items()}
        is_ai, given_ai, verdict, block = self.apply_provenance(is_ai, given_ai, provenance)
        sources = {NONE: 1.0 - is_ai, **{name: is_ai * share for name, share in given_ai.items()}}
        answer = {
            "is_ai_generated": is_ai,
            "verdict": verdict,
            "possible_sources": sources,
            "sources_given_ai": given_ai,
            "source": source_for(verdict, given_ai),
            "decided_by": block["decided_by"] if block else None,
        }
        if block is not None:
            answer["provenance"] = block
        nsfw_head = next(((s.name, h) for s in self.detectors for h in s.heads if h.role == "nsfw"), None)
        if nsfw_head:
            scores = probs[nsfw_head[0]][nsfw_head[1].name]
            levels = list(nsfw_head[1].labels)
            at_least = {lvl: float(sum(scores[l] for l in levels[i:])) for i, lvl in enumerate(levels) if i > 0}
            answer["nsfw"] = {
                "level": max(scores, key=scores.get),
                "scores": scores,
                "at_least": at_least,
                "is_nsfw": at_least[cfg.nsfw_level] >= cfg.nsfw_threshold,
                "rule": f"at_least[{cfg.nsfw_level}] >= {cfg.nsfw_threshold}",
            }
        return answer

    def apply_provenance(self, is_ai: float, given_ai: dict[str, float], provenance: dict | None):
        """(is_ai, given_ai, verdict, provenance block) after the provenance rule (module docstring)."""
        cfg = self.config
        if provenance is None:
            return is_ai, given_ai, verdict_for(is_ai, cfg.threshold, cfg.margin), None
        block = self.provenance_block(provenance)
        block["pixel_is_ai_generated"] = is_ai
        signals = provenance.get("signals") or []
        declared = [s for s in signals if s.get("kind") in AI_DECLARATIONS]
        trusted = [s for s in declared if _trusted(s)]
        capture = [s for s in signals if s.get("kind") == "capture" and _trusted(s)]
        onehot = None
        if block["source"] is not None and block["source"] in given_ai:
            onehot = {name: float(name == block["source"]) for name in given_ai}
        decided = None
        if cfg.provenance == "off":
            pass
        elif trusted:
            decided = "c2pa"
        elif declared and cfg.provenance == "decide":
            decided = "metadata"
        elif declared:  # evidence
            s = cfg.provenance_strength
            is_ai = 1.0 - (1.0 - is_ai) * (1.0 - s)
            if onehot:
                given_ai = {name: (1.0 - s) * share + s * onehot[name] for name, share in given_ai.items()}
            block["effect"] = "evidence"
        elif capture and cfg.trust_capture:
            block["decided_by"], block["effect"] = "c2pa", "decided"
            return 0.0, given_ai, NOT_AI, block
        if decided:
            block["decided_by"], block["effect"] = decided, "decided"
            return 1.0, onehot or given_ai, AI, block
        return is_ai, given_ai, verdict_for(is_ai, cfg.threshold, cfg.margin), block

    def provenance_block(self, provenance: dict) -> dict:
        """The answer's `provenance` block: what was looked for and found, and what the policy made of it."""
        signals = provenance.get("signals") or []
        declared = sorted((s for s in signals if s.get("kind") in AI_DECLARATIONS),
                          key=lambda s: (not _trusted(s), s.get("generator") is None))
        generator = next((s.get("generator") for s in declared if s.get("generator")), None)
        return {
            "looked_for": provenance.get("looked_for", []),
            "signals": signals,
            "c2pa": provenance.get("c2pa"),
            "notes": provenance.get("notes", []),
            "declares_ai": bool(declared),
            "generator": generator,
            "source": generators.to_source(generator, self.sources),
            "policy": self.config.provenance,
            "effect": "none",
            "decided_by": None,
        }

    def answer(self, index: int, info: dict, logits: dict[tuple[str, str], np.ndarray] | None) -> dict:
        """The full per-image JSON document; `info` is preprocess's IMAGE_INFO for this image."""
        doc = {"index": index, "status": protocol.SUCCESS if info.get("ok") else protocol.FAILURE,
               "error": None if info.get("ok") else {"reason": info.get("reason"), "message": info.get("message")}}
        if info.get("ok"):
            probs = self.probabilities(logits)
            doc.update(self.fuse(probs, info.get("provenance")))
            doc["detectors"] = probs
            doc["image"] = {k: info[k] for k in ("width", "height", "format") if k in info}
        else:
            doc.update({"is_ai_generated": None, "verdict": None, "possible_sources": None,
                        "sources_given_ai": None, "source": None, "decided_by": None})
            if info.get("provenance") is not None:  # reported, though the image could not be answered
                doc["provenance"] = self.provenance_block(info["provenance"])
        doc["weights"] = self.weights_used
        doc["revisions"] = self.revisions
        if self.engines:
            doc["engines"] = self.engines
        doc["fusion"] = {"rule": self.config.rule, "threshold": self.config.threshold, "margin": self.config.margin,
                         "id": self.config.fusion_id}
        if self.warnings:
            doc["warnings"] = self.warnings
        return doc
