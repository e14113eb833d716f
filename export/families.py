"""Checkpoint families: one object per native checkpoint format, chosen by a spec's `format`.

A family knows how to load its checkpoints (and refuse a wrong one by name), how to write a random-weight
checkpoint in the same format (so tests run the real loader), what the seed's own reference pipeline is
(its preprocessing library), what its hub repositories hold, and what precision it prefers on a GPU.
Adding a detector of an existing family is a spec in genguard/specs.py; a new family is one object here.

  transformers_siglip        transformers SiglipForImageClassification + its SiglipImageProcessor (OpenSDI)
  transformers_timm_wrapper  transformers TimmWrapperForImageClassification: a timm model saved by
                             transformers; reference: timm's transform of the card's pretrained config (Freepik)
  timm_hub                   timm's own hub format (config.json + model.safetensors; Sumsub)
  imagetrust_resnet18_mlp    ImageTrust-AI's state dict: torchvision resnet18 with its two-layer MLP head
  timm_two_head_state_dict   a timm backbone + binary and source linear heads, one state dict (Hive's shape)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from genguard.export.checkpoint_io import (CheckpointMismatch, check_data_config, check_labels, load_strict,
                                           read_state_dict, single_weights_file, spread_head)
from genguard.export.weights import is_hub_id, split_revision
from genguard.specs import DetectorSpec

Transform = Callable  # PIL RGB image -> float32 CHW tensor


@dataclass(frozen=True)
class Family:
    """format:           the spec's `format` value naming this family.
    loads:            what a checkpoint of this family is, for messages and docs.
    load:             (spec, local path or hub repo id, hub commit or None) -> nn.Module in the native form.
    write_random:     (spec, out folder, architecture overrides, generator) -> the path load() takes.
    reference:        (spec, loaded model, source, commit) -> the card's own preprocessing transform.
    hub_files:        what load() reads from a hub repository (groups of alternatives); None: not on the hub.
    gpu_precision:    TensorRT precision on the GPU targets unless the spec says otherwise.
    call:             how the loaded model is called on a pixel batch (-> logits or a tuple of them).
    gradcam:          CNN families: loaded model -> GradCamParts (the last convolutional stage and how the
                      heads read it), for the in-graph Grad-CAM (export/explain.py); None: explained by
                      occlusion through the served model instead (the transformers).
    """

    format: str
    loads: str
    load: Callable[[DetectorSpec, str, str | None], nn.Module]
    write_random: Callable[[DetectorSpec, Path, dict, torch.Generator], Path]
    reference: Callable[[DetectorSpec, nn.Module, str | None, str | None], Transform]
    hub_files: tuple[tuple[str, ...], ...] | None = None
    gpu_precision: str = "fp16"
    call: Callable[[nn.Module, torch.Tensor], object] = lambda model, pixels: model(pixels)
    gradcam: Callable[[nn.Module], "GradCamParts"] | None = None


@dataclass(frozen=True)
class GradCamParts:
    """target_layer: the module path whose activations A [B, K, h, w] Grad-CAM weighs (pytorch-grad-cam's
    target layer). split: pixels -> (A, [(logits, the layers from avg-pooled A to those logits), ...] per head)."""

    target_layer: str
    split: Callable[[torch.Tensor], tuple]


def labels_of(spec: DetectorSpec) -> dict[int, str]:
    return dict(enumerate(spec.heads[0].labels))


def timm_transform(model: nn.Module) -> Transform:
    """timm's eval transform from a model's own data config."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config(model=model))


# ---------------------------------------------------------------------------------------------------
# transformers: SigLIP image classification (OpenSDI)


def siglip_processor(source: str, revision: str | None = None):
    """The checkpoint's own image processor on transformers' Pillow backend, as the card installs it
    (no torchvision); with torchvision present transformers would otherwise pick torchvision's.
    source may be a hub id with @REVISION; `revision` (a resolved commit) takes precedence."""
    from transformers import AutoImageProcessor

    if is_hub_id(source):
        source, requested = split_revision(source)
        revision = revision or requested
    return AutoImageProcessor.from_pretrained(source, backend="pil", revision=revision)


