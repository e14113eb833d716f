"""Inputs -> items -> batches.

An input is a file path, a directory (its files, sorted; recursive optional), encoded bytes or a PIL
image (sent as PNG: lossless). Files are read only when their window is planned, so a large directory
isn't held in memory, and a file that can't be read becomes a FAILURE result, never an exception.

Batching: within a window of consecutive items the client sorts by size before cutting batches, so
one huge image is padded against other large ones instead of making a whole batch as large as itself
(a batch is one [N, L] tensor, every row padded to the longest). `max_request_bytes` caps N * L.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .results import Result

# Modes PNG stores as they are; anything else (CMYK, YCbCr, F ...) is converted first.
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


@dataclass(frozen=True)
class Item:
    index: int
    name: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Loaded:
    item: Item
    data: bytes


def encode_png(image) -> bytes:
    """A PIL image -> PNG bytes (lossless, so the server sees exactly these pixels)."""
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(value, Image.Image)


def directory_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Regular files in `folder`, sorted by path; hidden files (.DS_Store ...) are skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not any(part.startswith(".")
                                                                for part in p.relative_to(folder).parts))


def _single(value: Any) -> bool:
    return isinstance(value, (Item, str, bytes, bytearray, memoryview, os.PathLike)) or _is_pil(value)


def collect(inputs: Any, recursive: bool = False) -> list[Item]:
    """Flatten inputs (one input, or an iterable of them) into items numbered in order."""
    values = [inputs] if _single(inputs) else list(inputs)
    items: list[Item] = []

    def add(name: str, read: Callable[[], bytes]) -> None:
        items.append(Item(len(items), name, read))

    for value in values:
        if isinstance(value, Item):
            add(value.name, value.read)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            add(f"<bytes {len(items)}>", lambda data=data: data)
        elif _is_pil(value):
            name = getattr(value, "filename", "") or f"<PIL image {len(items)}>"
            add(name, lambda image=value: encode_png(image))
        elif isinstance(value, (str, os.PathLike)):
            path = Path(value)
            if path.is_dir():
                for file in directory_files(path, recursive):
                    add(str(file), file.read_bytes)
            else:
                add(str(value), path.read_bytes)
        else:
            raise TypeError(f"cannot send {type(value).__name__}: pass a path, a directory, bytes or a PIL image")
    return items


def read_failure(item: Item, exc: Exception) -> Result:
    """The FAILURE result for an input that couldn't be read or encoded."""
    if isinstance(exc, FileNotFoundError):
        reason, what = "not_found", "no such file; check the path"
    elif isinstance(exc, PermissionError):
        reason, what = "permission_denied", "permission denied; check the file's permissions"
    elif isinstance(exc, IsADirectoryError):
        reason, what = "unreadable", "it is a directory; pass the directory itself to send its files"
    elif isinstance(exc, OSError):
        reason, what = "unreadable", f"{exc.strerror or exc}"
    else:
        reason, what = "unencodable", f"could not encode the image as PNG ({exc})"
    return Result.failure(item.index, item.name, reason, f"cannot read {item.name}: {what}")


def load(items: Iterable[Item]) -> tuple[list[Loaded], list[Result]]:
    """Read a window of items: (what was read, FAILURE results for what wasn't)."""
    loaded, failed = [], []
    for item in items:
        try:
            loaded.append(Loaded(item, item.read()))
        except Exception as exc:  # any reader/encoder error fails that item alone
            failed.append(read_failure(item, exc))
    return loaded, failed


def split(loaded: list[Loaded], batch_size: int, max_request_bytes: int) -> list[list[Loaded]]:
    """Cut a window into batches of similar size: at most batch_size rows, rows * longest <= the cap
    (an image larger than the cap goes alone)."""
    batches: list[list[Loaded]] = []
    batch: list[Loaded] = []
    for entry in sorted(loaded, key=lambda e: len(e.data)):
        longest = max(1, len(entry.data))  # sorted: the newcomer is the longest row
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * longest > max_request_bytes):
            batches.append(batch)
            batch = []
        batch.append(entry)
    if batch:
        batches.append(batch)
    return batches


def windows(items: list[Item], size: int) -> Iterable[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
