"""The rendered example repositories committed under model_repository/<target>/ (golden files).

    python -m genguard.export.repository.golden --build BUILD [--out model_repository]

renders every target from BUILD (a random-weight build of every detector: make export WEIGHTS=random, or
the tests' reduced-depth one; the configs are the same) and writes each repository's text files, so a
change to rendering shows up as a readable diff in review. tests/test_golden.py renders them again and
compares byte for byte. What a build makes differently is written as a placeholder:

  the `checkpoint` path an export recorded   ->  BUILD/checkpoints/<...>
  the `onnx_sha256` of the exported file     ->  SHA256-OF-MODEL-ONNX
  (and each "sha256" of postprocess's `files`)

and what isn't text or is a copy of a file in this repository is left out: model.onnx (the export),
1/model.py (a copy of genguard/triton_models/<model>.py), preprocess/1/dali.py (a copy of
genguard/triton_models/dali_preprocess.py), preprocess/warmup/warmup.jpg (a generated JPEG).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .common import TARGETS
from .render import render

LEFT_OUT = ("model.onnx", "model.py", "dali.py", "warmup.jpg")
KEPT = ("README.md",)  # written by hand next to the rendered files
_CHECKPOINT = re.compile(r'(key: "checkpoint"\n  value \{\n    string_value: ")[^"]*?/checkpoints/')
_SHA256 = re.compile(r'(key: "onnx_sha256"\n  value \{\n    string_value: ")[0-9a-f]{64}(")')
_FILES_SHA256 = re.compile(r'(\\"sha256\\": \\")[0-9a-f]{64}(\\")')  # in postprocess's `files` JSON


def normalized(text: str) -> str:
    text = _CHECKPOINT.sub(r"\1BUILD/checkpoints/", text)
    text = _FILES_SHA256.sub(r"\1SHA256-OF-MODEL-ONNX\2", text)
    return _SHA256.sub(r"\1SHA256-OF-MODEL-ONNX\2", text)


def golden_view(repository: Path) -> dict[str, str]:
    """relative path -> normalized text of every file a golden copy holds."""
    view = {}
    for path in sorted(repository.rglob("*")):
        if path.is_dir() or path.name in LEFT_OUT or path.name in KEPT:
            continue
        view[path.relative_to(repository).as_posix()] = normalized(path.read_text())
    return view


def render_views(build: Path, **render_args) -> dict[str, dict[str, str]]:
    """target -> golden_view of that target rendered from `build`."""
    views = {}
    with tempfile.TemporaryDirectory(prefix="genguard-golden-") as tmp:
        for target in TARGETS:
            views[target] = golden_view(render(target, build, Path(tmp) / target, **render_args))
    return views


def committed_view(folder: Path) -> dict[str, str]:
    return golden_view(folder) if folder.is_dir() else {}


def write(build: Path, out: Path) -> list[Path]:
    written = []
    for target, view in render_views(build).items():
        folder = out / target
        if folder.is_dir():  # replace the rendered files, keep the hand-written README
            for path in folder.iterdir():
                if path.name not in KEPT:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        for relative, text in view.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        written.append(folder)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genguard.export.repository.golden", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    for folder in write(args.build, args.out):
        print(f"wrote {folder}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
