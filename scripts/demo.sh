#!/usr/bin/env bash
# `make demo`: run a wasm guest through a private containerd with our shim (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec .venv/bin/python scripts/demo.py "$@"
