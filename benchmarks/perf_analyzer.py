"""perf_analyzer: obtain a binary that runs here, write its --input-data, run it, read its CSV.

Which binary (measured on these machines): tritonclient >= 2.61 ships none, and
2.52-2.60's needs glibc 2.38, so GenGuard uses the one in the tritonclient==2.51.0 manylinux1 wheel —
the same release as the tritonserver core that nvidia-pytriton 0.7.0 bundles. It links libb64.so.0d
and libcudart.so.12, which the wheel doesn't carry; nvidia-pytriton ships both (under hashed names)
in nvidia_pytriton.libs, so the cache gets symlinks with the plain names.

The binary and its lib/ live in a cache outside the repository: $GENGUARD_CACHE, else
~/.cache/genguard, then perf_analyzer-2.51.0/. It is fetched once, on purpose
(`python -m genguard.benchmarks.perf_analyzer fetch`, or the first `make bench`); the tests only use an
already-fetched copy and never download (they skip, saying how to fetch it, when there is none).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

VERSION = "2.51.0"
WHEEL_MEMBER = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
# soname the binary asks for -> glob of the file nvidia-pytriton ships
LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


class PerfAnalyzerUnavailable(RuntimeError):
    """No runnable perf_analyzer could be had; the message says why and what to do."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict
    version: str

    def command(self, *args: str) -> list[str]:
        return [str(self.binary), *args]


def cache_root() -> Path:
    return Path(os.environ.get("GENGUARD_CACHE") or Path.home() / ".cache" / "genguard")


def _pytriton_libs() -> Path:
    libs = Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise PerfAnalyzerUnavailable(
            "perf_analyzer needs libb64 and libcudart, taken from nvidia-pytriton's bundled libraries, but "
            f"nvidia-pytriton is not installed in this Python ({sys.executable}): run `make setup`")
    return libs


def _link_libs(lib_dir: Path) -> None:
    """Symlink the plain sonames to nvidia-pytriton's copies (re-made each time: the venv may move)."""
    source = _pytriton_libs()
    lib_dir.mkdir(parents=True, exist_ok=True)
    for soname, pattern in LIBS.items():
        found = sorted(source.glob(pattern))
        if not found:
            raise PerfAnalyzerUnavailable(f"{source} has no {pattern} (needed as {soname} by perf_analyzer)")
        link = lib_dir / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])


def _download(binary: Path) -> None:
    """pip download the tritonclient 2.51.0 wheel (no dependencies) and extract perf_analyzer."""
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="genguard-pa-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                   f"tritonclient=={VERSION}", "--platform", "manylinux1_x86_64", "--only-binary=:all:",
                   "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob(f"tritonclient-{VERSION}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise PerfAnalyzerUnavailable(
                f"could not download tritonclient=={VERSION} (which carries perf_analyzer): "
                f"{' '.join(command)} said:\n{done.stderr.strip()[-800:]}\n"
                "Give a perf_analyzer that runs here with --perf-analyzer PATH instead.")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                info = wheel.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise PerfAnalyzerUnavailable(f"{wheels[0].name} has no {WHEEL_MEMBER}") from None
            partial = binary.with_suffix(".partial")
            with wheel.open(info) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.chmod(0o755)
            os.replace(partial, binary)


def _version(binary: Path, env: dict) -> str:
    try:
        done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise PerfAnalyzerUnavailable(f"{binary} cannot be executed: {exc}") from None
    text = done.stdout + done.stderr
    if done.returncode != 0 or "Perf Analyzer Version" not in text:
        missing = ""
        if shutil.which("ldd"):
            ldd = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True).stdout
            missing = "\n".join(line.strip() for line in ldd.splitlines() if "not found" in line)
        raise PerfAnalyzerUnavailable(
            f"{binary} does not run on this machine (exit {done.returncode}): {text.strip()[-400:]}"
            + (f"\nmissing libraries:\n{missing}" if missing else ""))
    return text.split("Perf Analyzer Version", 1)[1].split()[0]


class NotFetched(PerfAnalyzerUnavailable):
    """The cached perf_analyzer isn't there and downloading was not allowed."""


