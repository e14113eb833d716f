"""The REST gateway's overhead: the same requests, at the same concurrency, sent straight to Triton over
gRPC and through the gateway (Hive's JSON with data URLs, and multipart on /v1/detect), interleaved
round by round in one run.

    python -m genguard.benchmarks.gateway --grpc-url 127.0.0.1:8001            # starts its own gateway
    python -m genguard.benchmarks.gateway --gateway-url http://127.0.0.1:8080 --api-key-file keys

Direct: tritonclient's asyncio gRPC client, one `infer` per request (the UINT8 [1, L] tensor GenGuard's
client sends). Gateway: httpx's asyncio client, one POST per request, bodies prepared before timing.
Each mode keeps `concurrency` requests in flight; a level's figures are the sums over its rounds.
Throughput loss = 1 - gateway / direct images per second.

On a shared machine wall-clock throughput moves with everyone else's load, so the run also counts CPU
time, which does not: the gateway process's and the tritonserver process tree's (found by its gRPC
port), per image, for each mode. Where gateway and Triton share the CPUs (and the CPUs are the limit),
gateway CPU / (gateway + Triton CPU) is the share of throughput the gateway costs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from genguard.protocol import GRPC_PORT, HOST

from . import machine
from .report import Timing

MODES = ("direct_grpc", "gateway_hive_json", "gateway_multipart")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of one process, 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of `pid` and its live descendants (tritonserver and its python-backend stubs)."""
    from .soak import _children

    total, stack = 0.0, [pid] if pid else []
    while stack:
        current = stack.pop()
        total += _cpu(current)
        stack.extend(_children(current))
    return total


def find_triton(grpc_port: int) -> int | None:
    from .soak import find_tritonserver

    return find_tritonserver("--grpc-port", grpc_port)


HIVE = "/v1/cv/hive/ai-generated-image-detection"


def sample_images(count: int) -> list[tuple[str, bytes]]:
    from genguard.export import samples

    photos = sorted(samples.photos().items())
    return [photos[i % len(photos)] for i in range(count)]


async def _drive(send, requests: list, concurrency: int) -> Timing:
    """Send every request with `concurrency` in flight; Timing over the whole set."""
    queue = list(reversed(requests))
    latencies: list[float] = []

    async def worker() -> None:
        while queue:
            request = queue.pop()
            t0 = time.perf_counter()
            await send(request)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Timing(len(requests), time.perf_counter() - start, tuple(latencies))


