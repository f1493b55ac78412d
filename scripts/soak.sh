#!/usr/bin/env bash
# `make soak`: the reliability suite at full size, then its table into docs/reliability.md.
#
#   scripts/soak.sh [PYTEST_ARGS...]
#
# Runs every test marked `soak` with WASM_SHIM_SOAK=full (the fuzz million, the 1000-cycle soak, ...; each loop is
# bounded in count and time), collects each test's record (lab/soak.py) and writes the table between
# the markers in docs/reliability.md. Needs root, like `make test`. `make test` runs the same tests at smoke size.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "soak.sh: $PY is missing; run scripts/setup.sh (make setup) first" >&2; exit 1; }
cd "$ROOT"
report="$(mktemp /tmp/wasm-shim-soak.XXXXXX.jsonl)"
trap 'rm -f "$report"' EXIT
rc=0
WASM_SHIM_SOAK=full WASM_SHIM_SOAK_REPORT="$report" "$PY" -m pytest -q -m soak -p no:cacheprovider "$@" || rc=$?
"$PY" -m lab.soak "$report" "$ROOT/docs/reliability.md"
exit $rc
