"""GenGuard's domain metrics: what the service decides, on Triton's metrics port next to its own `nv_*`.

Published with the python backend's custom metrics API (`pb_utils.MetricFamily`, `.Metric(labels=...)`;
HISTOGRAM with `buckets=`, which the bundled tritonserver 2.51 supports) by the python-backend models:

  postprocess      genguard_image_verdicts_total{verdict}       images answered, by verdict
                   genguard_image_sources_total{source}         images answered, by the answer's `source`
                   genguard_image_nsfw_levels_total{level}      images answered, by NSFW level (argmax)
                   genguard_is_ai_generated                     histogram of the fused is_ai_generated
                   genguard_detector_random_weights{detector}   1 while the detector serves random weights
                   genguard_image_failures_total{model="postprocess",reason="internal"}
  preprocess (cpu target), validate (GPU targets)
                   genguard_image_failures_total{model,reason}  images refused, by reason
  each detector (cpu target)
                   genguard_detector_failures_total{detector,reason}  images whose batch the detector could not
                                                                 run: out_of_memory, error

Every image of a request is counted once: a success under the verdict (and source, NSFW level, histogram)
in postprocess, a refusal under its reason in the step that refused it. Counts are read from what the
models answer (the answer document, IMAGE_INFO), so they say what clients were told.

The models copied into the repository import this module from the installed `genguard` package (as they
import genguard.fusion); `pb_utils` is passed in, since it exists only inside the server's python stub.
Series with a known label set are created at zero when a model loads, so rate() sees every one of them
from the first scrape; any other label value (a new reason or source) gets its series on first use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

VERDICTS = ("ai_generated", "not_ai_generated", "uncertain")
# genguard.preprocess.ImageRejected reasons, plus "internal" (a bug caught for one image)
REASONS = ("empty", "too_large", "not_an_image", "unsupported_format", "too_many_pixels", "truncated",
           "corrupt", "unconvertible", "internal")
IS_AI_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # and +Inf

VERDICTS_TOTAL = "genguard_image_verdicts_total"
SOURCES_TOTAL = "genguard_image_sources_total"
NSFW_TOTAL = "genguard_image_nsfw_levels_total"
FAILURES_TOTAL = "genguard_image_failures_total"
IS_AI = "genguard_is_ai_generated"
RANDOM_WEIGHTS = "genguard_detector_random_weights"
DETECTOR_FAILURES = "genguard_detector_failures_total"

# name -> (kind, help, label names); kind as pb_utils.MetricFamily's attribute
FAMILIES = {
    VERDICTS_TOTAL: ("COUNTER", "Images answered with a verdict (ai_generated, not_ai_generated, uncertain)",
                     ("verdict",)),
    SOURCES_TOTAL: ("COUNTER", "Images answered, by the answer's source field (most likely generator; "
                               "none for not AI-generated); answers without a source are not counted",
                    ("source",)),
    NSFW_TOTAL: ("COUNTER", "Images answered, by NSFW level (the most probable of the NSFW detector's levels)",
                 ("level",)),
    FAILURES_TOTAL: ("COUNTER", "Images answered with status FAILURE, by reason and by the model that refused them",
                     ("model", "reason")),
    IS_AI: ("HISTOGRAM", "Fused probability that an answered image is AI-generated (is_ai_generated)", ()),
    RANDOM_WEIGHTS: ("GAUGE", "1 if the detector serves random weights (meaningless scores), 0 if real",
                     ("detector",)),
    DETECTOR_FAILURES: ("COUNTER", "Images in batches a detector could not run, by reason (out_of_memory: the "
                                   "stub ran out of memory; error: any other failure)", ("detector", "reason")),
}


# ---------------------------------------------------------------------------------------------------
# What to count (pure: no server needed)


@dataclass
class Tally:
    verdicts: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    nsfw: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # reason -> images
    is_ai: list = field(default_factory=list)


def tally_answers(docs, upstream_ok) -> Tally:
    """Postprocess's answer documents -> counts. A FAILURE counts only if the image came in ok
    (`upstream_ok[i]`): a refusal upstream was counted by the step that refused it."""
    out = Tally()
    for doc, ok in zip(docs, upstream_ok):
        if doc.get("status") != "SUCCESS":
            if ok:
                out.failures[(doc.get("error") or {}).get("reason") or "internal"] += 1
            continue
        if doc.get("verdict") is not None:
            out.verdicts[doc["verdict"]] += 1
        if doc.get("source") is not None:
            out.sources[doc["source"]] += 1
        level = (doc.get("nsfw") or {}).get("level")
        if level is not None:
            out.nsfw[level] += 1
        if doc.get("is_ai_generated") is not None:
            out.is_ai.append(float(doc["is_ai_generated"]))
    return out


def tally_refusals(infos) -> Counter:
    """IMAGE_INFO dicts of one batch (preprocess, validate) -> reason -> images refused."""
    return Counter(info.get("reason") or "internal" for info in infos if not info.get("ok"))


# ---------------------------------------------------------------------------------------------------
# Publishing (inside the server's python stub)


class _Families:
    """The metric families one model uses, and their metrics by label values, created on first use.
    The python backend wants a family deleted after its metrics: close() deletes them in that order."""

    def __init__(self, pb_utils, names):
        self.pb_utils = pb_utils
        self.families = {}
        self.metrics = {}
        for name in names:
            kind, description, _ = FAMILIES[name]
            self.families[name] = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind))

    def metric(self, name: str, **labels):
        key = (name, tuple(sorted(labels.items())))
        metric = self.metrics.get(key)
        if metric is None:
            assert set(labels) == set(FAMILIES[name][2]), (name, labels)
            if FAMILIES[name][0] == "HISTOGRAM":
                metric = self.families[name].Metric(labels=labels, buckets=list(IS_AI_BUCKETS))
            else:
                metric = self.families[name].Metric(labels=labels)
            self.metrics[key] = metric
        return metric

    def add(self, name: str, counts: Counter, **fixed) -> None:
        """Increment, for each value in `counts`, the series whose one free label is that value."""
        [label] = [n for n in FAMILIES[name][2] if n not in fixed]
        for value, n in counts.items():
            self.metric(name, **fixed, **{label: str(value)}).increment(float(n))

    def warn(self, exc: Exception) -> None:
        self.pb_utils.Logger.log_warn(f"genguard metrics not updated: {exc!r}")

    def close(self) -> None:
        self.metrics.clear()
        self.families.clear()


class AnswerMetrics:
    """postprocess: verdicts, sources, NSFW levels, the is_ai_generated histogram, the random-weights
    gauge, and its own per-image failures."""

    def __init__(self, pb_utils, weights: dict[str, str], sources=(), nsfw_levels=()):
        self.f = _Families(pb_utils, (VERDICTS_TOTAL, SOURCES_TOTAL, NSFW_TOTAL, FAILURES_TOTAL, IS_AI,
                                      RANDOM_WEIGHTS))
        for verdict in VERDICTS:
            self.f.metric(VERDICTS_TOTAL, verdict=verdict)
        for source in sources:
            self.f.metric(SOURCES_TOTAL, source=source)
        for level in nsfw_levels:
            self.f.metric(NSFW_TOTAL, level=level)
        self.f.metric(FAILURES_TOTAL, model="postprocess", reason="internal")
        self.f.metric(IS_AI)
        for detector, provenance in weights.items():
            self.f.metric(RANDOM_WEIGHTS, detector=detector).set(1.0 if provenance == "random" else 0.0)

    def record(self, docs, upstream_ok) -> None:
        """Count one batch's answers. Never raises: a metrics problem must not fail the answers."""
        try:
            t = tally_answers(docs, upstream_ok)
            self.f.add(VERDICTS_TOTAL, t.verdicts)
            self.f.add(SOURCES_TOTAL, t.sources)
            self.f.add(NSFW_TOTAL, t.nsfw)
            self.f.add(FAILURES_TOTAL, t.failures, model="postprocess")
            histogram = self.f.metric(IS_AI)
            for value in t.is_ai:
                histogram.observe(value)
        except Exception as exc:
            self.f.warn(exc)

    def close(self) -> None:
        self.f.close()


