"""`make serve` serves what the user named: what it re-exports before serving (genguard.export.__main__)."""

from __future__ import annotations

import shutil
import warnings

import pytest

from genguard.export import samples
from genguard.export.__main__ import main as export_main
from genguard.export.__main__ import only_detectors, stale_exports


@pytest.fixture()
def build(tiny_build, tmp_path):
    build = tmp_path / "build"
    for name in ("sumsub_sd", "imagetrust_binary"):
        shutil.copytree(tiny_build / "onnx" / name, build / "onnx" / name)
    return build


def plan(build, *args):
    return stale_exports(["--build", str(build), *args])


def test_an_up_to_date_build_is_served_as_it_is(build):
    assert plan(build, "--weights", "random", "--detectors", "sumsub_sd,imagetrust_binary") == (
        ["sumsub_sd", "imagetrust_binary"], [])


def test_a_missing_detector_or_other_weights_are_exported(build):
    assert plan(build, "--weights", "random", "--detectors", "opensdi_flux,sumsub_sd")[1] == ["opensdi_flux"]
    # the build holds random weights; real ones were asked for
    assert plan(build, "--weights", "real", "--detectors", "sumsub_sd")[1] == ["sumsub_sd"]


def test_reordered_labels_are_exported_again(build):
    relabel = ["--labels", "sumsub_sd=sd:stable_diffusion,real"]
    assert plan(build, "--weights", "random", "--detectors", "sumsub_sd", *relabel)[1] == ["sumsub_sd"]
    assert plan(build, "--weights", "random", "--detectors", "sumsub_sd",
                "--labels", "sumsub_sd=sd:real,stable_diffusion")[1] == []  # the order the build holds


def test_an_altered_model_is_exported_again(build):
    onnx = build / "onnx" / "sumsub_sd" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert plan(build, "--weights", "random", "--detectors", "sumsub_sd")[1] == ["sumsub_sd"]


def test_another_checkpoint_is_exported_again(tiny_build, build, tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "all_images", lambda: dict(list(samples.photos().items())[:3]))
    first, second = tmp_path / "v1" / "best_model.pth", tmp_path / "v2" / "best_model.pth"
    for path in (first, second):  # "real" checkpoints: no random-weights marker beside them
        path.parent.mkdir()
        shutil.copyfile(tiny_build / "checkpoints" / "imagetrust_binary" / "best_model.pth", path)
    argv = ["--weights", "real", "--build", str(build), "--detectors", "imagetrust_binary"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert export_main([*argv, "--checkpoint", f"imagetrust_binary={first}"]) == 0
    assert stale_exports([*argv, "--checkpoint", f"imagetrust_binary={first}"])[1] == []
    assert stale_exports([*argv, "--checkpoint", f"imagetrust_binary={second}"])[1] == ["imagetrust_binary"]
    assert stale_exports(argv)[1] == []  # no checkpoint named: served as the build holds it


def test_only_detectors_keeps_the_flags_of_the_detectors_to_export():
    argv = ["--weights", "real", "--build", "b", "--detectors", "a,b", "--checkpoint", "a=/x",
            "--checkpoint", "b=/y", "--labels", "b=h:1,0", "--revision", "a=v1"]
    assert only_detectors(argv, ["b"]) == ["--weights", "real", "--build", "b", "--checkpoint", "b=/y",
                                          "--labels", "b=h:1,0", "--detectors", "b"]
