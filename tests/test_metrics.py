"""GenGuard's domain metrics (genguard/triton_models/metrics.py) on the real tritonserver's metrics port.

A known mix of good and refused images goes through the ensemble; the counters must move by exactly what
the answers say (read before and after our own requests: other tests share the server).
"""

from __future__ import annotations

import ast
import json
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import TEST_MAX_BYTES
from genguard import protocol, specs
from genguard.export import samples
from genguard.triton_models import metrics

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> tuple[dict[tuple[str, frozenset], float], dict[str, str]]:
    """Prometheus text format -> ({(name, labels): value}, {family: type})."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"unparseable metrics line: {line!r}"
            name, labels, value = match.groups()
            values[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return values, types


def series(values, name: str, **labels) -> float:
    """One series' value, 0 if absent."""
    return values.get((name, frozenset(labels.items())), 0.0)


def delta(before, after, name: str, **labels) -> float:
    return series(after, name, **labels) - series(before, name, **labels)


def send(triton, images: list[bytes], kind: str = "grpc") -> list[dict]:
    module = grpcclient if kind == "grpc" else httpclient
    client = module.InferenceServerClient(triton.grpc_url if kind == "grpc" else triton.http_url)
    batch = protocol.pack_images(images)
    tensor = module.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    result = client.infer(protocol.ENSEMBLE, [tensor])
    return [json.loads(row) for row in result.as_numpy(protocol.RESULT).reshape(-1)]


def oversized() -> bytes:
    return b"\xff\xd8\xff" + bytes(TEST_MAX_BYTES + 10) + b"\x01"


# ---------------------------------------------------------------------------------------------------------
# the real server


