"""GenGuard client: AI-generated-image detection (and NSFW levels) from a GenGuard Triton server.

    from genguard.client import Client

    with Client() as client:                          # gRPC at 127.0.0.1:8001; Client(url, protocol="http")
        for r in client.detect(["photo.jpg", "pictures/"]):
            print(r.name, r.status, r.verdict, r.is_ai_generated, r.source)

No torch: this package needs numpy, pillow, tritonclient and tqdm (for the CLI) only.
"""

from .aio import AsyncClient
from .base import Health
from .errors import GenGuardError, ModelNotReady, RequestRejected, RequestTimeout, ServerUnavailable
from .inputs import encode_png
from .results import ErrorInfo, ImageInfo, NsfwResult, Result, hive_view, is_nsfw
from .sync import Client
from .transport import TLS, RetryEvent

__all__ = [
    "AsyncClient", "Client", "ErrorInfo", "GenGuardError", "Health", "ImageInfo", "ModelNotReady",
    "NsfwResult", "RequestRejected", "RequestTimeout", "Result", "RetryEvent", "ServerUnavailable", "TLS",
    "encode_png", "hive_view", "is_nsfw",
]
