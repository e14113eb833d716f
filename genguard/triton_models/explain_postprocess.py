"""`postprocess_explain` (python backend): the `genguard_explain` ensemble's last step.

The same answer as `postprocess` (the same code: this model subclasses it) plus an `explanations` block per
successful image: per detector, one map per head for its predicted label (genguard.explanations.entry), or
for the label the optional EXPLAIN_LABELS input names for that head (JSON {detector: {head: label}} per image;
a label or head this server does not have fails the whole request, naming the valid ones).
It counts no answer metrics: `postprocess` counts the answers of `genguard`, and an explained request is
not a second verdict.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import explanations, protocol
from genguard.fusion import FusionConfig, Fuser
from genguard.triton_models import postprocess
from genguard.triton_models.common import model_config, parameters


class _NoMetrics:
    def record(self, docs, upstream_ok) -> None:
        pass

    def close(self) -> None:
        pass


class TritonPythonModel(postprocess.TritonPythonModel):
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.detectors = postprocess.detector_specs(json.loads(params["detectors"]))
        self.fuser = Fuser(self.detectors, FusionConfig.from_json(params.get("fusion", "")),
                           json.loads(params["weights"]), json.loads(params.get("revisions", "{}")),
                           json.loads(params.get("engines", "{}")))
        self.output_names = {o["name"] for o in config["output"]}
        self.metrics = _NoMetrics()
        # detector -> {"method", "target_layer"?, "forward_passes"?} or {"unavailable": why}
        self.explain = json.loads(params["explain"])

    def _answer(self, request):
        try:
            self._labels = self._requested(request)
        except ValueError as exc:
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(f"{explanations.LABELS_INPUT}: {exc}"))
        return postprocess.TritonPythonModel._answer(self, request)

    def _requested(self, request) -> list[dict] | None:
        """Per image {detector: {head: label}} from the optional input, or None (every map for its prediction)."""
        tensor = pb_utils.get_input_tensor_by_name(request, explanations.LABELS_INPUT)
        if tensor is None:
            return None
        out = []
        for raw in tensor.as_numpy().reshape(-1):
            try:
                choice = json.loads(raw or b"{}")
            except ValueError:
                raise ValueError(f"not JSON: {bytes(raw)[:80]!r}") from None
            if not isinstance(choice, dict):
                raise ValueError("expected a JSON object {detector: {head: label}} per image")
            out.append(explanations.parse_labels(choice, self.detectors))
        return out

    def _documents(self, request) -> list[dict]:
        docs = postprocess.TritonPythonModel._documents(self, request)
        infos = [json.loads(raw) for raw in
                 pb_utils.get_input_tensor_by_name(request, protocol.IMAGE_INFO).as_numpy().reshape(-1)]
        labels = getattr(self, "_labels", None)
        if labels is not None and len(labels) != len(docs):
            labels = [labels[0]] * len(docs) if len(labels) == 1 else None
        tensors = {}
        for spec in self.detectors:
            if "method" not in self.explain.get(spec.name, {}):
                continue
            for head in spec.heads:
                logits = pb_utils.get_input_tensor_by_name(request, protocol.head_tensor(spec.name, head.name))
                cams = pb_utils.get_input_tensor_by_name(request, explanations.cam_tensor(spec.name, head.name))
                tensors[(spec.name, head.name)] = (logits.as_numpy(), cams.as_numpy())
        for i, doc in enumerate(docs):
            if doc.get("status") != protocol.SUCCESS:
                continue
            try:
                doc["explanations"] = self._explanations(i, infos[i], tensors, labels[i] if labels else {})
            except Exception as exc:  # an explanation problem never costs the image its answer
                doc["explanations"] = {"error": f"explanation failed: {exc!r}"}
        return docs

    def _explanations(self, i: int, info: dict, tensors: dict, requested: dict) -> dict:
        out = {}
        for spec in self.detectors:
            cfg = self.explain.get(spec.name, {})
            if "method" not in cfg:
                out[spec.name] = {"unavailable": cfg.get("unavailable", "no explanation configured")}
                continue
            geo = explanations.geometry(spec.input, info.get("width"), info.get("height"))
            entries = []
            for head in spec.heads:
                logits, cams = tensors[(spec.name, head.name)]
                predicted = int(explanations.predicted_index(logits[i:i + 1], head.labels)[0])
                label = requested.get(spec.name, {}).get(head.name)
                target = head.labels.index(label) if label is not None else predicted
                entries.append(explanations.entry(
                    np.asarray(cams[i, target]), method=cfg["method"], head=head.name,
                    target_label=head.labels[target], target_index=target, predicted=label is None, geo=geo,
                    target_layer=cfg.get("target_layer"), cost=cfg.get("forward_passes")))
                entries[-1]["labels"] = list(head.labels)  # what a request may name instead (EXPLAIN_LABELS)
                if label is not None:
                    entries[-1]["predicted_label"] = head.labels[predicted]
            out[spec.name] = entries
        return out
