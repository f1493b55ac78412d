#!/usr/bin/env bash
# `make soak` (issue 12): the reliability suite at full size, then its table into docs/reliability.md.
#
#   scripts/soak.sh [PYTEST_ARGS...]
#
# Runs every test marked `soak` with WASM_SHIM_SOAK=full (the fuzz million, the 1000-cycle soak, ...; each loop is
# bounded in count and time), collects each test's record (tests/harness/soak.py) and writes the table between
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
table="$("$PY" -m tests.harness.soak "$report")"
echo "$table"
doc="$ROOT/docs/reliability.md"
begin='<!-- soak:begin -->'
end='<!-- soak:end -->'
if [[ -f "$doc" ]] && grep -qF "$begin" "$doc"; then
  TABLE="$table" BEGIN="$begin" END="$end" "$PY" - "$doc" <<'PYEOF'
import os, sys, time
path = sys.argv[1]
text = open(path).read()
head, rest = text.split(os.environ["BEGIN"], 1)
_, tail = rest.split(os.environ["END"], 1)
stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
body = f"\n_Written by `make soak` on {stamp}._\n\n{os.environ['TABLE']}\n"
open(path, "w").write(head + os.environ["BEGIN"] + body + os.environ["END"] + tail)
PYEOF
  echo "soak.sh: table written into docs/reliability.md" >&2
else
  echo "soak.sh: docs/reliability.md has no $begin marker; the table is printed only" >&2
fi
exit $rc
