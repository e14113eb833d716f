"""Images/s of `genguard_explain` vs `genguard`, one detector at a time, on the cpu target.

python -m genguard.benchmarks.explain --build BUILD [--detectors a,b] [--images N] [--out benchmarks/results/explain-NAME]

For each detector: render a cpu repository serving only it, with the explain ensemble; start the real
tritonserver; send the same photos to `genguard` and to `genguard_explain` (sequentially, batches of
--batch, after one warm-up request each) and time them. BUILD needs explain.onnx for the CNNs
(python -m genguard.export.explain). Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from genguard import explanations, protocol, specs
from genguard.export import layout
from genguard.export.families import is_cnn
from genguard.benchmarks import report


COMPANION = "sumsub_sd"


def _rate(url: str, model: str, images: list[bytes], batch: int) -> tuple[float, int]:
    import tritonclient.grpc as grpc

    with grpc.InferenceServerClient(url) as client:
        def send(chunk):
            array = protocol.pack_images(chunk)
            inp = grpc.InferInput(protocol.INPUT, list(array.shape), "UINT8")
            inp.set_data_from_numpy(array)
            out = client.infer(model, [inp], client_timeout=3600)
            return [json.loads(r[0]) for r in out.as_numpy(protocol.RESULT)]

        send(images[:1])  # warm-up: first-run allocations
        started = time.perf_counter()
        failures = 0
        for start in range(0, len(images), batch):
            failures += sum(d["status"] != protocol.SUCCESS for d in send(images[start:start + batch]))
        return len(images) / (time.perf_counter() - started), failures


def bench_detector(build: Path, name: str, images: list[bytes], batch: int, workdir: Path) -> dict:
    from genguard import server
    from genguard.export.repository import render

    spec = specs.get(name)
    # fusion needs a binary head: a detector without one is served with the cheapest one beside it
    served = [name] if spec.head("binary") else [COMPANION, name]
    repository = render("cpu", build, workdir / f"repo-{name}", detectors=served, explain=True)
    ports = server.Ports(*server.free_ports(3))
    log = workdir / f"tritonserver-{name}.log"
    process = server.start(repository, workdir / f"home-{name}", ports=ports, log_file=log)
    try:
        server.wait_ready(process, ports, timeout=300, log_file=log)
        url = f"127.0.0.1:{ports.grpc}"
        plain, plain_failed = _rate(url, protocol.ENSEMBLE, images, batch)
        explained, explain_failed = _rate(url, explanations.EXPLAIN_ENSEMBLE, images, batch)
    finally:
        server.stop_pid(process.pid)
    method = explanations.GRADCAM if is_cnn(spec) else explanations.OCCLUSION
    passes = 1
    if method == explanations.OCCLUSION:
        g = spec.input.size[0] // explanations.occlusion_window(spec)
        passes = 1 + g * g
    return {"detector": name, "served_with": [n for n in served if n != name], "method": method, "forward_passes_per_image": passes, "images": len(images),
            "genguard_images_per_s": round(plain, 3), "genguard_explain_images_per_s": round(explained, 3),
            "slowdown": round(plain / explained, 2), "failures": plain_failed + explain_failed}


def markdown(rows: list[dict], meta: dict) -> str:
    named = [{**r, "name": f"`{r['detector']}`" + (f" (+ `{r['served_with'][0]}`)" if r.get("served_with") else "")}
             for r in rows]
    columns = [("name", "detector", ""), ("method", "method", ""), ("forward_passes_per_image", "forward passes / image", ""),
               ("images", "images", "int"), ("genguard_images_per_s", "genguard img/s", ".2f"),
               ("genguard_explain_images_per_s", "genguard_explain img/s", ".2f"), ("slowdown", "slowdown", "x")]
    return "\n".join([f"# genguard_explain vs genguard, cpu target ({meta['build']})", "",
                      f"{meta['machine']}; batches of {meta['batch']}; one detector served at a time; {meta['weights']}.",
                      "", report.markdown_table(named, columns)]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    layout.add_build_arguments(parser, "every exported one")
    parser.add_argument("--images", type=int, default=12, help="photos per run for the CNNs (default 12)")
    parser.add_argument("--occlusion-images", type=int, default=4, help="photos per run for occlusion (default 4)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain"))
    args = parser.parse_args(argv)
    from genguard.export import samples

    photos = list(samples.photos().values())
    names = layout.chosen(args.detectors, lambda: layout.exported(args.build))
    rows = []
    with tempfile.TemporaryDirectory(prefix="genguard-explain-bench-") as tmp:
        for name in names:
            count = args.images if is_cnn(specs.get(name)) else args.occlusion_images
            images = (photos * (count // len(photos) + 1))[:count]
            row = bench_detector(args.build, name, images, args.batch, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    weights = {layout.read_parity(layout.onnx_folder(args.build, n))["weights"] for n in names}
    meta = {"build": str(args.build), "batch": args.batch, "weights": "/".join(sorted(weights)) + " weights",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "python": sys.version.split()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
