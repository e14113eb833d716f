"""Load each detector's checkpoint in its native format, and build random-weight ones.

Safe loading only: safetensors, or torch.load(weights_only=True); never trust_remote_code. A checkpoint
whose architecture, head size, labels or preprocessing disagree with its spec is refused by name.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from genguard.export import weights as hub_weights
from genguard.specs import DetectorSpec

log = logging.getLogger("genguard.export")

# A file in a checkpoint directory made by write_random_checkpoint; everything exported from such a
# checkpoint carries weights="random" so the server can say so.
RANDOM_MARKER = "RANDOM_WEIGHTS"
RANDOM_WARNING = (
    "RANDOM WEIGHTS: {name} was built with random weights, not a trained detector. "
    "Its answers are meaningless; use it only to test the plumbing."
)


class CheckpointMismatch(ValueError):
    """The checkpoint is not what the spec says it should be."""


class HeadsModule(nn.Module):
    """Any loaded detector as `pixels -> (logits per head, in spec order)`: what ONNX export traces."""

    def __init__(self, model: nn.Module, spec: DetectorSpec):
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, pixels: torch.Tensor):
        if self.spec.format == "transformers":
            return (self.model(pixel_values=pixels).logits,)
        out = self.model(pixels)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class TwoHeadEfficientNet(nn.Module):
    """timm EfficientNet backbone (pooled features) + binary and source linear heads (Hive's shape)."""

    def __init__(self, architecture: str, num_binary: int, num_source: int, pretrained: bool = False):
        super().__init__()
        import timm

        self.backbone = timm.create_model(architecture, pretrained=pretrained, num_classes=0)
        self.binary = nn.Linear(self.backbone.num_features, num_binary)
        self.source = nn.Linear(self.backbone.num_features, num_source)

    def forward(self, pixels):
        features = self.backbone(pixels)
        return self.binary(features), self.source(features)


def imagetrust_resnet18(num_logits: int) -> nn.Module:
    """ImageTrust-AI src/models/model.py: torchvision resnet18 with a two-layer MLP head."""
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.fc = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, num_logits)
    )
    return model


def is_random(source: str | Path | None) -> bool:
    if source is None:
        return False
    path = Path(source)
    return any((p / RANDOM_MARKER).exists() for p in (path, path.parent) if p.exists())


# ---------------------------------------------------------------------------------------------------
# loading


def load(spec: DetectorSpec, source: str | Path | None = None) -> HeadsModule:
    """Load `spec`'s checkpoint from a local path or hub id (default: the spec's source), in eval mode."""
    source = source if source is not None else spec.source
    if source is None:
        raise CheckpointMismatch(
            f"{spec.name} has no public checkpoint: pass a local path (--checkpoint {spec.name}=/path, "
            f"or make export CHECKPOINTS='{spec.name}=/path') or use random weights (WEIGHTS=random)"
        )
    if is_random(source):
        warnings.warn(RANDOM_WARNING.format(name=spec.name), stacklevel=2)
    if spec.format in ("transformers", "timm") and hub_weights.is_hub_id(source):
        # hub id (ORG/NAME[@REVISION]): the files its loader reads are found in (or downloaded into) the
        # hub cache first, with one clear error when they can't be; then the library loads them by hub id
        # at the resolved commit, which is recorded as the revision served.
        repo_id, requested = hub_weights.split_revision(str(source))
        commit = hub_weights.resolve(spec, repo_id, requested)
        if spec.format == "transformers":
            model = _load_transformers(spec, repo_id, revision=commit)
        else:
            model = _load_timm(spec, f"{repo_id}@{commit}")
        module = HeadsModule(model, spec).eval()
        module.revision = commit
        return module
    loader = {
        "transformers": _load_transformers,
        "timm": _load_timm,
        "torchvision_state_dict": _load_torchvision_state_dict,
        "two_head_state_dict": _load_two_head,
    }[spec.format]
    return HeadsModule(loader(spec, str(source)), spec).eval()


def _check_labels(spec: DetectorSpec, declared) -> None:
    head = spec.heads[0]
    if head.num_logits != len(declared):
        raise CheckpointMismatch(
            f"{spec.name}: checkpoint head has {len(declared)} outputs, spec head '{head.name}' "
            f"expects {head.num_logits}"
        )
    generic = all(str(label).startswith("LABEL_") for label in declared)
    if not generic and head.activation == "softmax" and tuple(declared) != head.labels:
        raise CheckpointMismatch(
            f"{spec.name}: checkpoint labels {list(declared)} differ from spec labels {list(head.labels)}"
        )


