"""`genguard scan` vs `genguard detect`: one run, the same server, the same images, the same concurrency; and the
scan driver's peak memory while listing a million tiny files.

    python -m genguard.benchmarks.scan --url 127.0.0.1:8001 [--images 1000] [--concurrency 2] [--files 1000000]

Throughput: detect = genguard.client.Client.detect over the folder (what `genguard detect` runs); scan =
genguard.scan.run.scan over the same folder into a fresh dataset, on a local Ray started before the clock
(Ray's start is reported apart: it is paid once per scan, not per image). Rounds alternate detect and scan.
Listing: a child process runs the driver's listing step (walk + Parquet listing chunks) over `--files` empty
files; its peak RSS (ru_maxrss) is the figure, the interpreter and pyarrow included.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import machine

TIMEOUT = 600.0  # per request: a loaded shared machine answers late, and a timed-out image would skew the rates


def _images(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        (folder / f"{i:06d}.png").write_bytes(buffer.getvalue())


def throughput(url: str, folder: Path, count: int, concurrency: int, batch_size: int | None, rounds: int) -> dict:
    import ray

    from genguard.client import Client
    from genguard.scan.run import Options, scan

    clock = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
    ray_start = time.monotonic() - clock
    detect, scanned, failed = [], [], {"detect": 0, "scan": 0}
    try:
        for _ in range(rounds):
            with Client(url, concurrency=concurrency, batch_size=batch_size, timeout=TIMEOUT) as client:
                start = time.monotonic()
                results = client.detect(folder)
                detect.append(count / (time.monotonic() - start))
            assert len(results) == count
            failed["detect"] += sum(not r.ok for r in results)
            out = Path(tempfile.mkdtemp(prefix="genguard-scan-bench-"))
            start = time.monotonic()
            summary = scan([str(folder)], out, Options(url=url, concurrency=concurrency, batch_size=batch_size,
                                                       timeout=TIMEOUT, progress=False))
            scanned.append(count / (time.monotonic() - start))
            assert summary["rows"] == count, summary
            failed["scan"] += count - summary["by_status"].get("SUCCESS", 0)
            shutil.rmtree(out)
    finally:
        ray.shutdown()
    best = lambda xs: round(max(xs), 2)  # noqa: E731  (the least disturbed round on a shared machine)
    return {"images": count, "concurrency": concurrency, "batch_size": batch_size, "rounds": rounds,
            "ray_start_s": round(ray_start, 1), "detect_images_per_s": [round(x, 2) for x in detect],
            "scan_images_per_s": [round(x, 2) for x in scanned],
            "scan_vs_detect": round(best(scanned) / best(detect), 3), "failed_images": failed}


_LISTER = """
import resource, sys, time
from pathlib import Path
from genguard.scan.run import _list
start = time.monotonic()
files, count, _ = _list([sys.argv[1]], Path(sys.argv[2]), {})
print(count, len(files), time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def listing_memory(files: int, where: Path) -> dict:
    folder = where / "tiny"
    for i in range(0, files, 10_000):  # 100 folders of 10,000 empty files
        sub = folder / f"{i // 10_000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for j in range(i, min(i + 10_000, files)):
            (sub / f"{j:07d}.png").touch()
    done = subprocess.run([sys.executable, "-c", _LISTER, str(folder), str(where / "listing")],
                          capture_output=True, text=True, check=True)
    count, chunks, seconds, peak_kib = done.stdout.split()
    assert int(count) == files
    return {"files": files, "listing_chunks": int(chunks), "seconds": round(float(seconds), 1),
            "driver_peak_rss_mib": round(int(peak_kib) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8001", help="a running GenGuard server (gRPC)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--files", type=int, default=1_000_000, help="tiny files to list (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scan.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genguard-scan-bench-") as tmp:
        folder = Path(tmp) / "images"
        _images(folder, args.images)
        result = {"machine": machine.describe(),
                  "throughput": throughput(args.url, folder, args.images, args.concurrency, args.batch_size,
                                           args.rounds)}
        print(json.dumps(result["throughput"]), flush=True)
        if args.files:
            result["listing"] = listing_memory(args.files, Path(tmp))
            print(json.dumps(result["listing"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
