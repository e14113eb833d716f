"""Fuzzing: Hypothesis-mutated real images through the preprocessing in-process, a bounded run of mutated
inputs against the server, and the regression corpus of inputs that once broke GenGuard (tests/corpus/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TEST_MAX_BYTES
from genguard import protocol, specs
from genguard.export import samples
from genguard.preprocess import DecodeLimits, ImageRejected, preprocess_bytes

INPUTS = specs.distinct_inputs(specs.DETECTORS.values())
CORPUS = Path(__file__).parent / "corpus"
SEEDS = {name: data for name, data in samples.all_images().items()
         if len(data) < 300_000 and name != "large4000x3000.jpg"}  # small files keep each example fast
LIMITS = DecodeLimits(max_pixels=4_000_000)


def mutate(data: bytes, ops: list[tuple[str, float, int]]) -> bytes:
    """Apply (kind, position 0..1, value) mutations: flip, set, insert, delete, truncate."""
    out = bytearray(data)
    for kind, where, value in ops:
        if not out:
            break
        i = min(int(where * len(out)), len(out) - 1)
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "set":
            out[i] = value
        elif kind == "insert":
            out[i:i] = bytes([value]) * (1 + value % 7)
        elif kind == "delete":
            del out[i : i + 1 + value % 64]
        else:
            del out[i:]
    return bytes(out)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                               st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6)


def check_invariants(data: bytes, limits: DecodeLimits = LIMITS) -> str:
    """Either tensors of the right shape with finite values, or ImageRejected with a reason: nothing else."""
    try:
        _, tensors = preprocess_bytes(data, INPUTS, limits)
    except ImageRejected as exc:
        assert exc.reason and str(exc)
        assert exc.reason != "internal", f"an unexpected exception escaped the expected paths: {exc}"
        return exc.reason
    for name, spec in INPUTS.items():
        assert tensors[name].shape == spec.shape and tensors[name].dtype == np.float32
        assert np.isfinite(tensors[name]).all()
    return "SUCCESS"


def test_an_unexpected_exception_is_told_apart_and_logged(monkeypatch, caplog):
    from genguard import preprocess as module

    def broken(decoded, inputs):
        raise KeyError("a bug")

    monkeypatch.setattr(module, "preprocess", broken)
    with caplog.at_level("ERROR", logger="genguard.preprocess"):
        with pytest.raises(ImageRejected) as error:
            preprocess_bytes(SEEDS[sorted(SEEDS)[0]], INPUTS, LIMITS)
    assert error.value.reason == "internal" and "KeyError" in str(error.value)
    assert caplog.records and caplog.records[0].exc_info and "a bug" in caplog.text
    # Pillow's own conversion errors stay "unconvertible"
    monkeypatch.setattr(module, "preprocess", lambda d, i: (_ for _ in ()).throw(ValueError("mode XYZ")))
    with pytest.raises(ImageRejected, match="converted to RGB") as error:
        preprocess_bytes(SEEDS[sorted(SEEDS)[0]], INPUTS, LIMITS)
    assert error.value.reason == "unconvertible"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), ops=MUTATIONS)
def test_mutated_images_never_raise_anything_but_image_rejected(seed, ops):
    check_invariants(mutate(SEEDS[seed], ops))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), ops=MUTATIONS, padding=st.integers(1, 5000))
def test_zero_padding_never_changes_the_outcome(seed, ops, padding):
    """A batched request pads every image with zeros: the same image must get the same answer either way."""
    image = mutate(SEEDS[seed], ops)
    assert check_invariants(image + b"\0" * padding) == (check_invariants(image) if image.rstrip(b"\0") else "empty")


@settings(max_examples=40, deadline=None)
@given(header=st.binary(min_size=0, max_size=64), tail=st.binary(max_size=256))
def test_random_headers_are_refused_cleanly(header, tail):
    for magic in (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x10\x00\x00\x00WEBP", b"BM", b"GIF89a", b"II*\x00"):
        check_invariants(magic + header + tail)


def corpus() -> dict[str, dict]:
    return json.loads((CORPUS / "corpus.json").read_text())


@pytest.mark.parametrize("name", sorted(corpus()))
def test_regression_corpus_in_process(name):
    assert check_invariants((CORPUS / name).read_bytes()) == corpus()[name]["expected"]


@pytest.mark.server
@pytest.mark.slow  # hundreds of mutated inputs through the server
def test_mutated_inputs_against_the_server(triton):
    """A bounded run: 48 mutated images in batches of 6 (each mutated with a fixed seed)."""
    rng = np.random.default_rng(1234)
    seeds = sorted(SEEDS)
    client = httpclient.InferenceServerClient(triton.http_url)
    outcomes = []
    for _ in range(8):
        batch = []
        for _ in range(6):
            ops = [(str(rng.choice(["flip", "set", "insert", "delete", "truncate"])), float(rng.random()),
                    int(rng.integers(0, 256))) for _ in range(int(rng.integers(1, 5)))]
            batch.append(mutate(SEEDS[seeds[int(rng.integers(len(seeds)))]], ops))
        data = protocol.pack_images(batch)
        tensor = httpclient.InferInput(protocol.INPUT, list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data)
        docs = [json.loads(x) for x in client.infer(protocol.ENSEMBLE, [tensor]).as_numpy(protocol.RESULT).reshape(-1)]
        assert [d["index"] for d in docs] == list(range(6))
        for doc, image in zip(docs, batch):
            expected = check_invariants(image, DecodeLimits(max_bytes=TEST_MAX_BYTES))  # the server's limits
            got = doc["status"] if doc["status"] == "SUCCESS" else doc["error"]["reason"]
            assert got == expected
            outcomes.append(got)
    assert client.is_server_ready()
    print(f"\nmutated inputs against the server: {len(outcomes)}, outcomes "
          f"{ {k: outcomes.count(k) for k in sorted(set(outcomes))} }")


@pytest.mark.server
def test_regression_corpus_against_the_server(triton):
    names = sorted(corpus())
    data = protocol.pack_images([(CORPUS / n).read_bytes() for n in names])
    tensor = httpclient.InferInput(protocol.INPUT, list(data.shape), "UINT8")
    tensor.set_data_from_numpy(data)
    result = httpclient.InferenceServerClient(triton.http_url).infer(protocol.ENSEMBLE, [tensor])
    docs = [json.loads(x) for x in result.as_numpy(protocol.RESULT).reshape(-1)]
    for name, doc in zip(names, docs):
        got = doc["status"] if doc["status"] == "SUCCESS" else doc["error"]["reason"]
        assert got == corpus()[name]["expected"], name
