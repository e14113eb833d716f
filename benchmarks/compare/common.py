"""Shared by every table: logging, timing one mode, chunks, head probabilities."""

from __future__ import annotations

import sys
import time

import numpy as np

from genguard import protocol
from genguard.benchmarks.report import Timing
from genguard.scores import head_probs

PIPELINE_MODELS = (protocol.ENSEMBLE, protocol.PREPROCESS, protocol.POSTPROCESS)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def chunks(items, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


def timed(run, requests) -> tuple[Timing, list]:
    """Run `run(request)` on each request in turn: a Timing (images = total request length) and the outputs."""
    outputs, latencies = [], []
    started = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        outputs.append(run(request))
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    return Timing(sum(len(r) for r in requests), total, tuple(latencies)), outputs


def pause() -> None:
    """Let the previous mode's worker threads (ORT, OpenMP) go idle before the next mode starts."""
    time.sleep(0.3)


def probs_of(spec, logits: list[np.ndarray]) -> list[np.ndarray]:
    return [head_probs(h, x) for h, x in zip(spec.heads, logits)]


def concat_heads(outputs: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([o[h] for o in outputs]) for h in range(len(outputs[0]))]


