"""Labelled image sets: a folder with real/ and ai/ (ai/<generator>/ optional), or a CSV / JSONL list.

Folder: every file under real/ is real, every file under ai/ is AI-generated; a file under
ai/<generator>/ names its generator. Hidden files are skipped.

CSV: rows `path,label[,generator][,nsfw]`, with or without a header row (a header may name the columns in
any order: path/file/image/name, label, generator, nsfw).

JSONL: one object per line. The image is `path` (or `file`, `image`, `name`, `input`); the label is `label`
(or `review`, `reviewer_label`, `human_label`, `truth`); optional `generator` and `nsfw`. The reviewer
page's export (its answers with the reviewer's label) has this shape; any other keys are ignored.

Labels: ai / ai_generated / ai-generated / generated / fake / synthetic / 1 / true are AI-generated;
real / not_ai_generated / human / authentic / photo / 0 / false are real; unsure / uncertain / empty
are left out (counted). NSFW labels: a level (neutral, low, medium, high) or a yes/no (nsfw / sfw /
1 / 0). Relative paths in a list are relative to the list's folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from genguard.protocol import NSFW_LEVELS

AI = {"ai", "ai_generated", "ai-generated", "generated", "fake", "synthetic", "1", "true", "yes"}
REAL = {"real", "not_ai_generated", "not-ai-generated", "human", "authentic", "photo", "0", "false", "no"}
UNSURE = {"", "unsure", "uncertain", "unknown", "skip", "none", "null"}
PATH_KEYS = ("path", "file", "image", "name", "input")
LABEL_KEYS = ("label", "review", "reviewer_label", "human_label", "truth")


class DatasetError(ValueError):
    """The labelled set can't be read: the message says which file/line and why."""


@dataclass(frozen=True)
class Sample:
    path: str                     # absolute path of the image
    label: int                    # 1 AI-generated, 0 real
    generator: str | None = None  # for AI-generated images, when known
    nsfw: str | None = None       # an NSFW level, or "nsfw" / "sfw" when only yes/no is known


@dataclass
class Labelled:
    samples: list[Sample]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (unsure labels ...)

    @property
    def n_ai(self) -> int:
        return sum(s.label for s in self.samples)

    @property
    def n_real(self) -> int:
        return len(self.samples) - self.n_ai


def parse_label(value) -> int | None:
    """1 AI-generated, 0 real, None unsure; raises DatasetError for anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    text = str(value if value is not None else "").strip().lower()
    if text in AI:
        return 1
    if text in REAL:
        return 0
    if text in UNSURE:
        return None
    raise DatasetError(f"unknown label {value!r} (use ai / real / unsure)")


def parse_nsfw(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "nsfw" if value else "sfw"
    text = str(value).strip().lower()
    if text in NSFW_LEVELS:
        return text
    if text in ("nsfw", "1", "true", "yes"):
        return "nsfw"
    if text in ("sfw", "0", "false", "no", "safe"):
        return "sfw"
    if text in UNSURE:
        return None
    raise DatasetError(f"unknown NSFW label {value!r} (a level {', '.join(NSFW_LEVELS)}, or nsfw / sfw)")


def is_nsfw_label(label: str, level: str = "medium") -> bool:
    """A level label is NSFW when it is `level` or more explicit; a yes/no label is itself."""
    if label in NSFW_LEVELS:
        return NSFW_LEVELS.index(label) >= NSFW_LEVELS.index(level)
    return label == "nsfw"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _from_folder(root: Path) -> Labelled:
    real, ai = root / "real", root / "ai"
    if not real.is_dir() and not ai.is_dir():
        raise DatasetError(f"{root}: a labelled folder holds real/ and ai/ (ai/<generator>/ optional)")
    samples = [Sample(str(p.resolve()), 0) for p in (_files(real) if real.is_dir() else [])]
    for p in _files(ai) if ai.is_dir() else []:
        parts = p.relative_to(ai).parts
        samples.append(Sample(str(p.resolve()), 1, parts[0] if len(parts) > 1 else None))
    return Labelled(samples, str(root))


def _sample(row: dict, base: Path, where: str, skipped: dict[str, int]) -> Sample | None:
    path = next((row[k] for k in PATH_KEYS if row.get(k) not in (None, "")), None)
    if path is None:
        raise DatasetError(f"{where}: no image path (one of {', '.join(PATH_KEYS)})")
    raw = next((row[k] for k in LABEL_KEYS if k in row), None)
    try:
        label = parse_label(raw)
        nsfw = parse_nsfw(row.get("nsfw", row.get("nsfw_label")))
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if label is None:
        skipped["unsure or unlabelled"] = skipped.get("unsure or unlabelled", 0) + 1
        return None
    full = Path(str(path)).expanduser()
    full = full if full.is_absolute() else base / full
    generator = row.get("generator") or None
    return Sample(str(full.resolve()), label, str(generator).strip() if generator and label else None, nsfw)


def _from_csv(path: Path) -> Labelled:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise DatasetError(f"{path}: empty")
    header = [c.strip().lower() for c in rows[0]]
    if any(k in header for k in PATH_KEYS) and any(k in header for k in LABEL_KEYS):
        columns, body, first = header, rows[1:], 2
    else:
        columns, body, first = ["path", "label", "generator", "nsfw"], rows, 1
    skipped: dict[str, int] = {}
    samples = []
    for i, row in enumerate(body, start=first):
        sample = _sample(dict(zip(columns, (c.strip() for c in row))), path.parent, f"{path}:{i}", skipped)
        if sample:
            samples.append(sample)
    return Labelled(samples, str(path), skipped)


def _from_jsonl(path: Path) -> Labelled:
    skipped: dict[str, int] = {}
    samples = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{i}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{i}: each line must be a JSON object")
        sample = _sample(row, path.parent, f"{path}:{i}", skipped)
        if sample:
            samples.append(sample)
    return Labelled(samples, str(path), skipped)


def load_labelled(source: str | Path) -> Labelled:
    """Read a labelled set; raises DatasetError (with the file and line) if it can't."""
    source = Path(source).expanduser()
    if source.is_dir():
        labelled = _from_folder(source)
    elif not source.is_file():
        raise DatasetError(f"{source}: no such file or folder")
    elif source.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        labelled = _from_jsonl(source)
    else:
        labelled = _from_csv(source)
    if not labelled.samples:
        raise DatasetError(f"{source}: no labelled images")
    seen: set[str] = set()
    for s in labelled.samples:
        if s.path in seen:
            raise DatasetError(f"{source}: {s.path} is listed twice")
        seen.add(s.path)
    return labelled
