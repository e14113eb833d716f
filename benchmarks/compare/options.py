"""Table: CPU speed options in-process, each with its accuracy cost against the reference pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from genguard import onnx_runtime
from genguard.benchmarks.compare.common import chunks, concat_heads, pause, probs_of, timed
from genguard.benchmarks.compare.loading import Detector
from genguard.benchmarks.report import agreement, ratio


def rows(bench, det: Detector, reference_probs: list[np.ndarray], repeat: int) -> list[dict]:
    from genguard.export.quantize import INT8_FILE
    from genguard.export.reference import open_rgb

    B = bench.args.batch
    pixels = det.reference.tensors([open_rgb(b) for b in bench.data]).numpy()
    tensors = np.concatenate([pixels] * repeat)
    threads = det.threads
    configs = [(f"opt={level}", det.fp32_onnx, level, threads) for level in ("disable", "basic", "extended", "all")]
    configs.append(("threads=1", det.fp32_onnx, "all", 1))
    int8 = det.fp32_onnx.with_name(INT8_FILE)
    configs.append(("INT8 (model.int8.onnx)", int8, "all", threads))
    every = int8_every_matmul(bench, det)
    if every:
        configs.append(("INT8, every MatMul", every, "all", threads))
    notes = {"INT8 (model.int8.onnx)": int8_note(int8),
             "INT8, every MatMul": "no accuracy budget: what dynamic INT8 of all the compute would give"}
    rows, modes = {}, {}
    for label, path, level, n_threads in configs:
        rows[label] = {"table": "options", "detector": det.name, "option": label, "note": notes.get(label)}
        if not path.is_file():
            rows[label]["note"] = "not built: python -m genguard.export.quantize --build BUILD"
            continue

        def run(path=path, level=level, n_threads=n_threads):
            # One session at a time, made afresh each round (outside the timing): eight EVA02
            # sessions with batch-8 arenas at once would not fit in this machine's memory.
            session = onnx_runtime.session(path, threads=n_threads, optimization=level, spinning=False)
            session.run(None, {"pixels": tensors[:B]})  # warm-up
            pause()
            return timed(lambda x: session.run(None, {"pixels": x}), chunks(tensors, B))

        modes[label] = run
    # every option in turn, round after round: the machine's drift hits them all alike
    outputs = {}

    def keep(label, run):
        def wrapped():
            timing, outs = run()
            outputs.setdefault(label, outs)
            return timing, outs
        return wrapped

    timings = bench.interleave({k: keep(k, v) for k, v in modes.items()}, bench.args.options_rounds,
                               f"{det.name}: speed options ({len(tensors)} images each)")
    base = timings["opt=all"].images_per_s if "opt=all" in timings else None
    for label, timing in timings.items():
        probs = probs_of(det.spec, concat_heads(outputs[label][: math.ceil(len(pixels) / B)]))
        agree = agreement(reference_probs, [p[: len(pixels)] for p in probs])
        rows[label].update({"images": timing.images, "images_per_s": timing.images_per_s,
                            "p50_ms": timing.p50_ms, "max_abs_prob": agree["max_abs_prob"],
                            "top1_agreement": agree["top1_agreement"],
                            "speedup": ratio(timing.images_per_s, base)})
    return list(rows.values())



def int8_every_matmul(bench, det: Detector) -> Path | None:
    """Every MatMul/Gemm candidate quantised, without the accuracy budget of model.int8.onnx: the speed
    dynamic INT8 could give, next to what it costs. None for the CNNs (no candidates)."""
    import onnx

    from genguard.export.quantize import quantize_model, select_nodes

    model = onnx.load(str(det.fp32_onnx))
    names, _ = select_nodes(model)
    if not names:
        return None
    path = bench.workdir / f"{det.name}.int8-every-matmul.onnx"
    quantize_model(model, path, names, settings={"quantized_nodes": len(names), "benchmark_only": True})
    return path



def int8_note(path: Path) -> str | None:
    parity = path.parent / "parity.json"
    if not path.is_file() or not parity.is_file():
        return None
    q = json.loads(parity.read_text()).get("int8", {})
    if "quantized_nodes" not in q:
        return None
    if not q.get("candidates"):
        return "same arithmetic as FP32: its compute is convolution, which dynamic INT8 does not cover"
    return (f"{q['quantized_nodes']} of {q.get('candidates', '?')} MatMul/Gemm quantised "
            f"({q.get('quantized_flops_share', 0):.0%} of FLOPs) within max |Δprob| "
            f"{q.get('budget_max_abs_prob', '?')} on the sample images")

# -- preprocessing alone ---------------------------------------------------------------------------
