"""genguard evaluate / calibrate end to end through the real tritonserver (tiny random-weight build).

The labelled set is built so that one detector is informative by construction: labels come from that
random-weight detector's own served score plus noise. `calibrate` must give it the largest weight and
beat the default rule's AUC; serving the written fusion must reproduce the in-process stacked scores.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import start_server
from genguard.calibration import calibrate as cal, metrics
from genguard.calibration.dataset import Sample, load_labelled
from genguard.calibration.scoring import detector_scores, read_records, score
from genguard.client import Client
from genguard.client.cli import main as cli
from genguard.fusion import FusionConfig

# The slow tier (make test-all, CI): servers of their own with fitted fusions.
pytestmark = [pytest.mark.server, pytest.mark.slow]

N = 40
INFORMATIVE = "sumsub_sd"
SERVED = 16  # images sent to the server that serves the written fusion
BATCH = "4"  # small requests keep the tiny EVA02's ONNX Runtime arena small on the shared test server


def _image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Varied content (colour, contrast, texture scale) so the random detectors' scores spread out."""
    cells = int(rng.integers(2, 17))
    coarse = rng.random((cells, cells, 3)) * rng.uniform(0.2, 1.0, 3) + rng.uniform(0, 0.5, 3)
    img = Image.fromarray((255 * np.clip(coarse, 0, 1)).astype(np.uint8)).resize((size, size),
                                                                                 Image.Resampling.BICUBIC)
    noise = rng.normal(0, rng.uniform(0, 40), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def labelled_set(triton, tmp_path_factory):
    """(work folder, labels.csv, records): N images scored once through the session server, then labelled
    from INFORMATIVE's own score plus noise."""
    work = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(17)
    paths = []
    for i in range(N):
        path = work / "images" / f"img{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        _image(rng).save(path)
        paths.append(str(path.resolve()))
    with Client(triton.grpc_url, timeout=300, batch_size=int(BATCH)) as client:
        records = score([Sample(p, 0) for p in paths], client, work / "scores.jsonl")
    assert all(r["status"] == "SUCCESS" for r in records), [r["error"] for r in records if r["error"]]
    x = cal.logit([r["scores"][INFORMATIVE] for r in records])
    assert x.std() > 0, "the informative detector must vary across the images"
    z = (x - x.mean()) / x.std() + rng.normal(0, 0.5, len(x))
    labels = (z > np.median(z)).astype(int)
    with (work / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "generator"])
        for path, label in zip(paths, labels):
            writer.writerow([path, "ai" if label else "real", "sd" if label else ""])
    return work, work / "labels.csv", records


@pytest.fixture(scope="module")
def calibrated(triton, labelled_set):
    work, labels, _ = labelled_set
    lines_before = len((work / "scores.jsonl").read_text().splitlines())
    code = cli(["calibrate", str(labels), "--url", triton.grpc_url, "--out", str(work / "fusion.json"),
                "--work", str(work), "--target-fpr", "0.05", "--bootstrap", "200", "--no-progress", "--batch-size", BATCH])
    assert code == 0
    # resumed: every image was already scored, nothing was sent again
    assert len((work / "scores.jsonl").read_text().splitlines()) == lines_before
    return json.loads((work / "fusion.json").read_text())


def test_calibrate_weights_the_informative_detector_and_beats_the_default(labelled_set, calibrated):
    work, labels, records = labelled_set
    training = calibrated["training"]
    weights = training["standardized_coefficients"]
    assert set(weights) == {"opensdi_flux", "sumsub_sd", "imagetrust_binary", "hive_effb4"}  # binary heads
    assert max(weights, key=weights.get) == INFORMATIVE and weights[INFORMATIVE] > 0
    assert training["auc_after_cv"] > training["auc_before_served"]
    assert training["n"] == N and training["n_ai"] == N // 2
    # what calibrate doesn't fit is the served configuration's (read from the server's postprocess config)
    assert {"weights", "nsfw_level", "nsfw_threshold"} <= set(training["kept_from_served"])
    # the served default's AUC is the one the records give
    y = np.array([r["label"] for r in load_records_with_labels(records, labels)])
    served = np.array([r["is_ai_generated"] for r in records])
    assert training["auc_before_served"] == pytest.approx(metrics.roc_auc(y, served))
    lo, hi = training["threshold_interval_95"]
    assert lo <= calibrated["threshold"] <= hi
    text = (work / "calibration.md").read_text()
    assert calibrated["id"] in text and "after: stacked (CV)" in text


