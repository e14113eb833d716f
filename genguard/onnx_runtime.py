"""ONNX Runtime sessions as GenGuard runs them (in-process benchmarks, export checks, the CPU server)."""

from __future__ import annotations

import json
import os

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def session(path, *, threads: int | None = None, optimization: str = "all", inter_op_threads: int = 1,
            spinning: bool = True, arena: bool = True):
    """A CPU InferenceSession. threads=None: ORT's default (one per physical core).

    spinning=False stops idle intra-op threads busy-waiting: right when several sessions share the cores.
    arena=False: no CPU memory arena (buffers freed after each run instead of kept for reuse; see
    benchmarks/arena.py for what it costs and saves).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    options.enable_cpu_mem_arena = arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])


def metadata(path) -> dict[str, str]:
    """The genguard.* metadata the exporter wrote into the model (weights provenance, detector)."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def decode_metadata(props: dict[str, str]) -> dict:
    return {k.removeprefix("genguard."): json.loads(v) for k, v in props.items() if k.startswith("genguard.")}