def obtain(binary: str | Path | None = None, *, download: bool = True) -> PerfAnalyzer:
    """A perf_analyzer that runs here: `binary` if given, else the cached 2.51.0 one (downloaded once
    when `download`; otherwise NotFetched says how to fetch it)."""
    env = dict(os.environ)
    if binary is None:
        home = cache_root() / f"perf_analyzer-{VERSION}"
        binary = home / "bin" / "perf_analyzer"
        if not binary.is_file():
            if not download:
                raise NotFetched(f"perf_analyzer {VERSION} is not fetched into {home}: run "
                                 "`python -m genguard.benchmarks.perf_analyzer fetch` once where PyPI is reachable")
            print(f"fetching perf_analyzer {VERSION} into {home} ...", file=sys.stderr, flush=True)
            _download(binary)
        _link_libs(home / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(home / "lib"), env.get("LD_LIBRARY_PATH")]))
    binary = Path(binary)
    return PerfAnalyzer(binary, env, _version(binary, env))


# ---------------------------------------------------------------------------------------------------
# --input-data


def tensor_entry(array: np.ndarray) -> dict:
    """One tensor of one --input-data entry: {"b64": ..., "shape": [...]} (shape without the batch axis).

    Fixed-size types are their raw little-endian bytes; BYTES (numpy object/bytes arrays) must be
    Triton's serialized form — each element as a 4-byte little-endian length and its bytes — or the
    server reads garbage.
    """
    array = np.asarray(array)
    if array.dtype == np.object_ or array.dtype.kind in ("S", "U"):
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
        raw = b"".join(len(x).to_bytes(4, "little") + x for x in items)
    else:
        raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"b64": base64.b64encode(raw).decode("ascii"), "shape": list(array.shape)}


def input_data(entries: list[dict[str, np.ndarray]]) -> dict:
    """perf_analyzer --input-data JSON: one entry per request, each {input name: tensor}. perf_analyzer
    sends them in turn, so a sweep over N entries sends each image equally often."""
    if not entries:
        raise ValueError("no input entries")
    return {"data": [{name: tensor_entry(array) for name, array in entry.items()} for entry in entries]}


def image_entries(images: list[bytes], input_name: str = "IMAGE") -> list[dict[str, np.ndarray]]:
    """Encoded images as the ensemble takes them: UINT8 [L] per request (-b 1), one entry per image."""
    return [{input_name: np.frombuffer(data, dtype=np.uint8)} for data in images]


