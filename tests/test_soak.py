"""Load: a short soak on the shared server (`make soak` is the long form), and a burst beyond capacity
against a server whose detector queue is tiny: refused requests get a clear error, the server survives."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict

import pytest
import tritonclient.grpc as grpcclient

from conftest import start_server
from genguard import protocol, server
from genguard.benchmarks import soak
from genguard.export import samples
from genguard.export.repository import CpuOptions, QueuePolicy

# The slow tier (make test-all, CI): a short soak and a burst, on a server of their own.
pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_short_soak_loses_and_duplicates_nothing(triton):
    images = list(samples.photos().values())
    report = soak.run(triton.grpc_url, images, concurrency=4, seconds=20, batch=2, server_pid=triton.process.pid,
                      warmup_batch=16)
    print("\nshort soak:", json.dumps(asdict(report)))
    assert report.requests > 8
    assert report.errors == 0 and report.lost == 0 and report.duplicated == 0, report.error_samples
    assert report.failures_per_image == 0
    # after warm-up at max_batch_size, ONNX Runtime's arena is near its peak; what remains is arena
    # fragmentation under mixed batch sizes, bounded well below another copy of the models
    assert report.memory_end_mb < report.memory_start_mb + 600


def test_burst_beyond_the_queue_is_refused_clearly(tiny_build, tmp_path):
    running = start_server(tiny_build, tmp_path, detectors=["sumsub_sd", "freepik_nsfw"],
                           cpu=CpuOptions(queue=QueuePolicy(max_queue_size=1, timeout_s=30)))
    try:
        batch = protocol.pack_images([samples.photos()["astronaut.png"]] * 4)
        outcomes, lock = [], threading.Lock()

        def one():
            client = grpcclient.InferenceServerClient(running.grpc_url)
            tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            try:
                result = client.infer(protocol.ENSEMBLE, [tensor], client_timeout=120)
                outcome = "ok" if (result.as_numpy(protocol.STATUS) == 0).all() else "bad"
            except Exception as exc:
                outcome = str(exc)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        refused = [o for o in outcomes if o not in ("ok", "bad")]
        print(f"\nburst of 24 against max_queue_size=1: {outcomes.count('ok')} answered, {len(refused)} refused:",
              refused[:1])
        assert len(outcomes) == 24 and "bad" not in outcomes
        assert outcomes.count("ok") >= 1
        assert refused and all("queue" in o.lower() for o in refused)
        assert grpcclient.InferenceServerClient(running.grpc_url).is_server_ready()
    finally:
        server.stop_pid(running.process.pid)
