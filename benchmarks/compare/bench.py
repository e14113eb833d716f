"""The run's shared state (arguments, server, detectors, photos, perf_analyzer) and how modes are run:
warm the served model, interleave modes round by round."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genguard import protocol
from genguard.benchmarks.compare.common import log, pause
from genguard.benchmarks.compare.loading import Detector, Served
from genguard.benchmarks.report import Timing


class Bench:
    def __init__(self, args, served: Served, detectors: list[Detector], images: dict[str, bytes], pa):
        self.args, self.served, self.detectors, self.images, self.pa = args, served, detectors, images, pa
        self.workdir = Path(args.scratch or Path(args.build) / "bench") / "compare"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.names = list(images)
        self.data = list(images.values())

    # -- per detector, model only --------------------------------------------------------------------

    def warm_served(self, model: str, arrays: np.ndarray) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.served.url_grpc)
        tensor = grpcclient.InferInput(protocol.DETECTOR_INPUT if model != protocol.ENSEMBLE else protocol.INPUT,
                                       list(arrays.shape), "FP32" if arrays.dtype == np.float32 else "UINT8")
        tensor.set_data_from_numpy(arrays)
        client.infer(model, [tensor])
        client.close()

    def interleave(self, modes: dict, rounds: int, what: str) -> dict[str, Timing]:
        log(f"{what}: {', '.join(modes)} x {rounds} round(s)")
        totals: dict[str, Timing] = {}
        for r in range(rounds):
            for mode, run in modes.items():
                pause()
                timing, _ = run()
                totals[mode] = totals[mode] + timing if mode in totals else timing
                log(f"  round {r + 1} {mode:<16} {timing.images_per_s:8.2f} img/s  p50 {timing.p50_ms:9.1f} ms")
        return totals

    # -- the full ensemble, bytes in -----------------------------------------------------------------
