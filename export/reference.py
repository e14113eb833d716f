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

from genguard.export.checkpoints import HeadsModule, siglip_processor
from genguard.scores import head_probs
from genguard.specs import DetectorSpec

# Freepik's card builds its transform from this pretrained cfg, not from the checkpoint.
FREEPIK_TIMM_CFG = "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k"


def reference_transform(spec: DetectorSpec, model: HeadsModule, source: str | None):
    """A callable PIL RGB image -> float32 CHW torch tensor, the card's way."""
    if spec.format == "transformers" and spec.architecture == "siglip":
        processor = siglip_processor(source, getattr(model, "revision", None))  # the commit loaded
        return lambda img: processor(images=img, return_tensors="pt")["pixel_values"][0]
    from timm.data import create_transform, resolve_data_config

    if spec.format == "transformers":  # Freepik: timm transform from the eva02 pretrained cfg
        from timm.models import get_pretrained_cfg

        return create_transform(**resolve_data_config(get_pretrained_cfg(FREEPIK_TIMM_CFG).__dict__))
    if spec.format == "timm":  # timm checkpoints carry their data config
        return create_transform(**resolve_data_config(model=model.model))
    if spec.format == "two_head_state_dict":
        return create_transform(**resolve_data_config(model=model.model.backbone))
    # ImageTrust-AI src/data/transforms.py (eval)
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])


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
