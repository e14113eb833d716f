"""TensorRT engines for the `tensorrt` target: built where they run, cached, and checked before serving.

A TensorRT plan only runs on the GPU architecture and TensorRT version that built it. So engines are
built on the serving machine with the server's own TensorRT (`trtexec` inside the NGC tritonserver
container: the image's entrypoint, or a Kubernetes init container running the same image), and cached
under a key of everything that determines the plan:

    <cache>/sm<compute capability>-trt<TensorRT version>-<GPU name>-<memory MiB>/<detector>-<ONNX sha256[:16]>-<recipe hash>/
        model.plan  model.plan.json (metadata: the keys, the recipe, the plan's own sha256)

The GPU's product name and memory size are in the key because TensorRT's engines are specific to the
device model they were built on, not only to its compute capability: an H100 PCIe, an H100 SXM and an
H200 (all 9.0) sharing one cache volume each get their own plans.

A restart finds its engines; another GPU or TensorRT computes another key and builds; a new ONNX export
(another sha256) builds. `check` refuses a repository whose plans' metadata don't match this machine.

The rendered repository (export/repository/, target tensorrt) carries per detector
`onnx/model.onnx` and `onnx/engine.json` (the recipe: input, shape, profile, precision); Triton ignores
non-numeric folders. `build` links `1/model.plan` (+ `1/model.plan.json`) to the cached engine.

CLI (the image entrypoint and the Kubernetes init container run exactly this):
    python -m genguard.export.tensorrt build --repository /models/tensorrt --cache /engine-cache
    python -m genguard.export.tensorrt check --repository /models/tensorrt
    python -m genguard.export.tensorrt machine     # this machine's keys

Nothing here imports TensorRT: versions are read through ctypes (libnvinfer, libcuda), so the module
imports and its logic is tested on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from genguard.checksums import sha256_file

ONNX_FOLDER = "onnx"           # <model>/onnx/model.onnx + engine.json, ignored by Triton (not a version)
RECIPE_FILE = "engine.json"
PLAN = "model.plan"
METADATA = "model.plan.json"
TRTEXEC_CANDIDATES = ("trtexec", "/usr/src/tensorrt/bin/trtexec")

# Engine precision per detector: its spec's gpu_precision (the card's advice: Freepik's recommends BF16,
# EVA02 attention overflows FP16 more readily), else its checkpoint family's (FP16); see
# genguard.export.families.gpu_precision. BF16 needs compute capability >= 8.0; older GPUs build that
# detector in FP32 instead (see effective_precision).
# Parity tolerance (max |Δprob| vs ONNX Runtime FP32 on the same tensors) per engine precision,
# used by the GPU tests: FP16 keeps 10 mantissa bits, BF16 7.
PROB_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 3e-2}



class EngineError(RuntimeError):
    """An engine can't be built, or a plan doesn't belong on this machine."""


# ---------------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class Machine:
    """What a plan is tied to. compute_capability "9.0"; tensorrt "10.11.0" (major.minor.patch); gpu the
    CUDA device name ("NVIDIA H100 80GB HBM3"); memory_mib its total memory (cuDeviceTotalMem)."""

    compute_capability: str
    tensorrt: str
    gpu: str = ""
    memory_mib: int = 0

    @property
    def key(self) -> str:
        device = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        return f"sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt}-{device}-{self.memory_mib}m"

    @property
    def capability(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


@dataclass(frozen=True)
class Recipe:
    """How one detector's engine is built (rendered into <model>/onnx/engine.json)."""

    detector: str
    input: str
    shape: tuple[int, ...]        # one sample, without the batch axis: (3, H, W)
    max_batch: int                # == the model config's max_batch_size
    opt_batch: int
    precision: str                # fp16 | bf16 | fp32
    min_batch: int = 1
    workspace_mib: int = 4096

    def __post_init__(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"{self.detector}: profile needs 1 <= min <= opt <= max, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.precision not in PROB_TOLERANCE:
            raise ValueError(f"{self.detector}: unknown precision {self.precision!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        data = json.loads(text)
        data["shape"] = tuple(data["shape"])
        return cls(**data)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def effective_precision(recipe: Recipe, machine: Machine) -> str:
    """BF16 kernels exist from compute capability 8.0 (Ampere) on; below that, FP32 (not FP16: the card
    asks for BF16's range)."""
    if recipe.precision == "bf16" and machine.capability < (8, 0):
        return "fp32"
    return recipe.precision


def cache_key(machine: Machine, onnx_sha256: str, recipe: Recipe) -> str:
    """Relative folder of one engine in the cache: every input of the build is in it."""
    return f"{machine.key}/{recipe.detector}-{onnx_sha256[:16]}-{recipe.digest()[:8]}"


def metadata(machine: Machine, onnx_sha256: str, recipe: Recipe, plan_sha256: str, command: list[str]) -> dict:
    return {
        "detector": recipe.detector,
        "compute_capability": machine.compute_capability,
        "tensorrt": machine.tensorrt,
        "gpu": machine.gpu,
        "memory_mib": machine.memory_mib,
        "onnx_sha256": onnx_sha256,
        "plan_sha256": plan_sha256,
        "precision": effective_precision(recipe, machine),
        "recipe": asdict(recipe),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
    }


def metadata_problems(meta: dict, machine: Machine, *, onnx_sha256: str | None = None,
                      recipe: Recipe | None = None, plan_sha256: str | None = None) -> list[str]:
    """Why a plan must not be served here (empty: it may)."""
    problems = []
    if meta.get("compute_capability") != machine.compute_capability:
        problems.append(f"built for compute capability {meta.get('compute_capability')}, "
                        f"this GPU is {machine.compute_capability}")
    if meta.get("tensorrt") != machine.tensorrt:
        problems.append(f"built with TensorRT {meta.get('tensorrt')}, this server has {machine.tensorrt}")
    if (meta.get("gpu"), meta.get("memory_mib")) != (machine.gpu, machine.memory_mib):
        problems.append(f"built on a {meta.get('gpu')} ({meta.get('memory_mib')} MiB), this GPU is a "
                        f"{machine.gpu} ({machine.memory_mib} MiB): plans are specific to the device model")
    if onnx_sha256 is not None and meta.get("onnx_sha256") != onnx_sha256:
        problems.append(f"built from ONNX {str(meta.get('onnx_sha256'))[:16]}, the repository's is {onnx_sha256[:16]}")
    if recipe is not None and meta.get("recipe") != json.loads(json.dumps(asdict(recipe))):
        problems.append("built with another recipe (profile, shape or precision) than the repository's engine.json")
    if plan_sha256 is not None and meta.get("plan_sha256") != plan_sha256:
        problems.append("the plan file is not the one its metadata describes (sha256 differs)")
    return problems


# ---------------------------------------------------------------------------------------------------
# This machine


def _load_first(names):
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def tensorrt_version() -> str:
    """The TensorRT the server loads (libnvinfer's getInferLibVersion), as major.minor.patch."""
    try:
        import tensorrt  # noqa: F401  (present in some images; same library underneath)

        return ".".join(tensorrt.__version__.split(".")[:3])
    except ImportError:
        pass
    lib = _load_first([f"libnvinfer.so.{v}" for v in (10, 11, 9, 8)] + ["libnvinfer.so"])
    if lib is None:
        raise EngineError("TensorRT is not installed here (no libnvinfer): build engines inside the server "
                          "image, where the server's own TensorRT is")
    lib.getInferLibVersion.restype = ctypes.c_int32
    return decode_trt_version(lib.getInferLibVersion())


def decode_trt_version(number: int) -> str:
    """getInferLibVersion()'s integer: major*1000+minor*100+patch before TensorRT 10, major*10000+... from 10."""
    if number >= 100000:
        major, rest = divmod(number, 10000)
    else:
        major, rest = divmod(number, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


CUDA_ERROR_NO_DEVICE = 100  # cuInit's answer where a driver is installed but no GPU is visible


def _libcuda():
    return _load_first(["libcuda.so.1", "libcuda.so"])


def gpu_absent_reason() -> str | None:
    """Why there is no GPU here (no driver library, cuInit says CUDA_ERROR_NO_DEVICE, zero devices), or
    None when there is one. Any other CUDA error is a broken GPU setup, not an absent GPU: EngineError."""
    cuda = _libcuda()
    if cuda is None:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    status = cuda.cuInit(0)
    if status == CUDA_ERROR_NO_DEVICE:
        return "the NVIDIA driver sees no GPU (cuInit: CUDA_ERROR_NO_DEVICE)"
    if status != 0:
        raise EngineError(f"cuInit failed (CUDA error {status}): a GPU driver is installed but unusable")
    count = ctypes.c_int()
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        raise EngineError(f"cuDeviceGetCount failed (CUDA error {status})")
    return None if count.value > 0 else "the NVIDIA driver reports 0 GPUs"


def gpu_info(device: int = 0) -> tuple[str, str, int]:
    """(compute capability "M.m", product name, total memory in MiB) of one GPU, from the CUDA driver."""
    cuda = _libcuda()
    if cuda is None:
        raise EngineError("no NVIDIA driver here (libcuda): engines are built on the GPU that serves them")
    check = lambda status, what: status == 0 or _raise(f"{what} failed (CUDA error {status})")  # noqa: E731
    check(cuda.cuInit(0), "cuInit")
    handle = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(handle), device), f"cuDeviceGet({device})")
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, handle), "compute capability major")  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    check(cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle), "compute capability minor")  # ..._MINOR
    name = ctypes.create_string_buffer(256)
    check(cuda.cuDeviceGetName(name, 256, handle), "cuDeviceGetName")
    memory = ctypes.c_size_t()
    check(cuda.cuDeviceTotalMem_v2(ctypes.byref(memory), handle), "cuDeviceTotalMem_v2")
    return f"{major.value}.{minor.value}", name.value.decode(errors="replace"), memory.value >> 20


