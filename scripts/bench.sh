#!/usr/bin/env bash
# Runs the benchmarks: `make bench` calls this after scripts/setup.sh.
#
#   scripts/bench.sh [ARGS...]     ARGS go to `python -m bench` (see `python -m bench --help`), e.g.
#                                  --quick, --containerd 2.x, --peer-shim PATH, --only cold_start,start_cmd,
#                                  --update-docs (write the results into docs/benchmarks.md and docs/img/)
#
# Installs the `bench` extra (matplotlib, for the plots) into .venv when it is missing. The wasmtime CLI baseline of
# figure 6 comes from `scripts/setup.sh --with wasmtime-cli` (or WASMTIME_CLI=PATH); without it figure 6 measures
# the shims only. Output: the table on stdout, bench/out/results.{txt,json,md} and bench/out/*.png.
# Needs root (containerd, runc, mounts). The full run takes about 15 minutes on 2 cores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "bench.sh: $PY is missing; run scripts/setup.sh (make setup) first" >&2; exit 1; }
if ! "$PY" -c 'import matplotlib' >/dev/null 2>&1; then
  echo "bench.sh: installing the bench extra (matplotlib) into .venv" >&2
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip install -q -e "${ROOT}[dev,bench]" \
    || echo "bench.sh: could not install matplotlib; the table is printed without plots" >&2
fi
cd "$ROOT"
exec "$PY" -m bench "$@"
