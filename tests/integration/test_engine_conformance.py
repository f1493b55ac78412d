"""Conformance: the same guests through every way the wasmtime engine runs them give the same answers.

Three paths: a core module in a daemon thread (``ModuleGuest``), a component in a daemon thread
(``ComponentGuest``, ``component-isolation: thread``) and a component in the runner process (``ComponentRunner``,
runner/). The components are the very modules, adapted by jco (lab/guests/build.sh), except for memory (see
``ALLOC``). The answers are ``base``'s rules (exit statuses, memory and CPU limits); where the component model
itself answers differently (WASI 0.2 exits only ok or err) the expectation says so, never the path.

Memory: one rule, "a limit bounds the guest as a whole" (base.py), checked with hostile guests built from source
(lab/guests/src: ``multimem`` four memories, ``tablegrow`` a table without a maximum, ``instances`` eight core
instances each with its own memory), each trying to fill 240 MiB under a 64 MiB limit. On every path the outcome
is one of the rule's two: Create refuses the guest, naming what cannot be bounded, or the guest runs, every
growth past the limit is refused (what it filled stays within the limit), it fails, and it is an OOM. A component
in a daemon thread with a limit is sent to the runner (the rule says so): its path gives the runner's answers.

Real wasmtime (wasmtime-py in this process, the wasmtime crates in the runner), real files for stdio. The CPU
check compares CPU time with elapsed time over the same interval (a ratio, like test_limits.py): other load can
only lower it.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wasm_shim.shim.engines.base import EXIT_TRAP, EngineError, GuestSpec, GuestStdio, killed_status, locate_entrypoint
from wasm_shim.shim.engines.grant import ISOLATION_ANNOTATION, parse_grant
from wasm_shim.shim.engines.wasmtime import ComponentPrepared, ComponentRunner, WasmtimeEngine, WasmtimeGuest

pytestmark = pytest.mark.integration

EXIT_TIMEOUT = 20.0  # seconds: a guest that has not exited by then is a hang
RUNNER = Path(sys.executable).parent / "wasm-shim-component-runner"  # where scripts/setup.sh links it
PATHS = ("module-thread", "component-thread", "component-runner")

def prepare(engine: Any, spec: GuestSpec) -> Any:
    """What the task service does before an engine's prepare: find and read args[0] once."""
    return engine.prepare(spec, locate_entrypoint(spec))



@dataclass
class Started:
    guest: WasmtimeGuest
    stdout: Path
    stderr: Path
    statuses: list[int]
    exited: threading.Event

    def wait(self) -> int:
        if not self.exited.wait(EXIT_TIMEOUT):
            self.guest.kill(signal.SIGKILL)
            pytest.fail(f"guest did not exit within {EXIT_TIMEOUT} s")
        assert len(self.statuses) == 1
        return self.statuses[0]


class Paths:
    """One engine; starts a guest by its base name along one of PATHS."""

    def __init__(self, tmp: Path, guests: Path):
        self.tmp = tmp
        self.guests = guests
        self.engine = WasmtimeEngine(cache_dir=str(tmp / "cache"), component_runner=str(RUNNER))
        self._count = 0

    def start(self, path: str, name: str, *args: str, **limits: object) -> Started:
        self._count += 1
        wasm = f"{name}.wasm" if path == "module-thread" else f"{name}.component.wasm"
        annotations = {ISOLATION_ANNOTATION: "thread"} if path == "component-thread" else {}
        spec = GuestSpec(
            task_id=f"conf-{self._count}", rootfs=str(self.guests), root_readonly=True, args=(wasm, *args),
            env=(), cwd="/", grant=parse_grant(annotations), **limits,  # type: ignore[arg-type]
        )
        prepared = prepare(self.engine, spec)
        if path == "component-runner" or (path == "component-thread" and spec.memory_limit):
            assert isinstance(prepared, ComponentPrepared) and prepared.runner == str(RUNNER), \
                "the Rust component runner must be installed (scripts/setup.sh)"
        stdout, stderr = self.tmp / f"out-{self._count}", self.tmp / f"err-{self._count}"
        statuses: list[int] = []
        exited = threading.Event()

        def on_exit(status: int) -> None:
            statuses.append(status)
            exited.set()

        guest = self.engine.start(prepared, GuestStdio(None, str(stdout), str(stderr)), on_exit)
        return Started(guest, stdout, stderr, statuses, exited)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory, guests: Path) -> Iterator[Paths]:
    box = Paths(tmp_path_factory.mktemp("conformance"), guests)
    yield box
    box.engine.close()
    assert box.engine.running == 0