def gpu_capability(device: int = 0) -> tuple[str, str]:
    """(compute capability "M.m", product name) of one GPU."""
    capability, name, _ = gpu_info(device)
    return capability, name


def _raise(message):
    raise EngineError(message)


def this_machine(device: int = 0) -> Machine:
    capability, name, memory_mib = gpu_info(device)
    return Machine(compute_capability=capability, tensorrt=tensorrt_version(), gpu=name, memory_mib=memory_mib)


def find_trtexec() -> str:
    explicit = os.environ.get("GENGUARD_TRTEXEC")
    for candidate in ([explicit] if explicit else []) + list(TRTEXEC_CANDIDATES):
        found = shutil.which(candidate)
        if found:
            return found
    raise EngineError("trtexec not found (PATH, /usr/src/tensorrt/bin; or set GENGUARD_TRTEXEC): build engines "
                      "inside the NGC tritonserver image, whose TensorRT is the server's")


# ---------------------------------------------------------------------------------------------------
# Building


def _shape(recipe: Recipe, batch: int) -> str:
    return f"{recipe.input}:" + "x".join(str(d) for d in (batch, *recipe.shape))


def trtexec_command(onnx: Path, plan: Path, recipe: Recipe, machine: Machine, *, timing_cache: Path | None,
                    trtexec: str = "trtexec") -> list[str]:
    """The trtexec build command: one optimisation profile min/opt/max over the batch axis (max ==
    the config's max_batch_size), the precision, a shared timing cache, no inference run."""
    command = [
        trtexec, f"--onnx={onnx}", f"--saveEngine={plan}",
        f"--minShapes={_shape(recipe, recipe.min_batch)}",
        f"--optShapes={_shape(recipe, recipe.opt_batch)}",
        f"--maxShapes={_shape(recipe, recipe.max_batch)}",
        f"--memPoolSize=workspace:{recipe.workspace_mib}",  # MiB; --workspace was removed in TensorRT 10
        "--skipInference",  # build only; Triton's warm-up runs it
    ]
    precision = effective_precision(recipe, machine)
    if precision == "fp16":
        command.append("--fp16")
    elif precision == "bf16":
        command.append("--bf16")
    if timing_cache is not None:
        command.append(f"--timingCacheFile={timing_cache}")
    return command


