"""GenGuard `preprocess` (python backend): encoded images -> one tensor per detector input spec.

Never fails a batch for one image: a refused image gets zeros and a FAILURE in IMAGE_INFO.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import protocol, specs
from genguard.preprocess import ImageRejected, encoded_extent, preprocess_bytes
from genguard.provenance import Extractor, ProvenanceConfig
from genguard.triton_models import metrics
from genguard.triton_models.common import decode_limits, image_rows, model_config, parameters, worker_pool


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(model_config(args))
        known = specs.distinct_inputs(specs.DETECTORS.values())
        self.inputs = {name: known[name] for name in params["inputs"].split(",")}
        self.limits = decode_limits(params)
        self.pool = worker_pool(params.get("decode_threads", "0"), "decode")
        self.metrics = metrics.RefusalMetrics(pb_utils, args["model_name"])
        self.provenance = Extractor(ProvenanceConfig.from_json(params.get("provenance", "")))

    def _one(self, data: bytes):
        try:
            decoded, tensors = preprocess_bytes(data, self.inputs, self.limits)
            info = {"ok": True, "width": decoded.width, "height": decoded.height, "format": decoded.format}
            info["provenance"] = self.provenance.extract(encoded_extent(data))  # never raises
            return info, tensors
        except ImageRejected as exc:
            return {"ok": False, "reason": exc.reason, "message": str(exc)}, None
        except Exception as exc:  # a bug must fail one image loudly, not the batch
            return {"ok": False, "reason": "internal", "message": f"preprocessing failed: {exc!r}"}, None

    def execute(self, requests):
        responses = []
        for request in requests:
            results = list(self.pool.map(self._one, image_rows(pb_utils, request)))
            self.metrics.record(info for info, _ in results)
            outputs = []
            for name, spec in self.inputs.items():
                batch = np.zeros((len(results), *spec.shape), dtype=np.float32)
                for i, (_, tensors) in enumerate(results):
                    if tensors is not None:
                        batch[i] = tensors[name]
                outputs.append(pb_utils.Tensor(protocol.pixels_tensor(name), batch))
            infos = np.array([[json.dumps(info).encode()] for info, _ in results], dtype=np.object_)
            outputs.append(pb_utils.Tensor(protocol.IMAGE_INFO, infos))
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