def load_records_with_labels(records, labels_csv):
    by_path = {s.path: s.label for s in load_labelled(labels_csv).samples}
    return [{**r, "label": by_path[r["path"]]} for r in records]


def test_evaluate_report_with_perturbation(triton, labelled_set):
    work, labels, _ = labelled_set
    out = work  # same scores.jsonl: the unperturbed scores are reused, the perturbed copies are new
    code = cli(["evaluate", str(labels), "--url", triton.grpc_url, "--out", str(out), "--perturb", "jpeg:70",
                "--no-progress", "--timeout", "300", "--batch-size", BATCH])
    assert code == 0, [r["error"] for r in read_records(out / "scores.jsonl") if r["status"] != "SUCCESS"]
    records = read_records(out / "scores.jsonl")
    assert sum(r["perturbation"] == "jpeg:70" for r in records) == N
    analysis = json.loads((out / "metrics.json").read_text())
    fused = analysis["metrics"]["none"]["fused"]
    assert fused["n"] == N and fused["n_ai"] == N // 2
    flips = analysis["flips"]["jpeg:70"]["fused"]
    assert flips["n"] == N and 0 <= flips["flipped"] <= N
    report = (out / "report.md").read_text()
    assert "| jpeg:70 | fused |" in report and "RANDOM WEIGHTS" in report
    for png in ("roc.png", "reliability.png", "histograms.png", "roc_perturbations.png"):
        assert (out / png).stat().st_size > 1000


def test_served_stacked_fusion_reproduces_in_process_scores(tiny_build, labelled_set, calibrated, tmp_path):
    from genguard import server

    work, _, records = labelled_set
    config = FusionConfig.from_json((work / "fusion.json").read_text())
    names = list(calibrated["coefficients"])
    coef = np.array([calibrated["coefficients"][d] for d in names])
    expected = {r["path"]: cal.stacked_score(cal.logit([[r["scores"][d] for d in names]]), coef,
                                             calibrated["intercept"])[0] for r in records[:SERVED]}
    by_path = {r["path"]: r for r in records}
    running = start_server(tiny_build, tmp_path, fusion=config)
    try:
        with Client(running.grpc_url, timeout=300, batch_size=int(BATCH)) as client:
            results = client.detect(list(expected))
    finally:
        server.stop_pid(running.process.pid)
    assert len(results) == SERVED and all(r.ok for r in results), [r.error for r in results if not r.ok]
    drift = 0.0
    for r in results:
        assert r.fusion["rule"] == "stacked" and r.fusion["id"] == calibrated["id"]
        served = detector_scores(r.detectors)
        # the served rule is the in-process one, on the probabilities this answer carries ...
        own = cal.stacked_score(cal.logit([[served[d] for d in names]]), coef, calibrated["intercept"])[0]
        assert r.is_ai_generated == pytest.approx(own, abs=1e-9)
        # ... and reproduces the scores calibrate computed from the first server's answers
        assert r.is_ai_generated == pytest.approx(expected[r.name], abs=1e-6)
        drift = max(drift, max(abs(served[d] - by_path[r.name]["scores"][d]) for d in names))
        assert r.verdict == ("ai_generated" if r.is_ai_generated >= calibrated["threshold"] else "not_ai_generated")
    print(f"max |Δ detector probability| between the two servers: {drift:.3g}")