@dataclass
class BuildReport:
    detector: str
    key: str
    built: bool           # False: reused from the cache
    plan: Path
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)


Runner = Callable[[list[str]], "subprocess.CompletedProcess"]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def detectors_in(repository: Path) -> list[Path]:
    """Model folders of `repository` that carry an engine recipe (the tensorrt target's detectors)."""
    return sorted(p for p in Path(repository).iterdir() if (p / ONNX_FOLDER / RECIPE_FILE).is_file())


def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    fcntl.flock(handle, fcntl.LOCK_EX)  # replicas sharing a cache volume build each engine once
    return handle


def ensure_engine(model: Path, cache: Path, machine: Machine, *, run: Runner = _run,
                  trtexec: str | None = None) -> BuildReport:
    """The cached engine for one model folder (built if missing), linked into <model>/1/."""
    recipe = Recipe.from_json((model / ONNX_FOLDER / RECIPE_FILE).read_text())
    source = model / ONNX_FOLDER / "model.onnx"
    onnx = source.resolve()
    if not onnx.is_file():
        dangling = f" (a symlink to {os.readlink(source)}, which is not here)" if source.is_symlink() else ""
        raise EngineError(f"{recipe.detector}: no ONNX model at {source}{dangling}: render the repository "
                          "self-contained (python -m genguard.export.repository --target tensorrt, which "
                          "copies by default) and copy that")
    onnx_sha = sha256_file(onnx)
    key = cache_key(machine, onnx_sha, recipe)
    folder = Path(cache) / key
    plan, meta_path = folder / PLAN, folder / METADATA
    report = BuildReport(recipe.detector, key, built=False, plan=plan)
    with _lock(Path(cache) / ".locks" / (key.replace("/", "__") + ".lock")):
        usable = plan.is_file() and meta_path.is_file() and not metadata_problems(
            json.loads(meta_path.read_text()), machine, onnx_sha256=onnx_sha, recipe=recipe,
            plan_sha256=sha256_file(plan))
        if not usable:
            folder.mkdir(parents=True, exist_ok=True)
            timing = Path(cache) / machine.key / "timing.cache"
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                partial = Path(tmp) / PLAN
                command = trtexec_command(onnx, partial, recipe, machine, timing_cache=timing,
                                          trtexec=trtexec or find_trtexec())
                start = time.monotonic()
                result = run(command)
                report.seconds = time.monotonic() - start
                if result.returncode != 0 or not partial.is_file():
                    tail = "\n".join((result.stdout or "").splitlines()[-25:] + (result.stderr or "").splitlines()[-25:])
                    raise EngineError(f"{recipe.detector}: trtexec failed (exit {result.returncode}):\n{tail}")
                os.replace(partial, plan)  # atomic: a reader sees a whole plan or none
            meta = metadata(machine, onnx_sha, recipe, sha256_file(plan), command)
            meta_path.write_text(json.dumps(meta, indent=1) + "\n")
            report.built = True
    _link(model / "1" / PLAN, plan)
    _link(model / "1" / METADATA, meta_path)
    return report


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(target.resolve(), link)


