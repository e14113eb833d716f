"""The cpu model repository rendered from the specs and the exports (no server needed)."""

from __future__ import annotations

import json
import shutil

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from genguard import protocol, specs
from genguard.export.repository import RepositoryError, find_exports, main, render
from genguard.fusion import FusionConfig


def read_config(folder) -> mc.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def repository(tiny_build, tmp_path_factory):
    return render("cpu", tiny_build, tmp_path_factory.mktemp("repo") / "cpu",
                  fusion=FusionConfig(weights={"sumsub_sd": 0.5}))


def test_every_model_is_there_with_a_parsable_config(repository):
    names = {p.name for p in repository.iterdir() if p.is_dir()}
    assert names == {"preprocess", "postprocess", "genguard", "genguard_video", *specs.DETECTORS}
    for name in names:
        config = read_config(repository / name)
        assert config.name == name
        assert (repository / name / "1").is_dir()


def test_ensemble_wires_each_detector_to_its_input_and_heads(repository):
    ensemble = read_config(repository / "genguard")
    assert ensemble.platform == "ensemble"
    assert [(i.name, i.data_type, list(i.dims)) for i in ensemble.input] == [("IMAGE", mc.TYPE_UINT8, [-1])]
    steps = {s.model_name: s for s in ensemble.ensemble_scheduling.step}
    assert set(steps) == {"preprocess", "postprocess", *specs.DETECTORS}
    produced = set(steps["preprocess"].output_map.values())
    for name, spec in specs.DETECTORS.items():
        step = steps[name]
        assert step.input_map[protocol.DETECTOR_INPUT] == protocol.pixels_tensor(spec.input.name)
        assert step.input_map[protocol.DETECTOR_INPUT] in produced
        for head in spec.heads:
            assert step.output_map[head.name] == protocol.head_tensor(name, head.name)
            assert protocol.head_tensor(name, head.name) in steps["postprocess"].input_map
    # one preprocess output per distinct input spec: the two ImageTrust detectors share theirs
    assert len([t for t in produced if t.startswith("PIXELS_")]) == len(specs.distinct_inputs(specs.DETECTORS.values()))
    assert sorted(o.name for o in ensemble.output) == sorted(steps["postprocess"].output_map)


def test_max_batch_size_is_consistent(repository):
    sizes = {p.name: read_config(p).max_batch_size for p in repository.iterdir() if p.is_dir()}
    assert sizes.pop("genguard_video") == 0  # one clip per request, unbatched
    assert len(set(sizes.values())) == 1, sizes
    assert sizes["genguard"] > 1


def test_video_model_sends_frames_in_ensemble_sized_batches_with_rendered_defaults(repository):
    import json

    config = read_config(repository / "genguard_video")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.backend == "python" and params["ensemble"] == "genguard"
    assert int(params["frame_batch"]) == read_config(repository / "genguard").max_batch_size
    assert json.loads(params["sampling"]) == {"fps": 1.0, "max_frames": 120, "mode": "rate", "max_duration_s": None}
    assert [(i.name, i.optional) for i in config.input] == [("VIDEO", False), ("OPTIONS", True)]
    assert (repository / "genguard_video" / "1" / "model.py").read_text().startswith('"""`genguard_video`')


def test_detector_configs_carry_provenance_labels_and_batching(repository):
    for name, spec in specs.DETECTORS.items():
        config = read_config(repository / name)
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["weights"] == "random" and params["detector"] == name
        assert config.backend == "python" and config.HasField("dynamic_batching")
        assert [(i.name, list(i.dims)) for i in config.input] == [("pixels", list(spec.input.shape))]
        for head, output in zip(spec.heads, config.output):
            assert output.name == head.name and list(output.dims) == [head.num_logits]
            if head.activation == "softmax":
                labels = (repository / name / output.label_filename).read_text().split("\n")[:-1]
                assert labels == list(head.labels)
        assert (repository / name / "1" / "model.onnx").resolve().is_file()
        assert (repository / name / "1" / "model.py").is_file()


def test_postprocess_gets_fusion_and_source_labels(repository):
    config = read_config(repository / "postprocess")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert FusionConfig.from_json(params["fusion"]).weight("sumsub_sd") == 0.5
    assert json.loads(params["weights"]) == {name: "random" for name in specs.DETECTORS}
    sources = (repository / "postprocess" / "sources.txt").read_text().split()
    assert sources[0] == "none" and "flux" in sources and "stable_diffusion" in sources
    out = {o.name: o for o in config.output}
    assert list(out[protocol.POSSIBLE_SOURCES].dims) == [len(sources)]


def test_optional_detector_is_left_out_when_not_exported(tiny_build, tmp_path):
    build = tmp_path / "build"
    for name in specs.DETECTORS:
        if name != "hive_effb4":
            shutil.copytree(tiny_build / "onnx" / name, build / "onnx" / name, symlinks=True)
    names = [d.spec.name for d in find_exports(build)]
    assert "hive_effb4" not in names and len(names) == len(specs.DETECTORS) - 1


