"""model_repository/<target>/: rendering today reproduces the committed example repositories byte for byte
(after the two per-build placeholders genguard.export.repository.golden documents)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from genguard.export.repository import TARGETS
from genguard.export.repository.golden import committed_view, normalized, render_views

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python -m genguard.export.repository.golden --build BUILD (a random-weight build of all six)"


@pytest.fixture(scope="module")
def rendered(tiny_build):
    return render_views(tiny_build)


@pytest.mark.parametrize("target", TARGETS)
def test_rendering_reproduces_the_committed_example(rendered, target):
    folder = ROOT / "model_repository" / target
    committed, now = committed_view(folder), rendered[target]
    assert sorted(now) == sorted(committed), f"files differ from {folder}; regenerate with {REGENERATE}"
    diffs = ["".join(difflib.unified_diff(committed[f].splitlines(True), now[f].splitlines(True),
                                          f"committed/{f}", f"rendered/{f}")) for f in now if now[f] != committed[f]]
    assert not diffs, "\n".join(diffs)[:6000] + f"\nregenerate with {REGENERATE} and review the diff"


@pytest.mark.parametrize("target", TARGETS)
def test_each_example_says_what_it_is(target):
    readme = (ROOT / "model_repository" / target / "README.md").read_text()
    assert f"`{target}`" in readme and "genguard.export.repository.golden" in readme


def test_placeholders_replace_only_build_facts():
    config = ('parameters {\n  key: "checkpoint"\n  value {\n    string_value: "/x/y/checkpoints/sumsub_sd"\n  }\n}\n'
              'parameters {\n  key: "onnx_sha256"\n  value {\n    string_value: "' + "ab" * 32 + '"\n  }\n}\n'
              'parameters {\n  key: "weights"\n  value {\n    string_value: "random"\n  }\n}\n')
    out = normalized(config)
    assert '"BUILD/checkpoints/sumsub_sd"' in out and '"SHA256-OF-MODEL-ONNX"' in out and '"random"' in out
    assert normalized(out) == out
