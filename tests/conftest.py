"""Shared fixtures: one reduced-depth random-weight build of every detector, made once and reused across
runs while the code that makes it is unchanged; one real tritonserver for the whole run."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from genguard import specs
from genguard.server import free_ports  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]


def _builds_key() -> str:
    """What the tiny builds are made from: the exporter, the runtime modules it imports (the top level of
    genguard/, not its packages) and the pinned dependencies. Any change to them makes a new build."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("export/**/*.py"), *ROOT.glob("genguard/*.py"), ROOT / "pyproject.toml"]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_build(kind: str, tmp_path_factory, make: Callable[[Path], None]) -> Path:
    """A build `make` fills, kept under $GENGUARD_TEST_CACHE (default ~/.cache/genguard/test-builds) by
    kind and _builds_key(); GENGUARD_TEST_CACHE=0 builds it afresh in the run's temporary folder (CI
    does, so a clean checkout proves the whole path). Tests only read these builds: they copy to change."""
    root = os.environ.get("GENGUARD_TEST_CACHE", str(Path.home() / ".cache" / "genguard" / "test-builds"))
    if root == "0":
        build = tmp_path_factory.mktemp(kind)
        make(build)
        return build
    build = Path(root) / f"{kind}-{_builds_key()}"
    done = build / ".complete"  # made in place (records name their paths), marked whole when it is
    if done.is_file():
        return build
    build.parent.mkdir(parents=True, exist_ok=True)
    with open(build.parent / f".{kind}.lock", "w") as lock:  # two runs at once: one builds, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return build
        # a half build of this code, and earlier code's builds but the newest (~0.6 GB each; a run of the
        # code before the last change may still be reading that one)
        shutil.rmtree(build, ignore_errors=True)
        older = sorted(build.parent.glob(f"{kind}-*"), key=lambda p: p.stat().st_mtime)
        for old in older[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        build.mkdir()
        make(build)
        done.touch()
    return build


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """build/ with checkpoints/<name>/ (native formats, random, reduced depth) and onnx/<name>/.

    Goes through the same CLI as `make export WEIGHTS=random` (plus --tiny).
    """
    from genguard.export.__main__ import main

    reuse = os.environ.get("GENGUARD_TEST_BUILD")  # developers: a tiny build of their own
    if reuse and all((Path(reuse) / "onnx" / n / "parity.json").is_file() for n in specs.DETECTORS):
        return Path(reuse)

    def make(build: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["--weights", "random", "--tiny", "--build", str(build)]) == 0
        for name in specs.DETECTORS:
            assert (build / "onnx" / name / "model.onnx").is_file(), name

    return cached_build("tiny", tmp_path_factory, make)


# The detectors that have in-graph Grad-CAM exports (explain.onnx).
CNNS = ["imagetrust_binary", "imagetrust_source", "sumsub_sd", "hive_effb4"]


@pytest.fixture(scope="session")
def explain_build(tiny_build, tmp_path_factory) -> Path:
    """A build whose CNN detectors have explain.onnx + explain.json, exported by this test run (or reused from
    GENGUARD_TEST_EXPLAIN_BUILD when every record there still vouches for its file)."""
    from genguard.export.explain import load_record

    reuse = os.environ.get("GENGUARD_TEST_EXPLAIN_BUILD")
    if reuse and all(load_record(Path(reuse) / "onnx" / n) for n in CNNS):
        return Path(reuse)

    def make(build: Path) -> None:
        for name in specs.DETECTORS:
            shutil.copytree(tiny_build / "onnx" / name, build / "onnx" / name)
        shutil.copytree(tiny_build / "checkpoints", build / "checkpoints")
        # the CLI, in its own process: tracing four CNNs holds GBs that a test process would keep
        for name in CNNS:  # one process each: what tracing and the reference hold is handed back in between
            subprocess.run([sys.executable, "-W", "ignore", "-m", "genguard.export.explain", "--build",
                            str(build), "--detectors", name], check=True, capture_output=True)
        assert all(load_record(build / "onnx" / n) for n in CNNS)

    return cached_build("explain", tmp_path_factory, make)


def checkpoint_path(build: Path, name: str) -> Path:
    """A random checkpoint's folder: every loader takes the folder (or the single weights file in it)."""
    return build / "checkpoints" / name


TEST_MAX_BYTES = 4 << 20
TEST_MAX_DECODED_FRAMES = 2000  # genguard_video's frame limit on the test server: a frame-count bomb stays small


@dataclass
class RunningServer:
    ports: "object"
    process: "object"
    log: Path
    repository: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(build: Path, workdir: Path, **render_args) -> RunningServer:
    """Render the cpu repository of `build` into `workdir` and start the real tritonserver on free ports."""
    from genguard import server
    from genguard.export.repository import render

    repository = render("cpu", build, workdir / "repository", **render_args)
    ports = server.Ports(*free_ports(3))
    log = workdir / "tritonserver.log"
    process = server.start(repository, workdir / "tritonserver", ports=ports, log_file=log)
    try:
        server.wait_ready(process, ports, timeout=180, log_file=log)
    except RuntimeError:
        server.stop_pid(process.pid)
        raise
    return RunningServer(ports, process, log, repository)


@pytest.fixture(scope="session")
def c2pa_cas():
    """(trusted, untrusted) test certificate authorities made for this run: the session server trusts the
    first one's manifests (tests/test_provenance_server.py signs with both)."""
    from provenance_fixtures import make_ca

    return make_ca("GenGuard Test"), make_ca("Somewhere Else")


@pytest.fixture(scope="session")
def triton(tiny_build, tmp_path_factory, c2pa_cas) -> RunningServer:
    """One real tritonserver for the whole test run, serving the tiny build's cpu repository."""
    from genguard import server

    from genguard.preprocess import DecodeLimits
    from genguard.export.repository.video import VideoOptions
    from genguard.provenance import ProvenanceConfig
    from genguard.video import VideoLimits

    # A small byte limit keeps the "oversized image" tests' traffic small; the mechanism is the same.
    running = start_server(tiny_build, tmp_path_factory.mktemp("triton"), limits=DecodeLimits(max_bytes=TEST_MAX_BYTES),
                           provenance=ProvenanceConfig(trust_anchors=c2pa_cas[0].pem),
                           video=VideoOptions(limits=VideoLimits(max_decoded_frames=TEST_MAX_DECODED_FRAMES)))
    yield running
    server.stop_pid(running.process.pid)


# -- the run's summary: which tests met the real server, gateway and browser --------------------------------

_MET = ("server", "gateway", "browser")
_passed: dict[str, list[str]] = {kind: [] for kind in _MET}


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        for kind in _MET:
            if kind in report.keywords:
                _passed[kind].append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    """Name what the run proved end to end: every passed test that talked to a real tritonserver, gateway or
    browser, by file (the fast tier's short list shows at a glance that the served path was exercised)."""
    if not any(_passed.values()):
        terminalreporter.write_line("no test talked to a real tritonserver in this run")
        return
    terminalreporter.section("real services met")
    for kind in _MET:
        by_file: dict[str, list[str]] = {}
        for nodeid in _passed[kind]:
            path, _, name = nodeid.partition("::")
            by_file.setdefault(path, []).append(name)
        if by_file:
            terminalreporter.write_line(f"{kind}: {len(_passed[kind])} passed")
            for path, names in by_file.items():
                shown = ", ".join(names[:3]) + (f", … (+{len(names) - 3})" if len(names) > 3 else "")
                terminalreporter.write_line(f"  {path}: {shown}")