def ensure_writable(cache: Path) -> None:
    """Fail with the fix, not a traceback, where the engine cache can't be written (an NFS/EFS volume
    that ignores the pod's fsGroup, a root-owned host directory under a non-root image)."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=cache)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        uid, gid = os.getuid(), os.getgid()
        raise EngineError(
            f"the engine cache {cache} is not writable by uid {uid} gid {gid} ({exc.strerror or exc}). "
            f"Fix: make it writable for that user, e.g. `chown -R {uid}:{gid} <volume>` (or chmod g+rwx for gid "
            f"{gid}) once from a root shell or an init container; volumes whose driver ignores fsGroup (NFS, "
            "EFS, some CSI drivers) need this, or a storage class that sets ownership (EFS access point "
            f"uid/gid {uid}/{gid})") from None


def build(repository: Path, cache: Path, machine: Machine | None = None, *, run: Runner = _run,
          trtexec: str | None = None, log=print) -> list[BuildReport]:
    """Build every missing engine of a rendered tensorrt repository into `cache` and link it in."""
    models = detectors_in(repository)
    if not models:
        raise EngineError(f"{repository}: no <model>/{ONNX_FOLDER}/{RECIPE_FILE}: not a rendered tensorrt "
                          "repository (make repository TARGET=tensorrt)")
    machine = machine or this_machine()
    ensure_writable(Path(cache))
    log(f"engines for {machine.gpu or 'GPU'} (compute capability {machine.compute_capability}, "
        f"TensorRT {machine.tensorrt}) in {cache}")
    reports = []
    for model in models:
        report = ensure_engine(model, cache, machine, run=run, trtexec=trtexec)
        log(f"  {report.detector:20s} {'built in %.0f s' % report.seconds if report.built else 'cached'}  {report.key}")
        reports.append(report)
    return reports


def check(repository: Path, machine: Machine | None = None) -> dict[str, list[str]]:
    """Problems per detector with the plans linked into `repository` (empty dict: all servable here)."""
    machine = machine or this_machine()
    problems: dict[str, list[str]] = {}
    for model in detectors_in(repository):
        plan, meta_path = model / "1" / PLAN, model / "1" / METADATA
        if not plan.exists():
            problems[model.name] = [f"no {plan} (run: python -m genguard.export.tensorrt build)"]
            continue
        if not meta_path.exists():
            problems[model.name] = ["plan has no metadata: its GPU and TensorRT are unknown"]
            continue
        recipe = Recipe.from_json((model / ONNX_FOLDER / RECIPE_FILE).read_text())
        found = metadata_problems(json.loads(meta_path.read_text()), machine,
                                  onnx_sha256=sha256_file(model / ONNX_FOLDER / "model.onnx"),
                                  recipe=recipe, plan_sha256=sha256_file(plan))
        if found:
            problems[model.name] = found
    return problems


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m genguard.export.tensorrt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build missing engines into the cache and link them into the repository")
    b.add_argument("--repository", type=Path, required=True)
    b.add_argument("--cache", type=Path, default=Path(os.environ.get("GENGUARD_ENGINE_CACHE", "/engine-cache")))
    b.add_argument("--device", type=int, default=0)
    c = sub.add_parser("check", help="refuse plans whose GPU/TensorRT/ONNX keys don't match this machine")
    c.add_argument("--repository", type=Path, required=True)
    c.add_argument("--device", type=int, default=0)
    m = sub.add_parser("machine", help="print this machine's engine keys")
    m.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        machine = this_machine(args.device)
        if args.command == "machine":
            print(json.dumps({**asdict(machine), "key": machine.key}))
            return 0
        if args.command == "build":
            build(args.repository, args.cache, machine)
        problems = check(args.repository, machine)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if problems:
        print(f"refusing to serve {args.repository}: plans that don't belong on this machine "
              f"({machine.gpu}, compute capability {machine.compute_capability}, TensorRT {machine.tensorrt}):",
              file=sys.stderr)
        for name, found in problems.items():
            print(f"  {name}: " + "; ".join(found), file=sys.stderr)
        return 2
    print(f"every plan in {args.repository} matches this machine ({machine.key})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