def check_siglip_processor(spec: DetectorSpec, source: str, revision: str | None = None) -> None:
    from PIL import Image

    proc = siglip_processor(source, revision)
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    got = {
        "size": (proc.size["height"], proc.size["width"]),
        "resample": int(proc.resample),
        "mean": tuple(proc.image_mean),
        "std": tuple(proc.image_std),
        "rescale_factor": proc.rescale_factor,
        "steps": tuple(bool(getattr(proc, f"do_{step}")) for step in ("resize", "rescale", "normalize")),
        "do_center_crop": bool(getattr(proc, "do_center_crop", False)),
    }
    want = {
        "size": spec.input.size,
        "resample": int(filters[spec.input.interpolation]),
        "mean": spec.input.mean,
        "std": spec.input.std,
        "rescale_factor": 1 / 255,
        "steps": (True, True, True),
        "do_center_crop": False,
    }
    diff = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    if diff:
        raise CheckpointMismatch(f"{spec.name}: processor config differs from spec (checkpoint, spec): {diff}")


def _transformers_config(spec: DetectorSpec, source: str, revision: str | None, model_type: str):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
    if config.model_type != model_type:
        raise CheckpointMismatch(f"{spec.name}: expected a {model_type} checkpoint, got model_type={config.model_type}")
    return config


def _transformers_model(spec: DetectorSpec, source: str, revision: str | None, config) -> nn.Module:
    from transformers import AutoModelForImageClassification

    check_labels(spec, [config.id2label[i] for i in sorted(config.id2label)])
    return AutoModelForImageClassification.from_pretrained(source, config=config, revision=revision,
                                                           trust_remote_code=False)


def _load_siglip(spec: DetectorSpec, source: str, revision: str | None) -> nn.Module:
    config = _transformers_config(spec, source, revision, "siglip")
    vision = config.vision_config
    if (vision.image_size, vision.image_size) != spec.input.size:
        raise CheckpointMismatch(f"{spec.name}: checkpoint image_size {vision.image_size} != spec size {spec.input.size}")
    check_siglip_processor(spec, source, revision)
    return _transformers_model(spec, source, revision, config)


# siglip2-base-patch16-224's vision tower (transformers model_type "siglip"); spec.tiny overrides it
SIGLIP_BASE_VISION = dict(patch_size=16, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                          num_hidden_layers=12)


