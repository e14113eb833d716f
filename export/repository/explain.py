"""The `genguard_explain` ensemble: the same request and answer as `genguard`, plus maps.

  explain_<detector>/  cpu: python backend: Grad-CAM from explain.onnx (CNNs with a passing explain.json), or
                       occlusion through the detector's own model.onnx (transformers). GPU targets: explain.onnx
                       served like the detector (ONNX Runtime + TensorRT EP, or a TensorRT plan), and occlusion
                       as BLS requests to the served detector (explain_bls.py)
  postprocess_explain/ python backend: postprocess's answer + `explanations`
  genguard_explain/    [validate ->] preprocess -> explain_<detector> (or the plain detector when it has no
                       explanation) -> postprocess_explain

`genguard` and its models are untouched: its cost does not change.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from genguard import explanations, protocol, specs

from .common import (GPU_TARGETS, ExportedDetector, _params, _tensor, _write_model, ensemble_entry, last_step,
                     postprocess_config)


def explain_plan(det: ExportedDetector) -> dict:
    """How `det` is explained: {"method", "onnx", "sha256", "grid", ...} or {"unavailable": why}."""
    from genguard.explanations import load_record
    from genguard.export.families import is_cnn

    spec = det.spec
    folder = det.onnx.parent
    if is_cnn(spec):
        record = load_record(folder)
        if record is None:
            return {"unavailable": "no explain.onnx with a passing explain.json "
                                   "(python -m genguard.export.explain --build BUILD)"}
        return {"method": explanations.GRADCAM, "onnx": folder / "explain.onnx", "sha256": record["onnx_sha256"],
                "grid": record["grid"], "target_layer": record["target_layer"]}
    if spec.architecture in explanations.OCCLUSION_GRIDS:
        window = explanations.occlusion_window(spec)
        g = spec.input.size[0] // window
        return {"method": explanations.OCCLUSION, "onnx": det.onnx, "sha256": det.parity["onnx_sha256"],
                "grid": [g, g], "window": window, "forward_passes": 1 + g * g}
    return {"unavailable": f"no explanation method for {spec.architecture}"}


def explain_model_config(det: ExportedDetector, plan: dict, max_batch: int,
                         intra_op_threads: int = 0) -> mc.ModelConfig:
    spec = det.spec
    config = mc.ModelConfig(name=explanations.explain_model(spec.name), backend="python", max_batch_size=max_batch)
    _tensor(config.input, protocol.DETECTOR_INPUT, mc.TYPE_FP32, spec.input.shape)
    _tensor(config.input, protocol.IMAGE_INFO, mc.TYPE_STRING, [1])
    for head in spec.heads:
        _tensor(config.output, head.name, mc.TYPE_FP32, [head.num_logits])
    for head in spec.heads:
        _tensor(config.output, explanations.cam_output(head.name), mc.TYPE_FP32, [len(head.labels), *plan["grid"]])
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    _params(config, detector=spec.name, method=plan["method"], onnx_file=plan["onnx"].name,
            onnx_sha256=plan["sha256"], heads={h.name: list(h.labels) for h in spec.heads},
            intra_op_threads=str(intra_op_threads), window=str(plan.get("window", 0)))
    return config


def labels_input(config: mc.ModelConfig) -> None:
    """The optional EXPLAIN_LABELS input (BYTES [1] per image, JSON {detector: {head: label}}): absent, every
    map is the predicted label's; the ensemble hands it to postprocess_explain, which picks those maps."""
    _tensor(config.input, explanations.LABELS_INPUT, mc.TYPE_STRING, [1]).optional = True


def explain_ensemble_config(dets: list[ExportedDetector], plans: dict[str, dict],
                            inputs: dict[str, specs.InputSpec], max_batch: int,
                            validate: bool = False) -> mc.ModelConfig:
    """validate=True (GPU targets): the entry steps are validate and the DALI preprocess, as in `genguard`."""
    config, outputs, steps = ensemble_entry(explanations.EXPLAIN_ENSEMBLE, dets, inputs, max_batch, validate)
    labels_input(config)
    post = mc.ModelEnsembling.Step(model_name=explanations.EXPLAIN_POSTPROCESS, model_version=-1)
    post.input_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
    post.input_map[explanations.LABELS_INPUT] = explanations.LABELS_INPUT
    for det in dets:
        spec = det.spec
        explained = "method" in plans[spec.name]
        step = steps.add(model_name=explanations.explain_model(spec.name) if explained else spec.name,
                         model_version=-1)
        step.input_map[protocol.DETECTOR_INPUT] = protocol.pixels_tensor(spec.input.name)
        if explained:
            step.input_map[protocol.IMAGE_INFO] = protocol.IMAGE_INFO
        for head in spec.heads:
            tensor = protocol.head_tensor(spec.name, head.name)
            step.output_map[head.name] = tensor
            post.input_map[tensor] = tensor
            if explained:
                cams = explanations.cam_tensor(spec.name, head.name)
                step.output_map[explanations.cam_output(head.name)] = cams
                post.input_map[cams] = cams
    last_step(steps, post, outputs)
    return config