def test_missing_or_failed_export_is_refused_by_name(tiny_build, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_build / "onnx", build / "onnx")
    shutil.rmtree(build / "onnx" / "sumsub_sd")
    parity = build / "onnx" / "freepik_nsfw" / "parity.json"
    parity.write_text(json.dumps({**json.loads(parity.read_text()), "passed": False}))
    with pytest.raises(RepositoryError) as error:
        render("cpu", build, tmp_path / "out")
    assert "sumsub_sd: no export" in str(error.value) and "make export" in str(error.value)
    assert "freepik_nsfw: export failed its parity check" in str(error.value)


def test_copy_mode_and_cli(tiny_build, tmp_path, capsys):
    out = render("cpu", tiny_build, tmp_path / "copied", copy=True, detectors=["imagetrust_binary"])
    onnx = out / "imagetrust_binary" / "1" / "model.onnx"
    assert onnx.is_file() and not onnx.is_symlink()
    assert main(["--build", str(tiny_build), "--out", str(tmp_path / "cli")]) == 0
    assert str(tmp_path / "cli") in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown target"):
        render("tpu", tiny_build, tmp_path / "x")


# --- a served model is the model that passed its check; rendering destroys nothing it didn't make ------

def copy_build(tiny_build, tmp_path, names=("imagetrust_binary", "opensdi_flux")):
    build = tmp_path / "build"
    for name in names:
        shutil.copytree(tiny_build / "onnx" / name, build / "onnx" / name)
    return build, list(names)


def test_a_model_changed_after_its_parity_check_is_refused(tiny_build, tmp_path):
    build, names = copy_build(tiny_build, tmp_path)
    onnx = build / "onnx" / "opensdi_flux" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # same model to ONNX's eyes, another file
    with pytest.raises(RepositoryError, match="opensdi_flux: .* is not the file its parity check vouched for"):
        render("cpu", build, tmp_path / "out", detectors=names)


def test_int8_needs_a_passing_check_for_that_very_file(tiny_build, tmp_path):
    from genguard.checksums import sha256_file
    from genguard.export.repository import CpuOptions

    build, names = copy_build(tiny_build, tmp_path, ("imagetrust_binary",))
    folder = build / "onnx" / "imagetrust_binary"
    int8 = folder / "model.int8.onnx"
    shutil.copyfile(folder / "model.onnx", int8)  # a stand-in file: what matters is the record that vouches for it
    with pytest.raises(RepositoryError, match="no passing INT8 check"):
        render("cpu", build, tmp_path / "out", detectors=names, cpu=CpuOptions(int8=True))
    parity_path = folder / "parity.json"
    parity = json.loads(parity_path.read_text())
    record = {"passed": True, "fp32_sha256": parity["onnx_sha256"], "onnx_sha256": "0" * 64}
    parity_path.write_text(json.dumps({**parity, "int8": record}))
    with pytest.raises(RepositoryError, match="not the file its INT8 check vouched for"):
        render("cpu", build, tmp_path / "out", detectors=names, cpu=CpuOptions(int8=True))
    parity_path.write_text(json.dumps({**parity, "int8": {**record, "fp32_sha256": "1" * 64}}))
    with pytest.raises(RepositoryError, match="quantised from another FP32 export"):
        render("cpu", build, tmp_path / "out", detectors=names, cpu=CpuOptions(int8=True))
    parity_path.write_text(json.dumps({**parity, "int8": {**record, "onnx_sha256": sha256_file(int8)}}))
    out = render("cpu", build, tmp_path / "out", detectors=names, cpu=CpuOptions(int8=True))
    params = read_config(out / "imagetrust_binary").parameters
    assert params["onnx_file"].string_value == "model.int8.onnx"
    assert params["onnx_sha256"].string_value == sha256_file(int8)


def test_render_never_replaces_a_folder_it_did_not_make(tiny_build, tmp_path):
    build, names = copy_build(tiny_build, tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(RepositoryError, match="did not render; refusing"):
        render("cpu", build, precious, detectors=names)
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    assert main(["--build", str(build), "--out", str(precious)]) == 1
    assert (precious / "thesis.tex").read_text() == "years of work"
    # an empty folder, or one render() made, is fine: rendered again in place
    empty = tmp_path / "empty"
    empty.mkdir()
    assert render("cpu", build, empty, detectors=names) == empty and (empty / "genguard").is_dir()
    render("cpu", build, empty, detectors=names[:1])
    assert not (empty / "opensdi_flux").exists()  # the previous rendering is gone, replaced whole
    assert not list(tmp_path.glob(".empty.*"))  # no staging or previous folder left behind


def test_a_failed_render_leaves_the_previous_repository_in_place(tiny_build, tmp_path):
    build, names = copy_build(tiny_build, tmp_path)
    out = render("cpu", build, tmp_path / "out", detectors=names)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(RepositoryError, match="not served: sumsub_sd"):
        render("cpu", build, out, detectors=names, fusion=FusionConfig(weights={"sumsub_sd": 2.0}))
    with pytest.raises(RepositoryError, match="all 0"):
        render("cpu", build, out, detectors=names,
               fusion=FusionConfig(weights={"opensdi_flux": 0.0, "imagetrust_binary": 0.0}))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
