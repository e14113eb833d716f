"""Checkpoints: native formats, loading, refusals by name, and safe deserialisation.

Random-weight checkpoints come from the session `tiny_build` (written by write_random_checkpoint
through the export CLI). Refusal cases copy one and break exactly one thing in it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import genguard
from conftest import checkpoint_path
from genguard import specs
from genguard.export.checkpoints import (
    RANDOM_MARKER,
    CheckpointMismatch,
    is_random,
    load,
    write_random_checkpoint,
)
from genguard.export.families import imagetrust_resnet18

NAMES = list(specs.DETECTORS)


def load_quietly(spec, source=None):
    """load() without the random-weights UserWarning (tested once, below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load(spec, source)


def copy_checkpoint(build: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoint_path(build, name), tmp_path / name))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def imagetrust_state(build: Path, name: str) -> dict:
    (pth,) = checkpoint_path(build, name).glob("*.pth")
    return torch.load(pth, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------
# native formats written by write_random_checkpoint


def _check_siglip(spec, folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "siglip"
    assert [config["id2label"][str(i)] for i in range(len(config["id2label"]))] == list(spec.heads[0].labels)
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    assert proc["image_processor_type"].startswith("SiglipImageProcessor")
    assert (proc["size"]["height"], proc["size"]["width"]) == spec.input.size
    assert proc["resample"] == 2 and tuple(proc["image_mean"]) == tuple(proc["image_std"]) == (0.5,) * 3


def _check_timm_wrapper(spec, folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "timm_wrapper"
    assert config["architecture"].split(".")[0] == spec.architecture
    assert tuple(config["label_names"]) == spec.heads[0].labels


def _check_timm(spec, folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == spec.architecture
    assert config["num_classes"] == spec.heads[0].num_logits
    assert tuple(config["label_names"]) == spec.heads[0].labels
    assert "pretrained_cfg" in config  # timm's data config travels with the checkpoint


def _check_state_dict(spec, folder):
    (pth,) = folder.glob("*.pth")
    state = torch.load(pth, map_location="cpu", weights_only=True)  # a plain state dict: loads safely
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["fc.4.weight"].shape == (spec.heads[0].num_logits, 256)
    assert "layer4.1.conv2.weight" in state  # a torchvision resnet18


def _check_two_head(spec, folder):
    state = load_file(folder / "model.safetensors")
    assert state["binary.weight"].shape[0] == spec.head("binary").num_logits
    assert state["source.weight"].shape[0] == spec.head("source").num_logits
    assert any(k.startswith("backbone.") for k in state)


NATIVE = {
    "opensdi_flux": ({"config.json", "model.safetensors", "preprocessor_config.json"}, _check_siglip),
    "freepik_nsfw": ({"config.json", "model.safetensors"}, _check_timm_wrapper),
    "sumsub_sd": ({"config.json", "model.safetensors"}, _check_timm),
    "imagetrust_binary": ({"best_model.pth"}, _check_state_dict),
    "imagetrust_source": ({"generator_model.pth"}, _check_state_dict),
    "hive_effb4": ({"model.safetensors"}, _check_two_head),
}


def test_every_detector_has_a_native_format_case():
    assert set(NATIVE) == set(specs.DETECTORS)


@pytest.mark.parametrize("name", NAMES)
def test_random_checkpoint_is_written_in_native_format(tiny_build, name):
    folder = checkpoint_path(tiny_build, name)
    files, check = NATIVE[name]
    assert {p.name for p in folder.iterdir()} == files | {RANDOM_MARKER}
    assert "RANDOM WEIGHTS" in (folder / RANDOM_MARKER).read_text()
    assert is_random(folder)
    check(specs.get(name), folder)


def test_write_random_checkpoint_returns_the_path_to_load(tmp_path):
    spec = specs.get("imagetrust_binary")
    path = write_random_checkpoint(spec, tmp_path / "ckpt", tiny=True)
    assert path == tmp_path / "ckpt" / "best_model.pth" and path.is_file()
    assert is_random(path) and is_random(path.parent)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert not is_random(plain) and not is_random(None)


@pytest.fixture(scope="module")
def loaded(tiny_build):
    return {name: load_quietly(specs.get(name), checkpoint_path(tiny_build, name)) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_loaded_module_outputs_spec_head_sizes(loaded, name):
    spec = specs.get(name)
    module = loaded[name]
    assert not any(m.training for m in module.model.modules()), "dropout/batch-norm must be in eval mode"
    with torch.inference_mode():
        outputs = module(torch.randn(2, *spec.input.shape))
    assert isinstance(outputs, tuple)
    assert [tuple(o.shape) for o in outputs] == [(2, h.num_logits) for h in spec.heads]
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("name", ["sumsub_sd", "imagetrust_source"])
def test_loading_random_weights_warns(tiny_build, name):
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        load(specs.get(name), checkpoint_path(tiny_build, name))


def test_wrapped_state_dict_is_unwrapped(tiny_build, tmp_path):
    spec = specs.get("imagetrust_binary")
    torch.save({"epoch": 3, "model_state_dict": imagetrust_state(tiny_build, spec.name)}, tmp_path / "best_model.pth")
    outputs = load_quietly(spec, tmp_path)(torch.randn(2, *spec.input.shape))
    assert outputs[0].shape == (2, 1)


# ---------------------------------------------------------------------------------------------------
# refusals: CheckpointMismatch naming what is wrong


def _save(tmp_path: Path, state, filename="best_model.pth") -> Path:
    path = tmp_path / filename
    torch.save(state, path)
    return path


def _resnet34_with_imagetrust_head():
    from torchvision.models import resnet34

    model = resnet34(weights=None)
    model.fc = imagetrust_resnet18(1).fc
    return model.state_dict()


def _plain_resnet34():
    from torchvision.models import resnet34

    return resnet34(weights=None).state_dict()


def _without_layer4(build):
    return {k: v for k, v in imagetrust_state(build, "imagetrust_binary").items() if not k.startswith("layer4.")}


@pytest.mark.parametrize(
    "name, make_state, words",
    [
        ("imagetrust_binary", lambda build: imagetrust_resnet18(3).state_dict(), "3 outputs"),
        ("imagetrust_source", lambda build: imagetrust_resnet18(3).state_dict(), "3 outputs"),
        ("imagetrust_binary", lambda build: _resnet34_with_imagetrust_head(), "unexpected"),
        ("imagetrust_binary", lambda build: _plain_resnet34(), "fc.4.weight"),
        ("imagetrust_binary", _without_layer4, "missing"),
        ("imagetrust_binary", lambda build: torch.zeros(3), "state dict"),
    ],
    ids=["binary_3_class", "source_3_class", "resnet34_keys", "plain_resnet34", "truncated", "not_a_dict"],
)
def test_state_dict_refusals(tiny_build, tmp_path, name, make_state, words):
    _save(tmp_path, make_state(tiny_build))
    with pytest.raises(CheckpointMismatch, match=words):
        load_quietly(specs.get(name), tmp_path)


def test_two_weights_files_are_ambiguous(tiny_build, tmp_path):
    folder = copy_checkpoint(tiny_build, "imagetrust_binary", tmp_path)
    shutil.copy(folder / "best_model.pth", folder / "other.pth")
    with pytest.raises(CheckpointMismatch, match="one weights file"):
        load_quietly(specs.get("imagetrust_binary"), folder)


def test_two_head_wrong_source_size(tiny_build, tmp_path):
    spec = specs.get("hive_effb4")
    state = load_file(checkpoint_path(tiny_build, spec.name) / "model.safetensors")
    wrong = spec.head("source").num_logits + 2
    state["source.weight"] = torch.zeros(wrong, state["source.weight"].shape[1])
    state["source.bias"] = torch.zeros(wrong)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatch, match=f"source.weight has {wrong} outputs"):
        load_quietly(spec, tmp_path)


def _timm_config(folder, **changes):
    edit_json(folder / "config.json", **changes)


def _timm_pretrained_cfg(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _siglip_labels(folder, labels):
    edit_json(folder / "config.json", id2label={str(i): l for i, l in enumerate(labels)},
              label2id={l: i for i, l in enumerate(labels)})


@pytest.mark.parametrize(
    "name, break_it, words",
    [
        ("sumsub_sd", lambda d: _timm_config(d, architecture="mobilenetv3_large_100"), "architecture"),
        ("sumsub_sd", lambda d: _timm_config(d, label_names=["stable_diffusion", "real"]), "labels"),
        ("sumsub_sd", lambda d: _timm_pretrained_cfg(d, interpolation="bicubic"), "interpolation"),
        ("sumsub_sd", lambda d: _timm_pretrained_cfg(d, crop_mode="squash"), "resize"),
        ("freepik_nsfw", lambda d: edit_json(d / "config.json", label_names=["a", "b", "c"], num_classes=3),
         "3 outputs"),
        ("freepik_nsfw", lambda d: edit_json(d / "config.json", architecture="vit_base_patch16_224"),
         "eva02_base_patch14_448"),
        ("opensdi_flux", lambda d: _siglip_labels(d, ["a", "b", "c"]), "3 outputs"),
        ("opensdi_flux", lambda d: edit_json(d / "preprocessor_config.json", resample=3), "resample"),
        ("opensdi_flux", lambda d: edit_json(d / "preprocessor_config.json", image_mean=list(specs.IMAGENET_MEAN)),
         "mean"),
        ("opensdi_flux", lambda d: edit_json(d / "preprocessor_config.json", size={"height": 256, "width": 256}),
         "size"),
    ],
    ids=["timm_arch", "timm_label_order", "timm_interpolation", "timm_crop_mode", "wrapper_num_labels",
         "wrapper_arch", "siglip_num_labels", "siglip_resample", "siglip_mean", "siglip_size"],
)
def test_config_refusals(tiny_build, tmp_path, name, break_it, words):
    folder = copy_checkpoint(tiny_build, name, tmp_path)
    load_quietly(specs.get(name), folder)  # control: the untouched copy loads
    break_it(folder)
    with pytest.raises(CheckpointMismatch, match=words):
        load_quietly(specs.get(name), folder)


@pytest.mark.parametrize("name", [n for n, s in specs.DETECTORS.items() if s.source is None])
def test_no_source_and_no_path(name):
    with pytest.raises(CheckpointMismatch) as exc:
        load(specs.get(name))
    message = str(exc.value)
    assert name in message and "WEIGHTS=random" in message and "checkpoint" in message.lower()


# ---------------------------------------------------------------------------------------------------
# security


class _Payload:
    """Unpickling this runs a shell command (here: creating a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "PWNED"
    state = imagetrust_resnet18(1).state_dict()
    state["fc.4.extra"] = _Payload(marker)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _save(folder, state)
    with pytest.raises((pickle.UnpicklingError, CheckpointMismatch)):
        load_quietly(specs.get("imagetrust_binary"), folder)
    assert not marker.exists(), "load() executed code from the checkpoint"
    # control: the payload is live - an unsafe torch.load would have run it
    torch.load(folder / "best_model.pth", weights_only=False)
    assert marker.exists()


def _python_sources() -> tuple[set[Path], list[Path]]:
    """genguard, genguard.export, genguard.client, and every other .py in the repository but tests."""
    root = Path(genguard.__file__).resolve().parents[1]
    # package folders found without importing them (client/ needs no torch, export/ needs no client)
    roots = {Path(loc).resolve() for pkg in ("genguard", "genguard.export", "genguard.client")
             for loc in importlib.util.find_spec(pkg).submodule_search_locations}
    skip = {"tests", "build", ".venv", ".git", "node_modules", ".hypothesis", ".pytest_cache"}
    others = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        others += [Path(folder) / f for f in files if f.endswith(".py")]
    return roots, sorted({p for r in roots for p in r.rglob("*.py")} | set(others))


def test_no_trust_remote_code_and_only_safe_torch_load():
    roots, sources = _python_sources()
    assert len(roots) == 3 and all(any(p.is_relative_to(r) for p in sources) for r in roots)
    assert any(p.name == "checkpoints.py" for p in sources)
    for path in sources:
        text = path.read_text()
        values = re.findall(r"trust_remote_code\s*=\s*([^\s,)]+)", text)
        assert all(v == "False" for v in values), f"{path}: trust_remote_code={values}"
        assert "trust_remote_code=True" not in text.replace(" ", ""), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1).replace(" ", ""), f"{path}: {call.group(0)}"
