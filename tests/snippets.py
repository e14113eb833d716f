"""The code blocks of the README and the docs site, as a reader sees them, and a runner that executes them
against a real GenGuard on its documented default addresses.

Every ```python and ```sh block is a snippet a reader may paste. A block that can't run in a test (it needs
the model hub, a GPU, a cluster, or is the set-up itself) carries `<!-- not-run: why -->` on the line just
before its fence. Blocks come from README.md, docs/*.md and the files the docs pull in with `--8<--`, so a
test never holds a copy that can drift.

The runner (`python tests/snippets.py run ...`) starts tritonserver and the gateway with `make serve`'s own
launcher on the default ports (127.0.0.1:8000/8001/8002 and :8080), in a network namespace of its own where
it can make one (`unshare --net`), so a developer's running `make serve` is neither hit nor in the way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = ("python", "sh")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(?P<why>.+?)\s*-->\s*$")
INCLUDE = re.compile(r"^[ \t]*--8<--[ \t]+\"(?P<path>[^\"]+)\"[ \t]*$", re.M)


@dataclass(frozen=True)
class Snippet:
    path: str          # relative to the repository root
    line: int          # the fence's line, 1-based
    lang: str
    code: str
    not_run: str | None  # why it isn't run, from its `<!-- not-run: ... -->` marker

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, docs/**/*.md and every file they include with pymdownx.snippets' `--8<-- "path"`."""
    found: list[Path] = []
    queue = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    while queue:
        path = queue.pop(0)
        if path in found or not path.is_file():
            continue
        found.append(path)
        queue += [root / m["path"] for m in INCLUDE.finditer(path.read_text()) if m["path"].endswith(".md")]
    return found


def blocks(path: Path, root: Path = ROOT) -> list[Snippet]:
    text = path.read_text()
    out = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        out.append(Snippet(str(path.relative_to(root)), line, match["lang"], textwrap.dedent(match["body"]),
                           marker["why"] if marker else None))
    return out


def apply_diff(code: str, diff: str) -> str:
    """A ```diff block applied to a snippet: each `-line` replaced, in order, by the `+lines` after it."""
    out = code
    for removed, added in re.findall(r"^-(.*)\n((?:\+.*\n?)+)", diff, re.M):
        assert removed + "\n" in out, f"the diff removes a line the snippet doesn't have: {removed!r}"
        out = out.replace(removed + "\n", "".join(line[1:] + "\n" for line in added.splitlines()), 1)
    return out


def snippets(root: Path = ROOT) -> list[Snippet]:
    """Every python/sh block of the docs, in reading order."""
    return [s for path in doc_files(root) for s in blocks(path, root) if s.lang in RUNNABLE]


# -- the runner ------------------------------------------------------------------------------------------


def workspace(folder: Path) -> None:
    """The files the snippets name, made here: `photo.jpg`, `image.png`, `shots/`, `more/*.png`, and a
    labelled set `labelled/{real,ai}/` (the photos shipped with scikit-image, labelled for the plumbing)."""
    from genguard.export import samples

    photos = samples.photos()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "photo.jpg").write_bytes(photos["rocket.jpg"])
    (folder / "image.png").write_bytes(photos["coins.png"])
    names = sorted(photos)
    for sub, chosen in (("shots", ("astronaut.png", "chelsea.png")), ("more", ("coffee.png",)),
                        ("labelled/real", names[:4]), ("labelled/ai", names[4:8])):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for name in chosen:
            (folder / sub / name).write_bytes(photos[name])


def run_one(snippet: Snippet, cwd: Path, env: dict, timeout: float) -> dict:
    if snippet.lang == "python":
        command = [sys.executable, "-c", snippet.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", snippet.code]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -1, str(exc.stdout or ""), f"timed out after {timeout:.0f} s"
    return {"id": snippet.id, "rc": rc, "stdout": out[-4000:], "stderr": err[-4000:],
            "seconds": round(time.monotonic() - started, 1)}


def isolate() -> str:
    """Bring up loopback when this process owns a fresh network namespace; say where it runs."""
    if os.environ.get("GENGUARD_SNIPPETS_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return "own network namespace"
    return "host network (no namespace could be made)"


def run(build: Path, work: Path, ids: list[str], timeout: float) -> dict:
    """Serve `build` as `make serve WEIGHTS=random` does, run the snippets named by `ids`, stop the server."""
    from genguard import server

    where = isolate()
    served = work / "build"  # a copy: `make serve` writes its pid, log and repository there, and may export
    for part in ("onnx", "checkpoints"):
        shutil.copytree(build / part, served / part)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = subprocess.run([sys.executable, "-m", "genguard.export.serve", "--weights", "random",
                              "--build", str(served), "--timeout", "240"],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    result = {"where": where, "serve": {"rc": started.returncode, "stdout": started.stdout[-4000:],
                                        "stderr": started.stderr[-4000:]}, "snippets": []}
    try:
        if started.returncode == 0:
            cwd = work / "cwd"
            workspace(cwd)
            chosen = {s.id: s for s in snippets()}
            result["snippets"] = [run_one(chosen[i], cwd, env, timeout) for i in ids]
    finally:
        server.main(["stop", "--build", str(served)])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every python/sh block, and whether it runs")
    listing.add_argument("--json", action="store_true")
    runner = sub.add_parser("run", help="serve a build on the default ports and run snippets against it")
    runner.add_argument("--build", type=Path, required=True, help="an exported build (onnx/, checkpoints/)")
    runner.add_argument("--work", type=Path, required=True, help="an empty folder for the server and the snippets")
    runner.add_argument("--out", type=Path, required=True, help="JSON results")
    runner.add_argument("--timeout", type=float, default=120, help="seconds per snippet")
    runner.add_argument("ids", nargs="*", help="path:line of the snippets (default: every runnable one)")
    args = parser.parse_args(argv)
    if args.command == "list":
        found = snippets()
        if args.json:
            print(json.dumps([asdict(s) for s in found], indent=2))
        for s in found if not args.json else ():
            print(f"{s.id:40} {s.lang:7} {'not run: ' + s.not_run if s.not_run else 'runs'}")
        return 0
    ids = args.ids or [s.id for s in snippets() if not s.not_run]
    args.out.write_text(json.dumps(run(args.build.resolve(), args.work.resolve(), ids, args.timeout), indent=2))
    return 0


def run_isolated(build: Path, work: Path, out: Path, ids: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`run` in a network namespace of its own where `unshare` can make one (root, or user namespaces);
    otherwise on the host, where the default ports must be free."""
    command = [sys.executable, str(Path(__file__).resolve()), "run", "--build", str(build), "--work", str(work),
               "--out", str(out), "--timeout", str(timeout), *ids]
    env = dict(os.environ)
    unshare = shutil.which("unshare")
    if unshare and shutil.which("ip"):
        flags = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
        probe = subprocess.run([unshare, *flags, "true"], capture_output=True)
        if probe.returncode == 0:
            command = [unshare, *flags, "--", *command]
            env["GENGUARD_SNIPPETS_NETNS"] = "1"
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    sys.exit(main())
