"""Text metadata that generation tools write (PNG tEXt/zTXt/iTXt, WebUI's EXIF UserComment, JPEG comments).

| keyword (or field)        | written by                                   | generator            |
|---------------------------|----------------------------------------------|----------------------|
| `parameters`              | AUTOMATIC1111 / Forge / SD.Next WebUI         | the model it names, else stable_diffusion |
| `prompt`, `workflow`      | ComfyUI (the API prompt and the UI graph, JSON) | the model it names, else comfyui |
| `Software` = "NovelAI", `Comment` | NovelAI                              | novelai              |
| `invokeai_metadata`, `invokeai_graph`, `sd-metadata`, `Dream` | InvokeAI  | invokeai             |
| `Software`, `Comment`, `Description`, `Title`, `Author`, `Source` | any tool | the one it names (generators.py), if any |

Prompts and workflows can be sensitive: a signal carries an excerpt of at most `excerpt_chars` characters
and the text's length, unless the configuration asks for full text (excerpt_chars=None).
"""

from __future__ import annotations

import re

from genguard.provenance import generators

_WEBUI = re.compile(r"(^|\n)\s*Steps: *\d+.*(Sampler|Seed|CFG scale):", re.IGNORECASE)
_MODEL = re.compile(r"\bModel: *([^,\n]{1,200})")
TOOL_KEYWORDS = {
    "prompt": ("comfyui", "ComfyUI"), "workflow": ("comfyui", "ComfyUI"),
    "invokeai_metadata": ("invokeai", "InvokeAI"), "invokeai_graph": ("invokeai", "InvokeAI"),
    "sd-metadata": ("invokeai", "InvokeAI"), "Dream": ("invokeai", "InvokeAI"),
}
GENERIC_KEYWORDS = ("Software", "Comment", "Description", "Title", "Author", "Source", "Creation Software")


def excerpt(text: str, chars: int | None) -> dict:
    """{"excerpt", "length", "truncated"}: at most `chars` characters (None: all of it)."""
    if chars is None or len(text) <= chars:
        return {"excerpt": text, "length": len(text), "truncated": False}
    return {"excerpt": text[:chars], "length": len(text), "truncated": True}


def parameters_signal(source: str, field: str, text: str, excerpt_chars: int | None) -> dict | None:
    """A WebUI `parameters` block (prompt, then "Steps: .., Sampler: .., Model: .."), or None."""
    if not _WEBUI.search(text[:65536]):
        return None
    model = _MODEL.search(text)
    generator = generators.identify(model.group(1)) if model else None
    return {"source": source, "kind": "ai_generated", "generator": generator or "stable_diffusion",
            "detail": {"field": field, "tool": "Stable Diffusion WebUI (A1111/Forge)",
                       **({"model": model.group(1).strip()[:100]} if model else {}),
                       **excerpt(text, excerpt_chars)}}


def signals(texts: list[tuple[str, str]], source: str, excerpt_chars: int | None) -> list[dict]:
    out = []
    for keyword, text in texts:
        if keyword == "parameters":
            signal = parameters_signal(source, keyword, text, excerpt_chars)
            if signal:
                out.append(signal)
                continue
        if keyword in TOOL_KEYWORDS:
            tool, tool_name = TOOL_KEYWORDS[keyword]
            model = generators.identify(text[:65536].replace("_", " "), limit=65536)
            out.append({"source": source, "kind": "ai_generated",
                        "generator": model if model not in (None, "comfyui", "invokeai") else tool,
                        "detail": {"field": keyword, "tool": tool_name, **excerpt(text, excerpt_chars)}})
            continue
        if keyword in GENERIC_KEYWORDS or keyword == "parameters":
            generator = generators.identify(text)
            if generator or keyword == "Software":
                out.append({"source": source, "kind": "ai_generated" if generator else "software",
                            "generator": generator,
                            "detail": {"field": keyword, **excerpt(text, excerpt_chars)}})
    return out
