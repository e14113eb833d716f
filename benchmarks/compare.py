"""make bench-compare: GenGuard side by side with the seeds' own pipelines, same machine, same run.

  python -m genguard.benchmarks.compare --build build [--images 8] [--detectors a,b] [--quick]

Against a running `make serve` (any options: FP32 or INT8=1, ORT_OPT, ORT_THREADS — read back from the
served configs), on the same real photos and the same checkpoints (each served detector's config names
its checkpoint; the reference pipelines load that one):

  (a) reference  each seed's pipeline as its card writes it: the card's preprocessing library + PyTorch
                 eager, one image at a time (b1) and batched (bB);
  (b) ours       GenGuard's preprocessing + ONNX Runtime in-process, with the served ONNX file and options;
  (c) served     through Triton (perf_analyzer, exactly the same requests), at each concurrency.

Tables (printed, and written to benchmarks/results/compare-<tag>.{md,csv,json}):
  1. per detector, model only (the same tensors in): images/s, p50/p99 latency, FLOPs/image and
     achieved/peak of the machine's matrix-multiply peak measured in this run;
  2. the full ensemble, encoded bytes in (the references run one after another): images/s, p50/p99,
     the ratios (c)/(a) and (c)/(b), and how (c)'s answers agree with (a)'s;
  3. CPU speed options in-process, each with its accuracy cost (ORT optimisation levels, threads, INT8);
  4. preprocessing alone: decode + resize of our preprocessing vs each reference library.
Modes are measured in turn on the same work, interleaved round by round (--rounds), because this machine
is shared and its speed drifts: ratios within one run are what to trust, absolute figures move ±15 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genguard import onnx_runtime, protocol, specs
from genguard.benchmarks import machine, perf_analyzer
from genguard.benchmarks.flops import flops_per_image
from genguard.benchmarks.report import (Timing, agreement, markdown_table, overhead, ratio, text_table,
                                        write_csv)
from genguard.scores import head_probs

PIPELINE_MODELS = (protocol.ENSEMBLE, protocol.PREPROCESS, protocol.POSTPROCESS)
TARGET_FP32 = {"speedup": 1.0, "max_abs_prob": 1e-4}
TARGET_INT8 = {"speedup": 2.0, "max_abs_prob": 1e-2}
TARGET_OVERHEAD = 0.10


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


# ---------------------------------------------------------------------------------------------------
# what the server serves


@dataclass
class Served:
    url_http: str
    url_grpc: str
    version: str
    detectors: dict[str, dict]  # name -> config parameters
    fusion: str | None


def discover(http_url: str, grpc_url: str) -> Served:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url)
    if not client.is_server_ready():
        raise RuntimeError(f"no ready server at {http_url}: start one with `make serve` (WEIGHTS=random works)")
    version = client.get_server_metadata().get("version", "?")
    names = [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]
    if protocol.ENSEMBLE not in names:
        client.close()
        raise RuntimeError(f"{http_url} serves no `{protocol.ENSEMBLE}` ensemble (models: {names})")
    params = lambda name: {k: v["string_value"] for k, v in client.get_model_config(name).get("parameters", {}).items()}  # noqa: E731
    detectors = {n: params(n) for n in names if n not in PIPELINE_MODELS and n in specs.DETECTORS}
    fusion = params(protocol.POSTPROCESS).get("fusion")
    client.close()
    return Served(http_url, grpc_url, version, detectors, fusion)


@dataclass
class Detector:
    spec: specs.DetectorSpec
    params: dict
    onnx: Path          # the file the server serves (FP32 or INT8)
    fp32_onnx: Path
    checkpoint: str
    reference: object   # export.reference.ReferencePipeline
    session: object
    flops: int
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def threads(self) -> int | None:
        return int(self.params.get("intra_op_threads", "0")) or None

    @property
    def optimization(self) -> str:
        return self.params.get("optimization", "all")


def load_detector(name: str, params: dict, build: Path) -> Detector:
    """The served detector's spec (labels as exported), its ONNX in `build`, and its reference pipeline
    on the checkpoint the served config names."""
    from genguard.export.checkpoints import load
    from genguard.export.reference import ReferencePipeline

    folder = build / "onnx" / name
    onnx_path, fp32 = folder / params.get("onnx_file", "model.onnx"), folder / "model.onnx"
    if not onnx_path.is_file():
        raise RuntimeError(f"{name}: the server serves {onnx_path.name} but {onnx_path} is missing: "
                           f"pass the --build the server was started from")
    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(onnx_path))
    if meta.get("checkpoint") != params.get("checkpoint"):
        raise RuntimeError(f"{name}: {onnx_path} was exported from {meta.get('checkpoint')} but the server serves "
                           f"{params.get('checkpoint')}: pass the --build the server was started from")
    spec = specs.get(name)
    for head, labels in meta.get("heads", {}).items():
        spec = specs.with_labels(spec, head, tuple(labels))
    checkpoint = params["checkpoint"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning; the tables say "random" already
        module = load(spec, checkpoint)
    reference = ReferencePipeline(spec, module, checkpoint)
    threads = int(params.get("intra_op_threads", "0")) or None
    session = onnx_runtime.session(onnx_path, threads=threads, optimization=params.get("optimization", "all"),
                                   spinning=False)
    return Detector(spec, params, onnx_path, fp32, checkpoint, reference, session, flops_per_image(fp32))


def sample_images(count: int) -> dict[str, bytes]:
    """`count` of the real photos scikit-image ships (cycled when more are asked for)."""
    from genguard.export import samples

    photos = samples.photos()
    names = [list(photos)[i % len(photos)] for i in range(count)]
    return {f"{i:02d}-{n}": photos[n] for i, n in enumerate(names)}


# ---------------------------------------------------------------------------------------------------
# measurements


def probs_of(spec, logits: list[np.ndarray]) -> list[np.ndarray]:
    return [head_probs(h, x) for h, x in zip(spec.heads, logits)]


def concat_heads(outputs: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate([o[h] for o in outputs]) for h in range(len(outputs[0]))]


class Bench:
    def __init__(self, args, served: Served, detectors: list[Detector], images: dict[str, bytes], pa):
        self.args, self.served, self.detectors, self.images, self.pa = args, served, detectors, images, pa
        self.workdir = Path(args.scratch or Path(args.build) / "bench") / "compare"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.names = list(images)
        self.data = list(images.values())

    # -- per detector, model only --------------------------------------------------------------------

    def detector_rows(self, det: Detector, peak: dict) -> tuple[list[dict], dict]:
        """The same tensors through torch eager, ORT in-process and Triton's detector model."""
        import torch
        from genguard.export.reference import open_rgb

        B, rounds = self.args.batch, self.args.detector_rounds
        pixels = det.reference.tensors([open_rgb(b) for b in self.data])  # the card's preprocessing
        arrays = pixels.numpy()
        # Same work in every mode; small models repeat the images so each mode runs long enough to time.
        t0 = time.perf_counter()
        det.session.run(None, {"pixels": arrays[:B]})
        per_image = (time.perf_counter() - t0) / min(B, len(arrays))
        repeat = int(min(50, max(1, math.ceil(self.args.min_seconds / max(per_image * len(arrays), 1e-6)))))
        tensors = np.concatenate([arrays] * repeat)
        torch_tensors = torch.from_numpy(tensors)
        # warm-up: first calls at a new shape allocate (oneDNN primitives, ORT arenas)
        det.reference.logits(torch_tensors[:1])
        det.reference.logits(torch_tensors[:B])
        det.session.run(None, {"pixels": arrays[:1]})
        entries = [{protocol.DETECTOR_INPUT: a} for a in arrays]
        input_path = perf_analyzer.write_input_data(self.workdir / f"{det.name}.json", entries)
        self._warm_served(det.name, arrays[:min(4, len(arrays))])

        modes = {
            "reference b1": lambda: timed(lambda x: det.reference.logits(x), [torch_tensors[i:i + 1] for i in range(len(tensors))]),
            f"reference b{B}": lambda: timed(lambda x: det.reference.logits(x), chunks(torch_tensors, B)),
            "ours b1": lambda: timed(lambda x: det.session.run(None, {"pixels": x}), [tensors[i:i + 1] for i in range(len(tensors))]),
            f"ours b{B}": lambda: timed(lambda x: det.session.run(None, {"pixels": x}), chunks(tensors, B)),
        }
        for c in [c for c in self.args.detector_concurrency if c <= len(tensors)]:
            modes[f"served c{c}"] = (lambda c=c: (perf_analyzer.run_fixed(
                self.pa, det.name, self.served.url_grpc, "grpc", c, input_path, self.workdir, len(tensors)), None))
        timings = self._interleave(modes, rounds, f"{det.name} (model only, {len(tensors)} images per mode)")
        rows = []
        for mode, t in timings.items():
            achieved = det.flops * t.images_per_s / 1e9
            rows.append({"table": "detector", "detector": det.name, "mode": mode, "images": t.images,
                         "seconds": t.seconds, "images_per_s": t.images_per_s, "p50_ms": t.p50_ms,
                         "p99_ms": t.p99_ms, "gflop_per_image": det.flops / 1e9, "achieved_gflops": achieved,
                         "of_peak": ratio(achieved, peak["fp32_peak_gflops"])})
        return rows, {"repeat": repeat}

    def _warm_served(self, model: str, arrays: np.ndarray) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.served.url_grpc)
        tensor = grpcclient.InferInput(protocol.DETECTOR_INPUT if model != protocol.ENSEMBLE else protocol.INPUT,
                                       list(arrays.shape), "FP32" if arrays.dtype == np.float32 else "UINT8")
        tensor.set_data_from_numpy(arrays)
        client.infer(model, [tensor])
        client.close()

    def _interleave(self, modes: dict, rounds: int, what: str) -> dict[str, Timing]:
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

    def ensemble_rows(self, peak: dict) -> tuple[list[dict], dict]:
        from genguard.export.reference import open_rgb
        from genguard.preprocess import preprocess_bytes

        B, rounds = self.args.batch, self.args.rounds
        data = self.data
        inputs = specs.distinct_inputs([d.spec for d in self.detectors])

        def reference(batch):  # the cards one after another, each decoding the image itself
            return {d.name: d.reference.probs([open_rgb(b) for b in batch]) for d in self.detectors}

        def ours(batch):  # decode once, one tensor per input spec, each detector's ORT session
            tensors = [preprocess_bytes(b, inputs)[1] for b in batch]
            out = {}
            for d in self.detectors:
                x = np.stack([t[d.spec.input.name] for t in tensors])
                out[d.name] = probs_of(d.spec, d.session.run(None, {"pixels": x}))
            return out

        entries = perf_analyzer.image_entries(data)
        input_path = perf_analyzer.write_input_data(self.workdir / "ensemble.json", entries)
        self._warm_served(protocol.ENSEMBLE, protocol.pack_images(data[:2]))
        reference(data[:1])  # warm-up, one image each way
        ours(data[:1])
        outputs = {}

        def keep(mode, fn):
            def run():
                timing, outs = fn()
                outputs[mode] = outs
                return timing, outs
            return run

        modes = {
            "reference b1": keep("reference b1", lambda: timed(reference, [[b] for b in data])),
            f"reference b{B}": keep("reference bB", lambda: timed(reference, chunks(data, B))),
            "ours b1": keep("ours b1", lambda: timed(ours, [[b] for b in data])),
            f"ours b{B}": keep("ours bB", lambda: timed(ours, chunks(data, B))),
        }
        for c in [c for c in self.args.concurrency if c <= len(data)]:  # same work: N requests
            modes[f"served c{c}"] = (lambda c=c: (perf_analyzer.run_fixed(
                self.pa, protocol.ENSEMBLE, self.served.url_grpc, "grpc", c, input_path, self.workdir, len(data)), None))
        timings = self._interleave(modes, rounds, f"ensemble of {len(self.detectors)} detectors ({len(data)} images per mode)")

        flops = sum(d.flops for d in self.detectors)
        rows = []
        for mode, t in timings.items():
            achieved = flops * t.images_per_s / 1e9
            rows.append({"table": "ensemble", "detector": "ensemble", "mode": mode, "images": t.images,
                         "seconds": t.seconds, "images_per_s": t.images_per_s, "p50_ms": t.p50_ms,
                         "p99_ms": t.p99_ms, "gflop_per_image": flops / 1e9, "achieved_gflops": achieved,
                         "of_peak": ratio(achieved, peak["fp32_peak_gflops"])})
        agree = self.agreement(outputs["reference bB"], outputs["ours bB"])
        return rows, agree

    def agreement(self, reference_out: list[dict], ours_out: list[dict]) -> dict:
        """Served answers (one request per image) vs the reference's, per detector and for the fused score."""
        import tritonclient.grpc as grpcclient

        from genguard.fusion import Fuser, FusionConfig

        client = grpcclient.InferenceServerClient(self.served.url_grpc)
        served_docs = []
        for data in self.data:
            batch = protocol.pack_images([data])
            tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            result = client.infer(protocol.ENSEMBLE, [tensor])
            served_docs.append(json.loads(result.as_numpy(protocol.RESULT).reshape(-1)[0]))
        client.close()
        failed = [n for n, d in zip(self.names, served_docs) if d["status"] != protocol.SUCCESS]
        if failed:
            raise RuntimeError(f"the server refused sample images: {failed}")
        per_detector = {}
        for det in self.detectors:
            ref = [np.concatenate([o[det.name][h] for o in reference_out]) for h in range(len(det.spec.heads))]
            our = [np.concatenate([o[det.name][h] for o in ours_out]) for h in range(len(det.spec.heads))]
            srv = [np.array([[d["detectors"][det.name][head.name][label] for label in head.labels]
                             for d in served_docs]) for head in det.spec.heads]
            per_detector[det.name] = {"served_vs_reference": agreement(ref, srv),
                                      "ours_vs_reference": agreement(ref, our)}
        fusion = FusionConfig.from_json(self.served.fusion) if self.served.fusion else FusionConfig()
        fuser = Fuser([d.spec for d in self.detectors], fusion, {d.name: "n/a" for d in self.detectors})
        fused_diff, verdicts = 0.0, 0
        index = 0
        for out in reference_out:
            for i in range(len(next(iter(out.values()))[0])):
                probs = {d.name: {h.name: dict(zip(h.labels, map(float, out[d.name][k][i])))
                                  for k, h in enumerate(d.spec.heads)} for d in self.detectors}
                ref_answer = fuser.fuse(probs)
                doc = served_docs[index]
                fused_diff = max(fused_diff, abs(ref_answer["is_ai_generated"] - doc["is_ai_generated"]))
                verdicts += ref_answer["verdict"] == doc["verdict"]
                index += 1
        worst = max((v["served_vs_reference"]["max_abs_prob"] for v in per_detector.values()), default=None)
        return {"detectors": per_detector, "max_abs_prob": worst, "fused_max_abs": fused_diff,
                "verdict_agreement": verdicts / max(1, index), "images": index}

    # -- CPU speed options, in-process ----------------------------------------------------------------

    def option_rows(self, det: Detector, reference_probs: list[np.ndarray], repeat: int) -> list[dict]:
        from genguard.export.quantize import INT8_FILE
        from genguard.export.reference import open_rgb

        B = self.args.batch
        pixels = det.reference.tensors([open_rgb(b) for b in self.data]).numpy()
        tensors = np.concatenate([pixels] * repeat)
        threads = det.threads
        configs = [(f"opt={level}", det.fp32_onnx, level, threads) for level in ("disable", "basic", "extended", "all")]
        configs.append(("threads=1", det.fp32_onnx, "all", 1))
        int8 = det.fp32_onnx.with_name(INT8_FILE)
        configs.append(("INT8 (model.int8.onnx)", int8, "all", threads))
        every = self._int8_every_matmul(det)
        if every:
            configs.append(("INT8, every MatMul", every, "all", threads))
        notes = {"INT8 (model.int8.onnx)": self._int8_note(int8),
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

        timings = self._interleave({k: keep(k, v) for k, v in modes.items()}, self.args.options_rounds,
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

    def _int8_every_matmul(self, det: Detector) -> Path | None:
        """Every MatMul/Gemm candidate quantised, without the accuracy budget of model.int8.onnx: the speed
        dynamic INT8 could give, next to what it costs. None for the CNNs (no candidates)."""
        import onnx

        from genguard.export.quantize import quantize_model, select_nodes

        model = onnx.load(str(det.fp32_onnx))
        names, _ = select_nodes(model)
        if not names:
            return None
        path = self.workdir / f"{det.name}.int8-every-matmul.onnx"
        quantize_model(model, path, names, settings={"quantized_nodes": len(names), "benchmark_only": True})
        return path

    @staticmethod
    def _int8_note(path: Path) -> str | None:
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

    def preprocessing_rows(self) -> list[dict]:
        from genguard.export import samples
        from genguard.export.reference import open_rgb
        from genguard.preprocess import preprocess_bytes

        sets = {"photos": self.data, "12 MP JPEG": [samples.edge_cases()["large4000x3000.jpg"]]}
        inputs = specs.distinct_inputs([d.spec for d in self.detectors])
        rows = []
        for set_name, data in sets.items():
            t0 = time.perf_counter()
            preprocess_bytes(data[0], inputs)
            per = max(time.perf_counter() - t0, 1e-4)
            repeat = int(min(200, max(1, math.ceil(self.args.min_seconds / 2 / (per * len(data))))))
            work = data * repeat
            log(f"preprocessing, {set_name}: {len(work)} images per mode")
            modes = {}
            for det in self.detectors:
                modes[(det.name, "reference")] = lambda det=det: timed(
                    lambda b: det.reference.transform(open_rgb(b[0])), [[b] for b in work])
                modes[(det.name, "ours")] = lambda det=det: timed(
                    lambda b: preprocess_bytes(b[0], {det.spec.input.name: det.spec.input}), [[b] for b in work])
            modes[("all detectors", "reference")] = lambda: timed(
                lambda b: [d.reference.transform(open_rgb(b[0])) for d in self.detectors], [[b] for b in work])
            modes[("all detectors", "ours")] = lambda: timed(lambda b: preprocess_bytes(b[0], inputs), [[b] for b in work])
            results = {}
            for key, run in modes.items():
                results[key] = run()[0]
            for det_name in [d.name for d in self.detectors] + ["all detectors"]:
                ref, our = results[(det_name, "reference")], results[(det_name, "ours")]
                rows.append({"table": "preprocessing", "images_set": set_name, "detector": det_name,
                             "reference_images_per_s": ref.images_per_s, "ours_images_per_s": our.images_per_s,
                             "reference_p50_ms": ref.p50_ms, "ours_p50_ms": our.p50_ms,
                             "speedup": ratio(our.images_per_s, ref.images_per_s)})
        return rows


# ---------------------------------------------------------------------------------------------------
# summary and writing


def best_peak(first: dict, second: dict) -> dict:
    """The higher of two peak probes, key by key: on a shared machine a probe can only under-read."""
    out = {k: max(v, second[k]) if isinstance(v, (int, float)) and second.get(k) is not None else v
           for k, v in first.items()}
    out["probes"] = [first.get("fp32_peak_gflops"), second.get("fp32_peak_gflops")]
    return out


def best(rows: list[dict], detector: str, prefix: str) -> dict | None:
    cands = [r for r in rows if r["detector"] == detector and r["mode"].startswith(prefix)]
    return max(cands, key=lambda r: r["images_per_s"]) if cands else None


def summarize(rows: list[dict], name: str) -> dict:
    """Best mode of each side, and the ratios: served/reference (vs the reference's faster mode and vs
    one at a time) and served/ours (Triton's overhead at its best concurrency)."""
    ref_b1 = next((r for r in rows if r["detector"] == name and r["mode"] == "reference b1"), None)
    ref, ours, served = best(rows, name, "reference"), best(rows, name, "ours"), best(rows, name, "served")
    return {
        "detector": name,
        "reference_best": ref and ref["mode"], "reference_images_per_s": ref and ref["images_per_s"],
        "ours_best": ours and ours["mode"], "ours_images_per_s": ours and ours["images_per_s"],
        "served_best": served and served["mode"], "served_images_per_s": served and served["images_per_s"],
        "served_p50_ms": served and served["p50_ms"], "served_p99_ms": served and served["p99_ms"],
        "served_vs_reference": ratio(served and served["images_per_s"], ref and ref["images_per_s"]),
        "served_vs_reference_b1": ratio(served and served["images_per_s"], ref_b1 and ref_b1["images_per_s"]),
        "served_vs_ours": ratio(served and served["images_per_s"], ours and ours["images_per_s"]),
        "triton_overhead": overhead(served and served["images_per_s"], ours and ours["images_per_s"]),
        "of_peak": served and served["of_peak"],
    }


def targets(summary: dict, agree: dict, int8: bool) -> list[dict]:
    """The issue's targets against this run's figures: met or missed, and by how much."""
    goal = TARGET_INT8 if int8 else TARGET_FP32
    mode = "INT8" if int8 else "FP32"
    speed, acc = summary["served_vs_reference"], agree.get("max_abs_prob")
    out = [
        {"target": f"{mode}: served ensemble vs the references run one after another (batched) ≥ {goal['speedup']:.1f}×",
         "value": speed, "goal": goal["speedup"], "met": speed is not None and speed >= goal["speedup"],
         "fmt": "x"},
        {"target": f"{mode}: max |Δprob| served vs reference ≤ {goal['max_abs_prob']:.0e}", "value": acc,
         "goal": goal["max_abs_prob"], "met": acc is not None and acc <= goal["max_abs_prob"], "fmt": "sci"},
        {"target": f"Triton overhead over in-process ONNX Runtime at the best concurrency ≤ {TARGET_OVERHEAD:.0%}",
         "value": summary["triton_overhead"], "goal": TARGET_OVERHEAD,
         "met": summary["triton_overhead"] is not None and summary["triton_overhead"] <= TARGET_OVERHEAD,
         "fmt": "pct"},
    ]
    for t in out:
        if t["value"] is None:
            t["by"] = None
        elif t["fmt"] == "x":
            t["by"] = t["value"] / t["goal"] - 1.0  # +: ahead of the goal
        elif t["fmt"] == "sci":
            t["by"] = t["goal"] / t["value"] - 1.0 if t["value"] else float("inf")
        else:
            t["by"] = t["goal"] - t["value"]
    return out


DETECTOR_COLUMNS = [("detector", "detector", "sig3"), ("mode", "mode", "sig3"), ("images_per_s", "images/s", "sig3"),
                    ("p50_ms", "p50 ms", "sig3"), ("p99_ms", "p99 ms", "sig3"),
                    ("gflop_per_image", "GFLOP/img", "sig3"), ("achieved_gflops", "GFLOP/s", "sig3"),
                    ("of_peak", "of peak", "pct")]
SUMMARY_COLUMNS = [("detector", "detector", "sig3"), ("reference_best", "(a) best", "sig3"),
                   ("reference_images_per_s", "(a) img/s", "sig3"), ("ours_best", "(b) best", "sig3"),
                   ("ours_images_per_s", "(b) img/s", "sig3"), ("served_best", "(c) best", "sig3"),
                   ("served_images_per_s", "(c) img/s", "sig3"), ("served_p50_ms", "(c) p50 ms", "sig3"),
                   ("served_p99_ms", "(c) p99 ms", "sig3"), ("served_vs_reference", "(c)/(a)", "x"),
                   ("served_vs_reference_b1", "(c)/(a) b1", "x"), ("served_vs_ours", "(c)/(b)", "x"),
                   ("max_abs_prob", "max |Δprob| (c) vs (a)", "sci"), ("top1_agreement", "top-1 agree", "pct"),
                   ("of_peak", "(c) of peak", "pct")]
OPTION_COLUMNS = [("detector", "detector", "sig3"), ("option", "option", "sig3"), ("images_per_s", "images/s", "sig3"),
                  ("speedup", "vs opt=all", "x"), ("max_abs_prob", "max |Δprob| vs (a)", "sci"),
                  ("top1_agreement", "top-1 agree", "pct"), ("note", "note", "sig3")]
PRE_COLUMNS = [("images_set", "images", "sig3"), ("detector", "input of", "sig3"),
               ("reference_images_per_s", "reference img/s", "sig3"), ("ours_images_per_s", "ours img/s", "sig3"),
               ("reference_p50_ms", "reference p50 ms", "sig3"), ("ours_p50_ms", "ours p50 ms", "sig3"),
               ("speedup", "ours/reference", "x")]
TARGET_COLUMNS = [("target", "target", "sig3"), ("shown", "this run", "sig3"), ("status", "met?", "sig3")]


def target_rows(items: list[dict]) -> list[dict]:
    from genguard.benchmarks.report import fmt

    rows = []
    for t in items:
        status = "—" if t["value"] is None else ("met" if t["met"] else "MISSED")
        if t["value"] is not None and t["by"] is not None and math.isfinite(t["by"]):
            if t["fmt"] == "x":
                status += f" ({abs(t['by']):.0%} {'ahead' if t['by'] >= 0 else 'short'})"
            elif t["fmt"] == "pct":
                status += f" ({abs(t['by']) * 100:.1f} points {'to spare' if t['by'] >= 0 else 'over'})"
            elif t["fmt"] == "sci" and not t["met"]:
                status += f" ({t['value'] / t['goal']:.1f}× the bound)"
        rows.append({"target": t["target"], "shown": fmt(t["value"], t["fmt"]), "status": status})
    return rows


def markdown(result: dict) -> str:
    from genguard.benchmarks.report import fmt

    args, B = result["args"], result["args"]["batch"]
    served = result["served"]
    opts = served["options"]
    parts = [
        f"# GenGuard vs the reference pipelines — {result['tag']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Run: {result['started']} – {result['finished']} ({result['minutes']:.1f} min); "
        f"server: tritonserver {served['version']} serving {opts}; weights: {', '.join(sorted(set(served['weights'])))}; "
        f"{args['images']} real photos (scikit-image), batch B={B}, {args['rounds']} interleaved round(s) for the "
        f"ensemble, {args['detector_rounds']} per detector; load average at the end "
        f"{result['machine'].get('load_average_at_end')}.",
        "",
        "## Machine",
        "",
        machine.describe_markdown(result["machine"], result["peak"]),
        "",
        "## Targets",
        "",
        markdown_table(target_rows(result["targets"]), TARGET_COLUMNS),
        "",
        "## Summary: served (c) vs reference (a) and in-process (b)",
        "",
        "(a) the seed's card pipeline: its preprocessing library + PyTorch eager; (b) GenGuard's preprocessing + "
        "ONNX Runtime in-process; (c) through Triton (perf_analyzer, gRPC, same requests). Best mode of each; "
        "(c)/(a) is against the reference's faster mode, (c)/(a) b1 against one image at a time. Detector rows are "
        "the model alone (the same tensors in); the ensemble row is encoded bytes in, answers out (the references "
        "run one after another). Agreement: (c)'s answers (through the whole ensemble) vs (a)'s on the same images.",
        "",
        markdown_table(result["summary"], SUMMARY_COLUMNS),
        "",
        f"Fused `is_ai_generated`: max |Δ| served vs reference {fmt(result['agreement'].get('fused_max_abs'), 'sci')}, "
        f"verdict agreement {fmt(result['agreement'].get('verdict_agreement'), 'pct')}.",
        "",
        "## Every mode",
        "",
        f"Latency is per request: one image (b1, served) or one batch of {B} (bB). GFLOP/img counts MatMul/Gemm/Conv "
        "(2 per multiply-add); of peak = achieved GFLOP/s over the FP32 matrix-multiply peak measured above.",
        "",
        markdown_table(result["ensemble"] + result["detectors"], DETECTOR_COLUMNS),
    ]
    if result["options"]:
        parts += ["", "## CPU speed options (in-process ONNX Runtime, batched) and their accuracy cost", "",
                  "Off by default; switches: `make serve ORT_OPT=basic|extended|all ORT_THREADS=N INT8=1` "
                  "(INT8 models come from `python -m genguard.export.quantize --build build`). max |Δprob| is against "
                  "the reference pipeline (a) on the same images.", "",
                  markdown_table(result["options"], OPTION_COLUMNS)]
    if result["preprocessing"]:
        parts += ["", "## Preprocessing alone: decode + resize + normalise", "",
                  "Per image, single thread: each reference library's transform after `Image.open(...).convert('RGB')` "
                  "vs GenGuard's Pillow/numpy (bit-identical output). `all detectors`: every reference in turn vs one "
                  "decode shared by every input spec (what the `preprocess` model does).", "",
                  markdown_table(result["preprocessing"], PRE_COLUMNS)]
    if result.get("notes"):
        parts += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(parts) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, default=Path("build"), help="the build the server was started from")
    parser.add_argument("--http-url", default="127.0.0.1:8000")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001")
    parser.add_argument("--images", type=int, default=8, help="real photos per mode (default 8)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched modes (default 8)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds of the ensemble comparison (default 2)")
    parser.add_argument("--detector-rounds", type=int, default=1,
                        help="interleaved rounds of each detector's comparison (default 1)")
    parser.add_argument("--detectors", default="", help="comma-separated subset for the detector tables "
                                                        "(the ensemble row always runs every served detector)")
    parser.add_argument("--options-rounds", type=int, default=2,
                        help="interleaved rounds of the speed-options table (default 2)")
    parser.add_argument("--concurrency", default="1,2,4", help="served ensemble concurrencies (default 1,2,4)")
    parser.add_argument("--detector-concurrency", default="1,4", help="served detector concurrencies (default 1,4)")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="small models repeat the images so that each mode works at least this long")
    parser.add_argument("--no-options", action="store_true", help="skip the speed-options table")
    parser.add_argument("--no-preprocessing", action="store_true", help="skip the preprocessing table")
    parser.add_argument("--no-ensemble", action="store_true", help="skip the full-ensemble comparison")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --images 2 --batch 2 --min-seconds 0.2, no options table")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="time per matrix-multiply peak probe")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--scratch", type=Path, default=None, help="perf_analyzer inputs and logs (default BUILD/bench)")
    parser.add_argument("--tag", default="", help="output name suffix (default: from the served options)")
    parser.add_argument("--perf-analyzer", default=None, help="a perf_analyzer binary (default: fetch 2.51.0)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.min_seconds, args.no_options = min(args.images, 2), min(args.batch, 2), 0.2, True
        args.rounds = args.detector_rounds = args.options_rounds = 1
    args.batch = max(1, min(args.batch, args.images))
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c]
    args.detector_concurrency = [int(c) for c in str(args.detector_concurrency).split(",") if c]
    return args


