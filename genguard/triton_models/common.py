"""What every GenGuard python-backend model reads the same way: its config parameters, the decode limits
the renderer wrote, its worker pool, and the loud warning a meaningless answer deserves.

Imported from the installed package by the model.py copies (like metrics); triton_python_backend_utils is
passed in, never imported here, so this module also imports outside the server.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from genguard import protocol
from genguard.cpus import available_cpus
from genguard.preprocess import DecodeLimits

BANNER = "!" * 20


def model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def parameters(config: dict) -> dict[str, str]:
    """The config's string parameters (the renderer writes every parameter as a string or JSON text)."""
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def decode_limits(params: dict[str, str]) -> DecodeLimits:
    limits = json.loads(params.get("limits", "{}"))
    if "formats" in limits:
        limits["formats"] = tuple(limits["formats"])
    return DecodeLimits(**limits)


def worker_pool(threads: str, prefix: str) -> ThreadPoolExecutor:
    """Threads for per-image work (Pillow releases the GIL while decoding): the configured count, else
    the container's CPU quota (not the node's core count)."""
    return ThreadPoolExecutor(max_workers=int(threads or "0") or available_cpus(), thread_name_prefix=prefix)


def image_rows(pb_utils, request) -> list[bytes]:
    """A request's encoded images: one row of the UINT8 [N, L] IMAGE tensor each (zero padding kept; the
    decoders and genguard.preprocess strip it)."""
    images = pb_utils.get_input_tensor_by_name(request, protocol.INPUT).as_numpy()
    return [row.tobytes() for row in images.reshape(images.shape[0], -1)]


def warn_loudly(pb_utils, message: str) -> None:
    """Triton's log and a banner on stderr: for answers that must not be mistaken for real ones."""
    pb_utils.Logger.log_warn(message)
    print(f"{BANNER} {message} {BANNER}", file=sys.stderr, flush=True)
