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
    assert answer["source"] == "flux"


def test_max_and_logit_mean_rules():
    p = probs(flux=0.9, sd=0.2)
    assert Fuser([FLUX, SD], FusionConfig(rule="max"), RANDOM).fuse(p)["is_ai_generated"] == pytest.approx(0.9)
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


def test_source_names_order_follows_specs():
    assert source_names([FLUX, SD, IT_SRC, specs.get("hive_effb4")]) == [
        "none", "flux", "stable_diffusion", "gan", "diffusion", "other", "dalle", "midjourney"]
