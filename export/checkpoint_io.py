"""Checkpoint-reading helpers every checkpoint family uses: safe state-dict reading, strict loading with
named refusals, and the checks of labels and preprocessing against the spec.

Safe loading only: safetensors, or torch.load(weights_only=True); never trust_remote_code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from genguard.specs import DetectorSpec


class CheckpointMismatch(ValueError):
    """The checkpoint is not what the spec says it should be."""


def check_labels(spec: DetectorSpec, declared) -> None:
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


def check_data_config(spec: DetectorSpec, data_config: dict) -> None:
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


def read_state_dict(path: Path) -> dict:
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


def single_weights_file(source: str, patterns=("*.safetensors", "*.pth", "*.pt", "*.bin")) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {source}")
    files = [f for pattern in patterns for f in sorted(path.glob(pattern))]
    if len(files) != 1:
        raise CheckpointMismatch(f"{source}: expected one weights file, found {[f.name for f in files]}")
    return files[0]


def load_strict(spec: DetectorSpec, model: nn.Module, state: dict, heads: dict[str, int]) -> nn.Module:
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


def spread_head(linear: nn.Linear, generator: torch.Generator) -> None:
    # Library inits leave classifier logits near 0 (every probability ~1/k), which would make parity
    # checks trivially pass; spread them so probabilities span (0, 1).
    with torch.no_grad():
        linear.weight.normal_(0.0, 3.0 / linear.in_features**0.5, generator=generator)
        linear.bias.normal_(0.0, 0.5, generator=generator)
