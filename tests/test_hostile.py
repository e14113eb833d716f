"""Hostile inputs against the real server: each gets a correct answer or a per-image FAILURE naming its
reason, its batch-mates are answered correctly, the server stays ready and its memory stays bounded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import hostile
from conftest import TEST_MAX_BYTES
from genguard import onnx_runtime, protocol, specs
from genguard.benchmarks.soak import tree_memory_bytes
from genguard.export import samples
from genguard.preprocess import DecodeLimits, preprocess_bytes
from genguard.scores import head_probs

pytestmark = pytest.mark.server
CASES = hostile.cases(TEST_MAX_BYTES)
# The fast tier runs one case of each kind (refused bytes, a broken image, a bomb, an odd but valid image);
# the slow tier (make test-all, CI) runs them all.
FAST = {"truncated_jpeg", "random_bytes", "png_bomb_100k", "over_byte_limit", "rgba"}
assert FAST <= set(CASES), FAST - set(CASES)


@pytest.fixture(scope="module")
def local(tiny_build):
    """In-process reference of what the server must answer: our preprocessing + ONNX Runtime."""
    sessions = {name: onnx_runtime.session(tiny_build / "onnx" / name / "model.onnx") for name in specs.DETECTORS}
    inputs = specs.distinct_inputs(specs.DETECTORS.values())

    def probs(data: bytes) -> dict:
        _, tensors = preprocess_bytes(data, inputs, DecodeLimits(max_bytes=TEST_MAX_BYTES))
        out = {}
        for name, spec in specs.DETECTORS.items():
            logits = sessions[name].run(None, {"pixels": tensors[spec.input.name][None]})
            out[name] = {h.name: head_probs(h, x)[0] for h, x in zip(spec.heads, logits)}
        return out

    return probs


def infer(triton, images: list[bytes]) -> list[dict]:
    batch = protocol.pack_images(images)
    tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    result = grpcclient.InferenceServerClient(triton.grpc_url).infer(protocol.ENSEMBLE, [tensor])
    return [json.loads(x) for x in result.as_numpy(protocol.RESULT).reshape(-1)]


def assert_correct(doc: dict, expected: dict) -> None:
    assert doc["status"] == "SUCCESS", doc.get("error")
    for name, spec in specs.DETECTORS.items():
        for head in spec.heads:
            served = [doc["detectors"][name][head.name][label] for label in head.labels]
            assert np.allclose(served, expected[name][head.name], atol=1e-5), (name, head.name)


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_hostile_input_between_good_neighbours(triton, local, case):
    data, expected = CASES[case]
    left, right = samples.photos()["coins.png"], samples.photos()["rocket.jpg"]
    docs = infer(triton, [left, data, right])
    assert [d["index"] for d in docs] == [0, 1, 2]
    if expected == "SUCCESS":
        assert_correct(docs[1], local(data))
    else:
        assert docs[1]["status"] == "FAILURE" and docs[1]["error"]["reason"] == expected, docs[1]
        assert docs[1]["error"]["message"]
    assert_correct(docs[0], local(left))
    assert_correct(docs[2], local(right))


@pytest.mark.slow  # four rounds of every case, with memory measured
def test_all_hostile_inputs_at_once_keep_the_server_ready_and_memory_bounded(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    names = list(CASES)

    def one_round():
        for start in range(0, len(names), 8):  # batches of 8 (max_batch_size is 16)
            chunk = names[start : start + 8]
            docs = infer(triton, [CASES[n][0] for n in chunk])
            assert [d["status"] if CASES[n][1] == "SUCCESS" else d["error"]["reason"] for n, d in zip(chunk, docs)] \
                == [CASES[n][1] for n in chunk]
        assert client.is_server_ready()

    # ONNX Runtime's memory arena grows to the peak of the largest batch shape and then stays there:
    # warm up with a full round, so the baseline is the steady state, then look for growth beyond it.
    one_round()
    baseline = tree_memory_bytes(triton.process.pid)
    for _ in range(3):
        one_round()
    growth = (tree_memory_bytes(triton.process.pid) - baseline) / 2**20
    print(f"\nserver memory (PSS): baseline {baseline / 2**20:.0f} MB, growth after 3 rounds of {len(names)} hostile "
          f"inputs: {growth:+.1f} MB")
    assert growth < 150, f"server memory grew by {growth:.0f} MB"
