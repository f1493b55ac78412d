"""The benchmark's wasi:http figures (`python -m bench --only http,http_start`) work end to end, at
`--quick` size.

A smoke run only, so the figure cannot rot: every server answered, wrk produced numbers, the table and results were
written. It never asserts anything about speed (benchmarks are not tests). The `wasmtime serve` rows need the
optional wasmtime CLI (`scripts/setup.sh --with wasmtime-cli`); without it everything else is checked and the test
then says it skipped those rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import _wasmtime_cli

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONNECTIONS = (1, 16)  # the quick counts keep the connection counts


def test_quick_http_figure_serves_measures_and_reports(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the benchmarks need root (containerd, runc, mounts, network namespaces)")
    assert shutil.which("wrk"), "wrk is missing: scripts/setup.sh installs it (the figure's load generator)"
    cli = _wasmtime_cli(None)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "http,http_start", "--out", str(out),
         "--max-minutes", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    assert "== 9. wasi:http serving" in done.stdout and "== 10. wasi:http serving" in done.stdout, done.stdout
    assert "FAILED" not in done.stdout, done.stdout
    figure, start = json.loads((out / "results.json").read_text())["figures"]
    assert figure["key"] == "http" and not figure["error"], figure
    assert start["key"] == "http_start" and not start["error"], start
    rows = {row["label"]: row for row in figure["rows"] + start["rows"]}

    def positive(label: str, unit: str) -> None:
        assert label in rows, (label, sorted(rows))
        row = rows[label]
        assert row["unit"] == unit and row["summary"]["n"] >= 1, row
        assert row["summary"]["p50"] is not None and row["summary"]["p50"] > 0, row

    for state in ("cold", "disk", "warm"):
        positive(next(label for label in rows if label.startswith(f"wasm-shim {state} (")), "ms")
    positive("runc (busybox httpd, a file)", "ms")
    servers = ["wasm-shim"] + (["wasmtime serve"] if cli else [])
    for server in servers:
        for connections in CONNECTIONS:
            name = f"{server}, {connections} connection(s)"
            positive(f"{name}: requests/s", "req/s")
            positive(f"{name}: latency p50", "ms")
            positive(f"{name}: latency p99", "ms")
            assert not rows[f"{name}: requests/s"]["note"], rows[f"{name}: requests/s"]  # no failed requests
    for key in ("http", "http_start"):
        png = out / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    if cli:
        ours = rows["wasm-shim, 16 connection(s): requests/s"]
        assert ours["goal"] and ours["vs_baseline"] is not None and not math.isnan(ours["vs_baseline"]), ours
    else:
        assert any("no wasmtime CLI found" in note for note in figure["notes"]), figure["notes"]
        pytest.skip("the `wasmtime serve` rows: no wasmtime CLI (scripts/setup.sh --with wasmtime-cli); "
                    "the rest of the figure was checked")
