"""CPU engine/precision options per detector: build their files, measure their accuracy and speed, record them.

  python -m genguard.export.cpu_options --build build [--detectors a,b] [--options openvino-bf16,ort-int8-qdq]
  python -m genguard.export.cpu_options --weights random --build build   (= make cpu-options WEIGHTS=random)

With --weights (what `make cpu-options` passes, with CHECKPOINTS/REVISIONS/LABELS/DETECTORS), it first exports
what the build lacks or holds differently from what was asked, exactly as `make serve` does
(genguard.export.serve.export_stale). Without it, it measures the detectors the build holds.

For each detector and option (genguard.engines.OPTIONS, every one but ort-fp32 by default), on the sample
images (genguard.export.samples: 23 photos and edge cases):
  - builds the option's file if it needs one and the build holds none made from this model.onnx:
    model.qdq.onnx, static INT8 (QDQ, per-channel weights, calibrated on the sample photos) for the CNNs,
    whose compute is convolution; model.int8.onnx by genguard.export.quantize (the same as make quantize);
  - runs it and compares its probabilities with ONNX Runtime FP32 (the served default) and with the seed's
    reference pipeline (the card's preprocessing + PyTorch, on the checkpoint the export names): max |Δprob|,
    top-1 agreement, worst image;
  - times it against FP32 (batch 1, the two alternating image by image), the figure `--precision best` ranks
    by, with the engines configured as served: ONNX Runtime's idle threads not spinning (a spinning pool steals
    the cores from the engine timed after it: benchmarks/results/bf16-why.md) and --threads intra-op threads
    (make serve's ORT_THREADS; 0: each engine's default, every core);
  - records all of it in parity.json["cpu_options"][option] with the sha256 of the file and of model.onnx,
    the CPU it ran on, the threads and the load average while it ran, atomically.
An option outside the budget (max |Δprob| ≤ 1e-2 and top-1 agreement ≥ 99 %, both against FP32 and
against the reference) is recorded as such, and the renderer refuses it.

`best` (choose_best) uses only records made for this model.onnx, this option file, this CPU model and the
served thread count: a new checkpoint, revision or label order changes model.onnx, so its old records are stale,
and `best` says so (make serve PRECISION=best measures again first). It exits non-zero when it measured nothing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from genguard import cpus, engines, onnx_runtime, specs
from genguard.checksums import sha256_file
from genguard.export import layout
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


def build_qdq(fp32: Path, dst: Path, calibration: np.ndarray, *, per_channel: bool = True,
              fp32_sha256: str | None = None) -> dict:
    """fp32 -> dst: ONNX Runtime static quantisation in QDQ format (weights INT8 per channel, activations
    UINT8 with MinMax ranges from `calibration`), keeping the genguard.* metadata the detector model checks.
    The settings (written into dst's genguard.quantization metadata) name the sha256 of the FP32 file it was
    made from: a build re-exported with other weights gets a new QDQ file, whatever the files' times say."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": per_channel,
                "weight_type": "QInt8", "activation_type": "QUInt8", "calibrate_method": "MinMax",
                "calibration_images": int(len(calibration)), "op_types": ["Conv", "MatMul", "Gemm"],
                "fp32_sha256": fp32_sha256 or sha256_file(fp32)}
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
# mixed bf16 (OpenVINO IR)

MIXED_RT_INFO = ["genguard", "mixed_precision"]  # where an IR's build settings live in its rt_info


