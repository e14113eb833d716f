"""MkDocs hooks for the GenGuard manual (registered in mkdocs.yml; no network, no plugin to install).

1. Pictures that tools regenerate stay where the tools write them (benchmarks/results/...). The pages
   link to them from docs/ as they are in the repository (`../benchmarks/results/perf-fp32.png`), which
   also works on GitHub; at build time each such file is added to the site at its repository path and the
   page's link is rewritten to it. Repository files that a page shows whole (pymdownx.snippets) are
   linked the same way, `../SECURITY.md`, and the link goes to that page in the site. A `../` link to any
   other file is left alone, so --strict fails on it.
2. The operating page's table of the Grafana dashboard's panels is checked against the dashboard's JSON:
   a panel added, removed, renamed or whose query or unit changed fails the build until the table follows.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
# Repository files published next to the pages, as globs relative to the repository root.
PUBLISHED = ("benchmarks/results/*.png", "benchmarks/results/evaluation-sample/*.png")
# Repository files shown whole by a page (its only content besides a comment): a link to one goes to its page.
INCLUDED = {"SECURITY.md": "security.md", "deploy/README.md": "kubernetes.md"}
DASHBOARD = ROOT / "deploy" / "components" / "monitoring" / "genguard-dashboard.json"
DASHBOARD_PAGE = "operating.md"
# Every query of the dashboard carries one of these selectors (Triton's metrics Service, the REST gateway's
# Service); the page's table shows it as `…`.
COMMON_SELECTORS = ('service="genguard-metrics",namespace="$namespace",pod=~"$pod"',
                    'service="genguard",namespace="$namespace",pod=~"$pod"')

_published: set[str] = set()
_LINK = re.compile(r"(\]\()(\.\./[^)\s]+)")


def on_files(files: Files, config) -> Files:
    _published.clear()
    for pattern in PUBLISHED:
        for path in sorted(ROOT.glob(pattern)):
            src_uri = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, src_uri, abs_src_path=str(path)))
            _published.add(src_uri)
    return files


def _rewrite(match: re.Match, page_dir: str) -> str:
    target = match.group(2)
    path, _, anchor = target.partition("#")
    in_repo = posixpath.normpath(posixpath.join("docs", page_dir, path))
    if in_repo in INCLUDED:
        relative = posixpath.relpath(INCLUDED[in_repo], page_dir or ".")
    elif in_repo in _published:
        relative = posixpath.relpath(in_repo, page_dir or ".")  # the site holds it at its repository path
    else:
        return match.group(0)  # MkDocs reports it as not found
    return match.group(1) + relative + (f"#{anchor}" if anchor else "")


def dashboard_rows() -> list[tuple[str, str, str, str]]:
    """(row, panel title, queries joined by <br>, unit) for every panel, in the dashboard's order."""
    rows, section = [], ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel.get("type") == "row":
            section = panel["title"]
            continue
        queries = []
        for target in panel.get("targets", []):
            expr = target["expr"]
            for selector in COMMON_SELECTORS:
                expr = expr.replace("{" + selector + "}", "{…}").replace("{" + selector + ",", "{…,")
                if selector in expr:
                    raise PluginError(f"{DASHBOARD.name}: panel {panel['title']!r}: a selector the table can't shorten")
            queries.append(f"`{expr}`")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        rows.append((section, panel["title"], "<br>".join(queries), f"`{unit}`" if unit else ""))
    return rows


def _check_dashboard_table(markdown: str) -> None:
    parts = markdown.split("<!-- dashboard-panels -->")
    if len(parts) != 3:
        raise PluginError(f"{DASHBOARD_PAGE}: expected the panel table between two <!-- dashboard-panels --> markers")
    lines = [line for line in parts[1].strip().splitlines() if line.startswith("|")][2:]  # header, separator
    found = [tuple(cell.strip() for cell in line.strip().strip("|").split(" | ")) for line in lines]
    expected = dashboard_rows()
    if found != expected:
        missing = [r for r in expected if r not in found]
        extra = [r for r in found if r not in expected]
        raise PluginError(f"{DASHBOARD_PAGE}: the panel table differs from {DASHBOARD.relative_to(ROOT)}; "
                          f"rows the JSON has that the table lacks: {missing}; rows the table has that the JSON "
                          f"lacks: {extra} (regenerate: python docs/hooks.py)")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == DASHBOARD_PAGE:
        _check_dashboard_table(markdown)
    page_dir = posixpath.dirname(page.file.src_uri)
    return _LINK.sub(lambda m: _rewrite(m, page_dir), markdown)


if __name__ == "__main__":  # print the operating page's panel table
    print("| row | panel | PromQL | unit |")
    print("|---|---|---|---|")
    for row in dashboard_rows():
        print("| " + " | ".join(row) + " |")
