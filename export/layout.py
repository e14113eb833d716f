"""Where a build keeps what it makes, in one place (`build/` by default; every command takes `--build DIR`):

    <build>/checkpoints/<detector>/          the checkpoint a random build wrote (real ones stay where they are)
    <build>/onnx/<detector>/model.onnx       + parity.json, the check that vouches for it by sha256, and
                                             parity.failed.json, the figures of the last export that failed;
                                             beside them the files other commands add (model.int8.onnx,
                                             model.qdq.onnx, model.bf16-mixed.xml + .bin (an OpenVINO IR),
                                             explain.onnx + explain.json, ...: genguard.engines
                                             and genguard.export.explain name them)
    <build>/model_repository/<target>/       a rendered Triton repository

And the two ways every export step installs a checked file: through a temporary sibling, moved into place
only once its check passed (`write_atomic`, `install_checked`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable

CHECKPOINTS = "checkpoints"
ONNX = "onnx"
REPOSITORIES = "model_repository"
PARITY_FILE = "parity.json"
FAILED_PARITY_FILE = "parity.failed.json"


def onnx_dir(build: Path | str) -> Path:
    return Path(build) / ONNX


def onnx_folder(build: Path | str, name: str) -> Path:
    return onnx_dir(build) / name


def checkpoint_folder(build: Path | str, name: str) -> Path:
    return Path(build) / CHECKPOINTS / name


def repository_folder(build: Path | str, target: str) -> Path:
    return Path(build) / REPOSITORIES / target


def read_parity(folder: Path) -> dict:
    """A detector folder's parity.json, or {} when it has none."""
    path = folder / PARITY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def exported(build: Path | str, file: str = PARITY_FILE, keep: Callable[[str], bool] = lambda name: True) -> list[str]:
    """The detectors (in spec order) whose folder under <build>/onnx holds `file` and that `keep` accepts."""
    from genguard import specs

    return [n for n in specs.DETECTORS if (onnx_folder(build, n) / file).is_file() and keep(n)]


def add_build_arguments(parser: argparse.ArgumentParser, detectors_help: str) -> None:
    """--build and --detectors, as every export and benchmark command spells them."""
    parser.add_argument("--build", type=Path, default=Path("build"), help="the build folder (default: build)")
    parser.add_argument("--detectors", default="", help=f"comma-separated subset (default: {detectors_help})")


def chosen(detectors: str, default: Callable[[], list[str]]) -> list[str]:
    """--detectors as a list, or `default()` when it names none."""
    return [n for n in detectors.split(",") if n] or default()


def write_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary sibling and a rename: a reader sees the old file or the new one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def install_checked(partial: Path, final: Path, record: dict, record_path: Path, failed_path: Path) -> None:
    """Move a checked file into place with the record that vouches for it, or keep the previous pair.

    record["passed"] decides. Passed: `partial` replaces `final`, the record is written and the last
    failure's figures are removed. Failed: the figures go to `failed_path`, and `final` and its record stay
    as they were (the caller says so and removes `partial`).
    """
    if not record["passed"]:
        write_atomic(failed_path, json.dumps(record, indent=2) + "\n")
        return
    os.replace(partial, final)
    write_atomic(record_path, json.dumps(record, indent=2) + "\n")
    failed_path.unlink(missing_ok=True)
