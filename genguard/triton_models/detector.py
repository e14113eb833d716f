"""One GenGuard detector (python backend): its exported ONNX on the configured CPU engine (genguard.engines:
ONNX Runtime FP32 by default, ORT INT8, OpenVINO FP32/BF16/INT8).

Requests gathered by the dynamic batcher run as one batch (in pieces of `run_batch` images where the spec
bounds it: DetectorSpec.cpu_run_batch). Refuses to load when the ONNX file (or an OpenVINO
IR's .xml or .bin: openvino-bf16-mixed's, prepared by make cpu-options and read as is) is missing,
unreadable, is not the file whose accuracy check the renderer verified (sha256), disagrees with the config
(detector, heads, weights provenance), or needs CPU instructions this machine lacks (BF16, VNNI).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from genguard import engines, protocol
from genguard.triton_models import metrics
from genguard.checksums import sha256_file
from genguard.triton_models.common import model_config, parameters, warn_loudly


class TritonPythonModel:
    def initialize(self, args):
        config = model_config(args)
        params = parameters(config)
        self.name = args["model_name"]
        path = Path(args["model_repository"]) / args["model_version"] / params["onnx_file"]
        for file in engines.option_files(path):  # an OpenVINO IR (bf16-mixed) is served as its .xml + .bin
            if not file.is_file():
                raise pb_utils.TritonModelException(
                    f"{self.name}: {file} is missing; export it first (make export, or make export WEIGHTS=random; "
                    "make cpu-options for an option's own file)"
                )
        expected = params.get("onnx_sha256", "")
        if expected and engines.files_sha256(path) != expected:
            each = json.loads(params.get("files_sha256", "{}"))
            changed = [f for f in engines.option_files(path) if each.get(f.name) not in (None, sha256_file(f))]
            raise pb_utils.TritonModelException(
                f"{self.name}: {', '.join(map(str, changed or [path]))} changed since the repository was rendered: "
                "it is not the model that passed its parity check (sha256 differs); render the repository again "
                "(make serve / make repository)"
            )
        try:
            option = engines.get(params.get("cpu_option", engines.DEFAULT))
            engines.check_cpu(option)  # the renderer checked this machine; the server may run on another
        except engines.OptionError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from None
        try:
            self.session = engines.open_engine(
                option, path,
                threads=int(params.get("intra_op_threads", "0")) or None,
                optimization=params.get("optimization", "all"),
                spinning=False,  # several detectors share the cores; spinning threads would steal them
                arena=params.get("arena", "1") != "0",
            )
            raw = self.session.metadata()  # an IR keeps the ONNX file's metadata in its rt_info
        except Exception as exc:
            raise pb_utils.TritonModelException(
                f"{self.name}: {path} is not a valid ONNX model for {option.name}: {exc}") from None
        meta = {k.removeprefix("genguard."): json.loads(v) for k, v in raw.items() if k.startswith("genguard.")}
        self.outputs = [o["name"] for o in config["output"]]
        problems = []
        if meta.get("detector") != params["detector"]:
            problems.append(f"ONNX detector {meta.get('detector')!r} != config {params['detector']!r}")
        if meta.get("weights") != params["weights"]:
            problems.append(f"ONNX weights {meta.get('weights')!r} != config {params['weights']!r}")
        if sorted(self.session.output_names) != sorted(self.outputs):
            problems.append(f"ONNX outputs {self.session.output_names} != config {self.outputs}")
        if problems:
            raise pb_utils.TritonModelException(f"{self.name}: {path}: " + "; ".join(problems))
        if params["weights"] == "random":
            message = (f"RANDOM WEIGHTS: detector {self.name} serves random weights (checkpoint "
                       f"{meta.get('checkpoint')}); its scores are meaningless")
            warn_loudly(pb_utils, message)
        self.metrics = metrics.DetectorMetrics(pb_utils, self.name)
        self.run_batch = int(params.get("run_batch", "0"))  # at most this many images per engine run (0: all)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, protocol.DETECTOR_INPUT).as_numpy() for r in requests]
        try:
            results = self._run(np.concatenate(arrays))
        except Exception as exc:  # MemoryError and ONNX Runtime's std::bad_alloc too: the batch fails, the stub lives
            self.metrics.failed(exc, sum(len(a) for a in arrays))
            pb_utils.Logger.log_error(f"{self.name}: a batch of {sum(len(a) for a in arrays)} failed: {exc}")
            error = pb_utils.TritonError(f"{self.name}: inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            end = start + len(array)
            tensors = [pb_utils.Tensor(name, out[start:end]) for name, out in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The engine's outputs for `pixels`, run run_batch images at a time: the working memory of a batch of
        max_batch_size never exists at once (the dynamic batcher still gathers full batches)."""
        step = self.run_batch or len(pixels)
        if step >= len(pixels):
            return self.session.run(self.outputs, {protocol.DETECTOR_INPUT: pixels})
        parts = [self.session.run(self.outputs, {protocol.DETECTOR_INPUT: pixels[i:i + step]})
                 for i in range(0, len(pixels), step)]
        return [np.concatenate(outs) for outs in zip(*parts)]

    def finalize(self):
        self.metrics.close()
