"""The fusion rule on hand-computed cases (see genguard/fusion.py and README "How answers are fused")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from genguard import specs
from genguard.fusion import FusionConfig, Fuser, source_names

FLUX, SD, NSFW, IT_BIN, IT_SRC = (specs.get(n) for n in
                                  ("opensdi_flux", "sumsub_sd", "freepik_nsfw", "imagetrust_binary", "imagetrust_source"))
RANDOM = {"opensdi_flux": "random", "sumsub_sd": "real"}


def probs(flux=None, sd=None, it_bin=None, it_src=None, nsfw=None):
    """Per-detector labelled probabilities, as Fuser.probabilities would produce them."""
    out = {}
    if flux is not None:
        out["opensdi_flux"] = {"flux": {"Real_Image": 1 - flux, "Flux.1_Generated": flux}}
    if sd is not None:
        out["sumsub_sd"] = {"sd": {"real": 1 - sd, "stable_diffusion": sd}}
    if it_bin is not None:
        out["imagetrust_binary"] = {"ai": {"Real": 1 - it_bin, "AI-Generated": it_bin}}
    if it_src is not None:
        out["imagetrust_source"] = {"source": dict(zip(specs.IMAGETRUST_SOURCES, it_src))}
    if nsfw is not None:
        out["freepik_nsfw"] = {"nsfw": dict(zip(("neutral", "low", "medium", "high"), nsfw))}
    return out


def test_weighted_mean_and_sources_hand_computed():
    fuser = Fuser([FLUX, SD], FusionConfig(weights={"opensdi_flux": 3.0}), RANDOM)
    answer = fuser.fuse(probs(flux=0.9, sd=0.5))
    # is_ai = (3*0.9 + 1*0.5) / 4 = 0.8
    assert answer["is_ai_generated"] == pytest.approx(0.8)
    assert answer["verdict"] == "ai_generated"
    # evidence: flux 3*0.9 = 2.7, stable_diffusion 0.5 -> shares 2.7/3.2, 0.5/3.2 of 0.8
    assert answer["possible_sources"] == pytest.approx(
        {"none": 0.2, "flux": 0.8 * 2.7 / 3.2, "stable_diffusion": 0.8 * 0.5 / 3.2})
    assert sum(answer["possible_sources"].values()) == pytest.approx(1.0)
    assert answer["sources_given_ai"] == pytest.approx({"flux": 2.7 / 3.2, "stable_diffusion": 0.5 / 3.2})
    assert answer["source"] == "flux"


def test_source_follows_the_verdict_not_the_largest_entry():
    # is_ai 0.7 split evenly between two generators: none (0.3) is the largest entry, but the verdict is
    # ai_generated, so the source is the most likely generator
    answer = Fuser([FLUX, SD], FusionConfig(), RANDOM).fuse(probs(flux=0.7, sd=0.7))
    assert answer["possible_sources"] == pytest.approx({"none": 0.3, "flux": 0.35, "stable_diffusion": 0.35})
    assert answer["verdict"] == "ai_generated" and answer["source"] == "flux"  # tie: first in order
    # not AI-generated: none, whatever the generator split
    answer = Fuser([FLUX, SD], FusionConfig(), RANDOM).fuse(probs(flux=0.1, sd=0.3))
    assert answer["verdict"] == "not_ai_generated" and answer["source"] == "none"
    assert answer["sources_given_ai"] == pytest.approx({"flux": 0.25, "stable_diffusion": 0.75})
    # uncertain: no definite generator
    answer = Fuser([FLUX, SD], FusionConfig(margin=0.2), RANDOM).fuse(probs(flux=0.6, sd=0.5))
    assert answer["verdict"] == "uncertain" and answer["source"] is None


def test_generator_less_configuration_sums_to_one_with_unknown():
    fuser = Fuser([IT_BIN, NSFW], FusionConfig(), RANDOM)
    assert fuser.sources == ["none", "unknown"]
    answer = fuser.fuse(probs(it_bin=0.95, nsfw=(1, 0, 0, 0)))
    assert answer["possible_sources"] == pytest.approx({"none": 0.05, "unknown": 0.95})
    assert answer["sources_given_ai"] == {"unknown": 1.0}
    assert answer["source"] == "unknown"


def test_max_and_logit_mean_rules():
    p = probs(flux=0.9, sd=0.2)
    assert Fuser([FLUX, SD], FusionConfig(rule="max"), RANDOM).fuse(p)["is_ai_generated"] == pytest.approx(0.9)
    # weights in max: a detector's score counts at w_d / max_w; weight 0 never decides
    weighted = FusionConfig(rule="max", weights={"opensdi_flux": 1.0, "sumsub_sd": 4.0})
    assert Fuser([FLUX, SD], weighted, RANDOM).fuse(p)["is_ai_generated"] == pytest.approx(0.225)  # max(0.9/4, 0.2)
    silenced = FusionConfig(rule="max", weights={"opensdi_flux": 0.0})
    answer = Fuser([FLUX, SD], silenced, RANDOM).fuse(p)
    assert answer["is_ai_generated"] == pytest.approx(0.2) and answer["verdict"] == "not_ai_generated"
    # logit_mean: sigmoid((logit(0.9) + logit(0.2)) / 2) = sigmoid((2.1972 - 1.3863) / 2)
    expected = 1 / (1 + math.exp(-(math.log(9) + math.log(0.25)) / 2))
    got = Fuser([FLUX, SD], FusionConfig(rule="logit_mean"), RANDOM).fuse(p)["is_ai_generated"]
    assert got == pytest.approx(expected)
    assert expected == pytest.approx(0.6, abs=1e-12)  # sqrt(9 * 0.25) = 1.5 odds -> 0.6


def test_source_heads_contribute_evidence_but_not_is_ai():
    fuser = Fuser([IT_BIN, IT_SRC], FusionConfig(), RANDOM)
    # source head: Real 0.4, GAN 0.3, Diffusion 0.2, Other 0.1; binary 0.6
    answer = fuser.fuse(probs(it_bin=0.6, it_src=(0.4, 0.3, 0.2, 0.1)))
    assert answer["is_ai_generated"] == pytest.approx(0.6)
    # evidence gan 0.3, diffusion 0.2, other 0.1 (Real excluded): shares of 0.6
    assert answer["possible_sources"] == pytest.approx({"none": 0.4, "gan": 0.3, "diffusion": 0.2, "other": 0.1})
    assert fuser.sources == ["none", "gan", "diffusion", "other"]


def test_no_generator_evidence_spreads_uniformly():
    fuser = Fuser([IT_BIN, IT_SRC], FusionConfig(), RANDOM)
    answer = fuser.fuse(probs(it_bin=0.9, it_src=(1.0, 0.0, 0.0, 0.0)))
    assert answer["possible_sources"]["none"] == pytest.approx(0.1)
    for name in ("gan", "diffusion", "other"):
        assert answer["possible_sources"][name] == pytest.approx(0.3)


@pytest.mark.parametrize("p, verdict", [(0.39, "not_ai_generated"), (0.4, "uncertain"), (0.59, "uncertain"),
                                        (0.6, "ai_generated")])
def test_verdict_with_uncertain_band(p, verdict):
    fuser = Fuser([FLUX], FusionConfig(threshold=0.5, margin=0.1), RANDOM)
    assert fuser.fuse(probs(flux=p))["verdict"] == verdict


def test_nsfw_cumulative_scores_as_in_the_freepik_card():
    fuser = Fuser([FLUX, NSFW], FusionConfig(nsfw_level="medium", nsfw_threshold=0.3), RANDOM)
    nsfw = fuser.fuse(probs(flux=0.5, nsfw=(0.5, 0.2, 0.2, 0.1)))["nsfw"]
    assert nsfw["level"] == "neutral"
    assert nsfw["at_least"] == pytest.approx({"low": 0.5, "medium": 0.3, "high": 0.1})
    assert nsfw["is_nsfw"] is True  # 0.3 >= 0.3
    strict = Fuser([FLUX, NSFW], FusionConfig(nsfw_level="high", nsfw_threshold=0.3), RANDOM)
    assert strict.fuse(probs(flux=0.5, nsfw=(0.5, 0.2, 0.2, 0.1)))["nsfw"]["is_nsfw"] is False


def test_answer_from_logits_names_weights_and_warns_for_random():
    fuser = Fuser([FLUX, IT_BIN], FusionConfig(), {"opensdi_flux": "random", "imagetrust_binary": "real"})
    logits = {("opensdi_flux", "flux"): np.array([0.0, math.log(3)]),  # softmax -> 0.75
              ("imagetrust_binary", "ai"): np.array([0.0])}  # sigmoid -> 0.5
    doc = fuser.answer(4, {"ok": True, "width": 10, "height": 20, "format": "PNG"}, logits)
    assert doc["index"] == 4 and doc["status"] == "SUCCESS" and doc["error"] is None
    assert doc["detectors"]["opensdi_flux"]["flux"]["Flux.1_Generated"] == pytest.approx(0.75)
    assert doc["detectors"]["imagetrust_binary"]["ai"] == pytest.approx({"Real": 0.5, "AI-Generated": 0.5})
    assert doc["is_ai_generated"] == pytest.approx(0.625)
    assert doc["image"] == {"width": 10, "height": 20, "format": "PNG"}
    assert doc["weights"]["opensdi_flux"] == "random"
    assert "opensdi_flux" in doc["warnings"][0] and "RANDOM WEIGHTS" in doc["warnings"][0]


def test_failed_image_answer():
    fuser = Fuser([FLUX], FusionConfig(), {"opensdi_flux": "real"})
    doc = fuser.answer(1, {"ok": False, "reason": "corrupt", "message": "truncated"}, None)
    assert doc["status"] == "FAILURE" and doc["error"] == {"reason": "corrupt", "message": "truncated"}
    assert doc["is_ai_generated"] is None and doc["possible_sources"] is None
    assert "warnings" not in doc


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="unknown fusion rule"):
        FusionConfig(rule="vote")
    with pytest.raises(ValueError):
        FusionConfig(threshold=1.5)
    config = FusionConfig(rule="max", weights={"sumsub_sd": 0.5}, margin=0.05)
    assert FusionConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="binary head"):
        Fuser([NSFW], FusionConfig(), {})
    with pytest.raises(ValueError, match="unknown fusion configuration fields: rules"):
        FusionConfig.from_json('{"rules": "max"}')


def test_weights_naming_unknown_or_unserved_detectors_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown detectors: opensdi"):
        FusionConfig(weights={"opensdi": 2.0})
    with pytest.raises(ValueError, match="not served: hive_effb4"):
        Fuser([FLUX, SD], FusionConfig(weights={"hive_effb4": 1.0}), RANDOM)
    with pytest.raises(ValueError, match="finite"):
        FusionConfig(weights={"sumsub_sd": float("nan")})


@pytest.mark.parametrize("rule", ["weighted_mean", "max", "logit_mean"])
def test_all_zero_weights_are_refused_in_every_rule(rule):
    config = FusionConfig(rule=rule, weights={"opensdi_flux": 0.0, "sumsub_sd": 0.0})
    with pytest.raises(ValueError, match="all 0"):
        Fuser([FLUX, SD], config, RANDOM)
    # a source-only detector's weight doesn't decide: zero binary weights are refused even with it
    with pytest.raises(ValueError, match="all 0"):
        Fuser([IT_BIN, IT_SRC], FusionConfig(rule=rule, weights={"imagetrust_binary": 0.0}), RANDOM)


def test_source_names_order_follows_specs():
    assert source_names([IT_BIN]) == ["none", "unknown"]
    assert source_names([FLUX, SD, IT_SRC, specs.get("hive_effb4")]) == [
        "none", "flux", "stable_diffusion", "gan", "diffusion", "other", "dalle", "midjourney"]


# --- the whole input space (Hypothesis) --------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from genguard.verdicts import source_for, verdict_for  # noqa: E402

ALL = list(specs.DETECTORS.values())
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def random_probs(draw, detectors):
    """Labelled probabilities for each head, as a softmax/sigmoid would give them (rows sum to 1)."""
    out = {}
    for spec in detectors:
        out[spec.name] = {}
        for head in spec.heads:
            raw = [draw(st.floats(min_value=0.0, max_value=1.0)) for _ in head.labels]
            if head.activation == "sigmoid":
                p = draw(unit)
                raw = [1 - p, p] if len(head.labels) == 2 else [p]
            total = sum(raw)
            values = [r / total for r in raw] if total > 0 else [1.0 / len(raw)] * len(raw)
            out[spec.name][head.name] = dict(zip(head.labels, values))
    return out


@st.composite
def configurations(draw):
    deciding = [s for s in ALL if s.head("binary")]
    subset = draw(st.lists(st.sampled_from(ALL), min_size=1, unique_by=lambda s: s.name))
    if not any(s.head("binary") for s in subset):
        subset.append(draw(st.sampled_from(deciding)))
    weights = {s.name: draw(st.sampled_from([0.0, 0.25, 1.0, 3.0])) for s in subset if draw(st.booleans())}
    if not any(weights.get(s.name, 1.0) > 0 for s in subset if s.head("binary")):
        weights[next(s.name for s in subset if s.head("binary"))] = 1.0
    config = FusionConfig(rule=draw(st.sampled_from(["weighted_mean", "max", "logit_mean"])), weights=weights,
                          threshold=draw(unit), margin=draw(st.floats(min_value=0.0, max_value=0.5)),
                          provenance=draw(st.sampled_from(["off", "evidence", "decide"])),
                          provenance_strength=draw(unit), trust_capture=draw(st.booleans()))
    return subset, config, random_probs(draw, subset), draw(provenance_blocks())


GENERATOR_NAMES = [None, "flux", "dalle", "firefly", "novelai", "gan", "midjourney"]


@st.composite
def provenance_blocks(draw):
    """None (no metadata read) or what genguard.provenance reports: any mix of signals."""
    if draw(st.booleans()):
        return None
    signals = [{"source": draw(st.sampled_from(["c2pa", "xmp", "exif", "text"])),
                "kind": draw(st.sampled_from(["ai_generated", "ai_composite", "capture", "camera", "software"])),
                "generator": draw(st.sampled_from(GENERATOR_NAMES)),
                "detail": {"state": draw(st.sampled_from(["trusted", "untrusted", "invalid"]))}}
               for _ in range(draw(st.integers(0, 3)))]
    return {"looked_for": ["c2pa", "xmp", "exif", "text"], "signals": signals, "notes": [], "c2pa": None}


@settings(max_examples=400, deadline=None)
@given(configurations())
def test_every_configuration_gives_a_coherent_answer(case):
    subset, config, p, provenance = case
    answer = Fuser(subset, config, {}).fuse(p, provenance)
    pixels = Fuser(subset, config, {}).fuse(p)
    sources, given_ai = answer["possible_sources"], answer["sources_given_ai"]
    assert sum(sources.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(v >= -1e-12 for v in sources.values())
    assert list(sources) == source_names(subset) and list(given_ai) == source_names(subset)[1:]
    assert sum(given_ai.values()) == pytest.approx(1.0, abs=1e-9)
    assert sources["none"] == pytest.approx(1 - answer["is_ai_generated"])
    assert 0.0 <= answer["is_ai_generated"] <= 1.0
    # provenance: declarations of AI generation only raise is_ai; a decision is 1 (or 0 for a trusted
    # capture claim with trust_capture) with its verdict; off, or no declaration, leaves the pixels' answer
    signals = (provenance or {}).get("signals", [])
    declared = [s for s in signals if s["kind"] in ("ai_generated", "ai_composite")]
    trusted = [s for s in declared if s["source"] == "c2pa" and s["detail"]["state"] == "trusted"]
    if provenance is None or config.provenance == "off":
        assert answer["decided_by"] is None and answer["is_ai_generated"] == pixels["is_ai_generated"]
    elif trusted:
        assert answer["decided_by"] == "c2pa" and answer["is_ai_generated"] == 1.0
    elif declared and config.provenance == "decide":
        assert answer["decided_by"] == "metadata" and answer["is_ai_generated"] == 1.0
    elif declared:
        assert answer["decided_by"] is None
        assert answer["is_ai_generated"] >= pixels["is_ai_generated"] - 1e-12
    if answer["decided_by"]:
        assert answer["verdict"] == ("not_ai_generated" if answer["is_ai_generated"] == 0.0 else "ai_generated")
        assert answer["provenance"]["pixel_is_ai_generated"] == pixels["is_ai_generated"]
    if answer["decided_by"] and answer["verdict"] == "ai_generated" and answer["provenance"]["source"] in sources:
        assert answer["source"] == answer["provenance"]["source"]  # the declared generator is the source
    # the verdict and source rules, written out independently of genguard.verdicts
    p_ai, t, m = answer["is_ai_generated"], config.threshold, config.margin
    expected = "ai_generated" if p_ai >= t + m else "not_ai_generated" if p_ai < t - m else "uncertain"
    if answer["decided_by"]:
        expected = answer["verdict"]  # a decision sets the verdict (checked above), whatever the threshold
    assert answer["verdict"] == expected
    if expected == "not_ai_generated":
        assert answer["source"] == "none"
    elif expected == "uncertain":
        assert answer["source"] is None
    else:
        generators = {k: v for k, v in sources.items() if k != "none"}
        assert answer["source"] in generators
        assert generators[answer["source"]] == pytest.approx(max(generators.values()))
    # a weight-0 detector never changes the answer
    for spec in subset:
        if config.weight(spec.name) == 0 and spec.head("binary"):
            bumped = {**p, spec.name: {h: {label: 1.0 / len(v) for label in v} for h, v in p[spec.name].items()}}
            assert Fuser(subset, config, {}).fuse(bumped, provenance)["is_ai_generated"] == pytest.approx(p_ai, abs=1e-12)


def test_verdict_and_source_rules_hand_computed():
    assert verdict_for(0.5, 0.5) == "ai_generated" and verdict_for(0.49, 0.5) == "not_ai_generated"
    assert verdict_for(0.55, 0.5, 0.1) == "uncertain"
    assert source_for("ai_generated", {"flux": 0.2, "gan": 0.8}) == "gan"
    assert source_for("ai_generated", {}) == "unknown"
    assert source_for("not_ai_generated", {"flux": 1.0}) == "none"
    assert source_for("uncertain", {"flux": 1.0}) is None and source_for(None, None) is None
