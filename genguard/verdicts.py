"""The two rules every view of an answer shares: verdict from the fused probability, source from the verdict.

Pure Python (no numpy) so the server's postprocess and the client's `--threshold` override apply the same
rule: the client recomputes both when it changes the threshold, and an answer never contradicts itself.
"""

from __future__ import annotations

AI, NOT_AI, UNCERTAIN = "ai_generated", "not_ai_generated", "uncertain"
NONE = "none"        # possible_sources entry and source of a real image
UNKNOWN = "unknown"  # AI-generated, but no served head names generators


def verdict_for(is_ai: float, threshold: float, margin: float = 0.0) -> str:
    """ai_generated if is_ai >= threshold + margin, not_ai_generated if < threshold - margin, else uncertain."""
    if is_ai >= threshold + margin:
        return AI
    if is_ai < threshold - margin:
        return NOT_AI
    return UNCERTAIN


def source_for(verdict: str | None, sources_given_ai: dict[str, float] | None) -> str | None:
    """ai_generated -> the most likely generator (unknown when no head names one); not_ai_generated -> none;
    uncertain (or no verdict) -> None. Ties go to the first generator in possible_sources order."""
    if verdict == NOT_AI:
        return NONE
    if verdict != AI:
        return None
    if not sources_given_ai:
        return UNKNOWN
    return max(sources_given_ai, key=sources_given_ai.get)
