"""The detector specs say what the checkpoints' own libraries say.

Each timm-based InputSpec is compared with the data config timm resolves for the architecture's
pretrained tag, the SigLIP input with the checkpoint's SiglipImageProcessor config; then the heads'
labels/roles and the helpers with_labels / distinct_inputs.
"""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from genguard import specs

# detector -> the timm pretrained tag whose data config its input must reproduce
TIMM_TAGS = {
    "sumsub_sd": "tf_mobilenetv3_large_100.in1k",
    "freepik_nsfw": "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",
    "hive_effb4": "efficientnet_b4.ra2_in1k",
}
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def timm_data_config(tag: str) -> dict:
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    return resolve_data_config(get_pretrained_cfg(tag).__dict__)


def as_input_fields(data_config: dict) -> dict:
    """A timm data config in InputSpec terms (crop mode 'center' = resize shorter side, then crop)."""
    assert data_config["crop_mode"] in ("squash", "center"), data_config
    squash = data_config["crop_mode"] == "squash"
    return {
        "size": tuple(data_config["input_size"][1:]),
        "resize": "squash" if squash else "shorter_crop",
        "interpolation": data_config["interpolation"],
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "crop_pct": data_config["crop_pct"],
    }


@pytest.mark.parametrize("name, tag", sorted(TIMM_TAGS.items()))
def test_timm_input_matches_resolved_data_config(name, tag):
    spec = specs.get(name)
    assert spec.architecture == tag.split(".")[0]
    want = as_input_fields(timm_data_config(tag))
    got = {field: getattr(spec.input, field) for field in want}
    assert got == want
    assert spec.input.arithmetic == "torchvision"  # timm transforms end in ToTensor + Normalize
    assert spec.input.shape == (3, *want["size"])


