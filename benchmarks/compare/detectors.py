"""Table: each detector alone (the same tensors through torch eager, ORT in-process and Triton)."""

from __future__ import annotations

import math
import time

import numpy as np

from genguard import protocol
from genguard.benchmarks import perf_analyzer
from genguard.benchmarks.compare.common import chunks, timed
from genguard.benchmarks.compare.loading import Detector
from genguard.benchmarks.report import ratio


def rows(bench, det: Detector, peak: dict) -> tuple[list[dict], dict]:
    """The same tensors through torch eager, ORT in-process and Triton's detector model."""
    import torch
    from genguard.export.reference import open_rgb

    B, rounds = bench.args.batch, bench.args.detector_rounds
    pixels = det.reference.tensors([open_rgb(b) for b in bench.data])  # the card's preprocessing
    arrays = pixels.numpy()
    # Same work in every mode; small models repeat the images so each mode runs long enough to time.
    t0 = time.perf_counter()
    det.session.run(None, {"pixels": arrays[:B]})
    per_image = (time.perf_counter() - t0) / min(B, len(arrays))
    repeat = int(min(50, max(1, math.ceil(bench.args.min_seconds / max(per_image * len(arrays), 1e-6)))))
    tensors = np.concatenate([arrays] * repeat)
    torch_tensors = torch.from_numpy(tensors)
    # warm-up: first calls at a new shape allocate (oneDNN primitives, ORT arenas)
    det.reference.logits(torch_tensors[:1])
    det.reference.logits(torch_tensors[:B])
    det.session.run(None, {"pixels": arrays[:1]})
    entries = [{protocol.DETECTOR_INPUT: a} for a in arrays]
    input_path = perf_analyzer.write_input_data(bench.workdir / f"{det.name}.json", entries)
    bench.warm_served(det.name, arrays[:min(4, len(arrays))])

    modes = {
        "reference b1": lambda: timed(lambda x: det.reference.logits(x), [torch_tensors[i:i + 1] for i in range(len(tensors))]),
        f"reference b{B}": lambda: timed(lambda x: det.reference.logits(x), chunks(torch_tensors, B)),
        "ours b1": lambda: timed(lambda x: det.session.run(None, {"pixels": x}), [tensors[i:i + 1] for i in range(len(tensors))]),
        f"ours b{B}": lambda: timed(lambda x: det.session.run(None, {"pixels": x}), chunks(tensors, B)),
    }
    for c in [c for c in bench.args.detector_concurrency if c <= len(tensors)]:
        modes[f"served c{c}"] = (lambda c=c: (perf_analyzer.run_fixed(
            bench.pa, det.name, bench.served.url_grpc, "grpc", c, input_path, bench.workdir, len(tensors)), None))
    timings = bench.interleave(modes, rounds, f"{det.name} (model only, {len(tensors)} images per mode)")
    rows = []
    for mode, t in timings.items():
        achieved = det.flops * t.images_per_s / 1e9
        rows.append({"table": "detector", "detector": det.name, "mode": mode, "images": t.images,
                     "seconds": t.seconds, "images_per_s": t.images_per_s, "p50_ms": t.p50_ms,
                     "p99_ms": t.p99_ms, "gflop_per_image": det.flops / 1e9, "achieved_gflops": achieved,
                     "of_peak": ratio(achieved, peak["fp32_peak_gflops"])})
    return rows, {"repeat": repeat}