async def run_levels(grpc_url: str, gateway_url: str, api_key: str | None, images: list[tuple[str, bytes]],
                     levels: list[int], rounds: int, modes=MODES, gateway_pid: int | None = None,
                     triton_pid: int | None = None, cpu: dict | None = None) -> dict[int, dict[str, Timing]]:
    """cpu (filled in when given): mode -> {"gateway": s, "triton": s, "images": n} over the timed runs."""
    import httpx
    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    from genguard import protocol

    triton = grpcclient.InferenceServerClient(grpc_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    http = httpx.AsyncClient(base_url=gateway_url, headers=headers, timeout=120,
                             limits=httpx.Limits(max_connections=max(levels) + 2))
    tensors = [protocol.pack_images([data]) for _, data in images]
    hive_bodies = [json.dumps({"input": ["data:image/png;base64," + base64.b64encode(data).decode()]}).encode()
                   for _, data in images]
    files = [[("file", (name, data, "application/octet-stream"))] for name, data in images]

    async def direct(array: np.ndarray) -> None:
        tensor = grpcclient.InferInput(protocol.INPUT, list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        result = await triton.infer(protocol.ENSEMBLE, [tensor],
                                    outputs=[grpcclient.InferRequestedOutput(protocol.RESULT)])
        assert json.loads(result.as_numpy(protocol.RESULT)[0, 0])["status"] == protocol.SUCCESS

    async def hive(body: bytes) -> None:
        response = await http.post(HIVE, content=body, headers={"Content-Type": "application/json"})
        response.raise_for_status()
        assert response.json()["data"][0]["status"] == protocol.SUCCESS

    async def multipart(file) -> None:
        response = await http.post("/v1/detect", files=file)
        response.raise_for_status()
        assert response.json()["data"][0]["status"] == protocol.SUCCESS

    senders = {"direct_grpc": (direct, tensors), "gateway_hive_json": (hive, hive_bodies),
               "gateway_multipart": (multipart, files)}
    try:
        for mode in modes:  # warm-up: connections, the gateway's first Triton call, the models
            send, work = senders[mode]
            await _drive(send, work[: max(2, max(levels))], max(levels))
        results: dict[int, dict[str, Timing]] = {}
        for level in levels:
            totals: dict[str, Timing] = {}
            for r in range(rounds):
                order = modes if r % 2 == 0 else tuple(reversed(modes))  # no mode always goes first
                for mode in order:
                    send, work = senders[mode]
                    g0, t0 = _cpu(gateway_pid), tree_cpu(triton_pid)
                    timing = await _drive(send, work, level)
                    if cpu is not None:
                        used = cpu.setdefault(mode, {"gateway": 0.0, "triton": 0.0, "images": 0})
                        used["gateway"] += _cpu(gateway_pid) - g0
                        used["triton"] += tree_cpu(triton_pid) - t0
                        used["images"] += timing.images
                    totals[mode] = totals[mode] + timing if mode in totals else timing
            results[level] = totals
            print(f"  concurrency {level}: " + ", ".join(f"{m} {t.images_per_s:.2f} img/s" for m, t in totals.items()),
                  file=sys.stderr, flush=True)
        return results
    finally:
        await http.aclose()
        await triton.close()


def rows(results: dict[int, dict[str, Timing]]) -> list[dict]:
    out = []
    for level, timings in results.items():
        base = timings["direct_grpc"].images_per_s
        for mode, t in timings.items():
            out.append({"concurrency": level, "mode": mode, "images": t.images, "seconds": round(t.seconds, 3),
                        "images_per_s": round(t.images_per_s, 3), "p50_ms": round(t.p50_ms, 1),
                        "p99_ms": round(t.p99_ms, 1),
                        "throughput_loss": None if mode == "direct_grpc" else round(1 - t.images_per_s / base, 4)})
    return out


def summary(table: list[dict]) -> dict:
    """Loss at the best concurrency (the level where direct gRPC is fastest) for each gateway mode."""
    direct = [r for r in table if r["mode"] == "direct_grpc"]
    best = max(direct, key=lambda r: r["images_per_s"])
    at_best = {r["mode"]: r for r in table if r["concurrency"] == best["concurrency"]}
    best_gateway = {m: max((r for r in table if r["mode"] == m), key=lambda r: r["images_per_s"])
                    for m in MODES[1:] if any(r["mode"] == m for r in table)}
    return {"best_concurrency": best["concurrency"], "direct_images_per_s": best["images_per_s"],
            "loss_at_best_concurrency": {m: at_best[m]["throughput_loss"] for m in MODES[1:] if m in at_best},
            "loss_best_vs_best": {m: round(1 - r["images_per_s"] / best["images_per_s"], 4)
                                  for m, r in best_gateway.items()}}


def cpu_rows(cpu: dict) -> list[dict]:
    out = []
    for mode, used in cpu.items():
        n = max(1, used["images"])
        gateway_ms, triton_ms = 1000 * used["gateway"] / n, 1000 * used["triton"] / n
        share = gateway_ms / (gateway_ms + triton_ms) if gateway_ms + triton_ms > 0 else None
        out.append({"mode": mode, "images": used["images"], "gateway_cpu_ms_per_image": round(gateway_ms, 2),
                    "triton_cpu_ms_per_image": round(triton_ms, 2),
                    "gateway_cpu_share": None if share is None else round(share, 4)})
    return out


def markdown(table: list[dict], info: dict, note: str) -> str:
    s = info["summary"]
    lines = [f"# Gateway overhead ({info['tag']})", "", f"`{info['command']}`", "",
             f"{info['started']} to {info['finished']}; {info['images']} images (scikit-image photos, "
             f"one per request), {info['rounds']} rounds per concurrency level, modes interleaved.", ""]
    if note:
        lines += [note, ""]
    lines += [machine.describe_markdown(info["machine"]), "",
              f"Best direct gRPC: {s['direct_images_per_s']} img/s at concurrency {s['best_concurrency']}. "
              "Throughput loss through the gateway at that concurrency: "
              + ", ".join(f"{m} {v:.1%}" for m, v in s["loss_at_best_concurrency"].items())
              + "; best gateway level vs best direct level: "
              + ", ".join(f"{m} {v:.1%}" for m, v in s["loss_best_vs_best"].items()) + " (target: at most 10 %).", "",
              "| concurrency | mode | images | img/s | p50 ms | p99 ms | throughput loss |",
              "|---|---|---|---|---|---|---|"]
    for r in table:
        loss = "" if r["throughput_loss"] is None else f"{r['throughput_loss']:.1%}"
        lines.append(f"| {r['concurrency']} | {r['mode']} | {r['images']} | {r['images_per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {loss} |")
    if info.get("cpu"):
        lines += ["", "CPU time over the same timed runs, per image (load-independent): the gateway process, and "
                  "the tritonserver process tree (server + python-backend stubs). Gateway share = gateway / "
                  "(gateway + Triton): the throughput it costs where both share CPUs that are the bottleneck.", "",
                  "| mode | images | gateway CPU ms/img | Triton CPU ms/img | gateway share |", "|---|---|---|---|---|"]
        for r in info["cpu"]:
            share = "" if r["gateway_cpu_share"] is None else f"{r['gateway_cpu_share']:.1%}"
            lines.append(f"| {r['mode']} | {r['images']} | {r['gateway_cpu_ms_per_image']} | "
                         f"{r['triton_cpu_ms_per_image']} | {share} |")
    return "\n".join(lines) + "\n"


def start_gateway(grpc_url: str, port: int, *args: str, log: Path | None = None) -> subprocess.Popen:
    """`genguard gateway` on 127.0.0.1:`port` in front of Triton at `grpc_url`, with extra flags `args`; returns
    once it answers /v1/health/ready (RuntimeError with its log, or exit code, if it does not within 60 s)."""
    import urllib.request

    command = [sys.executable, "-m", "genguard.gateway", "--triton-url", grpc_url, "--port", str(port),
               "--log-level", "warning", *args]
    output = open(log, "wb") if log else None
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if log else None,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(log.read_text() if log else f"the gateway exited with code {process.returncode}")
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError("the gateway was not ready within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-url", default=f"{HOST}:{GRPC_PORT}", help="Triton gRPC host:port")
    parser.add_argument("--gateway-url", default=None,
                        help="a running gateway (default: start one on a free port in front of --grpc-url)")
    parser.add_argument("--api-key-file", default=None)
    parser.add_argument("--images", type=int, default=12, help="requests per round (one image each)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="levels, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="fp32", help="results file name: gateway-<tag>.md/.json")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. which build was served)")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    api_key = None
    if args.api_key_file:
        from genguard.client.rest import read_key_file

        api_key = read_key_file(args.api_key_file)
    images = sample_images(args.images)
    info = {"tag": args.tag, "command": "python -m genguard.benchmarks.gateway " + shlex.join(argv or sys.argv[1:]),
            "note": args.note,
            "images": len(images), "rounds": args.rounds, "machine": machine.describe(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    process = None
    gateway_url = args.gateway_url
    if gateway_url is None:
        from genguard.server import free_ports

        (port,) = free_ports(1)
        process = start_gateway(args.grpc_url, port, "--cache", "off")  # overhead, not repeats
        gateway_url = f"http://127.0.0.1:{port}"
    cpu: dict = {}
    triton_pid = find_triton(int(args.grpc_url.rsplit(":", 1)[1]))
    try:
        results = asyncio.run(run_levels(args.grpc_url, gateway_url, api_key, images, levels, args.rounds,
                                         gateway_pid=process.pid if process else None, triton_pid=triton_pid,
                                         cpu=cpu))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    table = rows(results)
    info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info["summary"] = summary(table)
    info["cpu"] = cpu_rows(cpu) if process is not None and triton_pid is not None else []
    text = markdown(table, info, args.note)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gateway-{args.tag}.md").write_text(text)
    (out / f"gateway-{args.tag}.json").write_text(json.dumps({**info, "rows": table}, indent=2) + "\n")
    print(f"wrote {out / f'gateway-{args.tag}.md'} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
