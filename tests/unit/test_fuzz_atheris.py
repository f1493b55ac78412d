"""The million: the coverage-guided atheris targets of tests/fuzz/ttrpc_targets.py, each in its own
process (libFuzzer owns the process), at ``size(smoke, 1_000_000)`` runs.

A finding makes libFuzzer exit non-zero after writing the input under ``tmp_path`` (named in the failure). Smoke
runs use a fixed seed; full runs a fresh one. ``-rss_limit_mb`` turns unbounded memory into a finding and
``-timeout`` a hang (seconds per input). The rate (inputs/s) is recorded from libFuzzer's own count and time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.soak import FULL, record, size

pytestmark = [pytest.mark.soak, pytest.mark.timeout(4 * 3600 if FULL else 600)]

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {
    # target: (smoke runs, what it covers)
    "server": (20_000, "server core: frame parser, stream ids, split independence, buffer bound"),
    "client": (20_000, "client core: outstanding/abandoned calls against fuzzed responses"),
    "dispatch": (2_000, "request dispatcher: rpc.py + TaskService + real wasmtime, real protobuf decoding"),
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_atheris(target: str, guests: Path, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the dev extra (pyproject.toml); run scripts/setup.sh")
    smoke, covers = TARGETS[target]
    runs = size(smoke, 1_000_000)
    argv = [sys.executable, "-m", "tests.fuzz.ttrpc_targets", target]
    if target == "dispatch":
        argv.append(str(guests / "hello.wasm"))
    argv += [f"-runs={runs}", "-timeout=30", "-rss_limit_mb=2048", "-max_len=4096", "-print_final_stats=1",
             f"-artifact_prefix={tmp_path}/"]
    if not FULL:
        argv.append("-seed=1")
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=4 * 3600 if FULL else 540)
    seconds = time.monotonic() - started
    tail = "\n".join(done.stderr.splitlines()[-40:])
    assert done.returncode == 0, f"libFuzzer found something (input under {tmp_path}):\n{tail}"
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", done.stderr)
    count = int(executed.group(1)) if executed else 0
    assert count >= runs, tail
    rss = re.search(r"stat::peak_rss_mb:\s*(\d+)", done.stderr)
    record(f"fuzz (atheris): {target}", tried=f"{count} inputs, coverage-guided ({count / seconds:.0f} inputs/s)",
           held=f"{covers}: no crash, no hang (30 s/input), RSS under 2 GiB",
           after={"peak_rss_mb": int(rss.group(1)) if rss else "?"}, seconds=seconds)
