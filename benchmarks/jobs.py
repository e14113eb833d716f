"""Async jobs: how fast jobs are taken and answered, and what a job costs over /v1/detect for the same images.

    python -m genguard.benchmarks.jobs --grpc-url 127.0.0.1:8001        # starts its own gateways and PostgreSQL

Two stores, one run: SQLite (a gateway with two in-process workers) and PostgreSQL (a throwaway server from
Debian's packages; the gateway with no workers of its own and two `genguard worker` processes claiming with
FOR UPDATE SKIP LOCKED). For each store:

- submit: `--jobs` jobs of one small image each, posted back to back (one client, no waiting): jobs/s accepted;
- complete: from the first submission until every job has succeeded (polling): jobs/s answered;
- overhead: `--samples` images one at a time, each through /v1/detect and as a job (submit, then poll every
  20 ms until it has succeeded), interleaved: p50 of each and the difference (the job's end-to-end overhead).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from genguard.protocol import GRPC_PORT, HOST

from . import machine


def small_images(count: int, seed: int = 7) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def _wait_live(url: str, process: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/v1/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"not live after 90 s: {log.read_text()[-2000:]}")


def start(grpc_url: str, workdir: Path, jobs_args: list[str], workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A gateway (and `workers` separate worker processes when its own are off): (its URL, the processes)."""
    from genguard.server import free_ports

    (port,) = free_ports(1)
    log = workdir / f"gateway-{port}.log"
    processes = [subprocess.Popen([sys.executable, "-m", "genguard.gateway", "--triton-url", grpc_url, "--port",
                                   str(port), "--log-level", "warning", "--deadline-s", "300", *jobs_args],
                                  stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)]
    url = f"http://127.0.0.1:{port}"
    _wait_live(url, processes[0], log)
    for n in range(workers):
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "genguard.jobs", "worker", "--triton-url", grpc_url, "--log-level", "warning",
             "--deadline-s", "300", *jobs_args, "--jobs-workers", "1"],
            stdout=open(workdir / f"worker-{port}-{n}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
    return url, processes


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()


def measure(url: str, images: list[bytes], samples: list[bytes]) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=300) as http:
        def submit(image: bytes) -> str:
            response = http.post("/v1/jobs", files=[("file", ("image.png", image, "image/png"))])
            response.raise_for_status()
            return response.json()["id"]

        def finished(job_id: str) -> dict | None:
            job = http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "failed" or job["status"] == "cancelled":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return job if job["status"] == "succeeded" else None

        submit(images[0])  # warm: the first request of each kind pays connection and model start-up
        http.post("/v1/detect", files=[("file", ("image.png", images[0], "image/png"))]).raise_for_status()
        t0 = time.perf_counter()
        ids = [submit(image) for image in images]
        submitted = time.perf_counter() - t0
        pending = set(ids)
        while pending:
            pending = {j for j in pending if finished(j) is None}
            time.sleep(0.05)
        completed = time.perf_counter() - t0

        detect_ms, job_ms = [], []
        for image in samples:
            t = time.perf_counter()
            http.post("/v1/detect", files=[("file", ("image.png", image, "image/png"))]).raise_for_status()
            detect_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            job_id = submit(image)
            while finished(job_id) is None:
                time.sleep(0.02)
            job_ms.append((time.perf_counter() - t) * 1000)
    detect_p50, job_p50 = statistics.median(detect_ms), statistics.median(job_ms)
    return {"jobs": len(images), "submitted_jobs_per_s": round(len(images) / submitted, 2),
            "completed_jobs_per_s": round(len(images) / completed, 3), "samples": len(samples),
            "detect_p50_ms": round(detect_p50, 1), "job_p50_ms": round(job_p50, 1),
            "overhead_p50_ms": round(job_p50 - detect_p50, 1), "job_vs_detect": round(job_p50 / detect_p50, 2)}


def markdown(info: dict) -> str:
    lines = [f"# Async jobs ({info['tag']})", "", f"`{info['command']}`", "",
             f"{info['started']} to {info['finished']}; small images (64x48 PNG noise), one image per job.", ""]
    if info["note"]:
        lines += [info["note"], ""]
    lines += [machine.describe_markdown(info["machine"]), "",
              "| store | workers | jobs | submitted jobs/s | completed jobs/s | /v1/detect p50 ms | job p50 ms | "
              "job overhead p50 ms | job / detect |", "|---|---|---|---|---|---|---|---|---|"]
    for r in info["rows"]:
        lines.append(f"| {r['store']} | {r['workers']} | {r['jobs']} | {r['submitted_jobs_per_s']} | "
                     f"{r['completed_jobs_per_s']} | {r['detect_p50_ms']} | {r['job_p50_ms']} | "
                     f"{r['overhead_p50_ms']} | {r['job_vs_detect']} |")
    lines += ["", "Completed jobs/s is bounded by inference (the same Triton answers every store); submitted jobs/s "
              "is the gateway and the store (a commit per job; the bytes written to the spool). Not the same "
              "process layout: SQLite's gateway also runs its two workers, PostgreSQL's runs none (two "
              "`genguard worker` processes do), and the throwaway PostgreSQL runs with fsync off (SQLite: WAL, "
              "synchronous=NORMAL, no fsync per commit either). The job's overhead includes the polling step "
              "(20 ms) and the worker's idle poll (up to 0.5 s for PostgreSQL's separate workers; the gateway's own "
              "workers are woken at once)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.jobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-url", default=f"{HOST}:{GRPC_PORT}", help="Triton gRPC host:port")
    parser.add_argument("--jobs", type=int, default=24, help="jobs per store (one small image each)")
    parser.add_argument("--samples", type=int, default=6, help="images timed one at a time for the overhead")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=None, help="an existing database (default: start a throwaway one)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="tiny", help="results file name: jobs-<tag>.md/.json")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. which build was served)")
    args = parser.parse_args(argv)
    images, samples = small_images(args.jobs), small_images(args.samples, seed=8)
    info = {"tag": args.tag, "command": "python -m genguard.benchmarks.jobs " + shlex.join(argv or sys.argv[1:]),
            "note": args.note, "machine": machine.describe(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": []}
    workdir = Path(tempfile.mkdtemp(prefix="genguard-jobs-bench-"))
    for store in args.stores.split(","):
        postgres = None
        if store == "sqlite":
            jobs_args, workers = ["--state-dir", str(workdir / "sqlite"), "--jobs-workers", "2"], 0
        else:
            url = args.postgres_url
            if url is None:
                from genguard.server import free_ports

                from .postgres import start_postgres

                postgres = start_postgres(free_ports(1)[0])
                url = postgres.url
            jobs_args, workers = ["--state-dir", str(workdir / "pg"), "--jobs-db", url, "--jobs-workers", "0"], 2
        url, processes = start(args.grpc_url, workdir, jobs_args, workers)
        try:
            row = {"store": store, "workers": "2 in the gateway" if store == "sqlite" else "2 `genguard worker`",
                   **measure(url, images, samples)}
        finally:
            stop(processes)
            if postgres is not None:
                postgres.stop()
        print(json.dumps(row), file=sys.stderr, flush=True)
        info["rows"].append(row)
    info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    text = markdown(info)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"jobs-{args.tag}.md").write_text(text)
    (out / f"jobs-{args.tag}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out / f'jobs-{args.tag}.md'} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