def build_mixed_ir(fp32: Path, dst: Path, *, fp32_sha256: str | None = None) -> dict:
    """fp32 -> dst (an OpenVINO IR: dst and dst.with_suffix(".bin")) whose layers of engines.MIXED_F32_TYPES keep
    f32 under a bf16 inference precision, built once here so that a detector loading it reads it as is. The Python
    API cannot create OpenVINO's DisablePrecisionConversion runtime attribute, so the IR's XML is edited: each
    layer gets the attribute as the IR serialiser writes it. The settings (in the IR's rt_info, and returned) name
    the sha256 of the FP32 file it was made from; the ONNX file's genguard.* metadata stays in rt_info["framework"]."""
    import xml.etree.ElementTree as ET

    import openvino as ov

    settings = {"method": "OpenVINO IR, DisablePrecisionConversion on these op types",
                "f32_types": list(engines.MIXED_F32_TYPES), "openvino": ov.get_version(),
                "fp32_sha256": fp32_sha256 or sha256_file(fp32)}
    model = ov.Core().read_model(os.fspath(fp32))
    model.set_rt_info(json.dumps(settings), MIXED_RT_INFO)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        xml_path = Path(tmp) / dst.name
        ov.save_model(model, os.fspath(xml_path), compress_to_fp16=False)
        tree = ET.parse(xml_path)
        kept = 0
        for layer in tree.getroot().iter("layer"):
            if layer.get("type") not in engines.MIXED_F32_TYPES:
                continue
            rt_info = layer.find("rt_info")
            if rt_info is None:
                rt_info = ET.SubElement(layer, "rt_info")
            ET.SubElement(rt_info, "attribute", name="DisablePrecisionConversion", version="0",
                          value="dynamic:f16,bf16")
            kept += 1
        tree.write(xml_path, encoding="utf-8", xml_declaration=True)
        os.replace(xml_path.with_suffix(".bin"), dst.with_suffix(".bin"))
        os.replace(xml_path, dst)
    return {**settings, "marked_layers": kept}


def ir_settings(path: Path) -> dict:
    """The settings build_mixed_ir wrote into an IR's rt_info ({} when the pair is incomplete or foreign)."""
    import xml.etree.ElementTree as ET

    if not all(p.is_file() for p in engines.option_files(path)):
        return {}
    try:
        element = ET.parse(path).getroot().find("rt_info/" + "/".join(MIXED_RT_INFO))
        return json.loads(element.get("value"))
    except Exception:  # noqa: BLE001 - an unreadable or foreign file is simply not current
        return {}


def _ir_made_from(path: Path) -> str | None:
    """The sha256 of the FP32 file an IR was built from (its rt_info), or None."""
    return ir_settings(path).get("fp32_sha256")


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
    """Images/s at batch 1, the engines alternating image by image, round after round: whatever else runs on the
    machine hits them alike. (Timing each engine on all the images in turn let a burst of other work land on one
    engine only: on a shared 2-core machine the ratio of the same two engines then ranged 0.3×–1.7× from round to
    round, against 1.4×–1.6× alternating image by image; benchmarks/results/bf16-why.md.)"""
    seconds = dict.fromkeys(engines_by_name, 0.0)
    for engine in engines_by_name.values():
        engine.run(None, {"pixels": pixels[:1]})  # warm-up
    for _ in range(rounds):
        for i in range(len(pixels)):
            for name, engine in engines_by_name.items():
                t0 = time.perf_counter()
                engine.run(None, {"pixels": pixels[i:i + 1]})
                seconds[name] += time.perf_counter() - t0
    return {name: rounds * len(pixels) / s for name, s in seconds.items()}


def within_budget(record: dict, budget: dict = BUDGET) -> bool:
    return all(record[side]["max_abs_prob"] <= budget["max_abs_prob"]
               and record[side]["top1_agreement"] >= budget["top1_agreement"] for side in ("vs_fp32", "vs_reference"))


_SHA256: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    """The sha256 an option file is recorded with (engines.files_sha256: an OpenVINO IR's over its .xml and .bin),
    each file's remembered for this process while its size, time and inode stay the same (EVA02's model.onnx is
    ~1 GB: `best` and the renderer would otherwise hash it once per option)."""
    return engines.files_sha256(path, _file_sha256)


def files_changed(folder: Path, record: dict) -> list[str]:
    """The files of `record`'s option (its .xml and .bin for an IR) missing from `folder` or changed since it was
    measured, by name ("model.bf16-mixed.bin changed"); [] when all match."""
    path = Path(folder) / record.get("file", "")
    missing = [f"{f.name} is missing" for f in engines.option_files(path) if not f.is_file()]
    if missing:
        return missing
    if _sha256(path) == record.get("sha256"):
        return []
    each = record.get("files_sha256", {})
    named = [f"{f.name} changed" for f in engines.option_files(path) if each.get(f.name) not in (None, _file_sha256(f))]
    return named or [f"{path.name} changed"]


