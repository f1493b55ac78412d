"""The CPU-limit rule (base.py, "CPU limits") as the daemon's CpuBucket applies it; times are passed in."""

from __future__ import annotations

import pytest

from wasm_shim.shim.engines.base import CPU_BURST_SECONDS
from wasm_shim.shim.engines.wasmtime.epochs import CpuBucket

MS = 1_000_000  # ns


def test_a_fresh_guest_may_run_its_burst_at_once_then_pays_for_more() -> None:
    bucket = CpuBucket(0.5, wall_ns=0, cpu_ns=0)
    burst = 0.5 * CPU_BURST_SECONDS * 1000 * MS  # 50 ms of CPU for half a CPU
    assert bucket.settle(wall_ns=0, cpu_ns=int(burst)) == 0.0  # starts full: no debt yet
    debt = bucket.settle(wall_ns=0, cpu_ns=int(burst) + 10 * MS)
    assert debt == pytest.approx(0.020)  # 10 ms of CPU over, at half a CPU: 20 ms of sleep


def test_unused_share_banks_only_up_to_the_burst() -> None:
    bucket = CpuBucket(0.25, wall_ns=0, cpu_ns=0)
    # Ten idle seconds earn 2.5 CPU-seconds at 0.25 CPU, but the bucket holds 25 ms (0.1 s of the share).
    assert bucket.settle(wall_ns=10_000 * MS, cpu_ns=0) == 0.0
    debt = bucket.settle(wall_ns=10_000 * MS, cpu_ns=125 * MS)
    assert debt == pytest.approx((125 - 25) / 1000 / 0.25)


def test_sleeping_off_debt_and_pausing_earn_as_the_rule_says() -> None:
    bucket = CpuBucket(1.0, wall_ns=0, cpu_ns=0)
    debt = bucket.settle(wall_ns=100 * MS, cpu_ns=300 * MS)  # 100 ms earned + 100 ms burst - 300 ms used
    assert debt == pytest.approx(0.1)
    bucket.slept(wall_ns=200 * MS)  # slept its 100 ms: even again
    assert bucket.settle(wall_ns=200 * MS, cpu_ns=300 * MS) == 0.0
    bucket.paused(wall_ns=10_000 * MS)  # nothing is earned while paused
    assert bucket.settle(wall_ns=10_000 * MS, cpu_ns=310 * MS) == pytest.approx(0.01)
