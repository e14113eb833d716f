"""Why BF16 is, or is not, faster than FP32 on this CPU: PyTorch (FP32, BF16 autocast, model.to(bfloat16)), ONNX
Runtime FP32 and OpenVINO FP32/BF16 side by side, in one run, on the same CPU and the same images.

  python -m genguard.benchmarks.bf16_why --build BUILD [--detectors opensdi_flux,sumsub_sd] [--batches 1,2]
      [--rounds 3] [--threads N] [--out benchmarks/results/bf16-why.md]

Five tables, after the CPU they ran on (model, and the flags that decide: AMX, AVX-512 BF16, VNNI):
  1. the bare matrix multiply (n×n×n) in FP32 and BF16, OpenVINO and PyTorch: does this CPU multiply faster in BF16?
  2. per detector and batch, images/s of every engine, each measured alone (the others idle), round after round,
     with the ratios BF16/FP32 within OpenVINO and within PyTorch and each engine against ONNX Runtime FP32 (the
     served default, as served: no spinning threads);
  3. the same ratio measured the way `make cpu-options` records it (batch 1), three times over, quiet and with a
     busy process competing: as it was before issue 34 (each engine on all the images in turn, ONNX Runtime's idle
     threads spinning), and as it is now (genguard.export.cpu_options._speed: engines alternating image by image,
     no spinning, as served);
  4. where OpenVINO spends the time, FP32 vs BF16 (its per-layer profile, batch 1): the kernel of each layer type;
  5. ORT FP32 and OpenVINO FP32/BF16 again (batch 1) while one busy process competes for a core — a shared
     machine, or the other detectors of the ensemble, which Triton runs in parallel — with every core's thread
     and with one thread.
The engines are GenGuard's (genguard.engines): OpenVINO with its served configuration (LATENCY hint, one stream,
explicit inference precision, no pinning), ONNX Runtime as served. PyTorch runs the checkpoint the export names.
"""

from __future__ import annotations

import argparse
import collections
import os

# PyTorch's OpenMP threads otherwise busy-wait after each call and steal the cores from the engine timed next
# (set before torch is imported; an explicit setting wins)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from genguard import cpus, engines, onnx_runtime, specs
from genguard.benchmarks import machine
from genguard.export import layout


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# 1. the bare matrix multiply


def gemm_rates(n: int = 1024, repeats: int = 8) -> list[dict]:
    """GFLOP/s of one n×n×n matrix multiply, FP32 vs BF16, in OpenVINO (its CPU plugin's kernels, the served
    configuration) and PyTorch (oneDNN): the hardware's BF16 advantage with no graph around it."""
    import openvino as ov
    import openvino.properties.hint as hints
    import torch
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    w = rng.standard_normal((n, n), dtype=np.float32)
    core = ov.Core()
    rows = []

    def best(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return 2.0 * n**3 / min(times) / 1e9

    for precision in ("f32", "bf16"):
        param = ops.parameter([n, n], ov.Type.f32)
        model = ov.Model([ops.matmul(param, ops.constant(w), False, False)], [param])
        compiled = core.compile_model(model, "CPU", {
            hints.inference_precision: getattr(ov.Type, precision),
            hints.performance_mode: hints.PerformanceMode.LATENCY, hints.enable_cpu_pinning: False})
        request = compiled.create_infer_request()
        rows.append({"engine": "OpenVINO MatMul", "precision": precision, "n": n,
                     "gflops": best(lambda: request.infer({0: a}))})
    for dtype in (torch.float32, torch.bfloat16):
        x, y = torch.from_numpy(a).to(dtype), torch.from_numpy(w).to(dtype)
        with torch.inference_mode():
            rows.append({"engine": "PyTorch mm", "precision": str(dtype).removeprefix("torch."), "n": n,
                         "gflops": best(lambda: torch.mm(x, y))})
    return rows


# ---------------------------------------------------------------------------------------------------
# 2. engines side by side


class Runners:
    """The engines of one detector, each a callable(pixels) -> None, opened once."""

    def __init__(self, build: Path, name: str, torch_engines: bool = True, threads: int = 0):
        import torch

        from genguard.export.checkpoints import load

        self.path = layout.onnx_folder(build, name) / engines.FP32_FILE
        meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(self.path))
        self.spec = specs.as_exported(specs.get(name), meta.get("heads", {}))
        self.checkpoint = meta.get("checkpoint")
        self.run: dict[str, object] = {}
        self.threads = threads
        if torch_engines:
            if threads:
                torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the random-weights warning: the table says which weights
                module = load(self.spec, self.checkpoint).eval()
            module_bf16 = copy.deepcopy(module).to(torch.bfloat16)

            def pytorch(x, autocast=False):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    module(torch.from_numpy(x))

            def pytorch_bf16(x):
                with torch.inference_mode():
                    module_bf16(torch.from_numpy(x).to(torch.bfloat16))

            self.run["pytorch-fp32"] = pytorch
            self.run["pytorch-bf16-autocast"] = lambda x: pytorch(x, autocast=True)
            self.run["pytorch-bf16 (model.to)"] = pytorch_bf16
        for option, label, kwargs in (("ort-fp32", "ort-fp32", {"spinning": False}),
                                      ("openvino-fp32", "openvino-fp32", {}),
                                      ("openvino-bf16", "openvino-bf16", {})):
            if engines.missing_instructions(engines.get(option)):
                continue
            engine = engines.open_engine(option, self.path, threads=threads or None, **kwargs)
            self.run[label] = lambda x, e=engine: e.run(None, {"pixels": x})


