#!/usr/bin/env bash
# GenGuard server image entrypoint: build the TensorRT engines this GPU lacks, refuse plans that don't
# belong here, then run tritonserver with GenGuard's flags (genguard.server args, the one source).
#
#   GENGUARD_TARGET        tensorrt (default), onnx-gpu or cpu: which rendered repository under /models
#   GENGUARD_REPOSITORY    rendered repository (default /models/$GENGUARD_TARGET)
#   GENGUARD_ENGINE_CACHE  engine cache, keyed by GPU, TensorRT and ONNX (default /engine-cache)
#   GENGUARD_ADMIN_KEY     key for the restricted model-repository/shared-memory APIs (else random)
#   GENGUARD_GATEWAY_*     the REST gateway's settings (`gateway` command; genguard.gateway.settings)
#
# Any other command is run as given, e.g. a Kubernetes init container:
#   python -m genguard.export.tensorrt build --repository /models/tensorrt --cache /engine-cache
set -euo pipefail

# `gateway`: GenGuard's REST gateway (genguard.gateway) on 0.0.0.0:8080, in front of the Triton at
# GENGUARD_GATEWAY_TRITON_URL (default 127.0.0.1:8001: the same pod or `--network container:<server>`).
# Off loopback it needs API keys: GENGUARD_GATEWAY_API_KEYS_FILE (a mounted Secret, one key per line).
if [[ "${1:-}" == "gateway" ]]; then
    shift
    exec python3 -m genguard.gateway --host 0.0.0.0 "$@"
fi
# `worker`: job workers (genguard worker) for the gateway's async jobs, settings from GENGUARD_GATEWAY_*
# (JOBS_DB, JOBS_SPOOL, TRITON_URL ...; docs/jobs.md).
if [[ "${1:-}" == "worker" ]]; then
    shift
    exec python3 -m genguard.jobs worker "$@"
fi
if [[ $# -gt 0 && "$1" != "serve" ]]; then
    exec "$@"
fi

TARGET="${GENGUARD_TARGET:-tensorrt}"
REPOSITORY="${GENGUARD_REPOSITORY:-/models/$TARGET}"
GPU_FLAG=(--gpu)
[[ "$TARGET" == cpu ]] && GPU_FLAG=()  # cpu target: python-backend detectors on ONNX Runtime CPU
CACHE="${GENGUARD_ENGINE_CACHE:-/engine-cache}"

if [[ ! -f "$REPOSITORY/genguard/config.pbtxt" ]]; then
    echo "genguard: no rendered repository at $REPOSITORY (make repository TARGET=$TARGET, copy it," \
         "mount it there or set GENGUARD_REPOSITORY)" >&2
    exit 64
fi
# The image runs as uid 1000: a cache volume that ignores fsGroup (NFS, EFS) or a root-owned host
# directory is refused here with the fix, not with a traceback from the first write.
if [[ "$TARGET" != cpu ]] && ! { mkdir -p "$CACHE" 2>/dev/null && [[ -w "$CACHE" ]]; }; then
    echo "genguard: the engine cache $CACHE is not writable by uid $(id -u) gid $(id -g). Fix: make the" \
         "volume writable for them (chown -R $(id -u):$(id -g) <volume>, or an fsGroup/EFS access point" \
         "with that uid/gid), or point GENGUARD_ENGINE_CACHE elsewhere" >&2
    exit 73
fi
# onnx-gpu: ONNX Runtime's TensorRT EP caches engines in <cache>/onnxruntime/<detector> (the repository's
# default --ort-cache); create the folders it writes to.
for model in "$REPOSITORY"/*/; do
    if [[ "$TARGET" != cpu && -f "$model/1/model.onnx" ]]; then mkdir -p "$CACHE/onnxruntime/$(basename "$model")"; fi
done

# tensorrt target: each detector carries onnx/engine.json. `build` also checks every plan's keys
# (compute capability, TensorRT version, ONNX sha256) against this machine and fails on a mismatch.
if compgen -G "$REPOSITORY/*/onnx/engine.json" >/dev/null; then
    python3 -m genguard.export.tensorrt build --repository "$REPOSITORY" --cache "$CACHE"
fi

FLAGS="$(python3 -m genguard.server args --repository "$REPOSITORY" --host 0.0.0.0 --production "${GPU_FLAG[@]}")"
mapfile -t SERVER_ARGS <<<"$FLAGS"
exec tritonserver "${SERVER_ARGS[@]}"
