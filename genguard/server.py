"""Run the `tritonserver` that PyPI nvidia-pytriton bundles (python backend only) on a rendered repository.

One source for the server's flags: server_args() is what `make serve`, the tests, the server image and
the Kubernetes manifests use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import secrets
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from genguard.protocol import GATEWAY_PORT, GRPC_PORT, HOST, HTTP_PORT, METRICS_PORT

__all__ = ["GATEWAY_PORT", "GRPC_PORT", "HOST", "HTTP_PORT", "METRICS_PORT", "Ports", "server_args", "start",
           "wait_ready", "is_ready", "stop_pid", "probe", "start_gateway", "stop_gateway"]


# Each python-backend stub's shared-memory region (tensors to and from tritonserver) is made this large at start
# instead of 1 MiB grown on demand: a stub that must grow it while memory is short throws inside boost.interprocess
# holding the region's lock, and tritonserver aborts (`boost::interprocess::lock_exception`, tests/test_faults.py).
# 64 MiB holds the largest detector's full batch (16 x 3 x 448 x 448 float32 = 38.5 MB) and its outputs, so the
# detectors, the stubs that use the most memory, never grow it; pages are used (in /dev/shm) only as tensors fill them.
PYTHON_SHM_BYTES = 64 << 20


@dataclass(frozen=True)
class Ports:
    http: int = HTTP_PORT
    grpc: int = GRPC_PORT
    metrics: int = METRICS_PORT


def free_ports(count: int, host: str = HOST) -> list[int]:
    """`count` distinct ports free on `host` now (bound together, then released), for servers of tests and
    benchmarks that must not meet a running `make serve`."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def server_args(repository: Path | str, *, ports: Ports = Ports(), host: str = HOST, production: bool = False,
                admin_key: str | None = None, gpu: bool = False, backend_directory: Path | str | None = None,
                cache_directory: Path | str | None = None, python_shm_bytes: int | None = PYTHON_SHM_BYTES) -> list[str]:
    """tritonserver flags.

    python_shm_bytes: each python-backend stub's shared-memory region at start (None: Triton's 1 MiB, grown on
    demand, which aborts the server when a stub cannot grow it: see PYTHON_SHM_BYTES).
    production: restrict the model-repository (load/unload/index) and shared-memory APIs to requests
    carrying the header `genguard-admin-key: <admin_key>`; with no key given, a random one nobody knows.
    gpu: report GPU metrics (the GPU targets).
    """
    args = [
        f"--model-repository={repository}",
        f"--http-address={host}", f"--http-port={ports.http}",
        f"--grpc-address={host}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}", f"--metrics-port={ports.metrics}",
        "--allow-metrics=true", f"--allow-gpu-metrics={str(gpu).lower()}",
        "--model-control-mode=none",
        "--disable-auto-complete-config",  # the rendered configs are complete; don't let Triton guess
        "--exit-on-error=true",  # a detector that fails to load stops the server: no silent half-service
        "--strict-readiness=true",
        "--exit-timeout-secs=30",  # graceful shutdown: drain in-flight requests
    ]
    if python_shm_bytes:
        args.append(f"--backend-config=python,shm-default-byte-size={python_shm_bytes}")
    if production:
        key = admin_key or secrets.token_hex(16)
        restricted = f"model-repository,shared-memory:genguard-admin-key={key}"
        args += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
    if backend_directory:
        args.append(f"--backend-directory={backend_directory}")
    if cache_directory:
        args.append(f"--cache-directory={cache_directory}")
    return args


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def prepare_tritonserver(home: Path) -> Path:
    """Lay out pytriton's bundled tritonserver under `home` with the python backend stub for this
    Python in backends/python/ (where the backend looks for it). Returns the binary's path."""
    bundled = _site_packages() / "pytriton" / "tritonserver"
    if not bundled.is_dir():
        raise RuntimeError("nvidia-pytriton is not installed: run `make setup`")
    binary = home / "bin" / "tritonserver"
    if not binary.exists():
        for part in ("bin", "backends", "caches"):
            shutil.copytree(bundled / part, home / part, symlinks=True, dirs_exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = bundled / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy2(stub, home / "backends" / "python" / "triton_python_backend_stub")
    return binary


def environment() -> dict[str, str]:
    """The stub finds its Python on PATH: this venv's bin first. pytriton's libs on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    libs = str(_site_packages() / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libs, env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start(repository: Path, home: Path, *, ports: Ports = Ports(), log_file: Path | None = None,
          production: bool = False, admin_key: str | None = None,
          python_shm_bytes: int | None = PYTHON_SHM_BYTES) -> subprocess.Popen:
    binary = prepare_tritonserver(home)
    command = [str(binary), *server_args(repository, ports=ports, production=production, admin_key=admin_key,
                                         backend_directory=home / "backends", cache_directory=home / "caches",
                                         python_shm_bytes=python_shm_bytes)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    return subprocess.Popen(command, env=environment(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def is_ready(ports: Ports = Ports(), host: str = HOST) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{ports.http}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_ready(process: subprocess.Popen, ports: Ports = Ports(), timeout: float = 300,
               log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {process.returncode} before becoming ready"
                               + _log_tail(log_file))
        if is_ready(ports):
            return
        time.sleep(0.5)
    raise RuntimeError(f"tritonserver not ready after {timeout:.0f} s" + _log_tail(log_file))


def _log_tail(log_file: Path | None, lines: int = 30) -> str:
    if not log_file or not Path(log_file).exists():
        return ""
    tail = Path(log_file).read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log_file} ---\n" + "\n".join(tail)


def stop_pid(pid: int, timeout: float = 40) -> bool:
    """SIGTERM (Triton drains in-flight requests), then SIGKILL after `timeout`. False if not running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap it if it is our child: an exited but unreaped child still "exists" for kill(0)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


# ---------------------------------------------------------------------------------------------------
# make stop (make serve: genguard.export.serve, which exports and renders before it starts the server)


def stop(args) -> int:
    stop_gateway(Path(args.build))
    pidfile = Path(args.build) / "tritonserver.pid"
    if not pidfile.exists():
        print("no GenGuard server recorded (no pid file); nothing to stop")
        return 0
    pid = int(pidfile.read_text().strip())
    print("stopped" if stop_pid(pid) else f"server {pid} was not running")
    pidfile.unlink()
    return 0


# ---------------------------------------------------------------------------------------------------
# the REST gateway next to it (genguard.gateway), for make serve / make stop


def start_gateway(build: Path, ports: Ports, port: int = GATEWAY_PORT, timeout: float = 60) -> str:
    """genguard.gateway on HOST:port (loopback: API keys optional, GENGUARD_GATEWAY_* honoured) forwarding
    to this Triton's gRPC port; pid in build/gateway.pid, log in build/gateway.log. Returns its URL."""
    pidfile, log_file = build / "gateway.pid", build / "gateway.log"
    url = f"http://{HOST}:{port}"
    command = [sys.executable, "-m", "genguard.gateway", "--host", HOST, "--port", str(port),
               "--triton-url", f"{HOST}:{ports.grpc}"]
    if not os.environ.get("GENGUARD_GATEWAY_STATE_DIR"):  # the jobs store and spool live with the build
        command += ["--state-dir", str(build / "jobs")]
    with open(log_file, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pidfile.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pidfile.unlink(missing_ok=True)
            raise RuntimeError(f"the gateway exited with code {process.returncode}" + _log_tail(log_file))
        try:
            with urllib.request.urlopen(f"{url}/v1/health/live", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        time.sleep(0.3)
    stop_gateway(build)
    raise RuntimeError(f"the gateway did not answer on {url} within {timeout:.0f} s" + _log_tail(log_file))


def serve_gateway(build: Path, ports: Ports, port: int) -> str:
    """start_gateway for `make serve`: the lines it adds to the ready banner (port 0: no gateway)."""
    if not port:
        return ""
    try:
        url = start_gateway(build, ports, port)
    except RuntimeError as exc:
        print(f"GenGuard's REST gateway failed to start (Triton is up without it): {exc}", file=sys.stderr)
        return "\n  REST    not running (see above)"
    return f"\n  REST    {url}   reviewer page {url}/   docs {url}/docs   (log {build / 'gateway.log'})"


def stop_gateway(build: Path) -> None:
    pidfile = build / "gateway.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().strip())
        print("gateway stopped" if stop_pid(pid, timeout=35) else f"gateway {pid} was not running")
        pidfile.unlink(missing_ok=True)


def probe(url: str, timeout: float = 30) -> str | None:
    """A real inference of a tiny image through the ensemble: None if answered, else why not.

    Readiness doesn't notice a dead python-backend stub (Triton 2.51 keeps the model READY and fails each
    request that reaches it), so this is the check an orchestrator should use for liveness.
    """
    import io
    import json

    import tritonclient.http as httpclient
    from PIL import Image

    from genguard import protocol

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, "PNG")
    batch = protocol.pack_images([buffer.getvalue()])
    tensor = httpclient.InferInput(protocol.INPUT, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    try:
        client = httpclient.InferenceServerClient(url, network_timeout=timeout, connection_timeout=timeout)
        answer = json.loads(client.infer(protocol.ENSEMBLE, [tensor]).as_numpy(protocol.RESULT)[0, 0])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if answer["status"] == protocol.SUCCESS else f"probe image failed: {answer['error']}"


def run_probe(args) -> int:
    problem = probe(args.url, args.timeout)
    print(f"GenGuard at {args.url}: " + ("answering" if problem is None else f"NOT answering: {problem}"))
    return 0 if problem is None else 1


def print_args(args) -> int:
    """The flags, one per line, for images and manifests that start tritonserver themselves."""
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    for flag in server_args(args.repository, ports=ports, host=args.host, production=args.production,
                            admin_key=os.environ.get("GENGUARD_ADMIN_KEY"), gpu=args.gpu):
        print(flag)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.server")
    sub = parser.add_subparsers(dest="command", required=True)
    probe_p = sub.add_parser("probe", help="liveness: one real inference through the ensemble")
    probe_p.add_argument("--url", default=f"{HOST}:{HTTP_PORT}", help="HTTP host:port")
    probe_p.add_argument("--timeout", type=float, default=30)
    args_p = sub.add_parser("args", help="print the tritonserver flags GenGuard runs with")
    args_p.add_argument("--repository", required=True)
    args_p.add_argument("--host", default=HOST)
    args_p.add_argument("--production", action="store_true",
                        help="restrict the repository/shared-memory APIs (key from $GENGUARD_ADMIN_KEY, else random)")
    args_p.add_argument("--gpu", action="store_true", help="GPU targets: report GPU metrics")
    for flag, default in (("--http-port", HTTP_PORT), ("--grpc-port", GRPC_PORT), ("--metrics-port", METRICS_PORT)):
        args_p.add_argument(flag, type=int, default=default)
    stop_p = sub.add_parser("stop", help="stop the server and gateway `make serve` started")
    stop_p.add_argument("--build", default="build")
    args = parser.parse_args(argv)
    return {"stop": stop, "args": print_args, "probe": run_probe}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