def sample_pixels(spec: specs.DetectorSpec, count: int) -> np.ndarray:
    from genguard.export import samples
    from genguard.preprocess import preprocess_bytes

    photos = list(samples.photos().values())
    return np.stack([preprocess_bytes(photos[i % len(photos)], {"x": spec.input})[1]["x"] for i in range(count)])


def side_by_side(runners: Runners, batch: int, rounds: int, calls: int) -> dict[str, dict]:
    """images/s of every engine at `batch`: each alone, `calls` timed calls per round, rounds interleaved (the
    machine's drift hits all alike); the median call of all rounds."""
    x = sample_pixels(runners.spec, batch)
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    for run in runners.run.values():
        run(x)  # warm-up: compilation, first-touch, oneDNN primitive caches
    for _ in range(rounds):
        for label, run in runners.run.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                run(x)
                seconds[label].append(time.perf_counter() - t0)
    return {label: {"images_per_s": batch / statistics.median(s), "calls": len(s)} for label, s in seconds.items()}


# ---------------------------------------------------------------------------------------------------
# 3. the ratio as make cpu-options measures it


def _blocks(engines_by_name: dict, pixels: np.ndarray, rounds: int) -> dict[str, float]:
    """make cpu-options' timing before issue 34: each engine on all the images in turn, round after round."""
    seconds = dict.fromkeys(engines_by_name, 0.0)
    for engine in engines_by_name.values():
        engine.run(None, {"pixels": pixels[:1]})
    for _ in range(rounds):
        for name, engine in engines_by_name.items():
            t0 = time.perf_counter()
            for i in range(len(pixels)):
                engine.run(None, {"pixels": pixels[i:i + 1]})
            seconds[name] += time.perf_counter() - t0
    return {name: rounds * len(pixels) / s for name, s in seconds.items()}


