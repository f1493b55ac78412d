"""Kill stops a guest whatever it is doing — here, blocked in a host call — through `ctr`.

A guest sleeping (WASI poll_oneoff) or blocked reading its stdin is out of reach of epoch interruption. Modules:
the engine's own poll_oneoff waits on the guest's kill signal, and a stdin pump closes the guest's pipe on kill.
Components block inside wasmtime's own WASI code, so they run in a runner process that a kill ends with SIGKILL
(tests/integration/test_component_process.py covers what the runners leave behind). Each case: `ctr task kill`
ends `ctr run` with 128 + signal within a second, and the daemon keeps no thread or fd of the guest afterwards.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from lab.shimtools import RUNTIME, daemon_pids, process_footprint, wait_for
from lab.shimtools import task_status as _status

pytestmark = pytest.mark.integration

KILL_BOUND = 1.0  # seconds: the bound for Kill of any guest (a hang bound, not a speed claim)


def _run_then_kill(containerd, image: str, task_id: str, args: list[str], ready_text: str,
                   signal: str = "SIGKILL", feed: bytes | None = None) -> tuple[int, float, str]:
    """`ctr run` a guest, wait until it printed ``ready_text``, kill it; (ctr's exit code, kill latency, stdout)."""
    run = subprocess.Popen(
        containerd.ctr_argv("run", "--runtime", RUNTIME, image, task_id, "/app.wasm", *args),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=containerd.ctr_env(),
    )
    try:
        assert run.stdin is not None and run.stdout is not None and run.stderr is not None
        if feed is not None:
            run.stdin.write(feed)
            run.stdin.flush()  # stdin stays open: the guest blocks reading it after this
        line = ""
        if ready_text:  # the guest flushes it before blocking (cat_file's stdio buffers: nothing to wait for)
            line = run.stdout.readline().decode()
            assert ready_text in line, (line, run.stderr.read(2000) if run.poll() is not None else "")
        wait_for(lambda: _status(containerd, task_id) == "RUNNING", 10, f"{task_id} running")
        time.sleep(0.2)  # let the guest settle into its blocking call
        before = time.monotonic()
        containerd.ctr("task", "kill", "-s", signal, task_id)
        wait_for(lambda: _status(containerd, task_id) in ("STOPPED", ""), 10, f"{task_id} stopped")
        latency = time.monotonic() - before
        out, err = run.communicate(timeout=10)
        return run.returncode, latency, line + out.decode()
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()  # also closes the pipes of a ctr that already exited (no ResourceWarning later)
        containerd.ctr("container", "rm", task_id, check=False)


def test_kill_sleeping_module(containerd, wasm_image, guests):
    image = wasm_image("sleep", guests / "sleep.wasm")
    code, latency, _ = _run_then_kill(containerd, image, "sleep-kill", ["100"], "sleeping 100 s")
    assert code == 137
    assert latency < KILL_BOUND, f"kill of a sleeping guest took {latency:.2f} s"


def test_sigterm_sleeping_module(containerd, wasm_image, guests):
    image = wasm_image("sleep", guests / "sleep.wasm")
    code, latency, _ = _run_then_kill(containerd, image, "sleep-term", ["100"], "sleeping 100 s", "SIGTERM")
    assert code == 143
    assert latency < KILL_BOUND


@pytest.mark.parametrize(("signal", "status"), [("SIGKILL", 137), ("SIGTERM", 143)])
def test_kill_sleeping_component(containerd, wasm_image, guests, signal, status):
    """A component sleeping in wasmtime's own WASI code (its runner process gets SIGKILL)."""
    image = wasm_image("sleep-component", guests / "sleep.component.wasm")
    code, latency, _ = _run_then_kill(containerd, image, f"sleep-c-{status}", ["100"], "sleeping 100 s", signal)
    assert code == status
    assert latency < KILL_BOUND, f"kill of a sleeping component took {latency:.2f} s"


@pytest.mark.parametrize("guest", ["cat_file.wasm", "cat_file.component.wasm"])
def test_kill_guest_blocked_reading_stdin(containerd, wasm_image, guests, guest):
    kind = guest.split(".")[1]
    image = wasm_image(f"cat-{kind}", guests / guest)
    code, latency, out = _run_then_kill(containerd, image, f"stdin-{kind}", ["-"], "", feed=b"first line\n")
    assert code == 137, out
    assert latency < KILL_BOUND, f"kill of a guest blocked on stdin took {latency:.2f} s"


def test_killed_sleepers_free_their_threads(containerd, wasm_image, guests):
    """Sleeping guests killed: the daemon's thread and fd counts return to what they were, the others live on.

    A first round warms the daemon up (its executor threads and the epoch ticker are made once and kept).
    """
    image = wasm_image("sleep", guests / "sleep.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "keeper", "/app.wasm", "100")
    wait_for(lambda: _status(containerd, "keeper") == "RUNNING", 10, "keeper running")
    (pid,) = daemon_pids(containerd)

    def round_of_kills(tag: str) -> None:
        ids = [f"sleeper-{tag}-{i}" for i in range(8)]
        for task_id in ids:
            containerd.ctr("run", "-d", "--runtime", RUNTIME, image, task_id, "/app.wasm", "100")
        for task_id in ids:
            containerd.ctr("task", "kill", "-s", "SIGKILL", task_id)
        for task_id in ids:
            wait_for(lambda: _status(containerd, task_id) == "STOPPED", 5, f"{task_id} stopped")  # noqa: B023
            containerd.ctr("task", "rm", task_id)
            containerd.ctr("container", "rm", task_id)

    round_of_kills("warm")
    before = process_footprint(pid)
    round_of_kills("measured")
    wait_for(lambda: process_footprint(pid).threads <= before.threads, 5, "guest threads gone")
    after = process_footprint(pid)
    assert after.fds <= before.fds, (before, after)
    assert _status(containerd, "keeper") == "RUNNING"  # the survivor is untouched
    containerd.ctr("task", "kill", "-s", "SIGKILL", "keeper")
    wait_for(lambda: _status(containerd, "keeper") == "STOPPED", 5, "keeper stopped")
    containerd.ctr("task", "rm", "keeper")
    containerd.ctr("container", "rm", "keeper")
