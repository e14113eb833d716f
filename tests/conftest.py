"""Shared fixtures: one reduced-depth random-weight build of every detector per test run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from genguard import specs


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """build/ with checkpoints/<name>/ (native formats, random, reduced depth) and onnx/<name>/.

    Goes through the same CLI as `make export WEIGHTS=random` (plus --tiny).
    """
    from genguard.export.__main__ import main

    build = tmp_path_factory.mktemp("build")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--weights", "random", "--tiny", "--build", str(build)]) == 0
    for name in specs.DETECTORS:
        assert (build / "onnx" / name / "model.onnx").is_file(), name
    return build


def checkpoint_path(build: Path, name: str) -> Path:
    """A random checkpoint's folder: every loader takes the folder (or the single weights file in it)."""
    return build / "checkpoints" / name
