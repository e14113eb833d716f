"""CPU engine/precision options per detector: build their files, measure their accuracy and speed, record them.

  python -m genguard.export.cpu_options --build build [--detectors a,b] [--options openvino-bf16,ort-int8-qdq]

For each detector and option (genguard.engines.OPTIONS, every one but ort-fp32 by default), on the sample
images (genguard.export.samples: 23 photos and edge cases):
  - builds the option's file if it needs one: model.qdq.onnx, static INT8 (QDQ, per-channel weights,
    calibrated on the sample photos) for the CNNs, whose compute is convolution; model.int8.onnx comes
    from genguard.export.quantize (make quantize);
  - runs it and compares its probabilities with ONNX Runtime FP32 (the served default) and with the seed's
    reference pipeline (the card's preprocessing + PyTorch, on the checkpoint the export names): max |Δprob|,
    top-1 agreement, worst image;
  - times it against FP32 (batch 1, interleaved), the figure `--precision best` ranks by;
  - records all of it in parity.json["cpu_options"][option] with the file's sha256, atomically.
An option outside the budget (max |Δprob| ≤ 1e-2 and top-1 agreement ≥ 99 %, both against FP32 and
against the reference) is recorded as such, and the renderer refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from genguard import cpus, engines, onnx_runtime, specs
from genguard.checksums import sha256_file
from genguard.scores import head_probs

BUDGET = {"max_abs_prob": 1e-2, "top1_agreement": 0.99}
RECORD_KEY = "cpu_options"


class OptionRefused(ValueError):
    """An option the renderer must not serve: the message names detector, option and reason."""


# ---------------------------------------------------------------------------------------------------
# static INT8 (QDQ)


def is_convolutional(model) -> bool:
    """Convolution carries the compute (a ViT has one Conv, its patch embedding)."""
    return sum(n.op_type == "Conv" for n in model.graph.node) > 1


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed photos, one image per batch."""

    def __init__(self, pixels: np.ndarray):
        self._items = iter([{"pixels": pixels[i:i + 1]} for i in range(len(pixels))])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # pragma: no cover - the quantiser calls it only for some calibrators
        pass


