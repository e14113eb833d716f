"""`explain_<detector>` (python backend, cpu target): the detector's logits plus a heatmap for every label.

method "gradcam": runs explain.onnx (the logits and `cam_<head>` in one pass; export/explain.py).
method "occlusion": runs the detector's own model.onnx on the image and on 1 + G*G occluded copies
(genguard.explanations.occlusion), skipping images that preprocess refused (IMAGE_INFO ok=false).
Both answer the same tensors: `<head>` logits [L or 1] and `cam_<head>` [L, h, w]. Refuses to load an ONNX
file whose sha256 is not the one the renderer verified.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import explanations, onnx_runtime, protocol, specs
from genguard.checksums import sha256_file
from genguard.triton_models.common import model_config, parameters


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.name = args["model_name"]
        self.method = params["method"]
        heads = json.loads(params["heads"])
        self.spec = specs.as_exported(specs.get(params["detector"]), heads)
        path = Path(args["model_repository"]) / args["model_version"] / params["onnx_file"]
        if not path.is_file() or sha256_file(path) != params["onnx_sha256"]:
            raise pb_utils.TritonModelException(
                f"{self.name}: {path} is missing or is not the file the renderer verified (sha256); "
                "render the repository again")
        occluding = self.method == explanations.OCCLUSION
        # occlusion runs batches of occluded copies: without ORT's arena their activations (GBs for EVA02-448)
        # are handed back after each batch instead of being kept by the arena
        self.session = onnx_runtime.session(path, threads=int(params.get("intra_op_threads", "0")) or None,
                                            spinning=False, arena=not occluding)
        self.outputs = [o["name"] for o in config["output"]]
        if occluding:
            self.window = int(params["window"])
            self.batch = int(params.get("occlusion_batch", "8"))

    def execute(self, requests):
        pixels = [pb_utils.get_input_tensor_by_name(r, protocol.DETECTOR_INPUT).as_numpy() for r in requests]
        infos = [pb_utils.get_input_tensor_by_name(r, protocol.IMAGE_INFO).as_numpy().reshape(-1) for r in requests]
        try:
            results = self._run(np.concatenate(pixels), [json.loads(i).get("ok", False) for raw in infos for i in raw])
        except Exception as exc:
            error = pb_utils.TritonError(f"{self.name}: explanation failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for array in pixels:
            end = start + len(array)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, results[name][start:end]) for name in self.outputs]))
            start = end
        return responses

    def _run(self, pixels: np.ndarray, ok: list[bool]) -> dict[str, np.ndarray]:
        if self.method == explanations.GRADCAM:
            names = [o.name for o in self.session.get_outputs()]
            return dict(zip(names, self.session.run(names, {protocol.DETECTOR_INPUT: pixels})))
        head_names = [h.name for h in self.spec.heads]
        logits = dict(zip(head_names, self.session.run(head_names, {protocol.DETECTOR_INPUT: pixels})))
        out = dict(logits)
        g = self.spec.input.size[0] // self.window
        for head in self.spec.heads:
            out[f"cam_{head.name}"] = np.zeros((len(pixels), len(head.labels), g, g), dtype=np.float32)
        rows = [i for i, good in enumerate(ok) if good]
        if rows:
            for h, head in enumerate(self.spec.heads):
                def scores(x, name=head.name, labels=head.labels):
                    return explanations.head_scores(self.session.run([name], {protocol.DETECTOR_INPUT: x})[0], labels)
                out[f"cam_{head.name}"][rows] = explanations.occlusion(scores, pixels[rows], self.window,
                                                                       batch=self.batch)
        return out