def _random_siglip(spec: DetectorSpec, out: Path, overrides: dict, gen: torch.Generator) -> Path:
    from transformers import SiglipConfig, SiglipForImageClassification, SiglipImageProcessor

    labels = labels_of(spec)
    vision = dict(SIGLIP_BASE_VISION, image_size=spec.input.size[0], **overrides)
    config = SiglipConfig(vision_config=vision, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = SiglipForImageClassification(config)
    spread_head(model.classifier, gen)
    model.save_pretrained(out)
    SiglipImageProcessor(
        size={"height": spec.input.size[0], "width": spec.input.size[1]},
        resample=2 if spec.input.interpolation == "bilinear" else 3,
        image_mean=list(spec.input.mean),
        image_std=list(spec.input.std),
    ).save_pretrained(out)
    return out


def _siglip_reference(spec, model, source, revision) -> Transform:
    processor = siglip_processor(source, revision)  # the commit loaded
    return lambda img: processor(images=img, return_tensors="pt")["pixel_values"][0]


# ---------------------------------------------------------------------------------------------------
# transformers: TimmWrapper image classification (Freepik)


def _load_timm_wrapper(spec: DetectorSpec, source: str, revision: str | None) -> nn.Module:
    config = _transformers_config(spec, source, revision, "timm_wrapper")
    arch = (getattr(config, "architecture", "") or "").split(".")[0]
    if arch != spec.architecture:
        raise CheckpointMismatch(f"{spec.name}: expected timm_wrapper of {spec.architecture}, got architecture={arch}")
    model = _transformers_model(spec, source, revision, config)
    from timm.data import resolve_data_config

    check_data_config(spec, resolve_data_config(model=model.timm_model))
    return model


def _random_timm_wrapper(spec: DetectorSpec, out: Path, overrides: dict, gen: torch.Generator) -> Path:
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    labels = labels_of(spec)
    config = TimmWrapperConfig(architecture=spec.timm_pretrained_cfg or spec.architecture, num_labels=len(labels),
                               id2label=labels, label2id={v: k for k, v in labels.items()},
                               model_args=overrides or None)
    model = TimmWrapperForImageClassification(config)
    spread_head(model.timm_model.get_classifier(), gen)
    model.save_pretrained(out)
    return out


def _timm_wrapper_reference(spec, model, source, revision) -> Transform:
    """The card's timm transform: from the pretrained config it names (Freepik builds it from
    eva02_base_patch14_448.mim_in22k_ft_in22k_in1k, not from the checkpoint), else the checkpoint's."""
    if not spec.timm_pretrained_cfg:
        return timm_transform(model.timm_model)
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    return create_transform(**resolve_data_config(get_pretrained_cfg(spec.timm_pretrained_cfg).__dict__))


# ---------------------------------------------------------------------------------------------------
# timm's hub format (Sumsub)


def _load_timm_hub(spec: DetectorSpec, source: str, revision: str | None) -> nn.Module:
    import timm

    if Path(source).is_dir():
        config = json.loads((Path(source) / "config.json").read_text())
        name = f"local-dir:{source}"
    else:
        from timm.models import load_model_config_from_hf

        hub = f"{source}@{revision}" if revision else source
        config = {"architecture": load_model_config_from_hf(hub)[1]}
        name = f"hf-hub:{hub}"
    arch = config.get("architecture", "").split(".")[0]
    if arch != spec.architecture:
        raise CheckpointMismatch(f"{spec.name}: checkpoint architecture {arch!r} != spec {spec.architecture!r}")
    model = timm.create_model(name, pretrained=True)
    check_labels(spec, config.get("label_names") or [f"LABEL_{i}" for i in range(model.num_classes)])
    from timm.data import resolve_data_config

    check_data_config(spec, resolve_data_config(model=model))
    return model


def _random_timm_hub(spec: DetectorSpec, out: Path, overrides: dict, gen: torch.Generator) -> Path:
    import timm
    from timm.models import save_for_hf

    head = spec.heads[0]
    model = timm.create_model(spec.architecture, pretrained=False, num_classes=head.num_logits, **overrides)
    spread_head(model.get_classifier(), gen)
    save_for_hf(model, out, model_config={"label_names": list(head.labels)}, safe_serialization=True)
    return out


def _timm_hub_gradcam(model: nn.Module) -> GradCamParts:
    """timm CNNs with an average-pooled conv head (MobileNetV3: conv_head, norm_head, act2, classifier)."""
    if getattr(getattr(model, "global_pool", None), "pool_type", "") != "avg" or not hasattr(model, "conv_head"):
        raise TypeError(f"{type(model).__name__}: Grad-CAM's closed form needs an average-pooled conv head")

    def split(pixels):
        a = model.forward_features(pixels)
        chain = [model.conv_head, model.norm_head, model.act2, model.flatten, model.classifier]
        return a, [(model.forward_head(a), chain)]

    return GradCamParts(f"blocks.{len(model.blocks) - 1}", split)


# ---------------------------------------------------------------------------------------------------
# ImageTrust-AI: torchvision resnet18 with a two-layer MLP head, as a plain state dict


def imagetrust_resnet18(num_logits: int) -> nn.Module:
    """ImageTrust-AI src/models/model.py: torchvision resnet18 with a two-layer MLP head."""
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, num_logits)
    )
    return model


def _load_imagetrust(spec: DetectorSpec, source: str, revision: str | None) -> nn.Module:
    head = spec.heads[0]
    state = read_state_dict(single_weights_file(source))
    return load_strict(spec, imagetrust_resnet18(head.num_logits), state, {"fc.4.weight": head.num_logits})


def _random_imagetrust(spec: DetectorSpec, out: Path, overrides: dict, gen: torch.Generator) -> Path:
    head = spec.heads[0]
    model = imagetrust_resnet18(head.num_logits)
    spread_head(model.fc[4], gen)
    path = out / ("generator_model.pth" if head.role == "source" else "best_model.pth")  # ImageTrust's names
    torch.save(model.state_dict(), path)
    return path


def _imagetrust_gradcam(model: nn.Module) -> GradCamParts:
    def split(pixels):
        x = model.maxpool(model.relu(model.bn1(model.conv1(pixels))))
        a = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return a, [(model.fc(torch.flatten(model.avgpool(a), 1)), list(model.fc))]

    return GradCamParts("layer4", split)