def cpu_options_ratio(runners: Runners, rounds: int = 1, images: int = 6, repeats: int = 3) -> list[dict]:
    """openvino-bf16 / ORT FP32 as `make cpu-options` records it, `repeats` times over, quiet and with one busy
    process competing for a core: before issue 34 (each engine on all the images in turn, ORT's idle threads
    spinning), the same without spinning, and now (engines alternating image by image, no spinning: as served)."""
    from genguard.export.cpu_options import _speed

    if engines.missing_instructions(engines.get("openvino-bf16")):
        return []
    x = sample_pixels(runners.spec, images)
    threads = runners.threads or None
    bf16 = engines.open_engine("openvino-bf16", runners.path, threads=threads)
    methods = [("before: in turn, ORT spinning", _blocks, True), ("in turn, ORT not spinning", _blocks, False),
               ("now: alternating, ORT not spinning", _speed, False)]
    out = []
    for hog in (False, True):
        for label, timer, spinning in methods:
            fp32 = engines.open_engine("ort-fp32", runners.path, spinning=spinning, threads=threads)
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog else None
            try:
                ratios = []
                for _ in range(repeats):
                    speed = timer({"fp32": fp32, "bf16": bf16}, x, rounds)
                    ratios.append(speed["bf16"] / speed["fp32"])
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
            out.append({"method": label, "competitor": hog, "ratios": ratios, "median": statistics.median(ratios)})
            del fp32
    return out


# ---------------------------------------------------------------------------------------------------
# 5. with a competitor


def contended(path: Path, spec: specs.DetectorSpec, calls: int, rounds: int = 2) -> list[dict]:
    """images/s of ORT FP32 and OpenVINO FP32/BF16 (batch 1), quiet and with one busy process competing for a
    core, with each engine's default threads (one per core) and with one thread."""
    x = sample_pixels(spec, 1)
    options = [o for o in ("ort-fp32", "openvino-fp32", "openvino-bf16")
               if not engines.missing_instructions(engines.get(o))]
    rows = []
    for threads in (0, 1):
        opened = {o: engines.open_engine(o, path, threads=threads or None, spinning=False) for o in options}
        for hog in (False, True):
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog else None
            try:
                time.sleep(0.3 if hog else 0.0)
                seconds: dict[str, list[float]] = collections.defaultdict(list)
                for engine in opened.values():
                    engine.run(None, {"pixels": x})
                for _ in range(rounds):
                    for option, engine in opened.items():
                        for _ in range(calls):
                            t0 = time.perf_counter()
                            engine.run(None, {"pixels": x})
                            seconds[option].append(time.perf_counter() - t0)
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
            ips = {o: 1 / statistics.median(v) for o, v in seconds.items()}
            rows.append({"threads": threads, "competitor": hog, **{o: ips[o] for o in options},
                         "bf16_vs_openvino_fp32": ips.get("openvino-bf16", 0) / ips["openvino-fp32"],
                         "bf16_vs_ort_fp32": ips.get("openvino-bf16", 0) / ips["ort-fp32"]})
        del opened
    return rows


# ---------------------------------------------------------------------------------------------------
# 4. OpenVINO's per-layer profile


