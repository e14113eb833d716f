"""Table: CPU speed options in-process, each with its accuracy cost against the reference pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from genguard import engines
from genguard.benchmarks.compare import memory
from genguard.benchmarks.compare.common import chunks, concat_heads, pause, probs_of, timed
from genguard.benchmarks.compare.loading import Detector
from genguard.benchmarks.report import agreement, ratio


def rows(bench, det: Detector, reference_probs: list[np.ndarray], repeat: int,
         reference_images_per_s: float | None = None) -> list[dict]:
    """Every speed option of `det` on the same tensors, one session alive at a time: ORT optimisation levels
    and threads, the INT8 files, and each genguard.engines option (OpenVINO FP32/BF16/INT8, static QDQ)."""
    from genguard.engines import INT8_FILE
    from genguard.export.reference import open_rgb

    B = bench.args.batch
    pixels = det.reference.tensors([open_rgb(b) for b in bench.data]).numpy()
    tensors = np.concatenate([pixels] * repeat)
    threads = det.threads
    ort = lambda path, level, n: (lambda: engines.open_engine(  # noqa: E731
        "ort-fp32", path, threads=n, optimization=level, spinning=False, arena=False))
    configs = [(f"opt={level}", det.fp32_onnx, ort(det.fp32_onnx, level, threads))
               for level in ("disable", "basic", "extended", "all")]
    configs.append(("threads=1", det.fp32_onnx, ort(det.fp32_onnx, "all", 1)))
    int8 = det.fp32_onnx.with_name(INT8_FILE)
    configs.append(("INT8 (model.int8.onnx)", int8, ort(int8, "all", threads)))
    every = int8_every_matmul(bench, det)
    if every:
        configs.append(("INT8, every MatMul", every, ort(every, "all", threads)))
    notes = {"INT8 (model.int8.onnx)": int8_note(int8),
             "INT8, every MatMul": "no accuracy budget: what dynamic INT8 of all the compute would give"}
    records = _records(det.fp32_onnx.parent)
    for option in engines.OPTIONS.values():
        if option.name in (engines.DEFAULT, "ort-int8"):  # = opt=all and the INT8 row above
            continue
        path = det.fp32_onnx.with_name(option.file)
        label = f"{option.name}"
        missing = engines.missing_instructions(option)
        if missing:
            notes[label] = f"not on this CPU: it lacks {', '.join(missing)}"
            configs.append((label, None, None))
            continue
        if records.get(option.name, {}).get("skipped"):  # e.g. bf16-mixed where nothing would stay f32
            notes[label] = _record_note(records[option.name], path)
            configs.append((label, None, None))
            continue
        if option.file == engines.MIXED_FILE and not path.is_file():  # make cpu-options prepares it; else built here
            from genguard.export.cpu_options import build_mixed_ir

            path = bench.workdir / f"{det.name}.{engines.MIXED_FILE}"
            build_mixed_ir(det.fp32_onnx, path)
        notes[label] = _record_note(records.get(option.name), path)
        opener = (lambda o=option, p=path: engines.open_engine(o, p, threads=threads, spinning=False, arena=False))
        if option.name not in records and path.is_file():
            try:  # no record says whether it opens here: bf16-mixed refuses where nothing would stay f32
                opener()
            except engines.OptionError as exc:
                notes[label] = f"not run: {str(exc).removeprefix(option.name + ': ')}"
                configs.append((label, None, None))
                continue
            memory.release()
        configs.append((label, path, opener))
    rows, modes = {}, {}
    for label, path, opener in configs:
        rows[label] = {"table": "options", "detector": det.name, "option": label, "note": notes.get(label)}
        if path is None:
            continue
        if not path.is_file():
            rows[label]["note"] = ("not built: python -m genguard.export.quantize --build BUILD" if path.name == INT8_FILE
                                   else _record_note(records.get(label), path) if records.get(label, {}).get("skipped")
                                   else "not built: python -m genguard.export.cpu_options --build BUILD")
            continue

        def run(opener=opener, label=label):
            # One session alive at a time, made afresh each round (outside the timing) and without ORT's
            # arena: eight EVA02 sessions with batch-8 arenas at once would not fit in this machine's memory.
            memory.reset_peak()
            session = opener()
            session.run(None, {"pixels": tensors[:B]})  # warm-up
            pause()
            timing, outs = timed(lambda x: session.run(None, {"pixels": x}), chunks(tensors, B))
            peaks[label] = max(peaks.get(label, 0), memory.peak_bytes())
            session = None  # dropped before the next option opens
            memory.release()
            return timing, outs

        modes[label] = run
    # every option in turn, round after round: the machine's drift hits them all alike
    outputs, peaks = {}, {}

    def keep(label, run):
        def wrapped():
            timing, outs = run()
            outputs.setdefault(label, outs[: math.ceil(len(pixels) / B)])  # the first pass: one per image
            return timing, outs
        return wrapped

    timings = bench.interleave({k: keep(k, v) for k, v in modes.items()}, bench.args.options_rounds,
                               f"{det.name}: speed options ({len(tensors)} images each)")
    base = timings["opt=all"].images_per_s if "opt=all" in timings else None
    for label, timing in timings.items():
        probs = probs_of(det.spec, concat_heads(outputs[label]))
        agree = agreement(reference_probs, [p[: len(pixels)] for p in probs])
        record = records.get(label, {})
        rows[label].update({"images": timing.images, "images_per_s": timing.images_per_s,
                            "p50_ms": timing.p50_ms, "max_abs_prob": agree["max_abs_prob"],
                            "top1_agreement": agree["top1_agreement"],
                            "speedup": ratio(timing.images_per_s, base),
                            "vs_reference": ratio(timing.images_per_s, reference_images_per_s),
                            "peak_mb": peaks.get(label, 0) / 2**20,
                            "within_budget": record.get("within_budget") if label in engines.OPTIONS else None})
    return list(rows.values())


def _records(folder: Path) -> dict:
    parity = folder / "parity.json"
    return json.loads(parity.read_text()).get("cpu_options", {}) if parity.is_file() else {}


def _record_note(record: dict | None, path: Path) -> str:
    if record and record.get("skipped"):
        return f"not run: {record['skipped']}"
    if not record or "vs_fp32" not in record:
        return "no accuracy record: python -m genguard.export.cpu_options --build BUILD (not servable)"
    from genguard.checksums import sha256_file

    if path.is_file() and sha256_file(path) != record.get("sha256"):
        return "record is stale (sha256): measure again (not servable)"
    ref = record.get("vs_reference", {})
    verdict = "within budget" if record.get("within_budget") else "OUTSIDE the budget: refused by the renderer"
    return (f"{verdict}; recorded on {ref.get('images', '?')} sample images: max |Δprob| vs (a) "
            f"{ref.get('max_abs_prob', float('nan')):.1e}, top-1 {ref.get('top1_agreement', float('nan')):.0%}")


def ensemble_rows(option_rows: list[dict], reference_ips: dict[str, float]) -> list[dict]:
    """The ensemble's model time from the per-detector rows (the detectors run one after another here):
    FP32 (opt=all) and each detector's fastest option within its recorded budget; vs the references' best."""
    by_det: dict[str, list[dict]] = {}
    for r in option_rows:
        if r.get("images_per_s"):
            by_det.setdefault(r["detector"], []).append(r)
    if not by_det or set(by_det) != set(reference_ips):
        return []

    def combined(pick) -> tuple[float, dict]:
        chosen = {d: pick(rows) for d, rows in by_det.items()}
        return 1.0 / sum(1.0 / r["images_per_s"] for r in chosen.values()), {d: r["option"] for d, r in chosen.items()}

    fp32 = lambda rows: next(r for r in rows if r["option"] == "opt=all")  # noqa: E731
    best = lambda rows: max([r for r in rows if r["option"] == "opt=all" or r.get("within_budget")],  # noqa: E731
                            key=lambda r: r["images_per_s"])
    ref = 1.0 / sum(1.0 / v for v in reference_ips.values())
    out = []
    fp32_ips, _ = combined(fp32)
    for label, pick in (("FP32 (ORT, opt=all)", fp32), ("best option within budget", best)):
        ips, chosen = combined(pick)
        worst = max((r.get("max_abs_prob") or 0.0) for d, rows in by_det.items() for r in rows
                    if r["option"] == chosen[d])
        out.append({"table": "options", "detector": "ensemble (models)", "option": label, "images_per_s": ips,
                    "speedup": ratio(ips, fp32_ips), "vs_reference": ratio(ips, ref), "max_abs_prob": worst,
                    "note": ", ".join(f"{d}: {o}" for d, o in chosen.items())})
    return out


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