def _wait_for_output(started: Started, text: str) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    while not (started.stdout.exists() and text in started.stdout.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no {text!r} on stdout"
        time.sleep(0.01)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_statuses(paths: Paths, path: str, code: int) -> None:
    started = paths.start(path, "exit_code", str(code))
    # WASI 0.2 components exit only ok or err: the preview1 adapter turns exit(n != 0) into err, status 1.
    expected = code if path == "module-thread" else int(code != 0)
    assert started.wait() == expected
    assert started.stdout.read_text() == f"exiting with {code}\n"


@pytest.mark.parametrize("path", PATHS)
def test_trap_is_134_with_one_line_on_stderr(paths: Paths, path: str) -> None:
    started = paths.start(path, "trap")
    assert started.wait() == EXIT_TRAP
    assert started.stdout.read_text() == "about to trap\n"
    assert started.stderr.read_text() == "wasm trap: wasm `unreachable` instruction executed\n"  # that line alone
    assert not started.guest.oom


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_spinning_guest_is_killed_with_128_plus_the_signal(paths: Paths, path: str, sig: int) -> None:
    started = paths.start(path, "spin")
    _wait_for_output(started, "spinning")
    started.guest.kill(signal.SIGWINCH)  # default action: ignore; the guest keeps running
    started.guest.kill(sig)
    started.guest.kill(signal.SIGKILL)  # only the first terminating signal decides the status
    assert started.wait() == killed_status(sig)


# The memory guest: alloc.wasm for a module; for components net.component.wasm's `alloc` (the C alloc guest adapted
# by jco asserts inside the preview1 adapter once malloc grew memory). Both keep allocating 1 MiB buffers and say
# where an allocation failed; failing for good, the C one traps (134) and the JavaScript one exits with err (1).
ALLOC = {"module-thread": ("alloc", ("100",), ("0", "abort"), EXIT_TRAP)}
ALLOC["component-thread"] = ALLOC["component-runner"] = ("net", ("alloc", "100"), ("alloc", "100", "fail"), 1)
ALLOC_FAILED = re.compile(r"^(?:malloc|allocation) failed at (\d+) MiB$", re.M)


@pytest.mark.parametrize("path", PATHS)
def test_memory_limit_refuses_growth_and_reports_oom(paths: Paths, path: str) -> None:
    guest, copes, gives_up, failure_status = ALLOC[path]
    limit = 64 << 20
    coped = paths.start(path, guest, *copes, memory_limit=limit)
    assert coped.wait() == 0, coped.stderr.read_text()  # an allocation failed inside the limit; the guest coped
    failed_at = ALLOC_FAILED.search(coped.stdout.read_text())
    assert failed_at is not None and int(failed_at.group(1)) < 64, coped.stdout.read_text()[-200:]
    assert not coped.guest.oom  # it coped: not an OOM
    free = paths.start(path, guest, *copes)
    assert free.wait() == 0 and "reached 100 MiB" in free.stdout.read_text()  # the limit, not the guest, stopped it
    failed = paths.start(path, guest, *gives_up, memory_limit=limit)
    assert failed.wait() == failure_status
    assert failed.guest.oom  # a component with a limit runs in the runner, which sees every refused growth


HOSTILE_LIMIT = 64 << 20
HOSTILE_TOTAL_MIB = 240  # what each hostile guest fills without a limit
# What the daemon cannot bound it refuses at Create (base.py's "Memory limits"), saying why.
REFUSED_AT_CREATE = {
    ("module-thread", "multimem"): "declares 4 linear memories",
    ("module-thread", "tablegrow"): "declares a table without a maximum size",
}
# Every hostile guest on every path it can take: a core module is one instance (the daemon allows it exactly one),
# so "many instances" is a component's case only.
HOSTILE = [(path, guest) for guest in ("multimem", "tablegrow", "instances") for path in PATHS
           if not (guest == "instances" and path == "module-thread")]
FILLED = re.compile(r"^(\d+) MiB$", re.M)
REFUSED = re.compile(r"^(?:memory|table)\.grow refused at (\d+) MiB$", re.M)


@pytest.mark.parametrize(("path", "guest"), HOSTILE, ids=[f"{path}-{guest}" for path, guest in HOSTILE])
def test_a_memory_limit_bounds_every_memory_table_and_instance_together(paths: Paths, path: str, guest: str) -> None:
    free = paths.start(path, guest)  # without a limit it takes all it asks for: the guest is as hostile as claimed
    assert free.wait() == 0, free.stderr.read_text()
    assert free.stdout.read_text().endswith(f"filled {HOSTILE_TOTAL_MIB} MiB\n")
    refusal = REFUSED_AT_CREATE.get((path, guest))
    if refusal is not None:
        with pytest.raises(EngineError, match=refusal) as refused:
            paths.start(path, guest, memory_limit=HOSTILE_LIMIT)
        assert "memory limit" in str(refused.value)
        return
    capped = paths.start(path, guest, memory_limit=HOSTILE_LIMIT)
    assert capped.wait() == EXIT_TRAP, capped.stderr.read_text()  # it gave up after the refusal
    out = capped.stdout.read_text()
    refused_at = REFUSED.search(out)
    assert refused_at is not None, out[-200:]
    filled = max(int(mib) for mib in FILLED.findall(out))
    assert filled == int(refused_at.group(1)) < HOSTILE_LIMIT >> 20  # all of it together, within the limit
    assert capped.guest.oom  # a growth was refused, then the guest failed: /tasks/oom
    if path != "module-thread":
        assert isinstance(capped.guest, ComponentRunner)  # a component with a limit is bounded in the runner


@pytest.mark.parametrize("path", PATHS)
def test_cpu_quota_caps_a_spinning_guest(paths: Paths, path: str) -> None:
    started = paths.start(path, "spin", cpu_limit=0.2)
    try:
        _wait_for_output(started, "spinning")
        time.sleep(0.3)  # past the bucket's initial burst (0.1 s of its share)
        cpu0, wall0 = started.guest.stats()[1], time.monotonic()
        time.sleep(1.5)
        rate = (started.guest.stats()[1] - cpu0) / 1e9 / (time.monotonic() - wall0)
        assert rate < 0.2 * 1.3, f"{path}: {rate:.2f} CPUs"  # the cap; other load can only lower it
        assert rate > 0.0, f"{path}: the guest did not run at all"
    finally:
        started.guest.kill(signal.SIGKILL)
    assert started.wait() == killed_status(signal.SIGKILL)

