"""The benchmark harness (`python -m bench`) works end to end, with tiny counts (`--quick`).

A smoke run only: it checks that every figure ran (figures 9 and 10, http, have their own: test_bench_http.py),
the table was printed with the machine and versions, and the results and plots were written. It never asserts
anything about speed (benchmarks are not tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("cold_start", "instance_start", "start_cmd", "throughput", "density", "compute", "components",
           "supply_chain", "cli")


def test_quick_bench_prints_table_and_writes_plots(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the benchmarks need root (containerd, runc, mounts)")
    pytest.importorskip("matplotlib", reason="plots need the `bench` extra: pip install -e '.[bench]'")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", ",".join(FIGURES), "--out", str(out),
         "--max-minutes", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    table = done.stdout
    assert "machine: " in table and "containerd: " in table and "wasmtime-py (the shim's engine): " in table
    for title in ("1. Cold start", "2. Instance start", "3. `start` subcommand", "4. Throughput", "5. Density",
                  "6. Guest compute", "7. Components", "8. Supply chain", "12. The CLI beside oras and cosign"):
        assert f"== {title}" in table, table
    assert "FAILED" not in table, table
    assert "wasm-shim warm" in table and "runc (busybox echo)" in table
    results = json.loads((out / "results.json").read_text())
    assert [f["key"] for f in results["figures"]] == list(FIGURES)
    for figure in results["figures"]:
        assert figure["rows"], figure["key"]
        png = out / f"{figure['key']}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (out / "results.md").read_text().count("### ") == len(FIGURES)