def _check_data_config(spec: DetectorSpec, data_config: dict) -> None:
    """timm's resolved data config of the checkpoint must be the spec's input."""
    want = spec.input
    crop_mode = data_config.get("crop_mode", "center")
    if crop_mode not in ("squash", "center"):
        raise CheckpointMismatch(f"{spec.name}: checkpoint crop_mode {crop_mode!r} is not supported (squash, center)")
    mode = "squash" if crop_mode == "squash" else "shorter_crop"
    got = {
        "size": tuple(data_config["input_size"][1:]),
        "interpolation": data_config["interpolation"],
        "mean": tuple(round(m, 8) for m in data_config["mean"]),
        "std": tuple(round(s, 8) for s in data_config["std"]),
        "crop_pct": data_config["crop_pct"],
        "resize": mode,
    }
    expected = {
        "size": want.size,
        "interpolation": want.interpolation,
        "mean": tuple(round(m, 8) for m in want.mean),
        "std": tuple(round(s, 8) for s in want.std),
        "crop_pct": want.crop_pct,
        "resize": want.resize,
    }
    diff = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
    if diff:
        raise CheckpointMismatch(
            f"{spec.name}: checkpoint preprocessing differs from spec input '{want.name}' "
            f"(checkpoint, spec): {diff}"
        )


def _load_transformers(spec: DetectorSpec, source: str, revision: str | None = None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
    if spec.architecture == "siglip":
        if config.model_type != "siglip":
            raise CheckpointMismatch(f"{spec.name}: expected a siglip checkpoint, got model_type={config.model_type}")
        vision = config.vision_config
        if (vision.image_size, vision.image_size) != spec.input.size:
            raise CheckpointMismatch(
                f"{spec.name}: checkpoint image_size {vision.image_size} != spec size {spec.input.size}"
            )
        check_siglip_processor(spec, source, revision)
    else:
        arch = getattr(config, "architecture", "") or ""
        if config.model_type != "timm_wrapper" or arch.split(".")[0] != spec.architecture:
            raise CheckpointMismatch(
                f"{spec.name}: expected timm_wrapper of {spec.architecture}, "
                f"got model_type={config.model_type} architecture={arch}"
            )
    _check_labels(spec, [config.id2label[i] for i in sorted(config.id2label)])
    model = AutoModelForImageClassification.from_pretrained(source, config=config, revision=revision,
                                                            trust_remote_code=False)
    if config.model_type == "timm_wrapper":
        from timm.data import resolve_data_config

        _check_data_config(spec, resolve_data_config(model=model.timm_model))
    return model


def siglip_processor(source: str, revision: str | None = None):
    """The checkpoint's own image processor on transformers' Pillow backend, as the card installs it
    (no torchvision); with torchvision present transformers would otherwise pick torchvision's.
    source may be a hub id with @REVISION; `revision` (a resolved commit) takes precedence."""
    from transformers import AutoImageProcessor

    if hub_weights.is_hub_id(source):
        source, requested = hub_weights.split_revision(source)
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


def _load_timm(spec: DetectorSpec, source: str) -> nn.Module:
    import timm
    from timm.data import resolve_data_config

    if Path(source).is_dir():
        config = json.loads((Path(source) / "config.json").read_text())
        name = f"local-dir:{source}"
    else:
        from timm.models import load_model_config_from_hf

        config = {"architecture": load_model_config_from_hf(source)[1]}
        name = f"hf-hub:{source}"
    arch = config.get("architecture", "").split(".")[0]
    if arch != spec.architecture:
        raise CheckpointMismatch(f"{spec.name}: checkpoint architecture {arch!r} != spec {spec.architecture!r}")
    model = timm.create_model(name, pretrained=True)
    _check_labels(spec, config.get("label_names") or [f"LABEL_{i}" for i in range(model.num_classes)])
    _check_data_config(spec, resolve_data_config(model=model))
    return model


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses anything but tensors and plain containers: a pickle that would run code
        raise CheckpointMismatch(
            f"{path}: refused: not a plain state dict (the pickle asks for {str(exc).splitlines()[-1][:200]!r}); "
            "GenGuard never unpickles arbitrary objects"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):  # common training-loop wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _single_weights_file(source: str, patterns=("*.safetensors", "*.pth", "*.pt", "*.bin")) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    files = [f for pattern in patterns for f in sorted(path.glob(pattern))]
    if len(files) != 1:
        raise CheckpointMismatch(f"{source}: expected one weights file, found {[f.name for f in files]}")
    return files[0]


def _load_strict(spec: DetectorSpec, model: nn.Module, state: dict, heads: dict[str, int]) -> nn.Module:
    """heads: state-dict key of each head's final weight -> expected number of outputs."""
    for key, expected in heads.items():
        if key not in state:
            raise CheckpointMismatch(f"{spec.name}: checkpoint has no {key!r}; not a {spec.architecture} of this shape")
        if state[key].shape[0] != expected:
            raise CheckpointMismatch(
                f"{spec.name}: checkpoint head {key} has {state[key].shape[0]} outputs, spec expects {expected}"
            )
    expected_keys = model.state_dict()
    missing = [k for k in expected_keys if k not in state]
    unexpected = [k for k in state if k not in expected_keys]
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{spec.name}: checkpoint does not match {spec.architecture}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected_keys[k].shape)}"
             for k, v in state.items() if v.shape != expected_keys[k].shape]
    if wrong:
        raise CheckpointMismatch(f"{spec.name}: tensor shapes differ from {spec.architecture}: {wrong[:5]}")
    model.load_state_dict(state, strict=True)
    return model