@pytest.mark.server
def test_counters_move_by_exactly_the_answers(triton):
    photos = samples.photos()
    good = [photos[n] for n in ("astronaut.png", "rocket.jpg", "coffee.png", "camera.png", "coins.png")]
    rocket = photos["rocket.jpg"]
    refused = {"truncated": [rocket[: len(rocket) // 2]], "empty": [b""], "not_an_image": [b"%PDF-1.4 nope"] * 2,
               "too_large": [oversized()]}
    # one mixed batch, a batch of refusals only, and single good images over both protocols
    requests = [
        ("grpc", [good[0], refused["truncated"][0], good[1], refused["empty"][0], refused["not_an_image"][0]]),
        ("http", [refused["not_an_image"][1], refused["too_large"][0]]),
        ("grpc", [good[2]]), ("http", [good[3]]), ("grpc", [good[4], good[0]]),
    ]
    n_good = sum(1 for _, imgs in requests for img in imgs if any(img is g for g in good))

    before, _ = scrape(triton.metrics_url)
    docs = [doc for kind, images in requests for doc in send(triton, images, kind)]
    after, types = scrape(triton.metrics_url)
    # Triton counts a request once its response is sent, which can be just after the client has it: scrape
    # again until the last one is counted (the exact figures below are still required)
    settle = time.monotonic() + 10
    while (delta(before, after, "nv_inference_request_success", model="genguard", version="1") < len(requests)
           and time.monotonic() < settle):
        time.sleep(0.2)
        after, types = scrape(triton.metrics_url)

    ok = [d for d in docs if d["status"] == "SUCCESS"]
    assert len(ok) == n_good == 6 and len(docs) == 11
    # refusals: counted by the step that refused them, by reason; nothing by postprocess
    for reason, images in refused.items():
        assert delta(before, after, metrics.FAILURES_TOTAL, model="preprocess", reason=reason) == len(images), reason
    for reason in metrics.REASONS:
        if reason not in refused:
            assert delta(before, after, metrics.FAILURES_TOTAL, model="preprocess", reason=reason) == 0, reason
    assert delta(before, after, metrics.FAILURES_TOTAL, model="postprocess", reason="internal") == 0
    # answers: by verdict, source and NSFW level, as the documents say
    verdicts, sources = Counter(d["verdict"] for d in ok), Counter(d["source"] for d in ok if d["source"] is not None)
    levels = Counter(d["nsfw"]["level"] for d in ok)
    for verdict in metrics.VERDICTS:
        assert delta(before, after, metrics.VERDICTS_TOTAL, verdict=verdict) == verdicts[verdict], verdict
    assert sum(delta(before, after, metrics.VERDICTS_TOTAL, verdict=v) for v in metrics.VERDICTS) == n_good
    for source in set(sources) | set((triton.repository / "genguard" / "sources.txt").read_text().split()):
        assert delta(before, after, metrics.SOURCES_TOTAL, source=source) == sources[source], source
    for level in (triton.repository / "genguard" / "nsfw_levels.txt").read_text().split():
        assert delta(before, after, metrics.NSFW_TOTAL, level=level) == levels[level], level
    # the is_ai_generated histogram: count, sum, and every cumulative bucket
    scores = [d["is_ai_generated"] for d in ok]
    assert types[metrics.IS_AI] == "histogram"
    assert delta(before, after, metrics.IS_AI + "_count") == n_good
    assert delta(before, after, metrics.IS_AI + "_sum") == pytest.approx(sum(scores), abs=1e-6)
    for le in metrics.IS_AI_BUCKETS:
        expected = sum(1 for s in scores if s <= le)
        assert delta(before, after, metrics.IS_AI + "_bucket", le=repr(le)) == expected, le
    assert delta(before, after, metrics.IS_AI + "_bucket", le="+Inf") == n_good
    # the tiny build serves random weights: every detector's gauge says so
    for name in specs.DETECTORS:
        assert series(after, metrics.RANDOM_WEIGHTS, detector=name) == 1.0, name
    # Triton's own request counters agree: 5 ensemble requests, 12 images into preprocess
    assert delta(before, after, "nv_inference_request_success", model="genguard", version="1") == len(requests)
    assert delta(before, after, "nv_inference_count", model="preprocess", version="1") == len(docs)


@pytest.mark.server
def test_every_family_is_published_with_its_type(triton):
    """Families exist from the first scrape (zero-valued series), with the documented types, and every
    metric the dashboard and the alerts use that a CPU server publishes is there."""
    values, types = scrape(triton.metrics_url)
    for name, (kind, _, labels) in metrics.FAMILIES.items():
        assert types.get(name) == kind.lower(), (name, types.get(name))
    for verdict in metrics.VERDICTS:
        assert (metrics.VERDICTS_TOTAL, frozenset({("verdict", verdict)})) in values
    for reason in metrics.REASONS:
        assert (metrics.FAILURES_TOTAL, frozenset({("model", "preprocess"), ("reason", reason)})) in values
    from test_monitoring import TRITON_CPU_METRICS, used_metric_names

    published = {name for name, _ in values}
    assert TRITON_CPU_METRICS <= published, TRITON_CPU_METRICS - published
    # (the REST gateway's genguard_gateway_* come from the gateway, not Triton: tests/test_gateway.py)
    ours = {n for n in used_metric_names() if n.startswith("genguard_") and not n.startswith("genguard_gateway_")}
    assert ours and ours <= published, ours - published


@pytest.mark.server
@pytest.mark.slow  # a server of its own
def test_validate_step_counts_its_refusals(tiny_build, tmp_path):
    """The GPU targets' entry step (python backend, CPU) served alone by the real tritonserver: its
    refusals land in genguard_image_failures_total{model="validate"} (the DALI step and the engines
    need a GPU; validate does not)."""
    import shutil

    from conftest import free_ports
    from genguard import server
    from genguard.export.repository import render

    rendered = render("tensorrt", tiny_build, tmp_path / "tensorrt", detectors=["imagetrust_binary"])
    repository = tmp_path / "repository"
    shutil.copytree(rendered / "validate", repository / "validate")
    ports = server.Ports(*free_ports(3))
    process = server.start(repository, tmp_path / "home", ports=ports, log_file=tmp_path / "log")
    try:
        server.wait_ready(process, ports, timeout=120, log_file=tmp_path / "log")
        url = f"http://127.0.0.1:{ports.metrics}/metrics"
        before, _ = scrape(url)
        rocket = samples.photos()["rocket.jpg"]
        images = [rocket, b"", rocket[:1000], b"GIF89a junk", samples.photos()["coins.png"], b""]
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http}")
        batch = protocol.pack_images(images)
        tensor = httpclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        infos = [json.loads(r) for r in client.infer("validate", [tensor]).as_numpy(protocol.IMAGE_INFO).reshape(-1)]
        after, _ = scrape(url)
    finally:
        server.stop_pid(process.pid)
    refused = Counter(i["reason"] for i in infos if not i["ok"])
    assert [i["ok"] for i in infos] == [True, False, False, False, True, False] and refused["empty"] == 2
    for reason in metrics.REASONS:
        assert delta(before, after, metrics.FAILURES_TOTAL, model="validate", reason=reason) == refused[reason], reason


# ---------------------------------------------------------------------------------------------------------
# what is counted (no server)


def test_tally_answers_counts_successes_and_only_postprocess_failures():
    docs = [
        {"status": "SUCCESS", "verdict": "ai_generated", "source": "flux", "is_ai_generated": 0.9,
         "nsfw": {"level": "low"}},
        {"status": "SUCCESS", "verdict": "uncertain", "source": None, "is_ai_generated": 0.5,
         "nsfw": {"level": "neutral"}},
        {"status": "SUCCESS", "verdict": "not_ai_generated", "source": "none", "is_ai_generated": 0.1},
        {"status": "FAILURE", "error": {"reason": "truncated"}},                      # refused upstream
        {"status": "FAILURE", "error": {"reason": "internal", "message": "boom"}},    # failed in postprocess
    ]
    t = metrics.tally_answers(docs, [True, True, True, False, True])
    assert t.verdicts == Counter(ai_generated=1, uncertain=1, not_ai_generated=1)
    assert t.sources == Counter(flux=1, none=1)  # an answer without a source is not counted
    assert t.nsfw == Counter(low=1, neutral=1)
    assert t.failures == Counter(internal=1)
    assert t.is_ai == [0.9, 0.5, 0.1]


def test_tally_refusals():
    infos = [{"ok": True}, {"ok": False, "reason": "empty"}, {"ok": False, "reason": "empty"},
             {"ok": False, "reason": "corrupt"}, {"ok": False}]
    assert metrics.tally_refusals(infos) == Counter(empty=2, corrupt=1, internal=1)


def test_every_refusal_reason_has_a_series():
    """Each reason the decoders can give (ImageRejected / the validate step's refusals) is pre-created."""
    found = set()
    for path in (ROOT / "genguard" / "preprocess.py", ROOT / "genguard" / "dali.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("ImageRejected", "_refuse"):
                if node.args and isinstance(node.args[0], ast.Constant):
                    found.add(node.args[0].value)
    assert len(found) >= 7
    assert found <= set(metrics.REASONS), found - set(metrics.REASONS)


def test_metric_names_follow_prometheus_conventions():
    for name, (kind, description, labels) in metrics.FAMILIES.items():
        assert re.fullmatch(r"genguard_[a-z0-9_]+", name) and description
        assert name.endswith("_total") == (kind == "COUNTER"), name
        assert kind in ("COUNTER", "GAUGE", "HISTOGRAM")
        assert all(re.fullmatch(r"[a-z_]+", label) and label != "le" for label in labels)
    assert list(metrics.IS_AI_BUCKETS) == sorted(metrics.IS_AI_BUCKETS) and 0 < metrics.IS_AI_BUCKETS[0]
    assert 0.5 in metrics.IS_AI_BUCKETS  # the default threshold is a bucket boundary
