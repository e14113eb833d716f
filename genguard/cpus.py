"""How many CPUs this process may really use: in a container, the cgroup's CPU quota, not the node's cores.

`os.cpu_count()` reports the node (100+ cores on a GPU server) even under a 4-CPU Kubernetes limit; sizing
thread pools by it oversubscribes the quota and throttles the pod. The pools size themselves by
available_cpus() unless a config parameter sets their size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_v2(root: Path, relative: str) -> float | None:
    """The tightest cpu.max quota (in CPUs) from the process's cgroup up to the root, cgroup v2."""
    best = None
    folder = root / relative.lstrip("/")
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cpus = int(quota) / int(period)
                best = cpus if best is None else min(best, cpus)
        except (OSError, ValueError):
            pass
        if folder == root or root not in folder.parents:
            return best
        folder = folder.parent


def _quota_v1(root: Path, relative: str) -> float | None:
    """cfs_quota_us / cfs_period_us of the cpu controller, cgroup v1 (-1: no quota)."""
    for folder in (root / "cpu" / relative.lstrip("/"), root / "cpu,cpuacct" / relative.lstrip("/"),
                   root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (may be fractional), or None when unlimited/unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = line.split(":", 2)
        if controllers == "" and (root / "cgroup.controllers").exists():
            return _quota_v2(root, path)
        if "cpu" in controllers.split(","):
            return _quota_v1(root, path)
    return None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """min(affinity mask, cgroup quota rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


# ---------------------------------------------------------------------------------------------------
# instruction sets: which CPU engine/precision options this machine can run

CPUINFO = Path("/proc/cpuinfo")
# Simulates a CPU without some instructions (tests, a "what if this ran on an older node" check): a
# comma-separated list of /proc/cpuinfo flags treated as absent. Read here only.
HIDE_FLAGS_ENV = "GENGUARD_CPU_HIDE_FLAGS"
# capability -> the flags that provide it (any one suffices)
CAPABILITIES = {
    "bf16": ("avx512_bf16", "amx_bf16"),             # BF16 dot products: OpenVINO's BF16 inference precision
    "vnni": ("avx512_vnni", "avx_vnni", "amx_int8"),  # INT8 dot products: fast, non-saturating INT8 GEMM/conv
}


def cpu_flags(cpuinfo: Path = CPUINFO, hide: str | None = None) -> frozenset[str]:
    """The first processor's /proc/cpuinfo flags, less those named in `hide` (default: $GENGUARD_CPU_HIDE_FLAGS)."""
    hide = os.environ.get(HIDE_FLAGS_ENV, "") if hide is None else hide
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            break
    return frozenset(flags - {f.strip() for f in hide.split(",") if f.strip()})


def capabilities(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """{"bf16": bool, "vnni": bool} from the CPU's flags."""
    flags = cpu_flags() if flags is None else flags
    return {cap: any(f in flags for f in provided_by) for cap, provided_by in CAPABILITIES.items()}


# the flags that decide which CPU option is fast here: AMX tiles (BF16/INT8 matrix multiplies), AVX-512 BF16 dot
# products, VNNI INT8 dot products. Records and reports name them next to the CPU model.
DECIDING_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The first processor's model name with its family/model numbers ("AMD EPYC (family 26, model 2)"): a
    virtual machine may report a generic name, the numbers still tell the generation apart."""
    fields: dict[str, str] = {}
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor only
            continue
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def describe(flags: frozenset[str] | None = None, cpuinfo: Path = CPUINFO) -> str:
    """One line: the CPU model and which deciding flags it has, e.g. "AMD EPYC (family 26, model 2):
    avx512_bf16, avx512_vnni, avx_vnni; no amx_bf16, amx_int8"."""
    flags = cpu_flags(cpuinfo) if flags is None else flags
    present = [f for f in DECIDING_FLAGS if f in flags]
    absent = [f for f in DECIDING_FLAGS if f not in flags]
    return (f"{cpu_model(cpuinfo)}: {', '.join(present) or 'none of ' + ', '.join(DECIDING_FLAGS)}"
            + (f"; no {', '.join(absent)}" if present and absent else ""))