def _file_sha256(path: Path) -> str:
    st = Path(path).stat()
    key = (os.fspath(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(path)
    return _SHA256[key]


Progress = Callable[[str], None]


def _made_from(path: Path) -> str | None:
    """The sha256 of the FP32 file a QDQ file was made from (its genguard.quantization metadata), or None."""
    try:
        settings = json.loads(onnx_runtime.metadata(path).get("genguard.quantization", "{}"))
    except Exception:  # noqa: BLE001 - an unreadable or foreign file is simply not current
        return None
    return settings.get("fp32_sha256")


def _int8_vouched(folder: Path, fp32_sha256: str) -> bool:
    """Whether make quantize's passing record vouches for model.int8.onnx as made from this model.onnx."""
    path = folder / engines.INT8_FILE
    check = layout.read_parity(folder).get("int8") or {}
    return (path.is_file() and bool(check.get("passed")) and check.get("fp32_sha256") == fp32_sha256
            and check.get("onnx_sha256") == _sha256(path))


def measure_detector(build: Path, name: str, options: list[str], *, images: dict[str, bytes] | None = None,
                     speed_rounds: int = 2, reference: bool = True, progress: Progress | None = None,
                     threads: int = 0) -> dict[str, dict]:
    """Build, measure and record `options` for one detector; returns {option: record}. `progress` gets one
    line as each option starts and one as it ends (the whole takes minutes on a full-size model). `threads`:
    intra-op threads of every engine, as served (make serve ORT_THREADS; 0: each engine's default)."""
    from genguard.export import samples
    from genguard.export.layout import write_atomic
    from genguard.preprocess import preprocess_bytes

    say = progress or (lambda line: None)
    folder = layout.onnx_folder(build, name)
    fp32, parity_path = folder / engines.FP32_FILE, folder / layout.PARITY_FILE
    if not fp32.is_file() or not parity_path.is_file():
        raise FileNotFoundError(f"{name}: no export in {folder} (run make export first)")
    fp32_sha = _sha256(fp32)
    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(fp32))
    spec = specs.get(name)
    for head, labels in meta.get("heads", {}).items():
        spec = specs.with_labels(spec, head, tuple(labels))
    images = images or samples.all_images()
    names = list(images)
    pixels = np.stack([preprocess_bytes(images[n], {"x": spec.input})[1]["x"] for n in names])
    caps = cpus.capabilities()
    cpu = {"cpu_model": cpus.cpu_model(), "cpu_flags": sorted(cpus.cpu_flags() & set(cpus.DECIDING_FLAGS))}
    say(f"FP32 and the reference pipeline on {len(names)} images ...")
    # as served (genguard/triton_models/detector.py): no spinning idle threads, the served thread count
    served = {"threads": threads or None, "spinning": False}
    base_engine = engines.open_engine("ort-fp32", fp32, **served)
    base = _probs(spec, base_engine, pixels)
    ref = _reference_probs(spec, meta.get("checkpoint"), images) if reference else None

    todo = [engines.get(o) for o in options if engines.get(o).name != engines.DEFAULT]
    records = {}
    for k, option in enumerate(todo, 1):
        started = time.perf_counter()
        step = f"[{k}/{len(todo)}] {option.name}"
        path = folder / option.file
        record = {"engine": option.engine, "precision": option.precision, "file": option.file,
                  "fp32_sha256": fp32_sha, "cpu": caps, **cpu, "threads": threads}
        records[option.name] = record
        missing = engines.missing_instructions(option, caps)
        if missing:
            record["skipped"] = f"this CPU lacks {', '.join(missing)} instructions"
            say(f"{step}: skipped: {record['skipped']}")
            continue
        if option.file == engines.QDQ_FILE and not (path.is_file() and _made_from(path) == fp32_sha):
            import onnx

            if not is_convolutional(onnx.load(os.fspath(fp32), load_external_data=False)):
                record["skipped"] = "not a CNN: static QDQ is built for convolution-heavy detectors only"
                say(f"{step}: skipped: {record['skipped']}")
                continue
            say(f"{step}: building {option.file} (static INT8, calibrated on the sample photos) ...")
            photos = [n for n in names if n in samples.photos()]
            record["quantization"] = build_qdq(fp32, path, pixels[[names.index(n) for n in photos]],
                                               fp32_sha256=fp32_sha)
        if option.file == engines.MIXED_FILE and _ir_made_from(path) != fp32_sha:
            say(f"{step}: building {option.file} + .bin (OpenVINO IR, {', '.join(engines.MIXED_F32_TYPES)} marked "
                "to keep f32) ...")
            build_mixed_ir(fp32, path, fp32_sha256=fp32_sha)
        if option.file == engines.MIXED_FILE:
            record["mixed_precision"] = ir_settings(path)
        if option.file == engines.INT8_FILE:
            if not _int8_vouched(folder, fp32_sha):
                from genguard.export.quantize import quantize_detector

                say(f"{step}: building {option.file} (dynamic INT8 within its budget, as make quantize) ...")
                quantize_detector(build, name, images=images)
            check = json.loads(parity_path.read_text()).get("int8") or {}
            if not _int8_vouched(folder, fp32_sha):
                failed = json.loads(parity_path.read_text()).get("int8_failed", {}).get("vs_fp32", {})
                record["skipped"] = ("dynamic INT8 misses its tolerance vs FP32 (max |Δprob| "
                                     f"{failed.get('max_abs_prob', float('nan')):.1e}; parity.json[\"int8_failed\"])")
            elif not check.get("quantized_nodes"):
                record["skipped"] = (("no MatMul/Gemm carries the compute (a CNN)" if not check.get("candidates") else
                                      f"none of its {check['candidates']} MatMul/Gemm could be quantised within the "
                                      f"INT8 budget (max |Δprob| {check.get('budget_max_abs_prob', '?')})")
                                     + ": model.int8.onnx computes what FP32 does")
            if "skipped" in record:
                say(f"{step}: skipped: {record['skipped']}")
                continue
        if not path.is_file():
            record["skipped"] = f"{option.file} is missing"
            say(f"{step}: skipped: {record['skipped']}")
            continue
        try:
            engine = engines.open_engine(option, path, caps=caps, **served)
        except engines.OptionError as exc:  # e.g. bf16-mixed on a model whose marked layers all fuse into bf16 ones
            record["skipped"] = str(exc).removeprefix(f"{option.name}: ")
            say(f"{step}: skipped: {record['skipped']}")
            continue
        say(f"{step}: running {len(names)} images, then timing it against FP32 ({speed_rounds} rounds, batch 1) ...")
        probs = _probs(spec, engine, pixels)
        record.update({"sha256": _sha256(path), "vs_fp32": _compare(spec, base, probs, names)})
        if getattr(engine, "kept_f32", None):  # bf16-mixed: the layers marked f32, and how many compiled ones run f32
            record["mixed_precision"].update(marked_layers=len(engine.kept_f32), runtime_f32_layers=engine.f32_layers)
        if len(engines.option_files(path)) > 1:  # an IR: the digest is over the pair; each file's names a change
            record["files_sha256"] = {f.name: _file_sha256(f) for f in engines.option_files(path)}
        if ref is not None:
            record["vs_reference"] = _compare(spec, ref, probs, names)
            record["fp32_vs_reference"] = _compare(spec, ref, base, names)
        load_before = _load()
        speed = _speed({"fp32": base_engine, option.name: engine}, pixels, speed_rounds)
        load = max(load_before, _load())
        del engine
        record.update({
            "speed": {"batch": 1, "images": len(names), "rounds": speed_rounds,
                      "fp32_images_per_s": speed["fp32"], "images_per_s": speed[option.name],
                      "vs_fp32": speed[option.name] / speed["fp32"], "load_average": load,
                      "usable_cpus": cpus.available_cpus(), "busy": is_busy(load, cpus.available_cpus())},
            "budget": BUDGET,
            "within_budget": ref is not None and within_budget(record),
            "openvino": engines.openvino_version() if option.engine == "openvino" else None,
            "seconds": round(time.perf_counter() - started, 1),
        })
        worst = max(record["vs_fp32"]["max_abs_prob"], record.get("vs_reference", {}).get("max_abs_prob", 0.0))
        say(f"{step}: {record['speed']['vs_fp32']:.2f}× FP32, max |Δprob| {worst:.1e}, "
            f"{'within budget' if record['within_budget'] else 'OUTSIDE the budget'} ({record['seconds']:.0f} s)")
        if record["speed"]["busy"]:
            say(f"{step}: WARNING: {busy_note(record['speed'])}")
    parity = json.loads(parity_path.read_text())
    parity.setdefault(RECORD_KEY, {}).update(records)
    write_atomic(parity_path, json.dumps(parity, indent=2) + "\n")
    return records


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def is_busy(load: float, usable: int) -> bool:
    """Whether other work competed for the cores while timing: the 1-minute load average counts this process's
    own threads too (up to one per core), so busy is well above the usable CPUs."""
    return load > usable + max(1.0, usable / 2)


def busy_note(speed: dict) -> str:
    return (f"the machine was busy while this was timed (load average {speed['load_average']:.1f} on "
            f"{speed['usable_cpus']} usable CPUs): a speed-up timed while other work holds the cores is unreliable, "
            "either way (benchmarks/results/bf16-why.md); measure on a quiet machine, or with ORT_THREADS set to the "
            "cores that are free")


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


def default_options() -> list[str]:
    return [o for o in engines.OPTIONS if o != engines.DEFAULT]


def estimate_seconds(build: Path, name: str, options: list[str] | None = None, *, images: int = 23,
                     speed_rounds: int = 2, threads: int = 0) -> float:
    """About how long measure_detector takes here: one FP32 inference timed now (batch 1), times the
    inferences it runs (FP32 and the reference on every image; per option its images, then `speed_rounds` timed
    rounds of it and FP32), plus compiling. Rough (±50 %): OpenVINO and INT8 run faster or slower than FP32."""
    folder = layout.onnx_folder(build, name)
    spec = specs.get(name)
    engine = engines.open_engine("ort-fp32", folder / engines.FP32_FILE, spinning=False, threads=threads or None)
    x = np.zeros((1, *spec.input.shape), dtype=np.float32)
    engine.run(None, {"pixels": x})
    t0 = time.perf_counter()
    for _ in range(2):
        engine.run(None, {"pixels": x})
    one = (time.perf_counter() - t0) / 2
    runnable = [o for o in (options or default_options())
                if o != engines.DEFAULT and not engines.missing_instructions(engines.get(o))]
    per_option = images * (1 + 2 * speed_rounds) + 10
    return one * (3 * images + len(runnable) * per_option) + 3.0 * len(runnable)


def duration(seconds: float) -> str:
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


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
    parity = layout.read_parity(folder)
    record = parity.get(RECORD_KEY, {}).get(option.name)
    hint = f"python -m genguard.export.cpu_options --build BUILD --detectors {name} --options {option.name}"
    if not record or "vs_fp32" not in record:
        why = record.get("skipped") if record else None
        raise OptionRefused(f"{name}: {option.name}: no accuracy record in {folder / 'parity.json'}"
                            + (f" ({why})" if why else "") + f"; measure it first: {hint}")
    path = folder / option.file
    if record.get("file") != option.file:  # e.g. bf16-mixed measured when it rewrote model.onnx at load
        raise OptionRefused(f"{name}: {option.name}: the record is stale (measured on {record.get('file')}, served "
                            f"from {option.file}); measure again: {hint}")
    for f in engines.option_files(path):
        if not f.is_file():
            raise OptionRefused(f"{name}: {option.name}: {f} is missing; {hint}")
    changed = files_changed(folder, record)
    if changed:
        raise OptionRefused(f"{name}: {option.name}: the record is stale ({', '.join(changed)} since it was measured: "
                            f"sha256 differs); measure again: {hint}")
    actual = _sha256(path)
    if fp32.is_file() and _sha256(fp32) != record.get("fp32_sha256"):
        raise OptionRefused(f"{name}: {option.name}: the record is stale (model.onnx changed since it was measured: "
                            f"sha256 differs); measure again: {hint}")
    if not record.get("within_budget"):
        sides = {s: record.get(s, {}) for s in ("vs_fp32", "vs_reference")}
        figures = ", ".join(f"{s}: max |Δprob| {v.get('max_abs_prob', float('nan')):.2g}, top-1 "
                            f"{v.get('top1_agreement', float('nan')):.1%}" for s, v in sides.items())
        raise OptionRefused(f"{name}: {option.name} is outside its accuracy budget (max |Δprob| ≤ "
                            f"{BUDGET['max_abs_prob']:g}, top-1 ≥ {BUDGET['top1_agreement']:.0%}): {figures}")
    return path, actual


MEASURE_HINT = "run `make cpu-options`"


@dataclass(frozen=True)
class Choice:
    """What `best` serves for one detector, and why, in words. `remeasure` (non-empty) says why its records
    must be measured (again) first: none yet, or stale ones (another model.onnx, option file or CPU)."""

    detector: str
    option: str
    why: str
    remeasure: str = ""

    def line(self) -> str:
        return f"{self.detector}: {self.option} — {self.why}"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}" if n else "the engines' default threads"