class RefusalMetrics:
    """preprocess (cpu target) and validate (GPU targets): images refused, by reason."""

    def __init__(self, pb_utils, model: str):
        self.model = model
        self.f = _Families(pb_utils, (FAILURES_TOTAL,))
        for reason in REASONS:
            self.f.metric(FAILURES_TOTAL, model=model, reason=reason)

    def record(self, infos) -> None:
        """Count one batch's refusals. Never raises: a metrics problem must not fail the answers."""
        try:
            self.f.add(FAILURES_TOTAL, tally_refusals(infos), model=self.model)
        except Exception as exc:
            self.f.warn(exc)

    def close(self) -> None:
        self.f.close()


class DetectorMetrics:
    """A detector (cpu target): images in the batches it could not run, by reason."""

    def __init__(self, pb_utils, detector: str):
        self.detector = detector
        self.f = _Families(pb_utils, (DETECTOR_FAILURES,))
        for reason in ("out_of_memory", "error"):
            self.f.metric(DETECTOR_FAILURES, detector=detector, reason=reason)

    def failed(self, exc: Exception, images: int) -> None:
        try:
            out_of_memory = isinstance(exc, MemoryError) or "bad_alloc" in str(exc)
            self.f.metric(DETECTOR_FAILURES, detector=self.detector,
                          reason="out_of_memory" if out_of_memory else "error").increment(float(images))
        except Exception as problem:
            self.f.warn(problem)

    def close(self) -> None:
        self.f.close()