def build_qdq(fp32: Path, dst: Path, calibration: np.ndarray, *, per_channel: bool = True) -> dict:
    """fp32 -> dst: ONNX Runtime static quantisation in QDQ format (weights INT8 per channel, activations
    UINT8 with MinMax ranges from `calibration`), keeping the genguard.* metadata the detector model checks."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": per_channel,
                "weight_type": "QInt8", "activation_type": "QUInt8", "calibrate_method": "MinMax",
                "calibration_images": int(len(calibration)), "op_types": ["Conv", "MatMul", "Gemm"]}
    model = onnx.load(os.fspath(fp32))
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "q.onnx"
        stripped = onnx.ModelProto()
        stripped.CopyFrom(model)
        del stripped.graph.value_info[:]  # the exporter's value_info trips the quantiser's shape inference
        onnx.save(stripped, os.fspath(src))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(os.fspath(src), os.fspath(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=settings["op_types"], per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        finally:
            root.setLevel(level)
        quantized = onnx.load(os.fspath(out))
        del quantized.metadata_props[:]
        for prop in model.metadata_props:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
        quantized.metadata_props.add(key="genguard.quantization", value=json.dumps(settings))
        onnx.save(quantized, os.fspath(out))
        os.replace(out, dst)
    return settings


# ---------------------------------------------------------------------------------------------------
# measuring


def _compare(spec, base: list[np.ndarray], other: list[np.ndarray], names: list[str]) -> dict:
    """Probabilities `other` vs `base` (per head, as served): max |Δprob|, top-1 agreement, worst image."""
    per_image = np.max([np.abs(a - b).max(axis=1) for a, b in zip(base, other)], axis=0)
    top1 = float(np.mean(np.all([a.argmax(1) == b.argmax(1) for a, b in zip(base, other)], axis=0)))
    return {"images": len(names), "max_abs_prob": float(per_image.max()), "top1_agreement": top1,
            "worst_image": names[int(per_image.argmax())]}


def _probs(spec, engine: engines.Engine, pixels: np.ndarray, batch: int = 4) -> list[np.ndarray]:
    runs = [engine.run(None, {"pixels": pixels[i:i + batch]}) for i in range(0, len(pixels), batch)]
    return [head_probs(h, np.concatenate([r[k] for r in runs])) for k, h in enumerate(spec.heads)]


def _speed(engines_by_name: dict[str, engines.Engine], pixels: np.ndarray, rounds: int = 2) -> dict[str, float]:
    """Images/s at batch 1, every engine in turn round after round (the machine's drift hits all alike)."""
    seconds = dict.fromkeys(engines_by_name, 0.0)
    for engine in engines_by_name.values():
        engine.run(None, {"pixels": pixels[:1]})  # warm-up
    for _ in range(rounds):
        for name, engine in engines_by_name.items():
            t0 = time.perf_counter()
            for i in range(len(pixels)):
                engine.run(None, {"pixels": pixels[i:i + 1]})
            seconds[name] += time.perf_counter() - t0
    return {name: rounds * len(pixels) / s for name, s in seconds.items()}


def within_budget(record: dict, budget: dict = BUDGET) -> bool:
    return all(record[side]["max_abs_prob"] <= budget["max_abs_prob"]
               and record[side]["top1_agreement"] >= budget["top1_agreement"] for side in ("vs_fp32", "vs_reference"))


def measure_detector(build: Path, name: str, options: list[str], *, images: dict[str, bytes] | None = None,
                     speed_rounds: int = 2, reference: bool = True) -> dict[str, dict]:
    """Build, measure and record `options` for one detector; returns {option: record}."""
    from genguard.export import samples
    from genguard.export.onnx_export import write_atomic
    from genguard.preprocess import preprocess_bytes

    folder = Path(build) / "onnx" / name
    fp32, parity_path = folder / engines.FP32_FILE, folder / "parity.json"
    if not fp32.is_file() or not parity_path.is_file():
        raise FileNotFoundError(f"{name}: no export in {folder} (run make export first)")
    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(fp32))
    spec = specs.get(name)
    for head, labels in meta.get("heads", {}).items():
        spec = specs.with_labels(spec, head, tuple(labels))
    images = images or samples.all_images()
    names = list(images)
    pixels = np.stack([preprocess_bytes(images[n], {"x": spec.input})[1]["x"] for n in names])
    caps = cpus.capabilities()
    base_engine = engines.open_engine("ort-fp32", fp32)
    base = _probs(spec, base_engine, pixels)
    ref = _reference_probs(spec, meta.get("checkpoint"), images) if reference else None

    records = {}
    for option_name in options:
        option = engines.get(option_name)
        if option.name == engines.DEFAULT:
            continue
        started = time.perf_counter()
        path = folder / option.file
        record = {"engine": option.engine, "precision": option.precision, "file": option.file,
                  "fp32_sha256": sha256_file(fp32), "cpu": caps}
        missing = engines.missing_instructions(option, caps)
        if missing:
            record["skipped"] = f"this CPU lacks {', '.join(missing)} instructions"
            records[option.name] = record
            continue
        if option.file == engines.QDQ_FILE and not _fresh(path, fp32):
            import onnx

            if not is_convolutional(onnx.load(os.fspath(fp32), load_external_data=False)):
                record["skipped"] = "not a CNN: static QDQ is built for convolution-heavy detectors only"
                records[option.name] = record
                continue
            photos = [n for n in names if n in samples.photos()]
            record["quantization"] = build_qdq(fp32, path, pixels[[names.index(n) for n in photos]])
        if not path.is_file():
            record["skipped"] = f"{option.file} is missing (make quantize writes model.int8.onnx)"
            records[option.name] = record
            continue
        try:
            engine = engines.open_engine(option, path, caps=caps)
        except engines.OptionError as exc:  # e.g. bf16-mixed on a model whose marked layers all fuse into bf16 ones
            record["skipped"] = str(exc).removeprefix(f"{option.name}: ")
            records[option.name] = record
            continue
        probs = _probs(spec, engine, pixels)
        record.update({"sha256": sha256_file(path), "vs_fp32": _compare(spec, base, probs, names)})
        if ref is not None:
            record["vs_reference"] = _compare(spec, ref, probs, names)
            record["fp32_vs_reference"] = _compare(spec, ref, base, names)
        speed = _speed({"fp32": base_engine, option.name: engine}, pixels, speed_rounds)
        del engine
        record.update({
            "speed": {"batch": 1, "images": len(names), "rounds": speed_rounds,
                      "fp32_images_per_s": speed["fp32"], "images_per_s": speed[option.name],
                      "vs_fp32": speed[option.name] / speed["fp32"]},
            "budget": BUDGET,
            "within_budget": ref is not None and within_budget(record),
            "openvino": engines.openvino_version() if option.engine == "openvino" else None,
            "seconds": round(time.perf_counter() - started, 1),
        })
        records[option.name] = record
    parity = json.loads(parity_path.read_text())
    parity.setdefault(RECORD_KEY, {}).update(records)
    write_atomic(parity_path, json.dumps(parity, indent=2) + "\n")
    return records