def record_staleness(folder: Path, record: dict, fp32_sha256: str | None, cpu_model: str,
                     threads: int = 0, option: str | None = None) -> str | None:
    """Why `record` no longer describes what would be served here (None: it does): it was measured for another
    model.onnx (a new checkpoint, revision or label order), another option file, on another CPU, or with
    another thread count than the one served (ORT_THREADS), or from another file than `option` now serves."""
    if not fp32_sha256 or record.get("fp32_sha256") != fp32_sha256:
        return "measured for another model.onnx (sha256 differs)"
    served = engines.OPTIONS.get(option).file if option in engines.OPTIONS else record.get("file")
    if record.get("file") != served:  # e.g. bf16-mixed measured when it rewrote model.onnx at load, not its own IR
        return f"measured on {record.get('file')}, served from {served}"
    if "sha256" in record:
        changed = files_changed(folder, record)
        if changed:
            return "; ".join(c if c.endswith("missing") else f"{c} since it was measured (sha256 differs)"
                             for c in changed)
    if record.get("cpu_model") != cpu_model:
        return f"measured on another CPU ({record.get('cpu_model') or 'not named in the record'})"
    if record.get("threads", 0) != threads:
        return f"measured with {_threads(record.get('threads', 0))}, served with {_threads(threads)}"
    return None


