"""`genguard scan select DIR --where SQL --to LIST|DIR`: keep the rows a DuckDB WHERE clause keeps.

--to FILE.txt                    the kept uris, one a line
--to FILE.parquet|.csv|.jsonl    the kept rows, every column (a list `genguard scan` reads back: its `uri` column)
--to FOLDER                      the kept files copied (or hard/symbolic-linked, `link=`) under FOLDER at their path
                                 relative to the scan's source they came from; kept WebDataset members as shards of
                                 the same names holding each kept sample whole (the image and its .json/.cls ...)
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterator

from . import output, sources

LIST_SUFFIXES = {".txt": None, ".parquet": "PARQUET", ".csv": "CSV", ".jsonl": "JSON"}


def _query(dataset: Path, where: str, columns: str):
    import duckdb

    if not output.parts(dataset):
        raise ValueError(f"{dataset} holds no scan parts ({output.ROWS}/{output.PART_GLOB}): run genguard scan first")
    con = duckdb.connect()
    con.execute(f"CREATE VIEW scan AS SELECT * FROM read_parquet({output.pattern(dataset)})")
    try:
        return con, con.execute(f"SELECT {columns} FROM scan WHERE {where} ORDER BY uri")
    except duckdb.Error as exc:
        raise ValueError(f"--where {where!r}: {exc}") from None


def _batches(result) -> Iterator[tuple]:
    while rows := result.fetchmany(4096):
        yield from rows


def _roots(dataset: Path) -> list[str]:
    """The scan's sources that are folders or prefixes, longest first: kept files go at their path under one."""
    try:
        srcs = json.loads((dataset / output.SUMMARY).read_text())["run"]["sources"]
    except (OSError, KeyError, ValueError):
        return []
    roots = [s.rstrip("/") for s in srcs if sources.is_url(s) or os.path.isdir(s)]
    return sorted((s if sources.is_url(s) else os.path.abspath(s) for s in roots), key=len, reverse=True)


def _relative(uri: str, roots: list[str]) -> str:
    for root in roots:
        if uri.startswith(root + "/"):
            return uri[len(root) + 1:]
    return os.path.basename(uri)


def _copy(uri: str, target: Path, link: str | None, storage_options: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if sources.is_url(uri):
        import fsspec

        with fsspec.open(uri, "rb", **storage_options) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    elif link == "hard":
        os.link(uri, target)
    elif link == "symbolic":
        os.symlink(uri, target)
    else:
        shutil.copyfile(uri, target)


def _write_shard(shard: str, keys: set[str], target: Path, storage_options: dict) -> int:
    """Copy the members of `shard` whose WebDataset key is kept into a new shard; returns the members written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    temporary = target.with_name(f".{target.name}.tmp")
    with sources._open(shard, storage_options) as stream, tarfile.open(fileobj=stream, mode="r|*") as src, \
            tarfile.open(temporary, "w") as dst:
        try:
            for member in src:
                if member.isfile() and sources.wds_key(member.name)[0] in keys:
                    dst.addfile(member, src.extractfile(member))
                    written += 1
        except (tarfile.TarError, EOFError, OSError):  # a broken tail: its members were failures, never kept
            pass
    os.replace(temporary, target)
    return written


def select(dataset: Path, where: str, to: Path, *, link: str | None = None,
           storage_options: dict | None = None) -> dict[str, int]:
    """Write what `where` keeps to `to` (module docstring); returns counts."""
    storage_options = storage_options or {}
    suffix = to.suffix.lower()
    if suffix in LIST_SUFFIXES:
        to.parent.mkdir(parents=True, exist_ok=True)
        if LIST_SUFFIXES[suffix] is None:
            con, result = _query(dataset, where, "uri")
            count = 0
            with open(to, "w") as out:
                for (uri,) in _batches(result):
                    out.write(uri + "\n")
                    count += 1
        else:
            con, _ = _query(dataset, where, "uri")  # checks the clause first
            path = str(to).replace("'", "''")
            con.execute(f"COPY (SELECT * FROM scan WHERE {where} ORDER BY uri) TO '{path}' "
                        f"(FORMAT {LIST_SUFFIXES[suffix]})")
            count = con.execute(f"SELECT count(*) FROM scan WHERE {where}").fetchone()[0]
        con.close()
        return {"kept": count}
    roots = _roots(dataset)
    con, result = _query(dataset, where, "uri, shard, key")
    files = members = 0
    shards: dict[str, set[str]] = {}
    for uri, shard, key in _batches(result):
        if shard:
            shards.setdefault(shard, set()).add(key)
        else:
            _copy(uri, to / _relative(uri, roots), link, storage_options)
            files += 1
    con.close()
    for shard, keys in shards.items():
        members += _write_shard(shard, keys, to / _relative(shard, roots), storage_options)
    return {"kept": files + sum(len(k) for k in shards.values()), "files": files, "shards": len(shards),
            "shard_members": members}
