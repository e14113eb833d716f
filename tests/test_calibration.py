"""genguard.calibration without a server: metrics against scikit-learn on fixed arrays, the labelled-set
readers, perturbations, the report, and the calibration math on hand-made data."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from genguard.calibration import calibrate as cal, metrics, perturb
from genguard.calibration.dataset import DatasetError, is_nsfw_label, load_labelled
from genguard.calibration.evaluate import analyse, write_report

# Fixed arrays: ties inside and across classes, scores at bin edges, a perfect and an inverted scorer.
Y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.05, 0.6, 0.6, 0.2, 0.7, 0.3, 0.95, 0.6, 0.5, 0.0, 0.3, 0.45,
              1.0, 0.2])
CASES = [(Y, S), (Y, 1 - S), (Y, Y * 0.5 + 0.25), (np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))]


@pytest.mark.parametrize("y, s", CASES)
def test_roc_and_auc_match_sklearn(y, s):
    fpr, tpr, thr = metrics.roc_points(y, s)
    fpr_sk, tpr_sk, thr_sk = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    np.testing.assert_allclose(thr[1:], thr_sk[1:])
    assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("y, s", CASES)
@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.3])
def test_tpr_at_fpr_matches_sklearn_roc(y, s, target):
    fpr_sk, tpr_sk, thr_sk = skm.roc_curve(y, s, drop_intermediate=False)
    expected = tpr_sk[fpr_sk <= target].max()
    tpr, threshold = metrics.tpr_at_fpr(y, s, target)
    assert tpr == pytest.approx(expected)
    # the threshold it names achieves both numbers
    pred = s >= threshold
    assert np.mean(pred[y == 1]) == pytest.approx(tpr)
    assert np.mean(pred[y == 0]) <= target + 1e-12


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.6, 0.95, 1.01])
def test_threshold_metrics_match_sklearn(threshold):
    pred = (S >= threshold).astype(int)
    np.testing.assert_array_equal(metrics.confusion(Y, S, threshold), skm.confusion_matrix(Y, pred, labels=[0, 1]))
    assert metrics.accuracy(Y, S, threshold) == pytest.approx(skm.accuracy_score(Y, pred))
    assert metrics.f1(Y, S, threshold) == pytest.approx(skm.f1_score(Y, pred, zero_division=0.0))
    assert metrics.brier(Y, S) == pytest.approx(skm.brier_score_loss(Y, S))


@pytest.mark.parametrize("bins", [5, 10])
def test_reliability_and_ece_match_sklearn_calibration_curve(bins):
    count, mean_p, frac = metrics.reliability(Y, S, bins)
    prob_true, prob_pred = calibration_curve(Y, S, n_bins=bins, strategy="uniform")
    used = count > 0
    np.testing.assert_allclose(frac[used], prob_true)
    np.testing.assert_allclose(mean_p[used], prob_pred)
    expected = np.sum(count[used] / len(Y) * np.abs(prob_true - prob_pred))
    assert metrics.ece(Y, S, bins) == pytest.approx(expected)


def test_ece_hand_computed():
    # bin (0.1, 0.2]: p 0.2, 0.2, truth 0, 1 -> |0.5 - 0.2| = 0.3; bin (0.8, 0.9]: p 0.9 x2, truth 1, 1 -> 0.1
    assert metrics.ece([0, 1, 1, 1], [0.2, 0.2, 0.9, 0.9]) == pytest.approx(0.5 * 0.3 + 0.5 * 0.1)


def test_summary_one_class_and_recall_by_generator():
    m = metrics.summarize([0, 0, 0], [0.1, 0.7, 0.2], 0.5)
    assert m["auc"] is None and m["tpr_at_1pct_fpr"] is None and m["tpr"] is None
    assert m["fpr"] == pytest.approx(1 / 3) and m["confusion"] == [[2, 1], [0, 0]]
    groups = ["", "flux", "flux", "sd", "flux"]
    out = metrics.recall_by_group([0, 1, 1, 1, 1], [0.9, 0.6, 0.4, 0.7, 0.8], groups, 0.5)
    assert out == {"flux": {"n": 3, "recall": pytest.approx(2 / 3)}, "sd": {"n": 1, "recall": 1.0}}


# ---------------------------------------------------------------------------------------------------
# labelled sets

def _png(path, colour=(10, 20, 30), size=(16, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_folder_layout(tmp_path):
    _png(tmp_path / "real" / "a.png")
    _png(tmp_path / "real" / "sub" / "b.png")
    _png(tmp_path / "real" / ".hidden.png")
    _png(tmp_path / "ai" / "c.png")
    _png(tmp_path / "ai" / "flux" / "d.png")
    labelled = load_labelled(tmp_path)
    got = {(s.path.split("/")[-1], s.label, s.generator) for s in labelled.samples}
    assert got == {("a.png", 0, None), ("b.png", 0, None), ("c.png", 1, None), ("d.png", 1, "flux")}


def test_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("label,path,generator,nsfw\nai,x.png,sd,high\nreal,/abs/y.png,,neutral\n"
                                    "unsure,z.png,,\n")
    labelled = load_labelled(tmp_path / "h.csv")
    assert [(s.label, s.generator, s.nsfw) for s in labelled.samples] == [(1, "sd", "high"), (0, None, "neutral")]
    assert labelled.samples[0].path == str((tmp_path / "x.png").resolve()) and labelled.samples[1].path == "/abs/y.png"
    assert labelled.skipped == {"unsure or unlabelled": 1}
    (tmp_path / "n.csv").write_text("a.jpg,1\nb.jpg,0,\n")
    assert [s.label for s in load_labelled(tmp_path / "n.csv").samples] == [1, 0]
    (tmp_path / "bad.csv").write_text("a.jpg,maybe\n")
    with pytest.raises(DatasetError, match=r"bad.csv:1: unknown label 'maybe'"):
        load_labelled(tmp_path / "bad.csv")


def test_jsonl_reviewer_style(tmp_path):
    rows = [{"name": "a.png", "label": "ai_generated", "is_ai_generated": 0.9, "verdict": "ai_generated"},
            {"path": "b.png", "review": "real", "nsfw": False},
            {"file": "c.png", "label": "unsure"}, {"image": "d.png", "label": True, "generator": "flux"}]
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    labelled = load_labelled(tmp_path / "labels.jsonl")
    assert [(s.path.split("/")[-1], s.label, s.generator, s.nsfw) for s in labelled.samples] == [
        ("a.png", 1, None, None), ("b.png", 0, None, "sfw"), ("d.png", 1, "flux", None)]
    (tmp_path / "dup.jsonl").write_text('{"path": "a.png", "label": 1}\n{"path": "./a.png", "label": 0}\n')
    with pytest.raises(DatasetError, match="listed twice"):
        load_labelled(tmp_path / "dup.jsonl")


def test_nsfw_label_levels():
    assert [is_nsfw_label(x, "medium") for x in ("neutral", "low", "medium", "high", "nsfw", "sfw")] == [
        False, False, True, True, True, False]


# ---------------------------------------------------------------------------------------------------
# perturbations

def test_perturbation_parsing():
    assert perturb.parse("jpeg:90, resize:0.50,crop:0.8,jpeg:90") == ["jpeg:90", "resize:0.5", "crop:0.8"]
    for bad in ("jpeg:0", "jpeg:95.5", "blur:2", "crop:1.5", "resize:x", "resize"):
        with pytest.raises(ValueError):
            perturb.parse(bad)


def test_perturbations_change_what_they_say():
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = buffer.getvalue()
    jpeg = Image.open(io.BytesIO(perturb.apply(data, "jpeg:70")))
    assert jpeg.format == "JPEG" and jpeg.size == (80, 60)
    assert Image.open(io.BytesIO(perturb.apply(data, "resize:0.5"))).size == (40, 30)
    cropped = Image.open(io.BytesIO(perturb.apply(data, "crop:0.5")))
    assert cropped.size == (40, 30) and cropped.format == "PNG"
    original = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(np.asarray(cropped), original[15:45, 20:60])  # centred, lossless
    assert perturb.apply(data, "none") == data


# ---------------------------------------------------------------------------------------------------
# calibration math on hand-made data

def test_threshold_for_fpr_hand_made():
    real = [0.1, 0.9, 0.3, 0.5, 0.7, 0.2, 0.4, 0.8, 0.6, 0.05]  # 10 real images
    # 10 %: one may be called AI -> threshold just above the second highest (0.8): only 0.9 passes
    t = cal.threshold_for_fpr(real, 0.10)
    assert 0.8 < t <= np.nextafter(0.8, 1) and np.mean(np.array(real) >= t) == pytest.approx(0.1)
    # below 10 %: none may -> just above the highest
    assert 0.9 < cal.threshold_for_fpr(real, 0.05) <= np.nextafter(0.9, 1)
    # 35 %: three may -> just above the 4th highest (0.6)
    assert np.mean(np.array(real) >= cal.threshold_for_fpr(real, 0.35)) == pytest.approx(0.3)
    # ties at the boundary are all excluded: FPR stays <= target
    assert np.mean(np.array([0.5, 0.5, 0.5, 0.1]) >= cal.threshold_for_fpr([0.5, 0.5, 0.5, 0.1], 0.25)) == 0.0


def test_bootstrap_interval_brackets_the_threshold():
    rng = np.random.default_rng(1)
    real = rng.beta(2, 5, 400)
    t = cal.threshold_for_fpr(real, 0.05)
    lo, hi = cal.bootstrap_threshold(real, 0.05, rounds=300, seed=0)
    assert lo < t < hi
    assert hi - lo < 0.2
    assert cal.bootstrap_threshold(real, 0.05, rounds=300, seed=0) == (lo, hi)  # seeded


def test_logit_clips_like_the_server():
    assert cal.logit([0.5])[0] == 0.0
    assert cal.logit([0.0])[0] == pytest.approx(math.log(1e-7 / (1 - 1e-7)))
    assert cal.logit([1.0])[0] == pytest.approx(-math.log(1e-7 / (1 - 1e-7)))


def test_platt_recovers_a_known_sigmoid():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, 20000)
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(0.5 * x - 1.0)))).astype(int)
    a, b = cal.platt(x, y)
    assert a == pytest.approx(0.5, abs=0.04) and b == pytest.approx(-1.0, abs=0.06)


def test_stacked_fit_is_sklearns_on_the_raw_scale_and_weights_the_informative_column():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.normal(0, 0.05, 300), rng.normal(0, 3, 300), rng.normal(0, 1, 300)])
    y = (X[:, 0] / 0.05 + rng.normal(0, 0.5, 300) > 0).astype(int)  # column 0 decides, on a tiny scale
    coef, intercept, standardized = cal.fit_logistic(X, y, C=1.0)
    # same model as scikit-learn on the standardised columns
    mean, sd = X.mean(0), X.std(0)
    model = LogisticRegression(C=1.0, max_iter=1000).fit((X - mean) / sd, y)
    np.testing.assert_allclose(cal.stacked_score(X, coef, intercept), model.predict_proba((X - mean) / sd)[:, 1],
                               atol=1e-12)
    assert np.argmax(standardized) == 0 and standardized[0] > 5 * np.abs(standardized[1:]).max()
    oof = cal.out_of_fold(X, y, folds=5, seed=0)
    assert metrics.roc_auc(y, oof) > 0.9 > metrics.roc_auc(y, X[:, 1:].mean(1)) + 0.3


def _records(y, scores: dict[str, np.ndarray], fused, perturbation="none", verdicts=None):
    out = []
    for i, label in enumerate(y):
        out.append({"path": f"/img/{i}.png", "perturbation": perturbation, "label": int(label),
                    "generator": "flux" if label else None, "nsfw_label": None, "status": "SUCCESS", "error": None,
                    "is_ai_generated": float(fused[i]),
                    "verdict": (verdicts[i] if verdicts is not None else
                                ("ai_generated" if fused[i] >= 0.5 else "not_ai_generated")),
                    "fusion": {"rule": "weighted_mean", "threshold": 0.5},
                    "scores": {k: float(v[i]) for k, v in scores.items()}, "detectors": {}, "nsfw": None,
                    "weights": {"opensdi_flux": "random"}})
    return out


def test_calibrate_on_hand_made_records():
    rng = np.random.default_rng(4)
    n = 200
    y = rng.integers(0, 2, n)
    sd = 1 / (1 + np.exp(-(3 * (2 * y - 1) + rng.normal(0, 2, n))))  # informative
    flux = rng.random(n)                                                # noise
    it = rng.random(n)                                                  # noise (source-less binary)
    fused = (sd + flux + it) / 3
    records = _records(y, {"opensdi_flux": flux, "sumsub_sd": sd, "imagetrust_binary": it,
                           "imagetrust_source": rng.random(n)}, fused)
    result = cal.calibrate(records, target_fpr=0.05, folds=5, bootstrap=200, seed=0)
    config, report = result["config"], result["report"]
    assert config["rule"] == "stacked" and set(config["coefficients"]) == {"opensdi_flux", "sumsub_sd",
                                                                           "imagetrust_binary"}
    weights = config["training"]["standardized_coefficients"]
    assert max(weights, key=weights.get) == "sumsub_sd"
    assert report["after_cv"]["auc"] > report["before"]["auc"]
    assert report["after_cv"]["fpr"] <= 0.05
    lo, hi = config["training"]["threshold_interval_95"]
    assert lo <= config["threshold"] <= hi
    assert config["training"]["n"] == n and config["id"].startswith("stacked-")
    # the written coefficients reproduce the fitted model's scores
    X = cal.logit(np.column_stack([flux, sd, it]))
    names = list(config["coefficients"])
    assert names == ["opensdi_flux", "sumsub_sd", "imagetrust_binary"]
    coef, intercept, _ = cal.fit_logistic(X, y)
    np.testing.assert_allclose([config["coefficients"][d] for d in names], coef)
    assert config["intercept"] == pytest.approx(intercept)


def test_analysis_flips_and_report(tmp_path):
    y = np.array([0, 0, 1, 1])
    base = _records(y, {"sumsub_sd": np.array([0.2, 0.6, 0.7, 0.9])}, np.array([0.1, 0.4, 0.6, 0.8]))
    # after JPEG: image 1 crosses the fused threshold, image 2 crosses the detector's
    jpeg = _records(y, {"sumsub_sd": np.array([0.2, 0.6, 0.4, 0.9])}, np.array([0.1, 0.55, 0.6, 0.8]), "jpeg:70")
    analysis = analyse(base + jpeg)
    assert analysis["flips"]["jpeg:70"]["fused"] == {"n": 4, "flipped": 1, "share": 0.25}
    assert analysis["flips"]["jpeg:70"]["sumsub_sd"]["flipped"] == 1
    assert analysis["metrics"]["none"]["fused"]["auc"] == 1.0
    assert analysis["metrics"]["jpeg:70"]["fused"]["confusion"] == [[1, 1], [0, 2]]
    assert analysis["by_generator"]["none"]["fused"] == {"flux": {"n": 2, "recall": 1.0}}
    out = write_report(base + jpeg, tmp_path, source="set", server="here")
    text = (tmp_path / "report.md").read_text()
    assert "RANDOM WEIGHTS" in text and "| jpeg:70 | fused |" in text and "25.0 % (1/4)" in text
    for png in ("roc.png", "reliability.png", "histograms.png", "roc_perturbations.png"):
        assert f"]({png})" in text and Image.open(tmp_path / png).size[0] <= 600
    assert json.loads((tmp_path / "metrics.json").read_text())["flips"]["jpeg:70"]["fused"]["flipped"] == 1
    assert out["plots"]["roc"] == "roc.png"
    mixed = jpeg[:1] + [{**jpeg[1], "fusion": {"rule": "max", "threshold": 0.5}}]
    with pytest.raises(ValueError, match="different fusion"):
        analyse(mixed)


# ---------------------------------------------------------------------------------------------------
# the served stacked rule (genguard/fusion.py), hand-computed

def _fuser(config):
    from genguard import specs
    from genguard.fusion import Fuser

    return Fuser([specs.get("opensdi_flux"), specs.get("sumsub_sd")], config,
                 {"opensdi_flux": "random", "sumsub_sd": "random"})


def _probs(flux: float, sd: float) -> dict:
    return {"opensdi_flux": {"flux": {"Real_Image": 1 - flux, "Flux.1_Generated": flux}},
            "sumsub_sd": {"sd": {"real": 1 - sd, "stable_diffusion": sd}}}


def test_stacked_rule_hand_computed():
    from genguard.fusion import FusionConfig

    config = FusionConfig(rule="stacked", coefficients={"opensdi_flux": 2.0, "sumsub_sd": -0.5}, intercept=0.25,
                          threshold=0.9, id="stacked-test")
    answer = _fuser(config).fuse(_probs(0.8, 0.1))
    # z = 0.25 + 2 ln(0.8/0.2) - 0.5 ln(0.1/0.9) = 0.25 + 4 ln 2 + 0.5 ln 9 = 0.25 + 2.772589 + 1.098612
    z = 0.25 + 4 * math.log(2) + 0.5 * math.log(9)
    assert z == pytest.approx(4.121201, abs=1e-6)
    assert answer["is_ai_generated"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-12)
    assert answer["verdict"] == "ai_generated"  # 0.984 >= 0.9
    assert _fuser(config).fuse(_probs(0.5, 0.5))["is_ai_generated"] == pytest.approx(1 / (1 + math.exp(-0.25)))
    # the same function calibrate uses in process
    assert cal.stacked_score(cal.logit([[0.8, 0.1]]), [2.0, -0.5], 0.25)[0] == pytest.approx(
        answer["is_ai_generated"], abs=1e-15)
    doc = _fuser(config).answer(0, {"ok": True, "width": 1, "height": 1, "format": "PNG"},
                                {("opensdi_flux", "flux"): np.array([0.0, 0.0]), ("sumsub_sd", "sd"): np.array([0.0, 0.0])})
    assert doc["fusion"]["id"] == "stacked-test" and doc["fusion"]["rule"] == "stacked"


def test_stacked_config_refusals_and_default_id():
    from genguard.fusion import FusionConfig

    with pytest.raises(ValueError, match="needs coefficients"):
        FusionConfig(rule="stacked")
    with pytest.raises(ValueError, match="finite"):
        FusionConfig(rule="stacked", coefficients={"sumsub_sd": float("nan")})
    with pytest.raises(ValueError, match="calibrate again"):  # a detector served but not fitted
        _fuser(FusionConfig(rule="stacked", coefficients={"sumsub_sd": 1.0}))
    config = FusionConfig(rule="stacked", coefficients={"sumsub_sd": 1.0, "opensdi_flux": 1.0}, id="x",
                          training={"n": 3})
    assert FusionConfig.from_json(config.to_json()) == config
    default = FusionConfig()
    assert default.fusion_id.startswith("sha256:") and default.fusion_id != FusionConfig(threshold=0.6).fusion_id


def test_nsfw_metrics_from_labels():
    from genguard.calibration.evaluate import nsfw_metrics

    y = np.array([0, 1, 0, 1])
    records = _records(y, {"sumsub_sd": np.array([0.2, 0.6, 0.7, 0.9])}, np.array([0.1, 0.4, 0.6, 0.8]))
    labels = ["neutral", "high", "low", "nsfw"]  # medium and above (or "nsfw") count as NSFW
    at_least = [0.1, 0.8, 0.6, 0.3]
    levels = ["neutral", "high", "neutral", "low"]
    for r, label, a, level in zip(records, labels, at_least, levels):
        r["nsfw_label"] = label
        r["nsfw"] = {"level": level, "at_least": {"low": a, "medium": a, "high": a}, "is_nsfw": a >= 0.5,
                     "rule": "at_least[medium] >= 0.5"}
    m = nsfw_metrics(records)
    assert m["level"] == "medium" and m["threshold"] == 0.5
    assert m["n"] == 4 and m["n_ai"] == 2                 # two NSFW images
    assert m["confusion"] == [[1, 1], [1, 1]]             # 0.6 on a "low" image, 0.3 on an NSFW one
    assert m["auc"] == pytest.approx(skm.roc_auc_score([0, 1, 0, 1], at_least))
    assert m["level_accuracy"] == pytest.approx(2 / 3) and m["level_n"] == 3  # "nsfw" has no level
    records[0]["nsfw"]["rule"] = "at_least[high] >= 0.7"  # the served rule decides level and threshold
    assert nsfw_metrics(records)["confusion"] == [[2, 0], [1, 1]]


def test_calibrate_keeps_the_served_fields_it_does_not_fit():
    from genguard.fusion import FusionConfig

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    sd = 1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.normal(0, 1, 60))))
    records = _records(y, {"opensdi_flux": rng.random(60), "sumsub_sd": sd}, (sd + 0.5) / 2)
    served = json.loads(FusionConfig(rule="max", weights={"sumsub_sd": 2.0}, nsfw_level="high", threshold=0.7,
                                     id="old").to_json())
    result = cal.calibrate(records, bootstrap=50, served_config=served)
    config = result["config"]
    text = cal.render_markdown(result, source="set.csv", server="here", out="fusion.json")
    assert "`nsfw_level`" in text and config["id"] in text and "| sumsub_sd |" in text
    assert config["weights"] == {"sumsub_sd": 2.0} and config["nsfw_level"] == "high"
    assert config["rule"] == "stacked" and config["id"] != "old" and config["threshold"] != 0.7
    assert "nsfw_level" in config["training"]["kept_from_served"]
    assert FusionConfig.from_json(json.dumps(config)).weight("sumsub_sd") == 2.0  # loads as written
