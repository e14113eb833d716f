"""GenGuard `validate` (python backend), first step of the GPU targets: what DALI may decode.

One undecodable image makes a DALI pipeline throw for its whole batch, so every image is screened here
first with the CPU target's header checks (genguard.dali.screen). A refused image becomes a tiny
valid placeholder and a FAILURE in IMAGE_INFO (which postprocess answers), so its neighbours are answered.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import protocol
from genguard.dali import DALI_INPUT, pack, screen
from genguard.preprocess import encoded_extent
from genguard.provenance import Extractor, ProvenanceConfig
from genguard.triton_models import metrics
from genguard.triton_models.common import decode_limits, image_rows, model_config, parameters, worker_pool


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(model_config(args))
        self.limits = decode_limits(params)
        self.verify = params.get("verify", "header")
        self.pool = worker_pool(params.get("threads", "0"), "screen")
        self.metrics = metrics.RefusalMetrics(pb_utils, args["model_name"])
        self.provenance = Extractor(ProvenanceConfig.from_json(params.get("provenance", "")))

    def _one(self, data: bytes):
        try:
            screened = screen(data, self.limits, self.verify)
            if screened.info.get("ok"):  # the same metadata reading as the cpu target's preprocess
                screened.info["provenance"] = self.provenance.extract(encoded_extent(data))
            return screened
        except Exception as exc:  # a bug must fail one image loudly, not the batch
            from genguard.dali import Screened, placeholder

            return Screened({"ok": False, "reason": "internal", "message": f"validation failed: {exc!r}"},
                            placeholder())

    def execute(self, requests):
        responses = []
        for request in requests:
            screened = list(self.pool.map(self._one, image_rows(pb_utils, request)))
            self.metrics.record(s.info for s in screened)
            infos = np.array([[json.dumps(s.info).encode()] for s in screened], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(DALI_INPUT, pack([s.payload for s in screened])),
                pb_utils.Tensor(protocol.IMAGE_INFO, infos),
            ]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
