"""Table: preprocessing alone, GenGuard's vs each reference library's."""

from __future__ import annotations

import math
import time

from genguard import specs
from genguard.benchmarks.compare.common import log, timed
from genguard.benchmarks.report import ratio


def rows(bench) -> list[dict]:
    from genguard.export import samples
    from genguard.export.reference import open_rgb
    from genguard.preprocess import preprocess_bytes

    sets = {"photos": bench.data, "12 MP JPEG": [samples.edge_cases()["large4000x3000.jpg"]]}
    inputs = specs.distinct_inputs([d.spec for d in bench.detectors])
    rows = []
    for set_name, data in sets.items():
        t0 = time.perf_counter()
        preprocess_bytes(data[0], inputs)
        per = max(time.perf_counter() - t0, 1e-4)
        repeat = int(min(200, max(1, math.ceil(bench.args.min_seconds / 2 / (per * len(data))))))
        work = data * repeat
        log(f"preprocessing, {set_name}: {len(work)} images per mode")
        modes = {}
        for det in bench.detectors:
            modes[(det.name, "reference")] = lambda det=det: timed(
                lambda b: det.reference.transform(open_rgb(b[0])), [[b] for b in work])
            modes[(det.name, "ours")] = lambda det=det: timed(
                lambda b: preprocess_bytes(b[0], {det.spec.input.name: det.spec.input}), [[b] for b in work])
        modes[("all detectors", "reference")] = lambda: timed(
            lambda b: [d.reference.transform(open_rgb(b[0])) for d in bench.detectors], [[b] for b in work])
        modes[("all detectors", "ours")] = lambda: timed(lambda b: preprocess_bytes(b[0], inputs), [[b] for b in work])
        results = {}
        for key, run in modes.items():
            results[key] = run()[0]
        for det_name in [d.name for d in bench.detectors] + ["all detectors"]:
            ref, our = results[(det_name, "reference")], results[(det_name, "ours")]
            rows.append({"table": "preprocessing", "images_set": set_name, "detector": det_name,
                         "reference_images_per_s": ref.images_per_s, "ours_images_per_s": our.images_per_s,
                         "reference_p50_ms": ref.p50_ms, "ours_p50_ms": our.p50_ms,
                         "speedup": ratio(our.images_per_s, ref.images_per_s)})
    return rows

