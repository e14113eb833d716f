"""The wire contract between clients and every GenGuard target (cpu, onnx-gpu, tensorrt).

Clients send encoded image bytes as UINT8 [-1] per image: the type Triton's DALI backend takes for
encoded images (it does not take BYTES), and the one the python preprocess takes too, so a client
never needs to know which target answers. A batched request is [N, L]: each row one image's bytes,
zero-padded to the longest (JPEG, PNG, WebP, GIF, BMP and TIFF decoders ignore trailing bytes).
"""

from __future__ import annotations

import numpy as np

ENSEMBLE = "genguard"
PREPROCESS = "preprocess"
POSTPROCESS = "postprocess"

INPUT = "IMAGE"                       # UINT8 [-1]
RESULT = "RESULT"                     # BYTES [1]: the per-image JSON answer
IS_AI_GENERATED = "IS_AI_GENERATED"   # FP32 [1]: fused probability
POSSIBLE_SOURCES = "POSSIBLE_SOURCES" # FP32 [S]: labels in the config's label file (first: none)
NSFW_SCORES = "NSFW_SCORES"           # FP32 [4]: neutral, low, medium, high
STATUS = "STATUS"                     # INT32 [1]: 0 success, 1 failure
OUTPUTS = (RESULT, IS_AI_GENERATED, POSSIBLE_SOURCES, NSFW_SCORES, STATUS)

# genguard_video: one clip per request (no batch dimension) -> the clip's answer, the same RESULT and STATUS
VIDEO_MODEL = "genguard_video"
VIDEO = "VIDEO"                       # UINT8 [-1]: the clip's encoded bytes (MP4/MOV, WebM, AVI, TS, animated images)
VIDEO_OPTIONS = "OPTIONS"             # BYTES [1], optional: {"fps", "max_frames", "sampling"} as JSON

IMAGE_INFO = "IMAGE_INFO"             # preprocess -> postprocess, BYTES [1]: JSON status + image facts
DETECTOR_INPUT = "pixels"             # every detector model's input, FP32 [3, H, W]

SUCCESS, FAILURE = "SUCCESS", "FAILURE"

# NSFW_SCORES' order: Freepik's levels, least to most explicit (its head's labels; clients read them by name)
NSFW_LEVELS = ("neutral", "low", "medium", "high")

# Where GenGuard listens by default (make serve, the server image, the Kubernetes Services, the clients)
HOST = "127.0.0.1"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
GATEWAY_PORT = 8080                   # the REST gateway (genguard.gateway)


def pixels_tensor(input_name: str) -> str:
    """Preprocess output (and ensemble tensor) for one InputSpec."""
    return f"PIXELS_{input_name}"


def head_tensor(detector: str, head: str) -> str:
    """Ensemble tensor / postprocess input carrying one detector head's logits."""
    return f"{detector}__{head}"


def pack_images(images: list[bytes]) -> np.ndarray:
    """Encoded images -> the UINT8 [N, L] request tensor (rows zero-padded to the longest)."""
    if not images:
        raise ValueError("no images to send")
    longest = max(1, max(len(b) for b in images))
    batch = np.zeros((len(images), longest), dtype=np.uint8)
    for row, data in zip(batch, images):
        row[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return batch