def _fresh(path: Path, fp32: Path) -> bool:
    return path.is_file() and path.stat().st_mtime >= fp32.stat().st_mtime


def _reference_probs(spec, checkpoint: str | None, images: dict[str, bytes]) -> list[np.ndarray]:
    """The seed's own pipeline on the checkpoint the export names: the card's preprocessing + PyTorch."""
    from genguard.export.checkpoints import load
    from genguard.export.reference import ReferencePipeline, open_rgb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: the record says "weights" already
        module = load(spec, checkpoint)
    pipeline = ReferencePipeline(spec, module, checkpoint)
    opened = [open_rgb(b) for b in images.values()]
    runs = [pipeline.probs(opened[i:i + 4]) for i in range(0, len(opened), 4)]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(spec.heads))]


# ---------------------------------------------------------------------------------------------------
# what the renderer serves


def check_option(folder: Path, option_name: str, caps: dict[str, bool] | None = None) -> tuple[Path, str]:
    """(the file to serve, its sha256) for `option_name` in build/onnx/<name>/, or OptionRefused saying why:
    unknown, a CPU without the instructions, no record, a stale record (sha256), outside the budget."""
    name = folder.name
    try:
        option = engines.get(option_name)
        engines.check_cpu(option, caps)
    except engines.OptionError as exc:
        raise OptionRefused(f"{name}: {exc}") from None
    fp32 = folder / engines.FP32_FILE
    if option.name == engines.DEFAULT:
        return fp32, ""
    parity = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").is_file() else {}
    record = parity.get(RECORD_KEY, {}).get(option.name)
    hint = f"python -m genguard.export.cpu_options --build BUILD --detectors {name} --options {option.name}"
    if not record or "vs_fp32" not in record:
        why = record.get("skipped") if record else None
        raise OptionRefused(f"{name}: {option.name}: no accuracy record in {folder / 'parity.json'}"
                            + (f" ({why})" if why else "") + f"; measure it first: {hint}")
    path = folder / option.file
    if not path.is_file():
        raise OptionRefused(f"{name}: {option.name}: {path} is missing; {hint}")
    actual = sha256_file(path)
    if actual != record.get("sha256") or (fp32.is_file() and sha256_file(fp32) != record.get("fp32_sha256")):
        raise OptionRefused(f"{name}: {option.name}: the record is stale ({option.file} or model.onnx changed since "
                            f"it was measured: sha256 differs); measure again: {hint}")
    if not record.get("within_budget"):
        sides = {s: record.get(s, {}) for s in ("vs_fp32", "vs_reference")}
        figures = ", ".join(f"{s}: max |Δprob| {v.get('max_abs_prob', float('nan')):.2g}, top-1 "
                            f"{v.get('top1_agreement', float('nan')):.1%}" for s, v in sides.items())
        raise OptionRefused(f"{name}: {option.name} is outside its accuracy budget (max |Δprob| ≤ "
                            f"{BUDGET['max_abs_prob']:g}, top-1 ≥ {BUDGET['top1_agreement']:.0%}): {figures}")
    return path, actual


def best_option(folder: Path, caps: dict[str, bool] | None = None) -> str:
    """The fastest recorded option within budget that this CPU runs (measured vs FP32); ort-fp32 if none beats it."""
    parity = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").is_file() else {}
    ranked = sorted(((r.get("speed", {}).get("vs_fp32", 0.0), n) for n, r in parity.get(RECORD_KEY, {}).items()
                     if n in engines.OPTIONS), reverse=True)
    for speedup, name in ranked:
        if speedup <= 1.0:
            break
        try:
            check_option(folder, name, caps)
        except OptionRefused:
            continue
        return name
    return engines.DEFAULT


