"""SOURCE arguments -> a lazy stream of entries (listing), and entries -> bytes or failure rows (reading).

Listing never holds the whole listing: folders are walked with os.scandir, object stores with fsspec's walk, lists
are read in record batches; only a 64-bit digest per uri is kept, to list each uri once. An entry is a uri and its
kind: `file` (local), `object` (any fsspec URL), `tar` (a WebDataset shard: expanded into its image members when
read, each member a row keyed like WebDataset).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

FILE, OBJECT, TAR = "file", "object", "tar"
LIST_SUFFIXES = (".parquet", ".csv", ".jsonl")
LIST_COLUMNS = ("uri", "url", "path")  # a list's column of inputs: the first of these it has (else its first)
# WebDataset members scanned (images and clips; the others - .json, .cls, .txt - are a sample's labels, not inputs)
MEDIA_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif",
                              "mp4", "m4v", "mov", "webm", "mkv", "avi", "ts"})
READ_RETRIES = 3  # object-store reads: retries with backoff before the row fails with object_store_error
_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key = path up to the first dot


@dataclass(frozen=True)
class Entry:
    uri: str
    kind: str


def uri_digest(uri: str) -> int:
    """64 bits of a uri's blake2b: the listing's and the resume's set of uris, without the strings."""
    return int.from_bytes(hashlib.blake2b(uri.encode(), digest_size=8).digest(), "little", signed=True)


def is_url(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _kind(uri: str) -> str:
    return TAR if uri.endswith(".tar") else OBJECT if is_url(uri) else FILE


def _walk(folder: str) -> Iterator[str]:
    """Regular files under a folder, depth first, hidden files and folders skipped; one directory open at a time."""
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as found:
                for entry in found:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        yield entry.path
        except OSError:  # an unreadable folder: its files are not known inputs (the scan's log says nothing)
            continue


def _list_file(path: str, storage_options: dict) -> Iterator[str]:
    """The inputs named in a Parquet/CSV/JSONL list, streamed in record batches."""
    import pyarrow.dataset as pds

    fmt = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}[os.path.splitext(path)[1]]
    filesystem = None
    if is_url(path):
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(path, **storage_options)
    dataset = pds.dataset(path, format=fmt, filesystem=filesystem)
    column = next((c for c in LIST_COLUMNS if c in dataset.schema.names), dataset.schema.names[0])
    for batch in dataset.to_batches(columns=[column]):
        yield from (str(v) for v in batch.column(0).to_pylist() if v)


