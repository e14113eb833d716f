"""Checkpoint -> ONNX -> TensorRT, DALI serialization and repository rendering (installed as genguard.export)."""

from __future__ import annotations

from genguard.checksums import sha256_file  # noqa: F401 (the runtime checks the same hash at load)
