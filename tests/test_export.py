"""ONNX export: the files tiny_build wrote, re-checked independently, and the CLI's error paths.

- parity.json says the export passed, with the figures the design requires;
- the ONNX graph has the agreed interface (opset, `pixels` with a symbolic batch, one output per head,
  genguard.* metadata) and gives the same answer per image whatever the batch size;
- one end-to-end figure is recomputed here: the card's reference pipeline (PyTorch) vs GenGuard's
  preprocessing + ONNX Runtime, on real photos;
- an export outside tolerance fails loudly; the CLI explains missing checkpoints and unknown names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import checkpoint_path
from genguard import onnx_runtime, specs
from genguard.export import samples
from genguard.export.__main__ import main
from genguard.export.onnx_export import export_detector
from genguard.protocol import DETECTOR_INPUT
from genguard.preprocess import preprocess_bytes
from genguard.scores import head_probs

NAMES = list(specs.DETECTORS)
BATCH_ATOL = 1e-5


def onnx_path(build: Path, name: str) -> Path:
    return build / "onnx" / name / "model.onnx"


def pixels(spec, images: list[bytes]) -> np.ndarray:
    return np.stack([preprocess_bytes(data, {"x": spec.input})[1]["x"] for data in images])


def probs(spec, outputs) -> list[np.ndarray]:
    return [head_probs(head, out) for head, out in zip(spec.heads, outputs)]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stdout+stderr) as a shell user would see them; an uncaught exception exits 1
    with its message on stderr, as the interpreter would do."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        message = "" if isinstance(exc.code, int) or exc.code is None else str(exc.code)
    except Exception as exc:  # noqa: BLE001 - what `python -m` would print as a traceback
        code, message = 1, f"{type(exc).__name__}: {exc}"
    else:
        message = ""
    out = capsys.readouterr()
    return code, out.out + out.err + message


# ---------------------------------------------------------------------------------------------------
# parity.json


@pytest.mark.parametrize("name", NAMES)
def test_parity_json(tiny_build, name):
    spec = specs.get(name)
    parity = json.loads((tiny_build / "onnx" / name / "parity.json").read_text())
    assert parity["detector"] == name and parity["weights"] == "random"
    assert parity["passed"] is True
    tolerance = parity["tolerance"]["max_abs_prob"]
    assert tolerance == spec.prob_atol <= 1e-4
    for section in ("onnx_vs_pytorch", "reference"):
        assert 0 <= parity[section]["max_abs_prob"] <= tolerance, section
        assert parity[section]["top1_agreement"] == 1.0, section
    assert parity["reference"]["preprocess_max_abs"] == 0
    assert parity["reference"]["images"] >= 20
    assert parity["onnx_sha256"] == hashlib.sha256(onnx_path(tiny_build, name).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# the ONNX interface


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", NAMES)
def test_onnx_interface(tiny_build, name):
    spec = specs.get(name)
    model = onnx.load(str(onnx_path(tiny_build, name)), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17

    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    assert [i.name for i in inputs] == [DETECTOR_INPUT] == ["pixels"]
    batch, *rest = _dims(inputs[0])
    assert isinstance(batch, str) and batch, "batch axis must be symbolic"
    assert tuple(rest) == spec.input.shape

    assert [o.name for o in model.graph.output] == [h.name for h in spec.heads]
    for output, head in zip(model.graph.output, spec.heads):
        out_batch, width = _dims(output)
        assert isinstance(out_batch, str) and out_batch
        assert width == head.num_logits

    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(onnx_path(tiny_build, name)))
    assert meta["weights"] == "random"
    assert meta["detector"] == name
    assert meta["input"] == spec.input.name
    assert meta["heads"] == {h.name: list(h.labels) for h in spec.heads}


@pytest.fixture(scope="module")
def sessions(tiny_build):
    return {name: onnx_runtime.session(onnx_path(tiny_build, name)) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_does_not_change_answers(sessions, name):
    spec = specs.get(name)
    session = sessions[name]
    x = pixels(spec, list(samples.photos().values())[:7])
    whole = probs(spec, session.run(None, {DETECTOR_INPUT: x}))
    assert [p.shape for p in whole] == [(7, len(h.labels)) for h in spec.heads]
    for size in (1, 3):
        for start in range(0, 7, size):
            part = probs(spec, session.run(None, {DETECTOR_INPUT: x[start : start + size]}))
            for head, a, b in zip(spec.heads, part, whole):
                assert np.abs(a - b[start : start + size]).max() <= BATCH_ATOL, (head.name, size, start)


# ---------------------------------------------------------------------------------------------------
# end to end, recomputed here


@pytest.mark.parametrize("name", NAMES)
def test_reference_pipeline_vs_genguard(tiny_build, sessions, name):
    from genguard.export.checkpoints import load
    from genguard.export.reference import ReferencePipeline, open_rgb

    spec = specs.get(name)
    source = checkpoint_path(tiny_build, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        module = load(spec, source)
    photos = list(samples.photos().values())
    assert len(photos) >= 10

    reference = ReferencePipeline(spec, module, str(source)).probs([open_rgb(data) for data in photos])
    ours = probs(spec, sessions[name].run(None, {DETECTOR_INPUT: pixels(spec, photos)}))

    for head, ref, got in zip(spec.heads, reference, ours):
        assert ref.shape == got.shape == (len(photos), len(head.labels))
        np.testing.assert_allclose(ref.sum(1), 1.0, atol=1e-6)
        assert np.abs(ref - got).max() <= spec.prob_atol, head.name
        assert (ref.argmax(1) == got.argmax(1)).all(), head.name
        assert np.ptp(ref, axis=0).max() > 0, f"{head.name}: every photo got the same answer"


# ---------------------------------------------------------------------------------------------------
# failures


def test_export_outside_tolerance_fails_and_leaves_the_previous_good_export_untouched(tiny_build, tmp_path):
    name = "imagetrust_binary"
    shutil.copytree(tiny_build / "onnx" / name, tmp_path / name)
    before = {f: (tmp_path / name / f).read_bytes() for f in ("model.onnx", "parity.json")}
    spec = dataclasses.replace(specs.get(name), prob_atol=1e-12)
    images = dict(list(samples.photos().items())[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(RuntimeError, match="outside tolerance.*the previous export is untouched"):
            export_detector(spec, checkpoint_path(tiny_build, name), tmp_path, images=images)
    assert {f: (tmp_path / name / f).read_bytes() for f in before} == before
    failed = json.loads((tmp_path / name / "parity.failed.json").read_text())
    assert failed["passed"] is False and failed["tolerance"]["max_abs_prob"] == 1e-12
    assert max(failed["onnx_vs_pytorch"]["max_abs_prob"], failed["reference"]["max_abs_prob"]) > 1e-12
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["model.onnx", "parity.failed.json", "parity.json"]


def test_first_export_that_fails_installs_nothing(tiny_build, tmp_path):
    spec = dataclasses.replace(specs.get("imagetrust_binary"), prob_atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(RuntimeError, match="nothing was installed"):
            export_detector(spec, checkpoint_path(tiny_build, spec.name), tmp_path,
                            images=dict(list(samples.photos().items())[:3]))
    assert sorted(p.name for p in (tmp_path / spec.name).iterdir()) == ["parity.failed.json"]


def test_parity_json_vouches_for_the_file_it_names(tiny_build):
    from genguard.checksums import sha256_file

    for name in specs.DETECTORS:
        parity = json.loads((tiny_build / "onnx" / name / "parity.json").read_text())
        assert parity["onnx_sha256"] == sha256_file(tiny_build / "onnx" / name / "model.onnx")


def test_cli_real_weights_without_checkpoint(tmp_path, capsys):
    code, output = run_cli(["--weights", "real", "--detectors", "imagetrust_binary", "--build", str(tmp_path)],
                           capsys)
    assert code != 0
    assert "imagetrust_binary" in output
    assert "WEIGHTS=random" in output and "checkpoint" in output.lower()
    assert not (tmp_path / "onnx" / "imagetrust_binary" / "model.onnx").exists()


@pytest.mark.parametrize("flag", ["--detectors", "--checkpoint"])
def test_cli_unknown_detector_lists_known_names(tmp_path, capsys, flag):
    value = "no_such_detector" if flag == "--detectors" else "no_such_detector=/tmp/x"
    code, output = run_cli(["--weights", "real", flag, value, "--build", str(tmp_path)], capsys)
    assert code != 0
    assert "no_such_detector" in output
    for name in specs.DETECTORS:
        assert name in output


def test_cli_labels_reorder_exported_metadata(tmp_path, capsys, monkeypatch):
    # validation on a few photos is enough here: this test is about the labels
    few = dict(list(samples.photos().items())[:4])
    monkeypatch.setattr(samples, "all_images", lambda: few)
    spec = specs.get("sumsub_sd")
    head = spec.heads[0]
    reordered = list(reversed(head.labels))
    argv = ["--weights", "random", "--tiny", "--detectors", spec.name, "--build", str(tmp_path),
            "--labels", f"{spec.name}={head.name}:{','.join(reordered)}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, output = run_cli(argv, capsys)
    assert code == 0, output
    meta = onnx_runtime.decode_metadata(onnx_runtime.metadata(onnx_path(tmp_path, spec.name)))
    assert meta["heads"] == {head.name: reordered} != {head.name: list(head.labels)}
    assert "RANDOM WEIGHTS" in output