def write_input_data(path: Path, entries: list[dict[str, np.ndarray]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(input_data(entries)))
    return path


# ---------------------------------------------------------------------------------------------------
# running and reading


@dataclass
class Measurement:
    """One perf_analyzer measurement at one concurrency. Latencies in milliseconds (client side)."""

    model: str
    protocol: str
    concurrency: int
    throughput: float  # inferences (= images, batch 1) per second
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    server_queue_ms: float = 0.0
    server_compute_ms: float = 0.0
    extra: dict = field(default_factory=dict)


def parse_csv(text: str, model: str, protocol: str) -> list[Measurement]:
    """perf_analyzer -f CSV (latencies in microseconds) -> Measurements."""
    rows = []
    for row in csv.DictReader(text.splitlines()):
        if not row.get("Concurrency"):
            continue
        us = lambda key: float(row.get(key) or 0) / 1000.0  # noqa: E731
        compute = sum(us(k) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"))
        rows.append(Measurement(
            model=model, protocol=protocol, concurrency=int(float(row["Concurrency"])),
            throughput=float(row["Inferences/Second"]),
            p50_ms=us("p50 latency"), p90_ms=us("p90 latency"), p95_ms=us("p95 latency"), p99_ms=us("p99 latency"),
            server_queue_ms=us("Server Queue"), server_compute_ms=compute,
        ))
    return rows


def run(pa: PerfAnalyzer, model: str, url: str, protocol: str, concurrency: int, input_data_path: Path,
        workdir: Path, *, request_count: int | None = None, window_requests: int = 20,
        stability: float = 20.0, max_trials: int = 4, timeout: float = 600) -> Measurement:
    """One perf_analyzer run at one concurrency.

    request_count: send exactly this many requests and measure them as one window (same work in every
        mode: what the side-by-side comparison uses).
    otherwise: count windows of `window_requests` requests until `stability`% agreement of three in a row
        or `max_trials` windows (a noisy shared CPU rarely settles to perf_analyzer's default 10%).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / f"{model}-{protocol}-c{concurrency}.csv"
    report.unlink(missing_ok=True)
    args = ["-m", model, "-u", url, "-i", protocol, "--concurrency-range", f"{concurrency}:{concurrency}",
            "--input-data", str(input_data_path), "-f", str(report), "--max-threads", str(max(4, concurrency))]
    if request_count:
        args += ["--request-count", str(request_count)]
    else:
        args += ["--measurement-mode", "count_windows", "--measurement-request-count", str(window_requests),
                 "-s", f"{stability:g}", "-r", str(max_trials)]
    command = pa.command(*args)
    try:
        done = subprocess.run(command, env=pa.env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"perf_analyzer ran past {timeout:.0f} s on {model} ({protocol}, c={concurrency})") from None
    (workdir / f"{model}-{protocol}-c{concurrency}.log").write_text(" ".join(command) + "\n\n" + done.stdout
                                                                    + done.stderr)
    if done.returncode != 0 or not report.is_file():
        raise RuntimeError(f"perf_analyzer failed on {model} ({protocol}, c={concurrency}), exit "
                           f"{done.returncode}:\n{_gist(done.stdout + done.stderr)}")
    rows = parse_csv(report.read_text(), model, protocol)
    if not rows:
        raise RuntimeError(f"perf_analyzer wrote no measurement to {report}")
    return rows[-1]


def _gist(output: str) -> str:
    """What went wrong, without the usage text perf_analyzer prints after an argument error."""
    text = output.split("Usage:", 1)[0].strip()
    return text[-1500:] or output.strip()[:500]


def profile_timing(profile: dict):
    """perf_analyzer --profile-export-file JSON -> Timing over its requests: latency = last response -
    send, per request; wall time = first send to last response. (perf_analyzer's own throughput for a
    --request-count run divides by a window padded to its measurement interval, so it is not used.)"""
    from genguard.benchmarks.report import Timing

    spans = [(r["timestamp"], r["response_timestamps"][-1])
             for e in profile["experiments"] for r in e["requests"] if r.get("response_timestamps")]
    if not spans:
        raise RuntimeError("perf_analyzer recorded no completed request")
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return Timing(len(spans), (end - start) / 1e9, tuple((e - s) / 1e9 for s, e in spans))


_REQUEST = re.compile(rb'"timestamp"\s*:\s*(\d+)(?:(?!"timestamp").)*?"response_timestamps"\s*:\s*\[([\d,\s]*)\]', re.S)


def profile_spans(data) -> list[tuple[int, int]]:
    """(send, last response) nanosecond pairs of a --profile-export-file, read without parsing the JSON:
    the file repeats every request's inputs (hundreds of MB for image tensors) and only the timestamps
    are wanted. Requests never answered are left out."""
    spans = []
    for match in _REQUEST.finditer(data):
        sent, responses = match.groups()
        stamps = [int(x) for x in responses.split(b",") if x.strip()]
        if stamps:
            spans.append((int(sent), stamps[-1]))
    return spans


def run_fixed(pa: PerfAnalyzer, model: str, url: str, protocol: str, concurrency: int, input_data_path: Path,
              workdir: Path, requests: int, timeout: float = 900):
    """Send exactly `requests` requests at `concurrency` and time them from perf_analyzer's per-request
    record: the same work as the in-process modes it is compared with. Returns a report.Timing."""
    if requests < concurrency:
        raise ValueError(f"{requests} requests cannot keep {concurrency} in flight")
    workdir.mkdir(parents=True, exist_ok=True)
    stem = workdir / f"{model}-{protocol}-c{concurrency}-n{requests}"
    profile = stem.with_suffix(".profile.json")
    profile.unlink(missing_ok=True)
    command = pa.command("-m", model, "-u", url, "-i", protocol, "--concurrency-range", f"{concurrency}:{concurrency}",
                         "--input-data", str(input_data_path), "--request-count", str(requests),
                         "--profile-export-file", str(profile), "--max-threads", str(max(4, concurrency)))
    try:
        done = subprocess.run(command, env=pa.env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"perf_analyzer ran past {timeout:.0f} s on {model} ({protocol}, c={concurrency})") from None
    stem.with_suffix(".log").write_text(" ".join(command) + "\n\n" + done.stdout + done.stderr)
    if done.returncode != 0 or not profile.is_file():
        raise RuntimeError(f"perf_analyzer failed on {model} ({protocol}, c={concurrency}), exit {done.returncode}:\n"
                           + _gist(done.stdout + done.stderr))
    import mmap

    with open(profile, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        spans = profile_spans(data)  # mapped, not read: the file can exceed a GB
    timing = profile_timing({"experiments": [{"requests": [
        {"timestamp": a, "response_timestamps": [b]} for a, b in spans]}]})
    profile.unlink()  # it holds every request's inputs: large, and the timing is taken
    return timing


def main(argv=None) -> int:
    """python -m genguard.benchmarks.perf_analyzer fetch: download (once) and check the cached binary."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genguard.benchmarks.perf_analyzer")
    parser.add_argument("command", choices=["fetch"])
    parser.parse_args(argv)
    try:
        pa = obtain()
    except PerfAnalyzerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"perf_analyzer {pa.version}: {pa.binary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
