"""The one mapping table: what metadata calls a generator -> GenGuard's generator name -> the served
`possible_sources` name.

A metadata string (a C2PA claim generator or softwareAgent, an EXIF Software tag, an XMP CreatorTool, a
text chunk's keyword) is matched case-insensitively against each generator's patterns, in table order.
The served `possible_sources` names are fixed by the detectors the repository serves (the POSSIBLE_SOURCES
tensor's size comes from the rendered config), so a metadata generator is mapped onto the first of its
`families` that the server serves; when none is served it maps to "unknown" only where the server
serves "unknown" (generator-less configurations), else to None: the signal still names the generator,
and the answer's source then comes from the detectors' generator evidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Generator:
    name: str                   # GenGuard's name for it, as signals report it
    patterns: tuple[str, ...]   # regular expressions, matched case-insensitively anywhere in the text
    families: tuple[str, ...]   # possible_sources names to map onto, most specific first


# Order matters: the first match wins (front ends before the model family they run).
GENERATORS: tuple[Generator, ...] = (
    Generator("flux", (r"\bflux", r"black forest labs"), ("flux", "diffusion", "other")),
    Generator("dalle", (r"dall[\s·\-_]?e", r"\bopenai\b", r"chatgpt", r"gpt-?4o", r"gpt-image"),
              ("dalle", "diffusion", "other")),
    Generator("midjourney", (r"midjourney",), ("midjourney", "diffusion", "other")),
    Generator("firefly", (r"firefly",), ("diffusion", "other")),
    Generator("imagen", (r"\bimagen\b", r"\bgemini\b", r"synthid", r"google ai"), ("diffusion", "other")),
    Generator("novelai", (r"novelai",), ("stable_diffusion", "diffusion", "other")),
    Generator("invokeai", (r"invokeai",), ("stable_diffusion", "diffusion", "other")),
    Generator("comfyui", (r"comfyui",), ("stable_diffusion", "diffusion", "other")),
    Generator("stable_diffusion", (r"stable[\s\-_]?diffusion", r"\bsdxl\b", r"automatic1111", r"\bforge\b",
                                   r"stability\.?ai", r"\bsd ?(1\.[45]|2\.1|3(\.5)?)\b"),
              ("stable_diffusion", "diffusion", "other")),
    Generator("gan", (r"stylegan", r"\bbiggan\b", r"\bgan\b"), ("gan", "other")),
)

_COMPILED = [(g, [re.compile(p, re.IGNORECASE) for p in g.patterns]) for g in GENERATORS]
BY_NAME = {g.name: g for g in GENERATORS}


def identify(text: str | None, limit: int = 4096) -> str | None:
    """The GenGuard generator name a metadata string names, or None. Only its first `limit` characters
    are looked at."""
    if not text:
        return None
    text = text[:limit]
    for generator, patterns in _COMPILED:
        if any(p.search(text) for p in patterns):
            return generator.name
    return None


def to_source(generator: str | None, served: list[str]) -> str | None:
    """A generator name -> the served possible_sources name it counts for (see the module docstring)."""
    if generator is None:
        return None
    entry = BY_NAME.get(generator)
    for family in (entry.families if entry else (generator,)):
        if family in served:
            return family
    return "unknown" if "unknown" in served else None
