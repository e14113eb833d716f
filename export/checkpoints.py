"""Load each detector's checkpoint in its native format, and build random-weight ones.

The format-specific parts (loading, random checkpoints, reference preprocessing) are the checkpoint
families in genguard.export.families, chosen by the spec's `format`; this module is what every caller
uses. A checkpoint whose architecture, head size, labels or preprocessing disagree with its spec is
refused by name; loading is safe only (genguard.export.checkpoint_io).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from genguard.export import weights as hub_weights
from genguard.export.checkpoint_io import CheckpointMismatch
from genguard.export.families import family_of
from genguard.specs import DetectorSpec

__all__ = ["CheckpointMismatch", "HeadsModule", "RANDOM_MARKER", "RANDOM_WARNING", "is_random", "load",
           "write_random_checkpoint"]

log = logging.getLogger("genguard.export")

# A file in a checkpoint directory made by write_random_checkpoint; everything exported from such a
# checkpoint carries weights="random" so the server can say so.
RANDOM_MARKER = "RANDOM_WEIGHTS"
RANDOM_WARNING = (
    "RANDOM WEIGHTS: {name} was built with random weights, not a trained detector. "
    "Its answers are meaningless; use it only to test the plumbing."
)


class HeadsModule(nn.Module):
    """Any loaded detector as `pixels -> (logits per head, in spec order)`: what ONNX export traces."""

    def __init__(self, model: nn.Module, spec: DetectorSpec):
        super().__init__()
        self.model = model
        self.spec = spec
        self._call = family_of(spec).call

    def forward(self, pixels: torch.Tensor):
        out = self._call(self.model, pixels)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def is_random(source: str | Path | None) -> bool:
    if source is None:
        return False
    path = Path(source)
    return any((p / RANDOM_MARKER).exists() for p in (path, path.parent) if p.exists())


def load(spec: DetectorSpec, source: str | Path | None = None) -> HeadsModule:
    """Load `spec`'s checkpoint from a local path or hub id (default: the spec's source), in eval mode.
    A hub checkpoint's resolved commit is the module's `revision` (None for local paths)."""
    source = source if source is not None else spec.source
    if source is None:
        raise CheckpointMismatch(
            f"{spec.name} has no public checkpoint: pass a local path (--checkpoint {spec.name}=/path, "
            f"or make export CHECKPOINTS='{spec.name}=/path') or use random weights (WEIGHTS=random)"
        )
    if is_random(source):
        warnings.warn(RANDOM_WARNING.format(name=spec.name), stacklevel=2)
    family = family_of(spec)
    commit = None
    if family.hub_files is not None and hub_weights.is_hub_id(source):
        # hub id (ORG/NAME[@REVISION]): the files its loader reads are found in (or downloaded into) the
        # hub cache first, with one clear error when they can't be; then the library loads them by hub id
        # at the resolved commit, which is recorded as the revision served.
        repo_id, requested = hub_weights.split_revision(str(source))
        commit = hub_weights.resolve(spec, repo_id, requested)
        source = repo_id
    module = HeadsModule(family.load(spec, str(source), commit), spec).eval()
    module.revision = commit
    return module


def write_random_checkpoint(spec: DetectorSpec, out_dir: str | Path, tiny: bool = False, seed: int = 0) -> Path:
    """Build spec's architecture with random weights and save it as its real checkpoint would be.

    tiny: apply spec.tiny (fewer layers) for fast tests; same classes, same loading code.
    Returns the path to pass to load().
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = family_of(spec).write_random(spec, out, spec.tiny if tiny else {}, torch.Generator().manual_seed(seed))
    (out / RANDOM_MARKER).write_text(RANDOM_WARNING.format(name=spec.name) + "\n")
    log.warning(RANDOM_WARNING.format(name=spec.name))
    return path