def test_siglip_input_matches_checkpoint_processor():
    from transformers import SiglipImageProcessor

    # OpenSDI-Flux.1-SigLIP2's preprocessor_config.json: 224x224, resample=2 (bilinear), mean=std=0.5
    proc = SiglipImageProcessor(resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    spec = specs.get("opensdi_flux")
    size = proc.size
    assert spec.input.size == (size["height"], size["width"])
    assert spec.input.resize == "squash"  # a {height, width} size resizes straight to it
    assert PIL_FILTERS[spec.input.interpolation] == proc.resample
    assert spec.input.mean == tuple(proc.image_mean)
    assert spec.input.std == tuple(proc.image_std)
    assert spec.input.arithmetic == "transformers" and proc.rescale_factor == 1 / 255
    # convert_to_rgb composites transparency onto white
    assert proc.do_convert_rgb and "white" in spec.input.alpha


def test_registry_names_and_get():
    assert specs.DETECTORS, "no detectors declared"
    for name, spec in specs.DETECTORS.items():
        assert spec.name == name
        assert specs.get(name) is spec
    with pytest.raises(KeyError) as exc:
        specs.get("no_such_detector")
    for name in specs.DETECTORS:
        assert name in str(exc.value)


@pytest.mark.parametrize("spec", specs.DETECTORS.values(), ids=list(specs.DETECTORS))
def test_heads_are_well_formed(spec):
    assert spec.heads, spec.name
    assert len({h.name for h in spec.heads}) == len(spec.heads), "head names must be unique (ONNX outputs)"
    for head in spec.heads:
        assert len(set(head.labels)) == len(head.labels) >= 2
        if head.activation == "sigmoid":
            assert len(head.labels) == 2 and head.num_logits == 1
        else:
            assert head.num_logits == len(head.labels)
        if head.role == "binary":
            assert len(head.labels) == 2
            assert head.positive in head.labels
            assert head.real_label is None
        elif head.role == "source":
            assert head.real_label in head.labels
            assert head.positive is None
        else:
            assert head.role == "nsfw" and head.positive is None and head.real_label is None
    for role in ("binary", "source", "nsfw"):
        assert spec.head(role) is next((h for h in spec.heads if h.role == role), None)


@pytest.mark.parametrize(
    "name, roles, label_counts",
    [
        # from the model cards (README "The detectors")
        ("opensdi_flux", ("binary",), (2,)),
        ("sumsub_sd", ("binary",), (2,)),
        ("freepik_nsfw", ("nsfw",), (4,)),
        ("imagetrust_binary", ("binary",), (2,)),
        ("imagetrust_source", ("source",), (4,)),
        ("hive_effb4", ("binary", "source"), (2, len(specs.HIVE_SOURCES))),
    ],
)
def test_head_roles_and_label_counts(name, roles, label_counts):
    spec = specs.get(name)
    assert tuple(h.role for h in spec.heads) == roles
    assert tuple(len(h.labels) for h in spec.heads) == label_counts


def test_card_label_details():
    assert specs.get("freepik_nsfw").heads[0].labels == ("neutral", "low", "medium", "high")
    binary = specs.get("imagetrust_binary").heads[0]
    assert (binary.activation, binary.num_logits, binary.positive) == ("sigmoid", 1, binary.labels[1])
    assert specs.get("imagetrust_source").heads[0].labels == ("Real", "GAN", "Diffusion", "Other")
    assert specs.get("opensdi_flux").heads[0].positive == "Flux.1_Generated"


# ---------------------------------------------------------------------------------------------------
# with_labels


def test_with_labels_reorders_and_keeps_meaning():
    spec = specs.get("sumsub_sd")
    before = spec.heads[0]
    swapped = specs.with_labels(spec, before.name, tuple(reversed(before.labels)))
    head = swapped.heads[0]
    assert head.labels == tuple(reversed(before.labels)) != before.labels
    assert (head.positive, head.generator, head.role) == (before.positive, before.generator, before.role)
    assert dataclasses.replace(swapped, heads=spec.heads) == spec  # nothing else changed
    assert specs.get("sumsub_sd").heads[0] is before  # the registry is untouched


def test_with_labels_on_a_two_head_spec_touches_one_head():
    spec = specs.get("hive_effb4")
    src = spec.head("source")
    new = specs.with_labels(spec, src.name, tuple(reversed(src.labels)))
    assert new.head("binary") == spec.head("binary")
    assert new.head("source").labels == tuple(reversed(src.labels))
    assert new.head("source").real_label == src.real_label


@pytest.mark.parametrize(
    "name, labels, error, words",
    [
        ("sumsub_sd", ("real",), ValueError, "1"),  # wrong count
        ("sumsub_sd", ("real", "stable_diffusion", "midjourney"), ValueError, "3"),
        ("sumsub_sd", ("real", "sd"), ValueError, "stable_diffusion"),  # positive label missing
        ("imagetrust_source", ("Photo", "GAN", "Diffusion", "Other"), ValueError, "Real"),  # real_label missing
    ],
)
def test_with_labels_refuses(name, labels, error, words):
    spec = specs.get(name)
    with pytest.raises(error, match=words):
        specs.with_labels(spec, spec.heads[0].name, labels)


def test_with_labels_unknown_head():
    with pytest.raises(KeyError, match="no_such_head"):
        specs.with_labels(specs.get("sumsub_sd"), "no_such_head", ("real", "stable_diffusion"))


# ---------------------------------------------------------------------------------------------------
# distinct_inputs


def test_distinct_inputs_dedupes_shared_inputs():
    all_specs = list(specs.DETECTORS.values())
    inputs = specs.distinct_inputs(all_specs)
    assert specs.get("imagetrust_binary").input == specs.get("imagetrust_source").input
    assert inputs[specs.get("imagetrust_binary").input.name] == specs.get("imagetrust_binary").input
    assert set(inputs) == {s.input.name for s in all_specs}
    assert len(inputs) == len({s.input for s in all_specs}) < len(all_specs)
    for name, spec_input in inputs.items():
        assert spec_input.name == name
        assert all(s.input == spec_input for s in all_specs if s.input.name == name)


def test_distinct_inputs_refuses_two_specs_under_one_name():
    a = specs.get("imagetrust_binary")
    b = specs.get("imagetrust_source")
    b = dataclasses.replace(b, input=dataclasses.replace(b.input, interpolation="bicubic"))
    assert a.input.name == b.input.name and a.input != b.input
    with pytest.raises(ValueError, match=a.input.name):
        specs.distinct_inputs([a, b])


def test_the_project_stands_alone():
    """No file cites a planning document outside the repository (its facts belong in the project's docs)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).parents[1]
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    outside = ("DESIGN" + ".md", "../" + "shared", "/work/" + "shared")  # split so this file doesn't match itself
    offenders = [f for f in tracked if (root / f).is_file() and (root / f).suffix in (".py", ".md", ".toml", ".yaml",
                 ".yml", ".txt", ".cfg", "") and any(s in (root / f).read_text(errors="ignore") for s in outside)]
    assert offenders == []
