"""The `genguard_video` model every target serves: one clip per request, answered through the `genguard`
ensemble (genguard/triton_models/video.py). Its limits, sampling defaults and aggregation are rendered from
the dataclasses that define them (genguard.video, genguard.clips), so docs, settings and server agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from genguard import protocol
from genguard.clips import Aggregation
from genguard.provenance import ProvenanceConfig
from genguard.video import Sampling, VideoLimits

from .common import _params, _tensor, _write_model


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """instances: clips decoded at once (each holds one batch of frames); frame_batch: frames per request to the
    ensemble (at most its max_batch_size)."""

    limits: VideoLimits = VideoLimits()
    sampling: Sampling = Sampling()
    aggregation: Aggregation = Aggregation()
    instances: int = 1


def video_config(max_batch: int, options: VideoOptions = VideoOptions(),
                 provenance: ProvenanceConfig = ProvenanceConfig()) -> mc.ModelConfig:
    config = mc.ModelConfig(name=protocol.VIDEO_MODEL, backend="python", max_batch_size=0)
    _tensor(config.input, protocol.VIDEO, mc.TYPE_UINT8, [-1])
    _tensor(config.input, protocol.VIDEO_OPTIONS, mc.TYPE_STRING, [1]).optional = True
    _tensor(config.output, protocol.RESULT, mc.TYPE_STRING, [1])
    _tensor(config.output, protocol.STATUS, mc.TYPE_INT32, [1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.instances)
    _params(config, ensemble=protocol.ENSEMBLE, frame_batch=str(max_batch),
            limits=dataclasses.asdict(options.limits), sampling=dataclasses.asdict(options.sampling),
            aggregation=dataclasses.asdict(options.aggregation), provenance=provenance.to_json())
    return config


def render_video(out: Path, max_batch: int, options: VideoOptions = VideoOptions(),
                 provenance: ProvenanceConfig = ProvenanceConfig()) -> None:
    _write_model(out, video_config(max_batch, options, provenance), model_py="video")