def _load_torchvision_state_dict(spec: DetectorSpec, source: str) -> nn.Module:
    head = spec.heads[0]
    state = _read_state_dict(_single_weights_file(source))
    model = imagetrust_resnet18(head.num_logits)
    return _load_strict(spec, model, state, {"fc.4.weight": head.num_logits})


def _load_two_head(spec: DetectorSpec, source: str) -> nn.Module:
    binary, src = spec.head("binary"), spec.head("source")
    state = _read_state_dict(_single_weights_file(source))
    model = TwoHeadEfficientNet(spec.architecture, binary.num_logits, src.num_logits)
    return _load_strict(spec, model, state, {"binary.weight": binary.num_logits, "source.weight": src.num_logits})


# ---------------------------------------------------------------------------------------------------
# random-weight checkpoints, written in each native format so the real loaders above run on them


def _spread_head(linear: nn.Linear, generator: torch.Generator) -> None:
    # Library inits leave classifier logits near 0 (every probability ~1/k), which would make parity
    # checks trivially pass; spread them so probabilities span (0, 1).
    with torch.no_grad():
        linear.weight.normal_(0.0, 3.0 / linear.in_features**0.5, generator=generator)
        linear.bias.normal_(0.0, 0.5, generator=generator)


def write_random_checkpoint(spec: DetectorSpec, out_dir: str | Path, tiny: bool = False, seed: int = 0) -> Path:
    """Build spec's architecture with random weights and save it as its real checkpoint would be.

    tiny: apply spec.tiny (fewer layers) for fast tests; same classes, same loading code.
    Returns the path to pass to load().
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    overrides = spec.tiny if tiny else {}
    head = spec.heads[0]
    labels = {i: label for i, label in enumerate(head.labels)}
    if spec.format == "transformers" and spec.architecture == "siglip":
        from transformers import SiglipConfig, SiglipForImageClassification, SiglipImageProcessor

        # siglip2-base-patch16-224's vision tower (transformers model_type "siglip")
        vision = dict(image_size=spec.input.size[0], patch_size=16, hidden_size=768, intermediate_size=3072,
                      num_attention_heads=12, num_hidden_layers=12)
        vision.update(overrides)
        config = SiglipConfig(vision_config=vision, id2label=labels, label2id={v: k for k, v in labels.items()})
        model = SiglipForImageClassification(config)
        _spread_head(model.classifier, gen)
        model.save_pretrained(out)
        SiglipImageProcessor(
            size={"height": spec.input.size[0], "width": spec.input.size[1]},
            resample=2 if spec.input.interpolation == "bilinear" else 3,
            image_mean=list(spec.input.mean),
            image_std=list(spec.input.std),
        ).save_pretrained(out)
        path = out
    elif spec.format == "transformers":
        from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

        config = TimmWrapperConfig(
            architecture=f"{spec.architecture}.mim_in22k_ft_in22k_in1k" if "eva02" in spec.architecture else spec.architecture,
            num_labels=len(labels),
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
            model_args=overrides or None,
        )
        model = TimmWrapperForImageClassification(config)
        _spread_head(model.timm_model.get_classifier(), gen)
        model.save_pretrained(out)
        path = out
    elif spec.format == "timm":
        import timm
        from timm.models import save_for_hf

        model = timm.create_model(spec.architecture, pretrained=False, num_classes=head.num_logits, **overrides)
        _spread_head(model.get_classifier(), gen)
        save_for_hf(model, out, model_config={"label_names": list(head.labels)}, safe_serialization=True)
        path = out
    elif spec.format == "torchvision_state_dict":
        model = imagetrust_resnet18(head.num_logits)
        _spread_head(model.fc[4], gen)
        path = out / ("generator_model.pth" if head.role == "source" else "best_model.pth")
        torch.save(model.state_dict(), path)
    elif spec.format == "two_head_state_dict":
        from safetensors.torch import save_file

        model = TwoHeadEfficientNet(spec.architecture, spec.head("binary").num_logits, spec.head("source").num_logits)
        _spread_head(model.binary, gen)
        _spread_head(model.source, gen)
        path = out / "model.safetensors"
        save_file(model.state_dict(), path)
    else:
        raise ValueError(f"unknown checkpoint format {spec.format}")
    (out / RANDOM_MARKER).write_text(RANDOM_WARNING.format(name=spec.name) + "\n")
    log.warning(RANDOM_WARNING.format(name=spec.name))
    return path