def choose_best(folder: Path, caps: dict[str, bool] | None = None, threads: int = 0) -> Choice:
    """`--precision best` for build/onnx/<name>/: the fastest option within budget that this CPU runs, measured
    vs FP32 on this CPU for this very model.onnx with the served thread count (`threads`, 0: the engines'
    default); ort-fp32 when none beats FP32, with the reason either way."""
    folder = Path(folder)
    name = folder.name
    records = {n: r for n, r in layout.read_parity(folder).get(RECORD_KEY, {}).items() if n in engines.OPTIONS}
    if not records:
        return Choice(name, engines.DEFAULT, f"no cpu-options record for this build; {MEASURE_HINT}",
                      remeasure="no cpu-options record")
    fp32 = folder / engines.FP32_FILE
    fp32_sha = _sha256(fp32) if fp32.is_file() else None
    here = cpus.cpu_model()
    stale = {n: why for n, r in records.items() if (why := record_staleness(folder, r, fp32_sha, here, threads, n))}
    causes = sorted(set(stale.values()))
    stale_text = "; ".join(f"{', '.join(n for n in stale if stale[n] == c)}: {c}" for c in causes)
    remeasure = f"stale records ({stale_text})" if stale else ""
    ranked = sorted(((r["speed"]["vs_fp32"], n) for n, r in records.items()
                     if n not in stale and "speed" in r), reverse=True)
    misses, unrunnable = [], []
    for speedup, option in ranked:
        if speedup <= 1.0:
            break
        r = records[option]
        try:
            check_option(folder, option, caps)
        except OptionRefused as exc:
            if "outside its accuracy budget" in str(exc):
                worst = max(r["vs_fp32"]["max_abs_prob"], r.get("vs_reference", {}).get("max_abs_prob", 0.0))
                misses.append(f"{option} {speedup:.2f}× (max |Δprob| {worst:.1e})")
            else:
                unrunnable.append(f"{option} {speedup:.2f}× ({str(exc).split(': ', 2)[-1]})")
            continue
        worst = max(r["vs_fp32"]["max_abs_prob"], r["vs_reference"]["max_abs_prob"])
        why = (f"the fastest option within budget on this CPU: measured {speedup:.2f}× FP32 (batch 1, "
               f"{r['speed']['fp32_images_per_s']:.3g} → {r['speed']['images_per_s']:.3g} images/s), "
               f"max |Δprob| {worst:.1e}")
        if r["speed"].get("busy"):
            why += f" (timed on a busy machine: load average {r['speed']['load_average']:.1f})"
        if misses:
            why += f"; faster but outside the budget: {', '.join(misses)}"
        if stale:
            why += f"; not considered, stale: {stale_text}"
        return Choice(name, option, why, remeasure)
    if stale and not ranked:
        return Choice(name, engines.DEFAULT, f"stale cpu-options record ({stale_text}); {MEASURE_HINT}", remeasure)
    parts = []
    if misses:
        parts.append(f"every faster option misses the budget: {', '.join(misses)}")
    if unrunnable:
        parts.append(f"refused here: {', '.join(unrunnable)}")
    slower = [f"{n} {s:.2f}×" for s, n in ranked if s <= 1.0]
    if slower:
        parts.append(f"{'the other options are' if parts else 'no option is faster than FP32 on this CPU:'} "
                     f"{', '.join(slower)}{' FP32' if parts else ''}")
    skipped = [n for n, r in records.items() if n not in stale and "speed" not in r]
    if not parts:
        parts.append("no option could be measured here (" + ", ".join(
            f"{n}: {records[n].get('skipped', 'not measured')}" for n in skipped) + ")")
    if stale:
        parts.append(f"stale, not considered: {stale_text}; {MEASURE_HINT}")
    return Choice(name, engines.DEFAULT, "; ".join(parts), remeasure)


