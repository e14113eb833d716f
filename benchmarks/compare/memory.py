"""Memory of this process and of the served stack, read from /proc (Linux)."""

from __future__ import annotations

import ctypes
import gc
import resource
from pathlib import Path


def _status_kib(field: str, pid: str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_bytes() -> int:
    """This process's peak resident memory (VmHWM; since the last reset_peak())."""
    return _status_kib("VmHWM") * 1024 or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_EARLIER_PEAK = 0  # the highest VmHWM seen before a reset (the kernel resets ru_maxrss with it)


def process_peak_bytes() -> int:
    """The whole run's peak resident memory, across reset_peak() calls."""
    return max(_EARLIER_PEAK, peak_bytes())


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> bool:
    """Restart VmHWM from the current RSS (writing 5 to clear_refs, Linux ≥ 4.0), so that a peak measured
    afterwards is that step's; False where the kernel refuses or ignores it (then peaks are the process's
    so far)."""
    global _EARLIER_PEAK
    _EARLIER_PEAK = max(_EARLIER_PEAK, peak_bytes())
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    # Some kernels (and sandboxes) accept the write and keep the old peak: only a peak back near the
    # current RSS counts as reset.
    return peak_bytes() <= rss_bytes() + (16 << 20)


def release() -> None:
    """Hand freed memory back to the OS: a dropped session's buffers otherwise stay in glibc's heap."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def served_stack_bytes(http_url: str) -> int | None:
    """The tritonserver serving `http_url` and its python-backend stubs: the sum of their PSS (shared pages
    counted once), or None when that server is not a local process."""
    from genguard.benchmarks.soak import find_server_pid, tree_memory_bytes

    host, _, port = http_url.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "") or not port.isdigit():
        return None
    pid = find_server_pid(int(port))
    return tree_memory_bytes(pid) if pid else None
