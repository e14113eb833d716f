"""Each seed's reference pipeline, as its model card (or source repository) writes it.

These are the yardstick GenGuard is held to: the card's own preprocessing library + the PyTorch model.
Every card converts to RGB with Pillow before preprocessing (`Image.open(...).convert("RGB")`, or the
training-loop loader doing the same); the Freepik card feeds PIL images straight to the timm transform,
which only works for RGB, so it gets the same convert("RGB").
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from genguard.export.checkpoints import HeadsModule
from genguard.export.families import family_of
from genguard.scores import head_probs
from genguard.specs import DetectorSpec


def reference_transform(spec: DetectorSpec, model: HeadsModule, source: str | None):
    """A callable PIL RGB image -> float32 CHW torch tensor, the card's way (its checkpoint family's)."""
    return family_of(spec).reference(spec, model.model, source, getattr(model, "revision", None))


def open_rgb(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class ReferencePipeline:
    """Card preprocessing + PyTorch eager model, one image at a time or batched."""

    def __init__(self, spec: DetectorSpec, model: HeadsModule, source: str | None):
        self.spec = spec
        self.model = model
        self.transform = reference_transform(spec, model, source)

    def tensors(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(img) for img in images])

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> list[np.ndarray]:
        return [out.float().numpy() for out in self.model(pixels)]

    def probs(self, images: list[Image.Image]) -> list[np.ndarray]:
        logits = self.logits(self.tensors(images))
        return [head_probs(head, out) for head, out in zip(self.spec.heads, logits)]