def _imagetrust_reference(spec, model, source, revision) -> Transform:
    """ImageTrust-AI src/data/transforms.py (eval)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])


# ---------------------------------------------------------------------------------------------------
# a timm backbone + binary and source heads, one state dict (Hive's two-head shape)


class TwoHeadTimm(nn.Module):
    """timm backbone (pooled features) + binary and source linear heads."""

    def __init__(self, architecture: str, num_binary: int, num_source: int, **overrides):
        super().__init__()
        import timm

        self.backbone = timm.create_model(architecture, pretrained=False, num_classes=0, **overrides)
        self.binary = nn.Linear(self.backbone.num_features, num_binary)
        self.source = nn.Linear(self.backbone.num_features, num_source)

    def forward(self, pixels):
        features = self.backbone(pixels)
        return self.binary(features), self.source(features)


def _two_head_gradcam(model: TwoHeadTimm) -> GradCamParts:
    def split(pixels):
        a = model.backbone.forward_features(pixels)
        pooled = model.backbone.forward_head(a)
        return a, [(model.binary(pooled), [model.binary]), (model.source(pooled), [model.source])]

    return GradCamParts("backbone.bn2", split)


def _two_head(spec: DetectorSpec) -> TwoHeadTimm:
    return TwoHeadTimm(spec.architecture, spec.head("binary").num_logits, spec.head("source").num_logits)


def _load_two_head(spec: DetectorSpec, source: str, revision: str | None) -> nn.Module:
    state = read_state_dict(single_weights_file(source))
    binary, src = spec.head("binary"), spec.head("source")
    return load_strict(spec, _two_head(spec), state,
                       {"binary.weight": binary.num_logits, "source.weight": src.num_logits})


def _random_two_head(spec: DetectorSpec, out: Path, overrides: dict, gen: torch.Generator) -> Path:
    from safetensors.torch import save_file

    model = _two_head(spec)
    spread_head(model.binary, gen)
    spread_head(model.source, gen)
    path = out / "model.safetensors"
    save_file(model.state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {family.format: family for family in (
    Family("transformers_siglip", "a transformers SiglipForImageClassification checkpoint with its image processor",
           _load_siglip, _random_siglip, _siglip_reference,
           hub_files=(("config.json",), ("model.safetensors",), ("preprocessor_config.json",)),
           call=lambda model, pixels: model(pixel_values=pixels).logits),
    Family("transformers_timm_wrapper", "a transformers TimmWrapperForImageClassification checkpoint",
           _load_timm_wrapper, _random_timm_wrapper, _timm_wrapper_reference,
           hub_files=(("config.json",), ("model.safetensors",)),
           call=lambda model, pixels: model(pixel_values=pixels).logits),
    # timm tries model.safetensors, then pytorch_model.bin (read with torch.load(weights_only=True))
    Family("timm_hub", "a timm hub checkpoint (config.json + weights, hf-hub:/local-dir:)",
           _load_timm_hub, _random_timm_hub, lambda spec, model, source, revision: timm_transform(model),
           hub_files=(("config.json",), ("model.safetensors", "pytorch_model.bin")), gradcam=_timm_hub_gradcam),
    Family("imagetrust_resnet18_mlp", "ImageTrust-AI's resnet18 + MLP head state dict (.pth)",
           _load_imagetrust, _random_imagetrust, _imagetrust_reference, gradcam=_imagetrust_gradcam),
    Family("timm_two_head_state_dict", "a timm backbone with binary and source heads, one state dict",
           _load_two_head, _random_two_head,
           lambda spec, model, source, revision: timm_transform(model.backbone), gradcam=_two_head_gradcam),
)}


def family_of(spec: DetectorSpec) -> Family:
    try:
        return FAMILIES[spec.format]
    except KeyError:
        raise ValueError(f"{spec.name}: unknown checkpoint format {spec.format!r}; known: {', '.join(FAMILIES)}") from None


def is_cnn(spec: DetectorSpec) -> bool:
    """Explained by the in-graph Grad-CAM (else by occlusion through the served model)."""
    return family_of(spec).gradcam is not None


def gpu_precision(spec: DetectorSpec) -> str:
    """TensorRT precision for the GPU targets: the spec's own (its card's advice) or its family's."""
    return spec.gpu_precision or family_of(spec).gpu_precision