def best_option(folder: Path, caps: dict[str, bool] | None = None, threads: int = 0) -> str:
    """The fastest recorded option within budget that this CPU runs (measured vs FP32); ort-fp32 if none beats it
    (choose_best says why)."""
    return choose_best(folder, caps, threads).option


def best_choices(build: Path, names: list[str], *, measure: bool, log=None, who: str = "PRECISION=best",
                 threads: int = 0) -> dict[str, Choice]:
    """choose_best for each of `names`; with `measure`, first measures the options of those whose records are
    missing or stale (saying so, with a time estimate), so that `best` chooses from records of this model.onnx
    on this CPU. Later calls find the records current and measure nothing."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    choices = {n: choose_best(layout.onnx_folder(build, n), threads=threads) for n in names}
    todo = [n for n, c in choices.items() if c.remeasure]
    if todo and measure:
        estimates = {n: estimate_seconds(build, n, threads=threads) for n in todo}
        log(f"{who}: measuring the CPU options of {', '.join(f'{n} ({choices[n].remeasure})' for n in todo)} "
            f"first, on {cpus.describe()} — {duration(sum(estimates.values()))} in all (estimated); the records are "
            "reused until the model, an option file or the CPU changes")
        for n in todo:
            started = time.perf_counter()
            log(f"==> {n}: {duration(estimates[n])}")
            measure_detector(build, n, default_options(), progress=lambda line, n=n: log(f"  {n} {line}"),
                             threads=threads)
            log(f"  {n}: measured in {duration(time.perf_counter() - started).removeprefix('about ')}")
            choices[n] = choose_best(layout.onnx_folder(build, n), threads=threads)
    return choices


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


def report(build: Path, names: list[str], threads: int = 0) -> str:
    """The recorded options of `names` as a Markdown table (no measuring): what the renderer will accept, and
    below it what `best` serves on this CPU (with `threads` per engine) and why."""
    lines = ["| detector | option | max abs Δprob vs FP32 | max abs Δprob vs reference | top-1 (worse side) | worst image "
             "| speed vs FP32 (batch 1) | within budget | servable here |", "|---|---|---:|---:|---:|---|---:|---|---|"]
    choices = []
    for name in names:
        folder = layout.onnx_folder(build, name)
        parity = layout.read_parity(folder)
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
        choice = choose_best(folder, threads=threads)
        choices.append(choice)
        lines.append(f"| {name} | best | | | | | | | {choice.option} |")
    lines += ["", f"`best` on {cpus.describe()}:", ""] + [f"- {c.line()}" for c in choices]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genguard.export.cpu_options", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "every exported one; with --weights: every one that applies")
    parser.add_argument("--weights", choices=("real", "random"), default=None,
                        help="first export what the build lacks or holds differently (as make serve does)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH_OR_HUB_ID")
    parser.add_argument("--revision", action="append", default=[], metavar="NAME=REV")
    parser.add_argument("--labels", action="append", default=[], metavar="NAME=HEAD:L0,L1,...")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: export reduced depth
    parser.add_argument("--options", default=",".join(default_options()),
                        help="comma-separated options (default: all but ort-fp32)")
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of every engine, as make serve ORT_THREADS=N will serve them "
                             "(default 0: each engine's default, one per core)")
    parser.add_argument("--report", type=Path, default=None,
                        help="write the recorded options as a Markdown table to this file, measuring nothing")
    args = parser.parse_args(argv)
    exported = layout.exported(args.build, engines.FP32_FILE)
    if args.report:
        names = layout.chosen(args.detectors, lambda: exported)
        text = (f"# CPU engine/precision options recorded in {args.build}\n\nBudget: max |Δprob| ≤ {BUDGET['max_abs_prob']:g} "
                f"and top-1 ≥ {BUDGET['top1_agreement']:.0%}, vs ONNX Runtime FP32 and vs the seed's reference pipeline, "
                "on the 23 sample images. `best` is what `PRECISION=best` serves on this CPU.\n\n" + report(args.build, names, args.threads))
        args.report.write_text(text)
        print(text)
        return 0
    options = [o for o in args.options.split(",") if o]
    try:
        for o in options:
            engines.get(o)
    except engines.OptionError as exc:
        print(f"cpu-options: {exc}", file=sys.stderr)
        return 2
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.weights:  # make cpu-options: what make serve would serve, exported first where the build lacks it
        from genguard.export.serve import export_stale

        names, status = export_stale(args, who="make cpu-options")
        if status:
            return status
    else:
        names = layout.chosen(args.detectors, lambda: exported)
    absent = [n for n in names if not layout.read_parity(layout.onnx_folder(args.build, n))]
    if not names or absent:
        print(f"cpu-options: nothing to measure: no export of {', '.join(absent) or 'any detector'} under "
              f"{layout.onnx_dir(args.build)}; `make cpu-options WEIGHTS=real|random` exports first", file=sys.stderr)
        return 1
    if options == [engines.DEFAULT]:
        print("cpu-options: ort-fp32 is the reference every option is measured against: nothing to measure",
              file=sys.stderr)
        return 2
    log(f"cpu-options: measuring {', '.join(o for o in options if o != engines.DEFAULT)} for {', '.join(names)} "
        f"on {cpus.describe()}")
    estimates = {n: estimate_seconds(args.build, n, options, speed_rounds=args.speed_rounds, threads=args.threads)
                 for n in names}
    log(f"cpu-options: {duration(sum(estimates.values()))} in all (estimated)")
    rows, measured, started = [], 0, time.perf_counter()
    for i, name in enumerate(names, 1):
        t0 = time.perf_counter()
        log(f"==> [{i}/{len(names)}] {name}: {duration(estimates[name])}")
        records = measure_detector(args.build, name, options, speed_rounds=args.speed_rounds, threads=args.threads,
                                   progress=lambda line, name=name: log(f"  {name} {line}"))
        log(f"  {name}: done in {time.perf_counter() - t0:.0f} s")
        for option, r in records.items():
            if "skipped" in r:
                rows.append(f"{name:<18} {option:<20} skipped: {r['skipped']}")
                continue
            measured += 1
            rows.append(f"{name:<18} {option:<20} {r['vs_fp32']['max_abs_prob']:>9.2e} "
                        f"{r['vs_reference']['max_abs_prob']:>9.2e} "
                        f"{min(r['vs_fp32']['top1_agreement'], r['vs_reference']['top1_agreement']):>6.1%} "
                        f"{r['speed']['vs_fp32']:>6.2f}  {'yes' if r['within_budget'] else 'NO'}")
    print(f"{'detector':<18} {'option':<20} {'|Δp| fp32':>9} {'|Δp| ref':>9} {'top1':>6} {'x fp32':>6}  ok")
    print("\n".join(rows))
    if not measured:
        print(f"cpu-options: measured nothing: every option was skipped on this CPU ({cpus.describe()}); "
              "see the reasons above", file=sys.stderr)
        return 1
    print(f"recorded in {args.build}/onnx/<detector>/parity.json[\"{RECORD_KEY}\"] "
          f"({measured} options measured in {time.perf_counter() - started:.0f} s)")
    print(f"PRECISION=best on {cpus.describe()}:")
    for name in names:
        print(f"  {choose_best(args.build / 'onnx' / name, threads=args.threads).line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
