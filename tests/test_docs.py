"""The docs as a reader meets them: every python/sh block of the README and the docs site is valid, marked
when it can't run here, and the ones that talk to GenGuard run as they are against a real server and gateway
on the documented default addresses (tests/snippets.py extracts them from the Markdown: no copies)."""

from __future__ import annotations

import json
import subprocess

import pytest

import snippets

SNIPPETS = snippets.snippets()
RUNNABLE = [s for s in SNIPPETS if not s.not_run]


def test_the_docs_have_snippets_and_the_ones_that_talk_to_genguard_run():
    assert len(SNIPPETS) >= 10, [s.id for s in SNIPPETS]
    assert len(RUNNABLE) >= 6, [s.id for s in RUNNABLE]
    assert any(s.path == "README.md" for s in RUNNABLE)


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.lang == "python"], ids=lambda s: s.id)
def test_python_snippet_compiles(snippet):
    compile(snippet.code, snippet.id, "exec")


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.lang == "sh"], ids=lambda s: s.id)
def test_shell_snippet_parses(snippet):
    done = subprocess.run(["bash", "-n", "-c", snippet.code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_not_run_marker_says_why():
    for s in SNIPPETS:
        assert s.not_run is None or len(s.not_run) >= 10, (s.id, s.not_run)


def test_the_runner_reports_a_failing_snippet(tmp_path):
    broken = snippets.Snippet("docs/x.md", 1, "python", "from genguard.client import Client\nClient().nope()\n", None)
    result = snippets.run_one(broken, tmp_path, {"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result["rc"] != 0 and "nope" in result["stderr"]


@pytest.mark.server
@pytest.mark.gateway
def test_every_runnable_snippet_runs_against_make_serve(tiny_build, tmp_path):
    """`make serve`'s launcher on the default ports (in a network namespace of its own where possible), then
    each snippet as it stands in the docs, in a folder holding the files they name."""
    out = tmp_path / "results.json"
    done = snippets.run_isolated(tiny_build, tmp_path / "work", out, [s.id for s in RUNNABLE])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["serve"]["rc"] == 0, result["serve"]
    print(f"\nsnippets ran on the {result['where']}:")
    failed = []
    for row in result["snippets"]:
        print(f"  {row['id']:32} rc {row['rc']}  {row['seconds']:5.1f} s")
        if row["rc"] != 0:
            failed.append(f"{row['id']}: rc {row['rc']}\n{row['stdout'][-1500:]}\n{row['stderr'][-1500:]}")
    assert [r["id"] for r in result["snippets"]] == [s.id for s in RUNNABLE]
    assert not failed, "\n\n".join(failed)
