"""The engine rules of base.py's docstring as the daemon applies them, against tests/vectors/engine_rules.json.

The component runner answers the same file in its own unit tests (`cargo test`: runner/src/limits.rs for the CPU
bucket, runner/src/exit.rs for failures), so the two implementations cannot drift apart on a case: a case is
added to the file, never to one side. Here the CPU bucket is the daemon's ``CpuBucket`` (pure); failures are real
wasmtime-py traps and errors of the vectors' modules and components, classified by ``reports.failure``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import wasmtime
import wasmtime.component as wasm_component

from wasm_shim.shim.engines.base import CPU_BURST_SECONDS, EXIT_FAILURE, GuestSpec
from wasm_shim.shim.engines.wasmtime import thread_guest
from wasm_shim.shim.engines.wasmtime.epochs import CpuBucket, Epochs
from wasm_shim.shim.engines.wasmtime.reports import dispose, failure
from wasm_shim.shim.engines.wasmtime.thread_guest import ThreadGuest

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "engine_rules.json").read_text())
US = 1000  # ns per microsecond


def test_the_bucket_size_is_the_one_in_the_vectors() -> None:
    assert VECTORS["cpu_bucket"]["burst_seconds"] == CPU_BURST_SECONDS


@pytest.mark.parametrize("case", VECTORS["cpu_bucket"]["cases"], ids=lambda case: case["name"])
def test_cpu_bucket(case: dict[str, Any]) -> None:
    wall, cpu = case["start_us"]
    bucket = CpuBucket(case["cpus"], wall_ns=wall * US, cpu_ns=cpu * US)
    for n, step in enumerate(case["steps"]):
        if step["op"] == "slept":
            bucket.slept(wall_ns=step["wall_us"] * US)
            continue
        debt = bucket.settle(wall_ns=step["wall_us"] * US, cpu_ns=step["cpu_us"] * US)
        assert debt * 1e6 == pytest.approx(step["debt_us"], abs=1e-3), f"step {n}"


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = True  # as WasmtimeEngine configures it
    return wasmtime.Engine(config)


def _outcome(engine: wasmtime.Engine, case: dict[str, Any]) -> tuple[int, str]:
    """Run the case's ``run`` in a store limited to its memory_limit; (status, stderr line) by ``failure``.

    With a limit, the daemon refuses the module cases at Create already (footprint.store_limits) and sends
    components to the runner; what is checked here is how wasmtime's own refusal is classified.
    """
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1 << 40)
    if case.get("memory_limit") is not None:
        store.set_limits(memory_size=case["memory_limit"])
    try:
        if case["wat"].lstrip().startswith("(component"):
            component = wasm_component.Component(engine, wasmtime.wat2wasm(case["wat"]))
            instance = wasm_component.Linker(engine).instantiate(store, component)
            index = component.get_export_index("run")
            assert index is not None
            run = instance.get_func(store, index)
            assert run is not None
            result = run(store)
            failed = isinstance(result, wasm_component.Variant) and result.tag == "err"
            return (EXIT_FAILURE if failed else 0), ""
        module = wasmtime.Module(engine, case["wat"])
        exported = wasmtime.Instance(store, module, []).exports(store)["run"]
        assert isinstance(exported, wasmtime.Func)
        exported(store)
        return 0, ""
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        try:
            return failure(exc)
        finally:
            dispose(exc)


@pytest.mark.parametrize("case", VECTORS["traps"], ids=lambda case: case["name"])
def test_failure_classification(engine: wasmtime.Engine, case: dict[str, Any]) -> None:
    status, line = _outcome(engine, case)
    assert status == case["status"], line
    if "stderr" in case:
        assert line == case["stderr"]
    if "stderr_prefix" in case:
        assert line.startswith(case["stderr_prefix"]) and "\n" not in line, line


class _Clock:
    """The two clocks a daemon guest's CPU bucket reads, set by the test (``thread_guest.time``)."""

    def __init__(self) -> None:
        self.wall_ns = 0
        self.cpu_ns = 0

    def monotonic_ns(self) -> int:
        return self.wall_ns

    def thread_time_ns(self) -> int:
        return self.cpu_ns


class _Guest(ThreadGuest):
    def _execute(self, store: wasmtime.Store) -> int:
        return 0


def test_a_guest_paused_in_the_daemon_earns_cpu_like_any_other_wall_time(
    engine: wasmtime.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vector "time paused earns like any other wall time" as the daemon's guest lives it: its bucket is settled
    at its epoch deadlines, one of them a pause it parks in. The runner cannot tell a pause (SIGSTOP) from any other
    wall time, so the daemon's guest must not either."""
    clock = _Clock()
    monkeypatch.setattr(thread_guest, "time", clock)
    spec = GuestSpec(task_id="paused", rootfs="/", root_readonly=True, args=("x",), env=(), cwd="/", cpu_limit=1.0)
    guest = _Guest(engine, Epochs(engine), {}, spec, lambda status: None)
    guest._bucket = CpuBucket(1.0, wall_ns=0, cpu_ns=0)  # what the guest's thread starts with: a full bucket
    clock.cpu_ns = 100_000 * US  # it used its whole burst at once
    assert guest.at_deadline(None) is None
    guest.pause()
    resumer = threading.Timer(0.05, lambda: (setattr(clock, "wall_ns", 10_000_000 * US), guest.resume()))
    resumer.start()
    assert guest.at_deadline(None) is None  # parked here until resumed, ten seconds later by the clock
    resumer.join()
    clock.cpu_ns += 100_000 * US  # a full burst again right after the pause: earned while paused, no debt
    assert guest.at_deadline(None) is None
    assert guest._bucket.settle(clock.wall_ns, clock.cpu_ns) == 0.0
