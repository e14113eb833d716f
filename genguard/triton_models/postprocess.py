"""GenGuard `postprocess` (python backend): head logits + IMAGE_INFO -> per-image JSON and tensors."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import protocol, specs
from genguard.fusion import FusionConfig, Fuser
from genguard.triton_models import metrics
from genguard.triton_models.common import model_config, parameters, warn_loudly


def detector_specs(heads_by_detector: dict[str, dict[str, list[str]]]) -> list[specs.DetectorSpec]:
    """Specs as exported: label order comes from the ONNX metadata the renderer copied into the config."""
    return [specs.as_exported(specs.get(name), heads) for name, heads in heads_by_detector.items()]


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.detectors = detector_specs(json.loads(params["detectors"]))
        self.fuser = Fuser(self.detectors, FusionConfig.from_json(params.get("fusion", "")),
                           json.loads(params["weights"]), json.loads(params.get("revisions", "{}")),
                           json.loads(params.get("engines", "{}")))
        self.output_names = {o["name"] for o in config["output"]}
        self.metrics = metrics.AnswerMetrics(pb_utils, json.loads(params["weights"]), self.fuser.sources,
                                             self.fuser.nsfw)
        for warning in self.fuser.warnings:
            warn_loudly(pb_utils, warning)

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        return pb_utils.InferenceResponse(output_tensors=self._tensors(self._documents(request)))

    def _documents(self, request) -> list[dict]:
        """One answer document per image of the request (explain_postprocess adds its maps to these)."""
        infos = pb_utils.get_input_tensor_by_name(request, protocol.IMAGE_INFO).as_numpy().reshape(-1)
        logits = {
            (spec.name, head.name): pb_utils.get_input_tensor_by_name(
                request, protocol.head_tensor(spec.name, head.name)).as_numpy()
            for spec in self.detectors for head in spec.heads
        }
        docs = []
        for i, raw in enumerate(infos):
            info = json.loads(raw)
            try:
                docs.append(self.fuser.answer(i, info, {k: v[i] for k, v in logits.items()} if info["ok"] else None))
            except Exception as exc:  # one image's failure stays its own
                docs.append(self.fuser.answer(i, {"ok": False, "reason": "internal",
                                                  "message": f"postprocessing failed: {exc!r}"}, None))
        self.metrics.record(docs, [json.loads(raw).get("ok") for raw in infos])
        return docs

    def _tensors(self, docs):
        n, nan = len(docs), np.float32("nan")
        ok = [d["status"] == protocol.SUCCESS for d in docs]
        result = np.array([[json.dumps(d).encode()] for d in docs], dtype=np.object_)
        is_ai = np.array([[d["is_ai_generated"] if k else nan] for d, k in zip(docs, ok)], dtype=np.float32)
        sources = np.full((n, len(self.fuser.sources)), nan, dtype=np.float32)
        for i, d in enumerate(docs):
            if ok[i]:
                sources[i] = [d["possible_sources"][s] for s in self.fuser.sources]
        status = np.array([[0 if k else 1] for k in ok], dtype=np.int32)
        tensors = [pb_utils.Tensor(protocol.RESULT, result), pb_utils.Tensor(protocol.IS_AI_GENERATED, is_ai),
                   pb_utils.Tensor(protocol.POSSIBLE_SOURCES, sources), pb_utils.Tensor(protocol.STATUS, status)]
        if protocol.NSFW_SCORES in self.output_names:
            nsfw = np.full((n, len(self.fuser.nsfw)), nan, dtype=np.float32)
            for i, d in enumerate(docs):
                if ok[i]:
                    nsfw[i] = [d["nsfw"]["scores"][l] for l in self.fuser.nsfw]
            tensors.append(pb_utils.Tensor(protocol.NSFW_SCORES, nsfw))
        return tensors

    def finalize(self):
        self.metrics.close()
