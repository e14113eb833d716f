"""The structure the README promises: a detector is its spec, checkpoint families are data, and the
packages are layered (runtime never imports export or benchmarks; export never imports benchmarks)."""

from __future__ import annotations

import ast
import json
import os
import warnings
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from genguard import protocol, specs
from genguard.specs import IMAGENET_MEAN, IMAGENET_STD, DetectorSpec, Head, InputSpec

ROOT = Path(__file__).resolve().parents[1]

# A hypothetical seventh detector: an existing family (timm's hub format, like Sumsub's) with another
# architecture and an input spec no other detector has. Nothing but this spec is written for it.
SEVENTH = DetectorSpec(
    name="mnv3small_sd",
    description="hypothetical: timm MobileNetV3-small, real vs Stable Diffusion",
    source=None,
    format="timm_hub",
    architecture="mobilenetv3_small_050",
    input=InputSpec(name="imagenet224_bicubic_crop", size=(224, 224), resize="shorter_crop", crop_pct=0.875,
                    interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    heads=(Head("sd", "binary", ("real", "stable_diffusion"), positive="stable_diffusion",
                generator="stable_diffusion"),),
    card="(hypothetical)",
)


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture
def seventh_build(tiny_build, tmp_path, monkeypatch) -> Path:
    """A build holding the six tiny exports (linked) and the seventh detector exported through the CLI."""
    from genguard.export.__main__ import main

    monkeypatch.setitem(specs.DETECTORS, SEVENTH.name, SEVENTH)
    build = tmp_path / "build"
    (build / "onnx").mkdir(parents=True)
    for name in specs.DETECTORS:
        if name != SEVENTH.name:
            os.symlink(tiny_build / "onnx" / name, build / "onnx" / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--weights", "random", "--build", str(build), "--detectors", SEVENTH.name]) == 0
    return build


def test_a_seventh_detector_is_only_its_spec(seventh_build):
    from genguard.export.repository import render

    parity = json.loads((seventh_build / "onnx" / SEVENTH.name / "parity.json").read_text())
    # the family's real loader and the card-style reference (timm's transform of the checkpoint's config)
    assert parity["passed"] and parity["weights"] == "random"
    assert parity["reference"]["images"] >= 10 and parity["reference"]["preprocess_max_abs"] < 1e-6
    assert parity["reference"]["max_abs_prob"] <= parity["tolerance"]["max_abs_prob"]
    assert parity["reference"]["top1_agreement"] == 1.0

    names = list(specs.DETECTORS)
    for target in ("cpu", "onnx-gpu", "tensorrt"):
        repo = render(target, seventh_build, seventh_build / "repos" / target, detectors=names)
        config = read_config(repo / SEVENTH.name / "config.pbtxt")
        assert [list(i.dims) for i in config.input] == [[3, 224, 224]]
        assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [("sd", [2], "sd_labels.txt")]
        assert (repo / SEVENTH.name / "sd_labels.txt").read_text() == "real\nstable_diffusion\n"
        assert config.parameters["weights"].string_value == "random"
        ensemble = read_config(repo / protocol.ENSEMBLE / "config.pbtxt")
        step = next(s for s in ensemble.ensemble_scheduling.step if s.model_name == SEVENTH.name)
        pixels = protocol.pixels_tensor(SEVENTH.input.name)
        assert dict(step.input_map) == {protocol.DETECTOR_INPUT: pixels}
        post = read_config(repo / protocol.POSTPROCESS / "config.pbtxt")
        assert json.loads(post.parameters["detectors"].string_value)[SEVENTH.name] == {"sd": ["real", "stable_diffusion"]}
        assert protocol.head_tensor(SEVENTH.name, "sd") in {i.name for i in post.input}
        assert "stable_diffusion" in (repo / protocol.POSTPROCESS / "sources.txt").read_text().split()
        pre = read_config(repo / protocol.PREPROCESS / "config.pbtxt")
        assert pixels in {o.name for o in pre.output}  # its own input spec: one more preprocess output
        if target == "cpu":
            assert (repo / SEVENTH.name / "1" / "model.onnx").resolve() == (
                seventh_build / "onnx" / SEVENTH.name / "model.onnx").resolve()
            assert config.parameters["onnx_sha256"].string_value == parity["onnx_sha256"]
        else:
            pipeline = json.loads((repo / protocol.PREPROCESS / "1" / "pipeline.json").read_text())
            mine = next(p for p in pipeline if p["name"] == SEVENTH.input.name)
            assert (mine["size"], mine["resize"], mine["resize_to"], mine["interp"]) == (
                [224, 224], "shorter_crop", [256, 256], "INTERP_CUBIC")
        if target == "tensorrt":
            recipe = json.loads((repo / SEVENTH.name / "onnx" / "engine.json").read_text())
            assert recipe["precision"] == "fp16"  # its family's, no table names it


def test_every_spec_names_a_family_and_every_family_is_complete():
    from genguard.export.families import FAMILIES, family_of

    assert {s.format for s in specs.DETECTORS.values()} <= set(FAMILIES)
    for family in FAMILIES.values():
        assert family.loads and callable(family.load) and callable(family.write_random) and callable(family.reference)
    with pytest.raises(ValueError, match="unknown checkpoint format 'pickle'.*known: transformers_siglip"):
        family_of(DetectorSpec(**{**SEVENTH.__dict__, "format": "pickle"}))


# ---------------------------------------------------------------------------------------------------
# layering and names


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("folder, forbidden", [
    ("genguard", ("genguard.export", "genguard.benchmarks")),
    ("export", ("genguard.benchmarks",)),
])
def test_layering(folder, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imports_of(p) if m.startswith(forbidden))
                 for p in python_files(folder)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_scan_sees_lazy_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from genguard.export.repository import render\n")
    assert "genguard.export.repository" in imports_of(sample)


def test_no_code_outside_the_specs_names_a_detector():
    """Behaviour chosen by detector name (precision tables, reference configs) belongs in the spec."""
    names = [n for n in specs.DETECTORS]
    hits = []
    for path in python_files("genguard", "export", "client"):
        if path.name == "specs.py":
            continue
        text = path.read_text()
        hits += [f"{path.relative_to(ROOT)}: {n}" for n in names if f'"{n}"' in text or f"'{n}'" in text]
    assert hits == []
