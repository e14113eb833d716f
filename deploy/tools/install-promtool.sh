#!/usr/bin/env bash
# Installs promtool (Prometheus's rule checker and rule unit-test runner) for tests/test_monitoring.py,
# which checks and unit-tests the alert rules in components/monitoring/prometheusrule.yaml offline.
# Idempotent: does nothing when a promtool is already next to PYTHON or on PATH.
# Source: Debian's `prometheus` package (bookworm: 2.42.0); only its promtool binary is extracted next to
# PYTHON (the package's server and service are not installed). Needs apt (root), as CI has.
# Usage: deploy/tools/install-promtool.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
PIN="2.42.0+ds-5+deb12u1"   # Debian bookworm's prometheus; a newer Debian revision of 2.42.0 is accepted

for candidate in "$(dirname "$PYTHON")/promtool" "$(command -v promtool || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version >/dev/null 2>&1; then
        echo "promtool ready: $candidate"
        exit 0
    fi
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download "prometheus=$PIN" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get download "prometheus=$PIN" >/dev/null 2>&1 || apt-get download prometheus >/dev/null
fi
deb=$(ls prometheus_*.deb)
case "$deb" in
    prometheus_2.42.0+*) ;;
    *) echo "install-promtool: expected Debian's prometheus 2.42.0, got $deb" >&2; exit 1 ;;
esac
dpkg-deb -x "$deb" root
cd - >/dev/null
install -m 0755 "$work/root/usr/bin/promtool" "$(dirname "$PYTHON")/promtool"
echo "promtool ready: $(dirname "$PYTHON")/promtool ($("$(dirname "$PYTHON")/promtool" --version 2>&1 | head -1))"
