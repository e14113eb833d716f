"""`genguard_video` (python backend, BLS): one clip per request -> the clip's answer (RESULT, STATUS).

Decodes and samples with genguard.video in a child process bounded in memory and time
(genguard.triton_models.video_decode), sends the sampled frames to the `genguard` ensemble as lossless PNG in
batches of at most `frame_batch` (so fusion, verdicts and NSFW levels are the image pipeline's own, on every
target), and combines the frames' answers with genguard.clips. Only one batch of frames is held at a time.
A clip that can't be answered is a FAILURE with its reason; it never fails another request.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import clips, protocol, video
from genguard.provenance import ProvenanceConfig
from genguard.provenance.manifest import ManifestReader
from genguard.triton_models import video_decode
from genguard.triton_models.common import model_config, parameters

MIME = {"mp4": "video/mp4", "mov": "video/quicktime"}


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(model_config(args))
        self.limits = video.VideoLimits(**json.loads(params.get("limits", "{}")))
        self.sampling = video.Sampling(**json.loads(params.get("sampling", "{}")))
        self.aggregation = clips.Aggregation(**json.loads(params.get("aggregation", "{}")))
        self.frame_batch = int(params.get("frame_batch", "8"))
        self.ensemble = params.get("ensemble", protocol.ENSEMBLE)
        provenance = ProvenanceConfig.from_json(params.get("provenance", ""))
        self.read_provenance = provenance.enabled
        self.reader = ManifestReader(provenance.trust_anchors)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        data = pb_utils.get_input_tensor_by_name(request, protocol.VIDEO).as_numpy().tobytes()
        options = pb_utils.get_input_tensor_by_name(request, protocol.VIDEO_OPTIONS)
        try:
            doc = self._answer(data, options.as_numpy().reshape(-1)[0] if options is not None else None)
        except video.VideoRejected as exc:
            doc = failure(exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug fails this clip loudly, never the others
            pb_utils.Logger.log_error(f"{protocol.VIDEO_MODEL}: unexpected error: {exc!r}")
            doc = failure("internal", f"video answering failed: {exc!r}")
        status = 0 if doc["status"] == protocol.SUCCESS else 1
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(protocol.RESULT, np.array([json.dumps(doc).encode()], dtype=np.object_)),
            pb_utils.Tensor(protocol.STATUS, np.array([status], dtype=np.int32))])

    def _answer(self, data: bytes, options) -> dict:
        try:
            sampling = video.parse_options(options, self.sampling)
        except (ValueError, TypeError) as exc:
            raise video.VideoRejected("invalid_options", str(exc)) from None
        clip, frames = video_decode.open_bounded(data, self.limits, sampling)  # a child process, bounded
        kept, docs, batch = [], [], []
        try:
            for frame, png in frames:
                batch.append(png)
                kept.append(frame)
                if len(batch) == self.frame_batch:
                    docs += self._frames(batch)
                    batch = []
        finally:
            frames.close()  # the child ends even when the ensemble fails mid-way
        if batch:
            docs += self._frames(batch)
        clip.frames = kept
        provenance = None
        if self.read_provenance:
            c2pa = self.reader.read_mime(data, MIME[clip.container], absent_ok=True) if clip.container in MIME else None
            provenance = clips.provenance(clip, c2pa)
        return clips.answer(0, clip, docs, self.aggregation, provenance)

    def _frames(self, pngs: list[bytes]) -> list[dict]:
        batch = protocol.pack_images(pngs)
        request = pb_utils.InferenceRequest(model_name=self.ensemble, requested_output_names=[protocol.RESULT],
                                            inputs=[pb_utils.Tensor(protocol.INPUT, batch)])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"the {self.ensemble} ensemble refused the frames: {response.error().message()}")
        rows = pb_utils.get_output_tensor_by_name(response, protocol.RESULT).as_numpy().reshape(-1)
        return [json.loads(row) for row in rows]


def failure(reason: str, message: str) -> dict:
    return {"index": 0, "kind": "video", "status": protocol.FAILURE, "error": {"reason": reason, "message": message},
            "is_ai_generated": None, "verdict": None, "possible_sources": None, "sources_given_ai": None,
            "source": None, "decided_by": None}
