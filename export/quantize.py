"""Dynamic INT8 quantisation of the exported detectors: a CPU speed option, off by default.

  python -m genguard.export.quantize --build build [--detectors opensdi_flux,freepik_nsfw]

For each detector, writes build/onnx/<name>/model.int8.onnx next to model.onnx and records its accuracy
cost under the "int8" key of that detector's parity.json; `make serve INT8=1` serves these files.

What is quantised: ONNX Runtime's dynamic quantisation of MatMul/Gemm with constant weights (weights
INT8 per tensor, activations UINT8 quantised per batch at run time; attention's activation x activation
MatMuls stay FP32). Only the nodes that carry the compute are candidates — those with at least
`min_share` of the model's MatMul/Gemm/Conv FLOPs — so a classifier head (a fraction of a percent of the
work) keeps FP32 and adds no error for no gain; and only as many of them as an accuracy budget allows
(quantize_detector). The CNNs' compute is convolutions, which dynamic INT8 only slows here (static QDQ
with calibration would be the way), so their INT8 file quantises nothing and says so.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genguard import onnx_runtime
from genguard.engines import FP32_FILE, INT8_FILE
from genguard.export import layout
from genguard.export.flops import node_flops
from genguard.scores import head_probs

OP_TYPES = ("MatMul", "Gemm")
TOLERANCE = 1e-2  # max |dprob| vs the FP32 model that INT8 may cost (the bar)
MIN_SHARE = 0.005


def select_nodes(model, op_types=OP_TYPES, min_share: float = MIN_SHARE) -> tuple[list[str], dict[str, float]]:
    """The MatMul/Gemm nodes worth quantising, in graph order, and each one's share of the model's FLOPs.

    A node qualifies when its weight is a constant (dynamic quantisation needs that) and it carries at
    least `min_share` of all counted FLOPs.
    """
    nodes = node_flops(model, batch=1)
    total = sum(n.flops for n in nodes) or 1
    chosen = [n for n in nodes if n.op_type in op_types and n.has_constant_weight and n.flops >= min_share * total]
    return [n.name for n in chosen], {n.name: n.flops / total for n in chosen}


def quantize_model(model, dst: Path, names: list[str], *, op_types=OP_TYPES, per_channel: bool = False,
                   settings: dict | None = None) -> None:
    """FP32 `model` (ModelProto) -> dst with the nodes `names` dynamically quantised, keeping the model's
    metadata_props (the genguard.* provenance the server's detector model checks) and adding
    genguard.quantization = `settings`. No names: the FP32 graph as it is (nothing worth quantising)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        out = Path(tmp) / "q.onnx"
        if names:
            # The exporter's value_info disagrees with ONNX shape inference on some weight-side tensors,
            # which makes the quantiser's own inference pass fail; it re-infers everything anyway.
            stripped = onnx.ModelProto()
            stripped.CopyFrom(model)
            del stripped.graph.value_info[:]
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # the quantiser logs "consider pre-processing" (static-QDQ advice)
            try:
                quantize_dynamic(stripped, out, op_types_to_quantize=list(op_types), nodes_to_quantize=names,
                                 per_channel=per_channel, weight_type=QuantType.QInt8,
                                 extra_options={"MatMulConstBOnly": True})
            finally:
                root.setLevel(level)
            quantized = onnx.load(os.fspath(out))
        else:
            quantized = onnx.ModelProto()
            quantized.CopyFrom(model)
        del quantized.metadata_props[:]
        for prop in model.metadata_props:
            quantized.metadata_props.add(key=prop.key, value=prop.value)
        quantized.metadata_props.add(key="genguard.quantization", value=json.dumps(settings or {}))
        onnx.save(quantized, os.fspath(out))
        os.replace(out, dst)


def _outputs(path: Path, pixels: np.ndarray, batch: int = 4) -> list[np.ndarray]:
    session = onnx_runtime.session(path)
    runs = [session.run(None, {"pixels": pixels[i:i + batch]}) for i in range(0, len(pixels), batch)]
    return [np.concatenate([r[h] for r in runs]) for h in range(len(runs[0]))]


def compare_outputs(spec, fp32: list[np.ndarray], int8: list[np.ndarray], names: list[str]) -> dict:
    """INT8 vs FP32 logits of the same images: max |dlogit|, max |dprob|, top-1 agreement, worst image."""
    logit_diff = max(float(np.abs(a - b).max()) for a, b in zip(fp32, int8))
    p32 = [head_probs(h, x) for h, x in zip(spec.heads, fp32)]
    p8 = [head_probs(h, x) for h, x in zip(spec.heads, int8)]
    per_image = np.max([np.abs(a - b).max(axis=1) for a, b in zip(p32, p8)], axis=0)
    top1 = float(np.mean(np.all([a.argmax(1) == b.argmax(1) for a, b in zip(p32, p8)], axis=0)))
    return {"images": len(names), "max_abs_logit": logit_diff, "max_abs_prob": float(per_image.max()),
            "worst_image": names[int(per_image.argmax())], "top1_agreement": top1}


def quantize_detector(build: Path, name: str, *, images: dict[str, bytes] | None = None,
                      tolerance: float = TOLERANCE, budget: float | None = None,
                      min_share: float = MIN_SHARE) -> dict:
    """Quantise build/onnx/<name>/model.onnx within an accuracy budget, measure it, and record the figures
    in parity.json["int8"].

    Every qualifying MatMul/Gemm is quantised if that keeps max |dprob| vs FP32 within `budget` (default:
    half the tolerance, a margin for images not seen here) on `images`. If not,
    the earliest nodes stay FP32: error made early is amplified by every later layer (EVA02 with random
    weights here: blocks 0-5 alone cost 4e-2, blocks 6-11 alone 5e-3), so a binary search finds the
    longest quantisable tail of the graph, in steps of 1/12 of the candidates. `images` default to the 23
    sample images: photos and the edge cases (greyscale, 16-bit, tiny...), where drift is largest.
    """
    import onnx

    from genguard import specs
    from genguard.export import samples
    from genguard.checksums import sha256_file as sha256
    from genguard.export.layout import write_atomic
    from genguard.preprocess import preprocess_bytes

    folder = layout.onnx_folder(build, name)
    fp32, int8, parity_path = folder / FP32_FILE, folder / INT8_FILE, folder / layout.PARITY_FILE
    final, int8 = int8, folder / f".model.int8.{os.getpid()}.partial.onnx"  # moved into place only if it passes
    if not fp32.is_file() or not parity_path.is_file():
        raise FileNotFoundError(f"{name}: no export in {folder} (run make export first)")
    budget = tolerance / 2 if budget is None else budget
    parity = json.loads(parity_path.read_text())
    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(fp32))
    spec = specs.as_exported(specs.get(name), meta.get("heads", {}))
    started = time.perf_counter()
    images = images or samples.all_images()
    image_names = list(images)
    pixels = np.stack([preprocess_bytes(images[n], {"x": spec.input})[1]["x"] for n in image_names])
    reference = _outputs(fp32, pixels)
    model = onnx.load(os.fspath(fp32))
    candidates, shares = select_nodes(model, min_share=min_share)
    settings = {"method": "onnxruntime.quantization.quantize_dynamic", "op_types": list(OP_TYPES),
                "weight_type": "QInt8", "per_channel": False, "min_flops_share": min_share,
                "budget_max_abs_prob": budget, "candidates": len(candidates)}
    trials = []

    def attempt(first: int) -> bool:
        names = candidates[first:]
        quantize_model(model, int8, names, settings=settings)
        if not names:
            return True
        figures = compare_outputs(spec, reference, _outputs(int8, pixels), image_names)
        trials.append({"fp32_leading_nodes": first, "max_abs_prob": figures["max_abs_prob"]})
        return figures["max_abs_prob"] <= budget

    step = max(1, len(candidates) // 12)
    starts = list(range(0, len(candidates), step)) + [len(candidates)]
    if not attempt(0):  # all of them is too much: the longest tail within budget
        lo, hi = 0, len(starts) - 1  # starts[lo] fails, starts[hi] (nothing quantised) passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if attempt(starts[mid]) else (mid, hi)
        first = starts[hi]
    else:
        first = 0
    names = candidates[first:]
    settings.update({"quantized_nodes": len(names), "fp32_leading_nodes": first,
                     "quantized_flops_share": round(sum(shares[n] for n in names), 4), "search": trials})
    quantize_model(model, int8, names, settings=settings)
    figures = compare_outputs(spec, reference, _outputs(int8, pixels), image_names)
    record = {
        "onnx": str(final),
        "onnx_sha256": sha256(int8),
        "fp32_sha256": parity.get("onnx_sha256"),
        **settings,
        "tolerance": {"max_abs_prob": tolerance},
        "vs_fp32": figures,
        "passed": figures["max_abs_prob"] <= tolerance,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if record["passed"]:
        os.replace(int8, final)
        parity["int8"] = record
        parity.pop("int8_failed", None)
    else:  # the previous INT8 model, if any, stays with the record that vouches for it
        int8.unlink(missing_ok=True)
        parity["int8_failed"] = record
    write_atomic(parity_path, json.dumps(parity, indent=2) + "\n")
    return record


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genguard.export.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "every exported one")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="max |dprob| vs FP32 (default 1e-2)")
    parser.add_argument("--budget", type=float, default=None,
                        help="max |dprob| the search may spend on its images (default: tolerance / 2)")
    parser.add_argument("--min-share", type=float, default=MIN_SHARE,
                        help="quantise MatMul/Gemm nodes carrying at least this share of the FLOPs")
    args = parser.parse_args(argv)
    names = layout.chosen(args.detectors, lambda: layout.exported(args.build, FP32_FILE))
    if not names:
        print(f"no exported detectors under {layout.onnx_dir(args.build)} (run make export first)", file=sys.stderr)
        return 1
    header = f"{'detector':<18} {'nodes':>5} {'FLOP share':>10} {'|dlogit|':>9} {'|dprob|':>9} {'top1':>5} {'ok':>3}"
    rows, failed = [], []
    for name in names:
        print(f"==> {name}", file=sys.stderr, flush=True)
        r = quantize_detector(args.build, name, tolerance=args.tolerance, budget=args.budget,
                              min_share=args.min_share)
        v = r["vs_fp32"]
        rows.append(f"{name:<18} {r['quantized_nodes']:>5} {r['quantized_flops_share']:>10.1%} "
                    f"{v['max_abs_logit']:>9.2e} {v['max_abs_prob']:>9.2e} {v['top1_agreement']:>5.2f} "
                    f"{'yes' if r['passed'] else 'NO':>3}")
        if not r["passed"]:
            failed.append(name)
    print("\n" + header + "\n" + "-" * len(header) + "\n" + "\n".join(rows))
    print(f"INT8 vs FP32 ONNX Runtime on the sample images; written: {args.build}/onnx/<detector>/{INT8_FILE}, "
          "figures in parity.json[\"int8\"]")
    if failed:
        print(f"outside tolerance ({args.tolerance:g}): {', '.join(failed)} — serving INT8=1 would change "
              "their answers by more than that", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
