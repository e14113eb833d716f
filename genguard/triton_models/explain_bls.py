"""`explain_<detector>` on the GPU targets for the occlusion method (python backend, BLS).

The occluded copies of each image go through the served detector model itself (TensorRT or ONNX Runtime on
the GPU) as BLS requests of at most `occlusion_batch` images; the map arithmetic is the cpu target's
(genguard.explanations.occlusion). Answers the detector's logits and `cam_<head>` [L, G, G] per image;
images validate refused (IMAGE_INFO ok=false) are not occluded.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import explanations, protocol, specs
from genguard.triton_models.common import model_config, parameters


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.name = args["model_name"]
        self.detector = params["detector"]
        self.spec = specs.as_exported(specs.get(self.detector), json.loads(params["heads"]))
        self.window = int(params["window"])
        self.batch = int(params.get("occlusion_batch", "16"))
        self.outputs = [o["name"] for o in config["output"]]

    def _logits(self, pixels: np.ndarray, names: list[str]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(pixels), self.batch):
            request = pb_utils.InferenceRequest(
                model_name=self.detector, requested_output_names=names,
                inputs=[pb_utils.Tensor(protocol.DETECTOR_INPUT, np.ascontiguousarray(pixels[start:start + self.batch]))])
            response = request.exec()
            if response.has_error():
                raise RuntimeError(response.error().message())
            out.append([pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in names])
        return [np.concatenate([chunk[i] for chunk in out]) for i in range(len(names))]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                pixels = pb_utils.get_input_tensor_by_name(request, protocol.DETECTOR_INPUT).as_numpy()
                infos = pb_utils.get_input_tensor_by_name(request, protocol.IMAGE_INFO).as_numpy().reshape(-1)
                ok = [json.loads(raw).get("ok", False) for raw in infos]
                heads = [h.name for h in self.spec.heads]
                results = dict(zip(heads, self._logits(pixels, heads)))
                g = self.spec.input.size[0] // self.window
                rows = [i for i, good in enumerate(ok) if good]
                for head in self.spec.heads:
                    cams = np.zeros((len(pixels), len(head.labels), g, g), dtype=np.float32)
                    if rows:
                        def scores(x, name=head.name, labels=head.labels):
                            return explanations.head_scores(self._logits(x, [name])[0], labels)
                        cams[rows] = explanations.occlusion(scores, pixels[rows], self.window, batch=self.batch)
                    results[explanations.cam_output(head.name)] = cams
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, results[n]) for n in self.outputs]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.name}: explanation failed: {exc}")))
        return responses
