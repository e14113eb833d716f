"""Table: the full ensemble, encoded bytes in, and how the served answers agree with the references'."""

from __future__ import annotations

import json

import numpy as np

from genguard import protocol, specs
from genguard.benchmarks import perf_analyzer
from genguard.benchmarks.compare.common import chunks, probs_of, timed
from genguard.benchmarks.report import agreement as agreement_of, ratio


def rows(bench, peak: dict) -> tuple[list[dict], dict]:
    from genguard.export.reference import open_rgb
    from genguard.preprocess import preprocess_bytes

    B, rounds = bench.args.batch, bench.args.rounds
    data = bench.data
    inputs = specs.distinct_inputs([d.spec for d in bench.detectors])

    def reference(batch):  # the cards one after another, each decoding the image itself
        return {d.name: d.reference.probs([open_rgb(b) for b in batch]) for d in bench.detectors}

    def ours(batch):  # decode once, one tensor per input spec, each detector's ORT session
        tensors = [preprocess_bytes(b, inputs)[1] for b in batch]
        out = {}
        for d in bench.detectors:
            x = np.stack([t[d.spec.input.name] for t in tensors])
            out[d.name] = probs_of(d.spec, d.session.run(None, {"pixels": x}))
        return out

    entries = perf_analyzer.image_entries(data)
    input_path = perf_analyzer.write_input_data(bench.workdir / "ensemble.json", entries)
    bench.warm_served(protocol.ENSEMBLE, protocol.pack_images(data[:2]))
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
    for c in [c for c in bench.args.concurrency if c <= len(data)]:  # same work: N requests
        modes[f"served c{c}"] = (lambda c=c: (perf_analyzer.run_fixed(
            bench.pa, protocol.ENSEMBLE, bench.served.url_grpc, "grpc", c, input_path, bench.workdir, len(data)), None))
    timings = bench.interleave(modes, rounds, f"ensemble of {len(bench.detectors)} detectors ({len(data)} images per mode)")

    flops = sum(d.flops for d in bench.detectors)
    rows = []
    for mode, t in timings.items():
        achieved = flops * t.images_per_s / 1e9
        rows.append({"table": "ensemble", "detector": "ensemble", "mode": mode, "images": t.images,
                     "seconds": t.seconds, "images_per_s": t.images_per_s, "p50_ms": t.p50_ms,
                     "p99_ms": t.p99_ms, "gflop_per_image": flops / 1e9, "achieved_gflops": achieved,
                     "of_peak": ratio(achieved, peak["fp32_peak_gflops"])})
    agree = agreement(bench, outputs["reference bB"], outputs["ours bB"])
    return rows, agree



def agreement(bench, reference_out: list[dict], ours_out: list[dict]) -> dict:
    """Served answers (one request per image) vs the reference's, per detector and for the fused score."""
    import tritonclient.grpc as grpcclient

    from genguard.fusion import Fuser, FusionConfig

    client = grpcclient.InferenceServerClient(bench.served.url_grpc)
    served_docs = []
    for data in bench.data:
        batch = protocol.pack_images([data])
        tensor = grpcclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        result = client.infer(protocol.ENSEMBLE, [tensor])
        served_docs.append(json.loads(result.as_numpy(protocol.RESULT).reshape(-1)[0]))
    client.close()
    failed = [n for n, d in zip(bench.names, served_docs) if d["status"] != protocol.SUCCESS]
    if failed:
        raise RuntimeError(f"the server refused sample images: {failed}")
    per_detector = {}
    for det in bench.detectors:
        ref = [np.concatenate([o[det.name][h] for o in reference_out]) for h in range(len(det.spec.heads))]
        our = [np.concatenate([o[det.name][h] for o in ours_out]) for h in range(len(det.spec.heads))]
        srv = [np.array([[d["detectors"][det.name][head.name][label] for label in head.labels]
                         for d in served_docs]) for head in det.spec.heads]
        per_detector[det.name] = {"served_vs_reference": agreement_of(ref, srv),
                                  "ours_vs_reference": agreement_of(ref, our)}
    fusion = FusionConfig.from_json(bench.served.fusion) if bench.served.fusion else FusionConfig()
    fuser = Fuser([d.spec for d in bench.detectors], fusion, {d.name: "n/a" for d in bench.detectors})
    fused_diff, verdicts = 0.0, 0
    index = 0
    for out in reference_out:
        for i in range(len(next(iter(out.values()))[0])):
            probs = {d.name: {h.name: dict(zip(h.labels, map(float, out[d.name][k][i])))
                              for k, h in enumerate(d.spec.heads)} for d in bench.detectors}
            ref_answer = fuser.fuse(probs)
            doc = served_docs[index]
            fused_diff = max(fused_diff, abs(ref_answer["is_ai_generated"] - doc["is_ai_generated"]))
            verdicts += ref_answer["verdict"] == doc["verdict"]
            index += 1
    worst = max((v["served_vs_reference"]["max_abs_prob"] for v in per_detector.values()), default=None)
    return {"detectors": per_detector, "max_abs_prob": worst, "fused_max_abs": fused_diff,
            "verdict_agreement": verdicts / max(1, index), "images": index}

