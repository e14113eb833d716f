"""Sustained concurrent load on the `genguard` ensemble: nothing lost, nothing duplicated, RSS bounded.

  make soak                                   # long form: concurrency 16 for 10 minutes against `make serve`
  python -m genguard.benchmarks.soak --minutes 0.5 --concurrency 4   # short form

Every request carries a unique id; the run checks that each id is answered exactly once with one answer
per image, and reports requests, errors, lost, duplicated, p50/p99 latency and the server's memory
(PSS of the tritonserver process and its python-backend stubs) at start and end. Loopback only; bounded in time
and count.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from genguard import protocol


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_memory_bytes(pid: int) -> int:
    """Memory of `pid` and all its descendants (tritonserver + python backend stubs), as the sum of
    their PSS: shared pages (the python backend's shared-memory pool is mapped by the server and every
    stub) count once in total, where summing RSS would count them once per process."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        stack.extend(_children(current))
    return total


def find_tritonserver(flag: str, port: int) -> int | None:
    """The tritonserver whose command line has `flag=port` (e.g. --http-port=8000)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"tritonserver") and f"{flag}={port}".encode() in cmd:
                return int(entry.name)
    return None


def find_server_pid(http_port: int) -> int | None:
    """The tritonserver whose command line names this HTTP port."""
    return find_tritonserver("--http-port", http_port)


@dataclass
class SoakReport:
    seconds: float
    concurrency: int
    requests: int
    images: int
    errors: int
    lost: int
    duplicated: int
    failures_per_image: int
    p50_ms: float
    p99_ms: float
    throughput_img_s: float
    memory_start_mb: float | None
    memory_end_mb: float | None
    error_samples: list[str]


def run(url: str, images: list[bytes], *, kind: str = "grpc", concurrency: int = 16, seconds: float = 600,
        max_requests: int = 1_000_000, batch: int = 1, server_pid: int | None = None,
        timeout_s: float = 60, warmup_batch: int = 16) -> SoakReport:
    """warmup_batch: before the memory baseline, two requests of this many images (the server's
    max_batch_size by default), because ONNX Runtime's arena grows to its peak batch and then stays."""
    if kind == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    sent: list[str] = []
    answered: Counter = Counter()
    latencies: list[float] = []
    errors: list[str] = []
    errored: set[str] = set()
    failed_images = [0]
    lock = threading.Lock()
    counter = iter(range(max_requests))
    if warmup_batch:
        warm = module.InferenceServerClient(url)
        data = protocol.pack_images((images * warmup_batch)[:warmup_batch])
        for _ in range(2):
            tensor = module.InferInput(protocol.INPUT, list(data.shape), "UINT8")
            tensor.set_data_from_numpy(data)
            warm.infer(protocol.ENSEMBLE, [tensor])
    memory_start = tree_memory_bytes(server_pid) if server_pid else None
    deadline = time.monotonic() + seconds

    def worker(worker_id: int) -> None:
        client = module.InferenceServerClient(url, **({"network_timeout": timeout_s} if kind == "http" else {}))
        rng = np.random.default_rng(worker_id)
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
                request_id = uuid.uuid4().hex
                sent.append(request_id)
            chosen = [images[i] for i in rng.integers(0, len(images), batch)]
            data = protocol.pack_images(chosen)
            tensor = module.InferInput(protocol.INPUT, list(data.shape), "UINT8")
            tensor.set_data_from_numpy(data)
            started = time.perf_counter()
            try:
                kwargs = {"client_timeout": timeout_s} if kind == "grpc" else {}
                result = client.infer(protocol.ENSEMBLE, [tensor], request_id=request_id, **kwargs)
                docs = [json.loads(x) for x in result.as_numpy(protocol.RESULT).reshape(-1)]
                response_id = result.get_response()["id"] if kind == "http" else result.get_response().id
            except Exception as exc:  # counted, never raised: the run must finish and report
                with lock:
                    errored.add(request_id)
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                answered[response_id] += 1
                if len(docs) != batch or [d["index"] for d in docs] != list(range(batch)):
                    errors.append(f"request {request_id}: {len(docs)} answers for {batch} images")
                failed_images[0] += sum(d["status"] != protocol.SUCCESS for d in docs)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 2 * timeout_s + 30)
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    sent_ids = set(sent)
    return SoakReport(
        seconds=round(elapsed, 1),
        concurrency=concurrency,
        requests=len(sent),
        images=len(latencies) * batch,
        errors=len(errors),
        # lost: sent, neither answered nor reported as an error; duplicated: answered twice, or an answer
        # carrying an id nobody sent (i.e. someone else's answer)
        lost=sum(1 for rid in sent_ids if answered[rid] == 0 and rid not in errored),
        duplicated=sum(1 for n in answered.values() if n > 1) + sum(1 for rid in answered if rid not in sent_ids),
        failures_per_image=failed_images[0],
        p50_ms=round(float(np.percentile(ms, 50)), 1),
        p99_ms=round(float(np.percentile(ms, 99)), 1),
        throughput_img_s=round(len(latencies) * batch / elapsed, 2),
        memory_start_mb=round(memory_start / 2**20, 1) if memory_start else None,
        memory_end_mb=round(tree_memory_bytes(server_pid) / 2**20, 1) if server_pid else None,
        error_samples=errors[:5],
    )


def main(argv=None) -> int:
    from genguard.export import samples
    from genguard.server import GRPC_PORT, HOST, HTTP_PORT

    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help=f"default {HOST}:{GRPC_PORT} (grpc) / {HOST}:{HTTP_PORT} (http)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--http-port", type=int, default=HTTP_PORT, help="to find the server process for RSS")
    args = parser.parse_args(argv)
    url = args.url or f"{HOST}:{GRPC_PORT if args.protocol == 'grpc' else HTTP_PORT}"
    images = list(samples.photos().values())
    report = run(url, images, kind=args.protocol, concurrency=args.concurrency, seconds=args.minutes * 60,
                 max_requests=args.max_requests, batch=args.batch, server_pid=find_server_pid(args.http_port))
    print(json.dumps(asdict(report), indent=2))
    ok = report.errors == 0 and report.lost == 0 and report.duplicated == 0
    print("soak:", "OK" if ok else "FAILED", f"- {report.requests} requests, {report.errors} errors, "
          f"{report.lost} lost, {report.duplicated} duplicated, p50 {report.p50_ms} ms, p99 {report.p99_ms} ms, "
          f"server memory (PSS) {report.memory_start_mb} -> {report.memory_end_mb} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
