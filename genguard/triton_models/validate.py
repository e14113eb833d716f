"""GenGuard `validate` (python backend), first step of the GPU targets: what DALI may decode.

One undecodable image makes a DALI pipeline throw for its whole batch, so every image is screened here
first with the CPU target's header checks (genguard.export.dali.screen). A refused image becomes a tiny
valid placeholder and a FAILURE in IMAGE_INFO (which postprocess answers), so its neighbours are answered.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import protocol
from genguard.export.dali import DALI_INPUT, pack, screen
from genguard.cpus import available_cpus
from genguard.preprocess import DecodeLimits, encoded_extent
from genguard.provenance import Extractor, ProvenanceConfig
from genguard.triton_models import metrics


def parameters(config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(json.loads(args["model_config"]))
        limits = json.loads(params.get("limits", "{}"))
        if "formats" in limits:
            limits["formats"] = tuple(limits["formats"])
        self.limits = DecodeLimits(**limits)
        self.verify = params.get("verify", "header")
        threads = int(params.get("threads", "0")) or available_cpus()  # the container's quota, not the node
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="screen")
        self.metrics = metrics.RefusalMetrics(pb_utils, args["model_name"])
        self.provenance = Extractor(ProvenanceConfig.from_json(params.get("provenance", "")))

    def _one(self, data: bytes):
        try:
            screened = screen(data, self.limits, self.verify)
            if screened.info.get("ok"):  # the same metadata reading as the cpu target's preprocess
                screened.info["provenance"] = self.provenance.extract(encoded_extent(data))
            return screened
        except Exception as exc:  # a bug must fail one image loudly, not the batch
            from genguard.export.dali import Screened, placeholder

            return Screened({"ok": False, "reason": "internal", "message": f"validation failed: {exc!r}"},
                            placeholder())

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, protocol.INPUT).as_numpy()
            images = images.reshape(images.shape[0], -1)
            screened = list(self.pool.map(self._one, (row.tobytes() for row in images)))
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