def serves_int8(detectors: list[Detector]) -> bool:
    """Whether the running server serves any detector's INT8 model (read from its configs, not a tag)."""
    from genguard.export.quantize import INT8_FILE

    return any(d.onnx.name == INT8_FILE for d in detectors)


def served_tag(detectors: list[Detector]) -> str:
    tag = "int8" if serves_int8(detectors) else "fp32"
    opt = {d.optimization for d in detectors}
    threads = {d.threads for d in detectors}
    if opt != {"all"}:
        tag += "-opt_" + "_".join(sorted(opt))
    if threads != {None}:
        tag += "-threads_" + "_".join(str(t or 0) for t in sorted(threads, key=lambda t: t or 0))
    return tag


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m genguard.benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    try:
        pa = perf_analyzer.obtain(args.perf_analyzer)
        served = discover(args.http_url, args.grpc_url)
    except (perf_analyzer.PerfAnalyzerUnavailable, RuntimeError, OSError) as exc:
        print(f"bench-compare: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # tritonclient raises its own types for refused connections
        print(f"bench-compare: cannot reach the server at {args.http_url}: {exc}\n"
              "start one with `make serve` (WEIGHTS=random works)", file=sys.stderr)
        return 1
    log(f"server {args.http_url}: tritonserver {served.version}, detectors {', '.join(served.detectors)}")
    info = machine.describe()
    log("measuring the matrix-multiply peak")
    peak = machine.matmul_peak(seconds=args.peak_seconds)
    log(machine.peak_summary(peak))
    try:
        detectors = [load_detector(n, p, args.build) for n, p in served.detectors.items()]
    except RuntimeError as exc:
        print(f"bench-compare: {exc}", file=sys.stderr)
        return 1
    images = sample_images(args.images)
    bench = Bench(args, served, detectors, images, pa)
    chosen = [d for d in detectors if not args.detectors or d.name in args.detectors.split(",")]
    tag = args.tag or served_tag(detectors)

    detector_rows, option_rows, summary, repeats = [], [], [], {}
    ensemble_rows, agree = [], {}
    if not args.no_ensemble:
        ensemble_rows, agree = bench.ensemble_rows(peak)
    for det in chosen:
        rows, extra = bench.detector_rows(det, peak)
        detector_rows += rows
        repeats[det.name] = extra["repeat"]
    # reference probabilities for the options table: the card pipeline on the sample images
    for det in chosen if not args.no_options else []:
        from genguard.export.reference import open_rgb

        ref_probs = det.reference.probs([open_rgb(b) for b in bench.data])
        option_rows += bench.option_rows(det, ref_probs, repeats[det.name])
    pre_rows = [] if args.no_preprocessing else bench.preprocessing_rows()
    log("measuring the matrix-multiply peak again (the run's peak is the higher of the two)")
    peak = best_peak(peak, machine.matmul_peak(seconds=args.peak_seconds))
    log(machine.peak_summary(peak))
    for row in ensemble_rows + detector_rows:
        row["of_peak"] = ratio(row["achieved_gflops"], peak["fp32_peak_gflops"])

    all_rows = ensemble_rows + detector_rows
    names = (["ensemble"] if ensemble_rows else []) + [d.name for d in chosen]
    for name in names:
        s = summarize(all_rows, name)
        if name == "ensemble":
            s.update({"max_abs_prob": agree.get("max_abs_prob"),
                      "top1_agreement": min((v["served_vs_reference"]["top1_agreement"]
                                             for v in agree["detectors"].values()), default=None)})
        elif agree:
            s.update(agree["detectors"][name]["served_vs_reference"])
        summary.append(s)
    # Judged by what the server serves: a --tag names the output files, it doesn't choose the targets.
    target_items = targets(summary[0], agree, serves_int8(detectors)) if ensemble_rows else []
    finished = time.time()
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "tag": tag, "command": command, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "finished": time.strftime("%H:%M:%S", time.localtime(finished)), "minutes": (finished - started) / 60,
        "machine": info, "peak": peak,
        "served": {"version": served.version, "weights": [d.params.get("weights", "?") for d in detectors],
                   "options": ", ".join(sorted({f"{d.onnx.name} opt={d.optimization} threads={d.threads or 'default'}"
                                                for d in detectors})),
                   "detectors": {d.name: d.params for d in detectors}},
        "flops": {d.name: d.flops for d in detectors}, "repeats": repeats,
        "summary": summary, "ensemble": ensemble_rows, "detectors": detector_rows, "options": option_rows,
        "preprocessing": pre_rows, "agreement": agree, "targets": target_items,
    }
    write(result, args.out)
    print()
    print(text_table(target_rows(target_items), TARGET_COLUMNS) if target_items else "")
    print()
    print(text_table(summary, SUMMARY_COLUMNS))
    print()
    print(text_table(ensemble_rows + detector_rows, DETECTOR_COLUMNS))
    if option_rows:
        print()
        print(text_table(option_rows, OPTION_COLUMNS))
    if pre_rows:
        print()
        print(text_table(pre_rows, PRE_COLUMNS))
    print(f"\nwritten: {args.out}/compare-{tag}.md, .csv, .json ({result['minutes']:.1f} min)")
    return 0


def write(result: dict, out: Path) -> None:
    tag = result["tag"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"compare-{tag}.md").write_text(markdown(result))
    rows = result["ensemble"] + result["detectors"] + result["options"] + result["preprocessing"]
    write_csv(out / f"compare-{tag}.csv", rows, ["table", "detector", "mode", "option", "images_set", "images",
                                                   "seconds", "images_per_s", "p50_ms", "p99_ms"])
    (out / f"compare-{tag}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
