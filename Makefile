# GenGuard. `make setup`, then `make test`; `make export WEIGHTS=random` works offline.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUILD ?= build
# real: each spec's checkpoint (hub id, or CHECKPOINTS="name=/path ..."); random: offline test weights
WEIGHTS ?= real
CHECKPOINTS ?=
# pin hub checkpoints: REVISIONS="opensdi_flux=<commit> sumsub_sd=<commit> ..." (default: main)
REVISIONS ?=
# reorder a head's labels, e.g. LABELS="sumsub_sd=sd:stable_diffusion,real"
LABELS ?=
DETECTORS ?=
TARGET ?= cpu
# CPU speed options (off by default; benchmarks report their accuracy cost): INT8=1, ORT_OPT=basic, ORT_THREADS=N,
# PRECISION="best" or "freepik_nsfw=openvino-bf16-mixed sumsub_sd=ort-int8-qdq" (records: make cpu-options)
INT8 ?=
PRECISION ?=
# PRECISION=best measures the options first where their records are missing or stale; MEASURE=no serves ort-fp32 there
MEASURE ?= auto
ORT_OPT ?= all
ORT_THREADS ?= 0
# fusion configuration (JSON of FusionConfig fields, e.g. from `genguard calibrate`) for serve/repository
FUSION ?=
# C2PA trust anchors (a PEM bundle) for serve/repository: a valid manifest from a signer they anchor decides
TRUST_ANCHORS ?=
# provenance reading (JSON of ProvenanceConfig fields: full_text, excerpt_chars, limits, enabled)
PROVENANCE ?=

EXPORT_ARGS = --weights $(WEIGHTS) --build $(BUILD) $(if $(DETECTORS),--detectors $(DETECTORS)) \
	$(foreach c,$(CHECKPOINTS),--checkpoint $(c)) $(foreach r,$(REVISIONS),--revision $(r)) $(foreach l,$(LABELS),--labels $(l))

.PHONY: setup test test-all docs scan export quantize cpu-options repository serve stop bench bench-compare soak load gpu-check image clean weights weights-unpack explain

# Dependencies are reinstalled only when pyproject.toml changes; the editable install of this
# checkout is refreshed every time (a cached venv may have been made from another clone).
setup:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@want=$$(sha256sum pyproject.toml | cut -c1-16); \
	if [ "$$(cat $(VENV)/.genguard-deps 2>/dev/null)" != "$$want" ]; then \
		$(BIN)/pip install --disable-pip-version-check -e '.[export,server,test,bench,gateway,docs,scan]' && echo $$want > $(VENV)/.genguard-deps; \
	else \
		$(BIN)/pip install --disable-pip-version-check -q --no-deps -e . ; \
	fi
	@# the test tools that are not Python packages: promtool (alert-rule tests), Debian's chromium (browser
	@# tests) and redis-server (the shared answer cache's tests); they need apt (root): elsewhere the tests that
	@# need them fail saying what to install
	@bash deploy/tools/install-promtool.sh $(BIN)/python || echo "promtool not installed (needs apt): deploy/tools/install-promtool.sh"
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium not installed (needs apt): apt-get install chromium"
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; } \
		|| echo "redis-server not installed (needs apt): apt-get install redis-server"
	@# PostgreSQL's server binaries for the jobs tests' PostgreSQL store (tests/test_jobs.py starts its own server)
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } \
		|| echo "postgresql not installed (needs apt): apt-get install postgresql"
	@echo "venv ready: $(VENV)"

# Two tiers (docs/development.md, "Tests"): `make test` is the fast tier (minutes; still one real tritonserver + gateway);
# `make test-all` is everything, and is what CI runs. PYTEST_ARGS adds pytest options to either.
PYTEST_ARGS ?=
test: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The manual as a site (docs/, mkdocs.yml): --strict fails on a broken link or a page missing from the nav.
DOCS_OUT ?= $(BUILD)/site
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(abspath $(DOCS_OUT))

export: setup
	$(BIN)/python -m genguard.export $(EXPORT_ARGS)

# Air-gapped installs (docs/detectors.md, "Air-gapped install"). Connected machine: fetch the hub checkpoints into the
# Hugging Face cache and pack them with a sha256 manifest into $(WEIGHTS_PACK). Offline machine:
# make weights-unpack WEIGHTS_PACK=/path/genguard-weights.tar, then HF_HUB_OFFLINE=1 make serve CHECKPOINTS=...
WEIGHTS_PACK ?= $(BUILD)/weights/genguard-weights.tar
weights: setup
	$(BIN)/python -m genguard.export.weights download $(foreach r,$(REVISIONS),--revision $(r))
	$(BIN)/python -m genguard.export.weights pack --out $(WEIGHTS_PACK) $(foreach r,$(REVISIONS),--revision $(r))

weights-unpack: setup
	$(BIN)/python -m genguard.export.weights unpack $(WEIGHTS_PACK)