def _gpu_explain_model(target: str, det: ExportedDetector, plan: dict, max_batch: int, gpu, copy: bool,
                      out: Path) -> None:
    """Grad-CAM: explain.onnx as the detector itself is served (onnxruntime_onnx with the TensorRT EP, or a
    TensorRT plan built on the serving GPU from onnx/model.onnx + engine.json). Occlusion: explain_bls.py
    sending the occluded copies to the served detector."""
    import dataclasses

    from genguard.export.tensorrt import ONNX_FOLDER, RECIPE_FILE

    from .common import _place
    from .gpu import engine_recipe, onnx_gpu_detector_config, tensorrt_detector_config

    spec, name = det.spec, explanations.explain_model(det.spec.name)
    if plan["method"] == explanations.OCCLUSION:
        config = explain_model_config(det, plan, max_batch)
        _params(config, occlusion_batch=str(max_batch))
        _write_model(out, config, model_py="explain_bls")
        return
    explained = dataclasses.replace(det, onnx=plan["onnx"])
    if target == "onnx-gpu":
        config = onnx_gpu_detector_config(explained, max_batch, gpu)
        config.default_model_filename = plan["onnx"].name
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):  # not the detector's engine
            accelerator.parameters[key] = accelerator.parameters[key].rsplit("/", 1)[0] + f"/{name}"
    else:
        config = tensorrt_detector_config(explained, max_batch, gpu)
    config.name = name
    for head in spec.heads:
        _tensor(config.output, explanations.cam_output(head.name), mc.TYPE_FP32, [len(head.labels), *plan["grid"]])
    _params(config, method=plan["method"], onnx_sha256=plan["sha256"])
    if target == "onnx-gpu":
        _write_model(out, config, onnx=plan["onnx"], copy=copy)
    else:
        _write_model(out, config)
        source = out / name / ONNX_FOLDER
        source.mkdir()
        _place(plan["onnx"], source / "model.onnx", copy)
        recipe = dataclasses.replace(engine_recipe(explained, max_batch, gpu), detector=name)
        (source / RECIPE_FILE).write_text(recipe.to_json() + "\n")


def render_explain(out: Path, dets: list[ExportedDetector], inputs: dict[str, specs.InputSpec], max_batch: int,
                   fusion, chosen: dict[str, str], copy: bool, intra_op_threads: int = 0, *, target: str = "cpu",
                   gpu=None) -> dict[str, dict]:
    """Writes the explain models, postprocess_explain and genguard_explain; returns each detector's plan."""
    plans = {d.spec.name: explain_plan(d) for d in dets}
    for det in dets:
        plan = plans[det.spec.name]
        if "method" not in plan:
            continue
        if target in GPU_TARGETS:
            _gpu_explain_model(target, det, plan, max_batch, gpu, copy, out)
        else:
            _write_model(out, explain_model_config(det, plan, max_batch, intra_op_threads), model_py="explain",
                         onnx=plan["onnx"], copy=copy)
    post = postprocess_config(dets, max_batch, fusion, chosen)
    post.name = explanations.EXPLAIN_POSTPROCESS
    labels_input(post)
    for det in dets:
        if "method" in plans[det.spec.name]:
            grid = plans[det.spec.name]["grid"]
            for head in det.spec.heads:
                _tensor(post.input, explanations.cam_tensor(det.spec.name, head.name), mc.TYPE_FP32,
                        [len(head.labels), *grid])
    public = {name: {k: v for k, v in plan.items() if k in ("method", "target_layer", "forward_passes", "unavailable")}
              for name, plan in plans.items()}
    _params(post, explain=public)
    from genguard.fusion import nsfw_labels, source_names

    files = {"sources.txt": "\n".join(source_names([d.spec for d in dets])) + "\n"}
    if nsfw_labels([d.spec for d in dets]):
        files["nsfw_levels.txt"] = "\n".join(nsfw_labels([d.spec for d in dets])) + "\n"
    _write_model(out, post, files, model_py="explain_postprocess")
    _write_model(out, explain_ensemble_config(dets, plans, inputs, max_batch, validate=target in GPU_TARGETS), files)
    return plans
