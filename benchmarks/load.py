"""Load through the REST gateway: the full stack (tritonserver + its stubs + the gateway) under a realistic mix.

  make load BUILD=build                        # concurrency 16 for 10 minutes, Triton restarted at the middle
  make load BUILD=build DURATION=120           # shorter
  python -m genguard.benchmarks.load --build build --cache-bench --duration 120   # 50 % repeats vs none

Starts its own tritonserver (the cpu repository rendered from BUILD, on free ports, GenGuard's flags) and
gateway (its admission sized to this stack: --gateway-concurrency, --gateway-queue), then keeps `concurrency` requests in flight: Hive JSON and
multipart on /v1/detect, 1-4 images each, a share of them corrupt (answered FAILURE per image) and a share
repeats of a few popular images (answered from the gateway's cache). At the middle Triton is stopped and
started again (SIGTERM, drained; the same ports).

Every request must get an answer: 200 with one document per image, or a deliberate 429/503 with Retry-After
(the client then waits that long and sends the same request again; each try is counted). Anything else — no HTTP answer, a wrong count, 500,
502, 504 — is lost or unexpected and printed. Memory (PSS, shared pages counted once) of tritonserver, each
stub and the gateway is sampled every 5 s. Writes results/load-<tag>.md and .json (or cache-<tag>.*).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from genguard import server

from . import gateway as gateway_benchmark
from .report import markdown_table, percentile_ms

SHARED = ("This machine's CPUs were shared with other work while it ran (four engineers' builds and tests on "
          "2 vCPUs): latencies and throughput are lower than the hardware gives alone; memory is not affected.")


def png(seed: int) -> bytes:
    """A photo-sized noise image (its bytes differ by seed: no two are cached as one)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(320, 640)), int(rng.integers(240, 480))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def corrupt(seed: int) -> bytes:
    data = bytearray(png(seed))
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)  # a hole in the entropy-coded data
    return bytes(data[: len(data) * 2 // 3])  # and cut short


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes(triton_pid: int | None, gateway_pid: int) -> dict[str, int]:
    """name -> pid: tritonserver, each python stub (by its model), the gateway."""
    from genguard.benchmarks.soak import _children

    found = {"gateway": gateway_pid}
    if triton_pid:
        found["tritonserver"] = triton_pid
        for pid in _children(triton_pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            model = next((Path(p.decode()).parts[-3] for p in cmd if p.endswith(b"/model.py")), None)
            if model:
                found[f"stub:{model}"] = pid
    return found


class Run:
    def __init__(self, args):
        self.args = args
        self.records: list[dict] = []
        self.memory: list[dict] = []
        self.events: list[tuple[float, str]] = []
        self.triton = None
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start


async def client_loop(run: Run, gateway: str, worker: int, end: float, repeats: list[bytes], share: dict,
                      phase: int = 0) -> None:
    import httpx

    rng = random.Random(1000 * phase + worker)
    seed = 1_000_000 * (worker + 1) + 100_000_000 * phase + int(run.args.seed)  # unique images stay unique
    async with httpx.AsyncClient(timeout=run.args.deadline_s + 30) as client:
        images: list[bytes] = []
        while run.now() < end:
            retry = images  # refused with Retry-After: the same request again, as a client would
            images = [] if not retry else retry
            for _ in range(0 if retry else rng.randint(1, run.args.max_images)):
                seed += 1
                r = rng.random()
                if r < share["corrupt"]:
                    images.append(corrupt(seed))
                elif r < share["corrupt"] + share["repeat"]:
                    images.append(rng.choice(repeats))
                else:
                    images.append(png(seed))
            hive = rng.random() < 0.5
            began = run.now()
            record = {"t": began, "images": len(images), "route": "hive" if hive else "multipart", "retry": bool(retry)}
            try:
                if hive:
                    body = {"input": ["data:image/jpeg;base64," + base64.b64encode(i).decode() for i in images]}
                    response = await client.post(gateway + "/v1/cv/hive/ai-generated-image-detection?extended=true",
                                                 json=body)
                else:
                    response = await client.post(gateway + "/v1/detect",
                                                 files=[("file", (f"{k}.jpg", i, "image/jpeg")) for k, i in enumerate(images)])
                record["code"] = response.status_code
                if response.status_code == 200:
                    data = response.json()["data"]
                    record["answered"] = len(data)
                    record["ok"] = sum(d["status"] == "SUCCESS" for d in data)
                    record["cached"] = sum(bool(d.get("cached")) for d in data)
                else:
                    record["error"] = response.json().get("error", {}).get("code")
                    record["retry_after"] = response.headers.get("retry-after")
            except Exception as exc:  # noqa: BLE001 - a request without an HTTP answer is what "lost" counts
                record["code"] = None
                record["error"] = f"{type(exc).__name__}: {exc}"[:200]
            record["latency_s"] = run.now() - began
            run.records.append(record)
            if record.get("retry_after"):
                await asyncio.sleep(float(record["retry_after"]))
            else:
                images = []


def sampler(run: Run, gateway_pid: int, stop: threading.Event) -> None:
    while not stop.is_set():
        pids = processes(run.triton.pid if run.triton and run.triton.poll() is None else None, gateway_pid)
        run.memory.append({"t": run.now(), **{name: pss_kib(pid) for name, pid in pids.items()}})
        stop.wait(run.args.sample_s)


def restart(run: Run, repository: Path, home: Path, ports: server.Ports, log: Path) -> None:
    run.events.append((run.now(), "triton stopping"))
    server.stop_pid(run.triton.pid)
    run.events.append((run.now(), "triton stopped"))
    run.triton = server.start(repository, home, ports=ports, log_file=log)
    server.wait_ready(run.triton, ports, timeout=900, log_file=log)
    run.events.append((run.now(), "triton ready"))


def start_gateway(grpc: str, port: int, args, log: Path) -> subprocess.Popen:
    return gateway_benchmark.start_gateway(
        grpc, port, "--deadline-s", str(args.deadline_s), "--cache", args.cache, "--max-concurrency",
        str(args.gateway_concurrency), "--max-queue", str(args.gateway_queue), log=log)


def summarize(records: list[dict], seconds: float) -> dict:
    codes = Counter(str(r["code"]) for r in records)
    lost = [r for r in records if r["code"] is None or (r["code"] == 200 and r["answered"] != r["images"])]
    unexpected = [r for r in records if r["code"] not in (None, 200, 429, 503)]
    answered = [r for r in records if r["code"] == 200]
    latencies = [r["latency_s"] for r in answered]
    images = sum(r["images"] for r in answered)
    return {"requests": len(records), "codes": dict(codes), "lost": len(lost), "unexpected": len(unexpected),
            "unexpected_examples": [r.get("error") for r in (lost + unexpected)[:5]],
            "images_answered": images, "images_per_s": images / seconds if seconds else None,
            "cached_images": sum(r.get("cached", 0) for r in answered),
            "failed_images": sum(r["answered"] - r["ok"] for r in answered),
            "p50_ms": percentile_ms(latencies, 50) if latencies else None,
            "p95_ms": percentile_ms(latencies, 95) if latencies else None,
            "p99_ms": percentile_ms(latencies, 99) if latencies else None}


def memory_summary(samples: list[dict], duration: float) -> dict:
    names = sorted({k for s in samples for k in s if k != "t"})
    peaks = {n: max(s.get(n, 0) for s in samples) / 1024 for n in names}
    totals = [(s["t"], sum(v for k, v in s.items() if k != "t")) for s in samples]

    def at(t: float) -> float | None:
        near = [v for when, v in totals if abs(when - t) <= 30]
        return sum(near) / len(near) / 1024 if near else None

    early, late = at(min(120.0, duration * 0.2)), at(duration - 30)
    stack = [sum(v for k, v in s.items() if k not in ("t", "gateway")) for s in samples]
    return {"peak_mib": peaks, "peak_total_mib": max(v for _, v in totals) / 1024,
            "peak_triton_and_stubs_mib": max(stack) / 1024,
            "total_mib_early": early, "total_mib_end": late,
            "growth": (late - early) / early if early and late else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, required=True, help="a full-size build (make export)")
    parser.add_argument("--duration", type=float, default=600, help="seconds (each phase, with --cache-bench)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat-share", type=float, default=0.3, help="images that repeat a popular one")
    parser.add_argument("--corrupt-share", type=float, default=0.1)
    parser.add_argument("--deadline-s", type=float, default=180)
    parser.add_argument("--cache", default="memory")
    # Admission sized to what the stack answers within the deadline (docs/operating.md, "Sizing"): on 2 vCPUs the
    # full-size stack scores ~1 image/s alone, so 2 forwarded + 2 waiting requests (~10 images) finish well inside
    # it and the rest are refused at once with 429 + Retry-After instead of timing out (504).
    parser.add_argument("--gateway-concurrency", type=int, default=2)
    parser.add_argument("--gateway-queue", type=int, default=2)
    parser.add_argument("--no-restart", action="store_true")
    parser.add_argument("--cache-bench", action="store_true", help="two phases: 50 %% repeats, then none")
    parser.add_argument("--max-images", type=int, default=4, help="images per request: 1 to this many")
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--tag", default="full-random")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop the servers (finally below)

    from genguard.export.repository import render

    work = Path(tempfile.mkdtemp(prefix="genguard-load-"))
    repository = render("cpu", args.build, work / "repository")
    ports = server.Ports(*server.free_ports(3))
    gateway_port = server.free_ports(1)[0]
    log = work / "triton.log"
    run = Run(args)
    run.triton = server.start(repository, work / "home", ports=ports, log_file=log)
    gateway = None
    stop = threading.Event()
    try:
        server.wait_ready(run.triton, ports, timeout=900, log_file=log)
        gateway = start_gateway(f"127.0.0.1:{ports.grpc}", gateway_port, args, work / "gateway.log")
        url = f"http://127.0.0.1:{gateway_port}"
        repeats = [png(7_000 + i) for i in range(8)]
        run.start = time.monotonic()
        watcher = threading.Thread(target=sampler, args=(run, gateway.pid, stop), daemon=True)
        watcher.start()
        if args.cache_bench:
            # Steady state: the popular images were seen before (sent once here, not timed), as a meme that
            # arrives thousands of times was; the streams then differ only in how many images repeat.
            asyncio.run(_warm(url, repeats))
            phases = {}
            for phase, (name, repeat) in enumerate((("50% repeats", 0.5), ("no repeats", 0.0)), start=1):
                first = len(run.records)
                began = run.now()
                share = {"repeat": repeat, "corrupt": 0.0}
                asyncio.run(_clients(run, url, began + args.duration, repeats, share, phase))
                phases[name] = summarize(run.records[first:], run.now() - began)
                print(name, json.dumps(phases[name]), flush=True)
            return _write_cache(args, phases)
        share = {"repeat": args.repeat_share, "corrupt": args.corrupt_share}
        restarter = None
        if not args.no_restart:
            restarter = threading.Timer(args.duration / 2, restart, (run, repository, work / "home", ports, log))
            restarter.start()
        asyncio.run(_clients(run, url, args.duration, repeats, share))
        if restarter:
            restarter.join()
        seconds = run.now()
        stop.set()
        watcher.join()
        return _write_load(args, run, summarize(run.records, seconds), seconds)
    finally:
        stop.set()
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        if run.triton is not None and run.triton.poll() is None:
            server.stop_pid(run.triton.pid)


async def _warm(url: str, repeats: list[bytes]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        for image in repeats:
            response = await client.post(url + "/v1/detect", files=[("file", ("warm.jpg", image, "image/jpeg"))])
            response.raise_for_status()


async def _clients(run: Run, url: str, end: float, repeats: list[bytes], share: dict, phase: int = 0) -> None:
    await asyncio.gather(*(client_loop(run, url, w, end, repeats, share, phase) for w in range(run.args.concurrency)))


def _recovery(run: Run) -> dict:
    events = dict((name, t) for t, name in run.events)
    if "triton stopping" not in events:
        return {}
    stopped = events["triton stopping"]
    fresh = [r["t"] + r["latency_s"] for r in run.records
             if r["t"] >= events.get("triton stopped", stopped) and r["code"] == 200 and r["ok"] > r["cached"]]
    return {"restart_at_s": stopped, "triton_down_s": events.get("triton ready", stopped) - stopped,
            "first_fresh_answer_after_s": (min(fresh) - stopped) if fresh else None}


def _write_load(args, run: Run, summary: dict, seconds: float) -> int:
    from genguard.benchmarks.machine import describe

    memory = memory_summary(run.memory, seconds)
    recovery = _recovery(run)
    info = {"command": "python -m genguard.benchmarks.load " + " ".join(sys.argv[1:]), "machine": describe(),
            "seconds": seconds, "summary": summary, "memory": memory, "recovery": recovery,
            "events": run.events, "memory_samples": run.memory, "shared_machine": SHARED}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"load-{args.tag}.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    rows = [{"process": n, "peak PSS MiB": v} for n, v in sorted(memory["peak_mib"].items())]
    machine = info["machine"]
    text = (f"# Load through the gateway — {args.tag}\n\nCommand: `{info['command']}`  \n"
            f"CPU: {machine.get('cpu')} ({machine.get('usable_cpus')} usable CPUs), {machine.get('memory_gib')} GiB. "
            f"{SHARED}\n\n"
            f"{seconds:.0f} s, concurrency {args.concurrency}; images: {args.repeat_share:.0%} repeats of 8 popular "
            f"ones, {args.corrupt_share:.0%} corrupt, the rest unique; Hive JSON and multipart, 1-4 images each"
            f"{'' if args.no_restart else '; Triton stopped (SIGTERM) and started again at the middle'}; the "
            f"gateway forwards {args.gateway_concurrency} requests and queues {args.gateway_queue} (429 + Retry-After "
            "beyond, and the client sends the same request again after it).\n\n"
            "| requests | by HTTP status | lost | unexpected | images answered | images/s | from cache | "
            "FAILURE (corrupt) | p50 ms | p95 ms | p99 ms |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {summary['requests']} | {', '.join(f'{k}: {v}' for k, v in sorted(summary['codes'].items()))} | "
            f"{summary['lost']} | {summary['unexpected']} | {summary['images_answered']} | "
            f"{summary['images_per_s']:.2f} | {summary['cached_images']} | {summary['failed_images']} | "
            f"{summary['p50_ms']:.0f} | {summary['p95_ms']:.0f} | {summary['p99_ms']:.0f} |\n\n"
            f"Memory (PSS, sampled every {args.sample_s:g} s): peak of tritonserver + stubs "
            f"**{memory['peak_triton_and_stubs_mib']:.0f} MiB**, with the gateway {memory['peak_total_mib']:.0f} MiB; "
            f"total at minute 2 {memory['total_mib_early'] or 0:.0f} MiB, at the end {memory['total_mib_end'] or 0:.0f} "
            f"MiB (growth {(memory['growth'] or 0):+.1%}).\n\n"
            + (f"Restart: Triton down {recovery['triton_down_s']:.1f} s (stop, drain, start, models loaded); the "
               f"first freshly scored answer {recovery['first_fresh_answer_after_s'] or float('nan'):.1f} s after "
               "the stop began.\n\n" if recovery else "")
            + markdown_table(rows, [("process", "process", "sig3"), ("peak PSS MiB", "peak PSS MiB", "sig3")]) + "\n")
    if summary["unexpected_examples"]:
        text += "\nUnexpected answers (first 5): " + "; ".join(map(str, summary["unexpected_examples"])) + "\n"
    (args.out / f"load-{args.tag}.md").write_text(text)
    print(text)
    return 0 if summary["lost"] == 0 and summary["unexpected"] == 0 else 1


def _write_cache(args, phases: dict) -> int:
    from genguard.benchmarks.machine import describe

    machine = describe()
    info = {"command": "python -m genguard.benchmarks.load " + " ".join(sys.argv[1:]), "machine": machine,
            "phases": phases, "shared_machine": SHARED}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cache-{args.tag}.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    rows = [{"stream": name, **p} for name, p in phases.items()]
    base = phases["no repeats"]["images_per_s"]
    for row in rows:
        row["vs none"] = row["images_per_s"] / base if base else None
    cols = [("stream", "stream", "sig3"), ("requests", "requests", "sig3"), ("images_answered", "images", "sig3"),
            ("cached_images", "from cache", "sig3"), ("images_per_s", "images/s", "sig3"), ("vs none", "× none", "sig3"),
            ("p50_ms", "p50 ms", "sig3"), ("p95_ms", "p95 ms", "sig3"), ("p99_ms", "p99 ms", "sig3"),
            ("lost", "lost", "sig3")]
    text = (f"# Answer cache: 50 % repeats vs none — {args.tag}\n\nCommand: `{info['command']}`  \n"
            f"CPU: {machine.get('cpu')} ({machine.get('usable_cpus')} usable CPUs). {SHARED}\n\n"
            f"Each stream {args.duration:.0f} s at concurrency {args.concurrency} through the gateway (full-size models, "
            f"in-process cache), one after the other on the same servers, {args.max_images} image(s) at most per request; "
            "repeats are drawn from 8 popular images, each sent once before the streams (untimed: the steady state of "
            "a cache that has seen them), the rest are unique.\n\n" + markdown_table(rows, cols) + "\n")
    (args.out / f"cache-{args.tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