# INT8 speed option: model.int8.onnx per detector within its accuracy budget (figures in parity.json)
quantize: setup
	$(BIN)/python -m genguard.export.quantize --build $(BUILD)

# CPU engine/precision options (ORT INT8/QDQ, OpenVINO FP32/BF16/INT8): export what the build lacks (as make serve
# does, from WEIGHTS/CHECKPOINTS/REVISIONS/LABELS/DETECTORS), then build, measure vs FP32 and the reference, record
cpu-options: setup
	$(BIN)/python -m genguard.export.cpu_options $(EXPORT_ARGS) --threads $(ORT_THREADS)

# Grad-CAM for the CNN detectors: build/onnx/<det>/explain.onnx + explain.json, parity vs pytorch-grad-cam
explain: setup
	$(BIN)/python -m genguard.export.explain --build $(BUILD) $(if $(DETECTORS),--detectors $(DETECTORS))

# Bulk scan on Ray Data (docs/scan.md): make scan SRC="photos/ s3://bucket/prefix" OUT=scan-out [URL=host:8001]
# [SCAN_ARGS="--concurrency 8"]; rerun the same command to resume
SRC ?=
OUT ?=
URL ?=
SCAN_ARGS ?=
scan: setup
	@test -n "$(SRC)" -a -n "$(OUT)" || { echo 'usage: make scan SRC="folder/ s3://bucket/prefix ..." OUT=dir'; exit 2; }
	$(BIN)/genguard scan $(SRC) --out $(OUT) $(if $(URL),--url $(URL)) $(SCAN_ARGS)

# Render the Triton model repository for TARGET from build/onnx (prints where).
repository: setup
	$(BIN)/python -m genguard.export.repository --target $(TARGET) --build $(BUILD) $(if $(FUSION),--fusion $(FUSION)) \
		$(if $(INT8),--int8) $(foreach p,$(PRECISION),--precision $(p)) $(if $(EXPLAIN),--explain) \
		$(if $(TRUST_ANCHORS),--trust-anchors $(TRUST_ANCHORS)) $(if $(PROVENANCE),--provenance $(PROVENANCE))

# Export what the build lacks or holds differently from WEIGHTS/CHECKPOINTS/LABELS/DETECTORS, render the cpu
# repository of DETECTORS (default: all that apply), start tritonserver on 127.0.0.1:8000/8001/8002, wait ready.
serve: setup
	$(BIN)/python -m genguard.export.serve --weights $(WEIGHTS) --build $(BUILD) $(foreach c,$(CHECKPOINTS),--checkpoint $(c)) \
		$(foreach r,$(REVISIONS),--revision $(r)) $(foreach l,$(LABELS),--labels $(l)) $(if $(DETECTORS),--detectors $(DETECTORS)) \
		--ort-optimization $(ORT_OPT) --ort-threads $(ORT_THREADS) $(if $(INT8),--int8) $(foreach p,$(PRECISION),--precision $(p)) \
		--measure $(MEASURE) $(if $(FUSION),--fusion $(FUSION)) $(if $(EXPLAIN),--explain) \
		$(if $(TRUST_ANCHORS),--trust-anchors $(TRUST_ANCHORS)) $(if $(PROVENANCE),--provenance $(PROVENANCE))

stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m genguard.server stop --build $(BUILD); fi

# Benchmarks against a running `make serve` (see benchmarks/README.md).
bench: setup
	$(BIN)/python -m genguard.benchmarks.perf --build $(BUILD)

bench-compare: setup
	$(BIN)/python -m genguard.benchmarks.compare --build $(BUILD)

# The full stack through the gateway (benchmarks/load.py): its own tritonserver over BUILD (a full-size build) and
# gateway, Hive JSON + multipart + corrupt images + repeats at concurrency 16, Triton restarted at the middle.
DURATION ?= 600
load: setup
	$(BIN)/python -m genguard.benchmarks.load --build $(BUILD) --duration $(DURATION)

# Long soak against a running `make serve` (a short one runs in `make test`).
soak: setup
	$(BIN)/python -m genguard.benchmarks.soak --minutes 10 --concurrency 16

# GPU checks in one table (engines vs ONNX Runtime, DALI on the GPU, perf_analyzer with GENGUARD_GPU_URL);
# without a GPU one line and exit 0. On a GPU without trtexec, TensorRT comes from PyPI (.[gpu]).
gpu-check: setup
	@if $(BIN)/python -c "import sys; from genguard.export.tensorrt import gpu_absent_reason as r; sys.exit(r() is not None)" 2>/dev/null \
		&& ! command -v trtexec >/dev/null && ! test -x /usr/src/tensorrt/bin/trtexec; then \
		$(BIN)/pip install --disable-pip-version-check -q -e '.[gpu]'; fi
	@$(BIN)/python -m genguard.benchmarks.gpu_check --build $(BUILD)

IMAGE ?= genguard-server:latest
image:
	docker build -f docker/Dockerfile -t $(IMAGE) .

clean:
	rm -rf $(BUILD)