def _object_store(url: str, storage_options: dict) -> Iterator[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    protocol = url.split("://", 1)[0]
    if glob.has_magic(path):
        names: Iterable[str] = fs.glob(path)
    elif fs.isdir(path):
        names = (f"{root}/{name}" for root, _, files in fs.walk(path) for name in files)
    else:
        names = [path]
    for name in names:
        if not os.path.basename(name).startswith("."):
            yield f"{protocol}://{name}"


def expand(source: str, storage_options: dict | None = None) -> Iterator[str]:
    """One SOURCE argument -> its uris (lazily)."""
    storage_options = storage_options or {}
    if source.endswith(LIST_SUFFIXES):
        yield from _list_file(source, storage_options)
    elif is_url(source):
        yield from _object_store(source, storage_options)
    else:
        source = source.removeprefix("file://")
        if os.path.isdir(source):
            yield from _walk(os.path.abspath(source))
        elif glob.has_magic(source) and not os.path.exists(source):
            for path in glob.iglob(source, recursive=True):
                yield from _walk(os.path.abspath(path)) if os.path.isdir(path) else [os.path.abspath(path)]
        else:
            yield os.path.abspath(source)  # missing: read as not_found, one row like any input


def entries(sources: Iterable[str], storage_options: dict | None = None) -> Iterator[Entry]:
    """Every SOURCE's entries, each uri once."""
    seen: set[int] = set()
    for source in sources:
        for uri in expand(source, storage_options):
            digest = uri_digest(uri)
            if digest not in seen:
                seen.add(digest)
                yield Entry(uri, _kind(uri))


# -- reading (in Ray tasks) -----------------------------------------------------------------------------------

def _local_failure(exc: OSError) -> tuple[str, str]:
    if isinstance(exc, FileNotFoundError):
        return "not_found", "no such file (it was listed, then removed?)"
    if isinstance(exc, PermissionError):
        return "permission_denied", "permission denied; check the file's permissions"
    return "unreadable", exc.strerror or str(exc)


def _open(uri: str, storage_options: dict):
    if is_url(uri):
        import fsspec

        return fsspec.open(uri, "rb", **storage_options).open()
    return open(uri, "rb")


def _with_retries(uri: str, storage_options: dict, use):
    """use(stream) on the opened uri; object-store errors retried with backoff. Returns (value, None) or
    (None, (reason, message))."""
    remote = is_url(uri)
    for attempt in range(READ_RETRIES + 1 if remote else 1):
        try:
            with _open(uri, storage_options) as stream:
                return use(stream), None
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            return None, _local_failure(exc)
        except OSError as exc:
            if not remote:
                return None, _local_failure(exc)
            error = exc
        except Exception as exc:  # s3fs/botocore raise their own types for throttling, resets, 5xx
            if not remote:
                return None, ("unreadable", str(exc))
            error = exc
        if attempt < READ_RETRIES:
            time.sleep(0.25 * 2 ** attempt)
    return None, ("object_store_error", f"{type(error).__name__}: {error} (after {READ_RETRIES} retries)")


def wds_key(member: str) -> tuple[str, str]:
    """webdataset's (__key__, extension) of a member name."""
    match = _WDS_KEY.match(member)
    return (match.group(1), match.group(2).lower()) if match else (member, "")


def _tar_members(shard: str, stream) -> Iterator[dict[str, Any]]:
    """The image and video members of a shard, streamed; a member that can't be read completely is a broken_tar_member row
    (and ends the shard: what follows a broken header is unknown)."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                yield {"uri": f"{shard}#<after last member>", "error": ("broken_tar_member", f"the shard breaks: {exc}")}
                return
            if member is None:
                return
            key, ext = wds_key(member.name)
            if not member.isfile() or ext.rsplit(".", 1)[-1] not in MEDIA_EXTENSIONS or key.rsplit("/", 1)[-1].startswith("."):
                continue
            row = {"uri": f"{shard}#{member.name}", "shard": shard, "key": key}
            try:
                data = tar.extractfile(member).read()
            except (tarfile.TarError, EOFError, OSError) as exc:
                yield {**row, "error": ("broken_tar_member", f"the member can't be read from the shard: {exc}")}
                return
            if len(data) < member.size:
                yield {**row, "error": ("broken_tar_member", f"the shard ends {member.size - len(data)} bytes "
                                                              "into this member")}
                return
            yield {**row, "data": data}


def read(entry: Entry, storage_options: dict | None = None) -> Iterator[dict[str, Any]]:
    """An entry -> rows {uri, shard?, key?, data} or {uri, ..., error: (reason, message)}."""
    storage_options = storage_options or {}
    if entry.kind != TAR:
        data, error = _with_retries(entry.uri, storage_options, lambda s: s.read())
        yield {"uri": entry.uri, "error": error} if error else {"uri": entry.uri, "data": data}
        return
    members, error = _with_retries(entry.uri, storage_options, lambda s: _drain(entry.uri, s))
    if error:
        yield {"uri": entry.uri, "error": error}
    yield from members or []


def _drain(shard: str, stream) -> list[dict[str, Any]]:
    """A shard's member rows (a shard that isn't a tar at all: one row for the shard)."""
    try:
        return list(_tar_members(shard, stream))
    except tarfile.ReadError as exc:
        return [{"uri": shard, "shard": shard, "error": ("broken_tar", f"not a readable tar file: {exc}")}]