def parse_precision(values: list[str] | None, detectors: list[str]) -> dict[str, str]:
    """`--precision` values -> {detector: option or "best"}. A plain value applies to every detector
    ("best", "openvino-bf16"); `name=option` to one (later values win). Unknown names are refused."""
    out: dict[str, str] = {}
    for value in values or []:
        for item in filter(None, (v.strip() for v in value.split(","))):
            det, sep, option = item.rpartition("=") if "=" in item else ("", "", item)
            if option != "best":
                engines.get(option)  # OptionError for a typo
            if det:
                if det not in detectors:
                    raise engines.OptionError(f"--precision {item}: no detector {det!r} (served: {', '.join(detectors)})")
                out[det] = option
            else:
                out.update(dict.fromkeys(detectors, option))
    return out


def report(build: Path, names: list[str]) -> str:
    """The recorded options of `names` as a Markdown table (no measuring): what the renderer will accept."""
    lines = ["| detector | option | max abs Δprob vs FP32 | max abs Δprob vs reference | top-1 (worse side) | worst image "
             "| speed vs FP32 (batch 1) | within budget | servable here |", "|---|---|---:|---:|---:|---|---:|---|---|"]
    for name in names:
        folder = Path(build) / "onnx" / name
        parity = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").is_file() else {}
        for option, r in parity.get(RECORD_KEY, {}).items():
            if "vs_fp32" not in r:
                lines.append(f"| {name} | {option} | — | — | — | — | — | — | {r.get('skipped', 'not measured')} |")
                continue
            try:
                check_option(folder, option)
                servable = "yes"
            except OptionRefused as exc:
                servable = "no: " + ("outside the budget" if "outside its accuracy budget" in str(exc)
                                     else str(exc).split(": ", 2)[-1].replace("|", "")[:100])
            f, ref = r["vs_fp32"], r["vs_reference"]
            lines.append(f"| {name} | {option} | {f['max_abs_prob']:.1e} | {ref['max_abs_prob']:.1e} | "
                         f"{min(f['top1_agreement'], ref['top1_agreement']):.1%} | {ref['worst_image']} | "
                         f"{r['speed']['vs_fp32']:.2f}× | {'yes' if r['within_budget'] else 'NO'} | {servable} |")
        lines.append(f"| {name} | best | | | | | | | {best_option(folder)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genguard.export.cpu_options", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=Path("build"))
    parser.add_argument("--detectors", default="", help="comma-separated subset (default: every exported one)")
    parser.add_argument("--options", default=",".join(o for o in engines.OPTIONS if o != engines.DEFAULT),
                        help="comma-separated options (default: all but ort-fp32)")
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None,
                        help="write the recorded options as a Markdown table to this file, measuring nothing")
    args = parser.parse_args(argv)
    names = [n for n in args.detectors.split(",") if n] or [
        n for n in specs.DETECTORS if (args.build / "onnx" / n / "model.onnx").is_file()]
    if args.report:
        text = (f"# CPU engine/precision options recorded in {args.build}\n\nBudget: max |Δprob| ≤ {BUDGET['max_abs_prob']:g} "
                f"and top-1 ≥ {BUDGET['top1_agreement']:.0%}, vs ONNX Runtime FP32 and vs the seed's reference pipeline, "
                "on the 23 sample images. `best` is what `PRECISION=best` serves on this CPU.\n\n" + report(args.build, names))
        args.report.write_text(text)
        print(text)
        return 0
    options = [o for o in args.options.split(",") if o]
    for o in options:
        engines.get(o)
    print(f"{'detector':<18} {'option':<14} {'|Δp| fp32':>9} {'|Δp| ref':>9} {'top1':>6} {'x fp32':>6}  ok")
    for name in names:
        print(f"==> {name}", file=sys.stderr, flush=True)
        for option, r in measure_detector(args.build, name, options, speed_rounds=args.speed_rounds).items():
            if "skipped" in r:
                print(f"{name:<18} {option:<14} skipped: {r['skipped']}")
                continue
            print(f"{name:<18} {option:<14} {r['vs_fp32']['max_abs_prob']:>9.2e} {r['vs_reference']['max_abs_prob']:>9.2e} "
                  f"{min(r['vs_fp32']['top1_agreement'], r['vs_reference']['top1_agreement']):>6.1%} "
                  f"{r['speed']['vs_fp32']:>6.2f}  {'yes' if r['within_budget'] else 'NO'}", flush=True)
    print(f"recorded in {args.build}/onnx/<detector>/parity.json[\"{RECORD_KEY}\"]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