def openvino_profile(path: Path, spec: specs.DetectorSpec, calls: int = 5, top: int = 6,
                     threads: int = 0) -> dict[str, list[dict]]:
    """Per precision: the layer types that take the most time at batch 1 (ms per call, summed over layers of the
    type), with the kernels OpenVINO chose for them (exec type: jit_avx512_bf16, brgemm_avx512_bf16, ref_...)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    x = sample_pixels(spec, 1)
    out = {}
    for precision in ("f32", "bf16"):
        if precision == "bf16" and not cpus.capabilities()["bf16"]:
            continue
        config = {hints.inference_precision: getattr(ov.Type, precision),
                  hints.performance_mode: hints.PerformanceMode.LATENCY, hints.enable_cpu_pinning: False,
                  props.enable_profiling: True}
        if threads:
            config[props.inference_num_threads] = threads
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        request = compiled.create_infer_request()
        for _ in range(2):
            request.infer({0: x})
        totals: dict[str, float] = collections.defaultdict(float)
        kernels: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for _ in range(calls):
            request.infer({0: x})
            for p in request.profiling_info:
                if p.status == p.Status.EXECUTED:
                    totals[p.node_type] += p.real_time.total_seconds() * 1e3 / calls
                    kernels[p.node_type][p.exec_type] += 1
        total = sum(totals.values())
        rows = [{"layer": t, "ms": ms, "share": ms / total if total else 0.0,
                 "kernels": ", ".join(k for k, _ in kernels[t].most_common(3))}
                for t, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]]
        rows.append({"layer": "all layers", "ms": total, "share": 1.0, "kernels": ""})
        out[precision] = rows
    return out


# ---------------------------------------------------------------------------------------------------
# the report


def openvino_facts() -> dict:
    """What OpenVINO itself says about this CPU: its capabilities, and the inference precision it picks with no
    hint (docs: bf16 where the CPU runs it natively, unless the execution mode hint asks for ACCURACY)."""
    import openvino as ov
    import openvino.properties.hint as hints
    from openvino import opset13 as ops

    core = ov.Core()
    param = ops.parameter([1, 8], ov.Type.f32)
    model = ov.Model([ops.relu(param)], [param])
    default = core.compile_model(model, "CPU").get_property(hints.inference_precision)
    return {"version": ov.get_version(), "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "default_inference_precision": str(default)}


def markdown(result: dict) -> str:
    from genguard.benchmarks.report import fmt

    m = result["machine"]
    ov = result["openvino"]
    lines = [
        "# Why BF16 is or is not faster than FP32 on this CPU",
        "",
        f"Command: `{result['command']}` ({result['minutes']:.1f} min); weights: {result['weights']}; threads per "
        f"engine: {result['threads'] or 'each engine’s default (one per core)'}; load average at the start "
        f"{m.get('load_average_at_start')}, at the end {result.get('load_average_at_end')}.",
        "",
        "## Machine",
        "",
        machine.describe_markdown(m),
        f"- OpenVINO {ov['version']}: CPU capabilities {', '.join(ov['capabilities'])}; inference precision it picks "
        f"with no hint: {ov['default_inference_precision']}",
        "",
        "## 1. The bare matrix multiply",
        "",
        "| engine | precision | n | GFLOP/s |",
        "|---|---|---:|---:|",
        *[f"| {r['engine']} | {r['precision']} | {r['n']} | {r['gflops']:.0f} |" for r in result["gemm"]],
        "",
        "## 2. Every engine, side by side",
        "",
        f"images/s (median call of {result['rounds']} interleaved rounds, each engine alone); `vs ORT` is against "
        "ONNX Runtime FP32 as served; `BF16/FP32` is within the same engine (OpenVINO bf16 / OpenVINO fp32; PyTorch "
        "bf16 / PyTorch fp32).",
        "",
    ]
    for det in result["detectors"]:
        lines += [f"### {det['detector']} ({det['input']}, {det['gflop_per_image']:.2f} GFLOP/image)", "",
                  "| batch | engine | images/s | vs ORT FP32 | BF16/FP32 (same engine) |", "|---:|---|---:|---:|---:|"]
        for batch, rows in det["side_by_side"].items():
            ort = rows.get("ort-fp32", {}).get("images_per_s")
            for label, r in rows.items():
                base = ("openvino-fp32" if label.startswith("openvino-bf16") else
                        "pytorch-fp32" if label.startswith("pytorch-bf16") else None)
                within = r["images_per_s"] / rows[base]["images_per_s"] if base in rows else None
                lines.append(f"| {batch} | {label} | {r['images_per_s']:.3g} | "
                             f"{fmt(r['images_per_s'] / ort if ort else None, 'x')} | {fmt(within, 'x')} |")
        lines.append("")
        if det["cpu_options_ratio"]:
            lines += ["openvino-bf16 / ORT FP32 as `make cpu-options` records it (batch 1), each method "
                      f"{len(det['cpu_options_ratio'][0]['ratios'])} times over: the spread is what one record can "
                      "be off by:", "",
                      "| method | competitor | ratios | median | max / min |", "|---|---|---|---:|---:|"]
            lines += [f"| {r['method']} | {'one busy process' if r['competitor'] else 'none'} | "
                      f"{', '.join(f'{v:.2f}×' for v in r['ratios'])} | {r['median']:.2f}× | "
                      f"{max(r['ratios']) / min(r['ratios']):.2f} |" for r in det["cpu_options_ratio"]]
            lines.append("")
        if det.get("contended"):
            lines += ["Batch 1, quiet and with one busy process competing for a core (threads: 0 = one per core):", "",
                      "| threads | competitor | ORT FP32 | OpenVINO FP32 | OpenVINO BF16 | BF16 / OpenVINO FP32 "
                      "| BF16 / ORT FP32 |", "|---:|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {r['threads']} | {'one busy process' if r['competitor'] else 'none'} | "
                      f"{r['ort-fp32']:.3g} | {r['openvino-fp32']:.3g} | {fmt(r.get('openvino-bf16'), 'sig3')} | "
                      f"{r['bf16_vs_openvino_fp32']:.2f}× | {r['bf16_vs_ort_fp32']:.2f}× |" for r in det["contended"]]
            lines.append("")
        for precision, rows in det["profile"].items():
            lines += [f"OpenVINO {precision}, batch 1, where the time goes (per call):", "",
                      "| layer type | ms | share | kernels |", "|---|---:|---:|---|"]
            lines += [f"| {r['layer']} | {r['ms']:.2f} | {r['share']:.0%} | {r['kernels']} |" for r in rows]
            lines.append("")
    if result.get("findings"):
        lines += ["## Findings", "", *[f"- {f}" for f in result["findings"]], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.bf16_why", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "opensdi_flux,sumsub_sd")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per engine per round")
    parser.add_argument("--gemm-n", type=int, default=1024)
    parser.add_argument("--no-pytorch", action="store_true", help="leave PyTorch out (a full-size EVA02 is slow)")
    parser.add_argument("--threads", type=int, default=0, help="threads per engine (default 0: one per core)")
    parser.add_argument("--ratio-images", type=int, default=6, help="images of table 3 (cpu-options' method)")
    parser.add_argument("--no-contention", action="store_true", help="leave table 5 out")
    parser.add_argument("--findings", type=Path, default=None,
                        help="a text file of findings (one per line) to add to the report")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report (and .json) here")
    args = parser.parse_args(argv)
    started = time.time()
    from genguard.export.flops import flops_per_image

    command = "python -m genguard.benchmarks.bf16_why " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command,
              "machine": machine.describe(), "openvino": openvino_facts(), "rounds": args.rounds, "detectors": [],
              "threads": args.threads}
    log(f"on {cpus.describe()}")
    log("1. the bare matrix multiply")
    result["gemm"] = gemm_rates(args.gemm_n)
    weights = set()
    for name in layout.chosen(args.detectors, lambda: ["opensdi_flux", "sumsub_sd"]):
        log(f"2. {name}: opening the engines")
        runners = Runners(args.build, name, torch_engines=not args.no_pytorch, threads=args.threads)
        weights.add(json.loads(onnx_runtime.metadata(runners.path).get("genguard.weights", '"?"')))
        det = {"detector": name, "input": f"{runners.spec.input.size[0]}×{runners.spec.input.size[1]}",
               "gflop_per_image": flops_per_image(runners.path) / 1e9, "side_by_side": {}}
        for batch in [int(b) for b in args.batches.split(",") if b]:
            log(f"   batch {batch}: {', '.join(runners.run)}")
            det["side_by_side"][batch] = side_by_side(runners, batch, args.rounds, args.calls)
        log(f"3. {name}: the ratio as make cpu-options measures it")
        det["cpu_options_ratio"] = cpu_options_ratio(runners, images=args.ratio_images)
        log(f"4. {name}: OpenVINO's per-layer profile")
        det["profile"] = openvino_profile(runners.path, runners.spec, threads=args.threads)
        if not args.no_contention:
            log(f"5. {name}: with a competing busy process")
            det["contended"] = contended(runners.path, runners.spec, args.calls)
        result["detectors"].append(det)
        del runners
    result["weights"] = ", ".join(sorted(weights))
    result["minutes"] = (time.time() - started) / 60
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.findings:
        result["findings"] = [line.strip() for line in args.findings.read_text().splitlines() if line.strip()]
    text = markdown(result)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
