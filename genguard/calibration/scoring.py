"""Score a labelled set through the running server, one JSONL record per (image, perturbation).

Resumable: records are appended as each chunk of images is answered, and a rerun skips every
(image, perturbation) already in the file. A record:

  {"path", "perturbation" ("none" or e.g. "jpeg:70"), "label" (1 AI-generated, 0 real), "generator",
   "nsfw_label", "status", "error", "is_ai_generated", "verdict", "fusion" (the served rule, threshold, id),
   "scores" {detector: P(AI-generated)}, "detectors" (every head's probabilities, as served),
   "nsfw" {"level", "at_least", "is_nsfw"}, "weights" {detector: real|random}}

A detector's P(AI-generated) is its binary head's positive probability, or, for a detector with only a
source head, 1 - P(its real label).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from genguard import specs

from . import perturb
from .dataset import Sample


def binary_head(name: str):
    try:
        spec = specs.get(name)
    except KeyError:
        return None
    return next((h for h in spec.heads if h.role == "binary"), None)


def detector_scores(probabilities: dict) -> dict[str, float]:
    """A served answer's `detectors` block -> {detector: P(AI-generated)} (NSFW-only detectors left out)."""
    out = {}
    for name, heads in probabilities.items():
        try:
            spec = specs.get(name)
        except KeyError:
            continue
        for role in ("binary", "source"):
            head = next((h for h in spec.heads if h.role == role and h.name in heads), None)
            if head is None:
                continue
            p = heads[head.name]
            out[name] = float(p[head.positive]) if role == "binary" else float(1.0 - p[head.real_label])
            break
    return out


def read_records(path: Path) -> list[dict]:
    """The records already in `path` (a torn last line, from an interrupted run, is dropped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _record(sample: Sample, perturbation: str, result) -> dict:
    doc = result.raw
    nsfw = result.nsfw
    return {
        "path": sample.path, "perturbation": perturbation, "label": sample.label, "generator": sample.generator,
        "nsfw_label": sample.nsfw, "status": result.status,
        "error": None if result.ok else {"reason": result.error.reason, "message": result.error.message},
        "is_ai_generated": result.is_ai_generated, "verdict": result.verdict, "fusion": result.fusion,
        "scores": detector_scores(result.detectors) if result.ok else {},
        "detectors": result.detectors,
        "nsfw": ({"level": nsfw.level, "at_least": nsfw.at_least, "is_nsfw": nsfw.flagged} if nsfw else None),
        "weights": result.weights or doc.get("weights") or {},
    }


def score(samples: list[Sample], client, out: Path, perturbations: list[str] = (), *, chunk: int = 64,
          on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Score every sample (and its perturbed copies) not yet in `out`; returns every record for them.

    `client` is a genguard.client.Client. Records already in `out` for other images are kept in the
    file but not returned.
    """
    from genguard.client.inputs import Item

    out.parent.mkdir(parents=True, exist_ok=True)
    existing = {(r["path"], r["perturbation"]): r for r in read_records(out)
                if r.get("status") == "SUCCESS"}  # failures are retried
    wanted = [(s, p) for p in [perturb.NONE, *perturbations] for s in samples]
    todo = [(s, p) for s, p in wanted if (s.path, p) not in existing]
    done = len(wanted) - len(todo)
    if on_progress:
        on_progress(done, len(wanted))
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            items = [Item(i, f"{s.path}" if p == perturb.NONE else f"{s.path} [{p}]",
                          lambda s=s, p=p: perturb.apply(Path(s.path).read_bytes(), p))
                     for i, (s, p) in enumerate(part)]
            results = client.detect(items)
            for (sample, p), result in zip(part, results):
                record = _record(sample, p, result)
                f.write(json.dumps(record) + "\n")
                if result.ok:
                    existing[(sample.path, p)] = record
                else:
                    existing.setdefault((sample.path, p), record)
            f.flush()
            done += len(part)
            if on_progress:
                on_progress(done, len(wanted))
    # the labels are the set's as given now (a relabelled image needn't be scored again)
    return [{**existing[(s.path, p)], "label": s.label, "generator": s.generator, "nsfw_label": s.nsfw}
            for s, p in wanted if (s.path, p) in existing]
