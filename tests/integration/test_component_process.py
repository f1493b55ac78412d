"""Components run in a runner process of their own, through `ctr` on containerd 1.6 and 2.x.

What the process boundary must give (shim/engines/wasmtime/runner.py): a kill ends a component whatever it is
doing, and afterwards no runner process is left and the daemon's threads and fds are back to what they were;
pause/resume freeze the runner; `wasm.shim.io/component-isolation: thread` keeps a component in the daemon. The
runner is `wasm-shim-component-runner` (runner/); without it, Create of a component in a process fails saying so
(tested here too). Network grants: tests/integration/test_network.py. What a runner costs (start, PSS) is
measured by `python -m bench --only components`, not here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lab.shimtools import (
    RUNTIME,
    daemon_pids,
    process_footprint,
    remove_task,
    shim_log_text,
    task_pid,
    wait_for,
)
from lab.shimtools import task_status as _status

pytestmark = pytest.mark.integration

RUNNER = b"wasm-shim-component-runner"  # the runner's program name (runner/)
ISOLATION = "wasm.shim.io/component-isolation"


def _runners(daemon: int) -> list[int]:
    """The daemon's children that are component runners."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon and os.path.basename(argv[0]) == RUNNER:
            found.append(int(entry.name))
    return sorted(found)


def test_killed_runners_leave_nothing_behind(containerd, wasm_image, guests):
    """Sleeping components and components blocked on stdin, killed: no runner left, daemon back to baseline."""
    sleeper = wasm_image("sleep-c", guests / "sleep.component.wasm")
    reader = wasm_image("cat-c", guests / "cat_file.component.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleeper, "keeper-c", "/app.wasm", "100")
    wait_for(lambda: _status(containerd, "keeper-c") == "RUNNING", 10, "keeper running")
    (daemon,) = daemon_pids(containerd)
    keeper = task_pid(containerd, "keeper-c")
    assert _runners(daemon) == [keeper]

    def round_of_kills(tag: str) -> None:
        readers = []
        ids = [f"sleep-c-{tag}-{i}" for i in range(4)]
        for task_id in ids:
            containerd.ctr("run", "-d", "--runtime", RUNTIME, sleeper, task_id, "/app.wasm", "100")
        for i in range(2):  # blocked reading a stdin that stays open (ctr holds its end)
            task_id = f"cat-c-{tag}-{i}"
            readers.append(subprocess.Popen(
                containerd.ctr_argv("run", "--runtime", RUNTIME, reader, task_id, "/app.wasm", "-"),
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=containerd.ctr_env(),
            ))
            ids.append(task_id)
        try:
            for task_id in ids:
                wait_for(lambda: _status(containerd, task_id) == "RUNNING", 10, f"{task_id} running")  # noqa: B023
            assert len(_runners(daemon)) == len(ids) + 1
            for task_id in ids:
                containerd.ctr("task", "kill", "-s", "SIGKILL", task_id)
            for task_id in ids:
                # An attached `ctr run` deletes its task once it has exited: STOPPED, then gone.
                wait_for(lambda: _status(containerd, task_id) in ("STOPPED", ""), 5, f"{task_id} stopped")  # noqa: B023
            for run in readers:
                run.communicate(timeout=10)
                assert run.returncode == 137
        finally:
            for run in readers:
                if run.poll() is None:
                    run.kill()
                run.communicate()
        for task_id in ids:
            containerd.ctr("task", "rm", task_id, check=False)
            containerd.ctr("container", "rm", task_id)

    round_of_kills("warm")  # the exit watcher thread and executor threads are made once and kept
    before = process_footprint(daemon)
    round_of_kills("measured")
    wait_for(lambda: _runners(daemon) == [keeper], 5, "no runner but the keeper's")
    wait_for(lambda: process_footprint(daemon).threads <= before.threads, 5, "threads back to baseline")
    after = process_footprint(daemon)
    assert after.fds <= before.fds, (before, after)
    assert _status(containerd, "keeper-c") == "RUNNING"  # the survivor is untouched
    remove_task(containerd, "keeper-c")
    wait_for(lambda: _runners(daemon) == [], 5, "keeper's runner gone")


def test_pause_and_resume_freeze_the_runner(containerd, wasm_image, guests):
    image = wasm_image("spin-c", guests / "spin.component.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "spin-c")
    try:
        wait_for(lambda: _status(containerd, "spin-c") == "RUNNING", 10, "spinner running")
        pid = task_pid(containerd, "spin-c")
        containerd.ctr("task", "pause", "spin-c")
        assert _status(containerd, "spin-c") == "PAUSED"
        wait_for(lambda: _proc_state(pid) == "T", 5, "runner stopped")
        containerd.ctr("task", "resume", "spin-c")
        assert _status(containerd, "spin-c") == "RUNNING"
        wait_for(lambda: _proc_state(pid) in ("R", "S"), 5, "runner running")
        containerd.ctr("task", "pause", "spin-c")  # a paused runner is killable
        before = time.monotonic()
        containerd.ctr("task", "kill", "-s", "SIGKILL", "spin-c")
        wait_for(lambda: _status(containerd, "spin-c") == "STOPPED", 10, "spinner stopped")
        assert time.monotonic() - before < 1.0 + 0.5  # the kill bound plus ctr's own polling
    finally:
        remove_task(containerd, "spin-c")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_thread_isolation_keeps_the_component_in_the_daemon(containerd, wasm_image, guests):
    image = wasm_image("hello-c", guests / "hello.component.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", f"{ISOLATION}=thread", image, "th-1")
    assert out.stdout.strip() == "hello from wasm"
    bad = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", f"{ISOLATION}=vm", image, "th-2",
                         check=False)
    assert bad.returncode != 0 and ISOLATION in bad.stderr and "process" in bad.stderr, bad.stderr
    containerd.ctr("container", "rm", "th-2", check=False)


def test_without_the_runner_a_component_in_a_process_fails_create_naming_it(containerd_factory,
                                                                            wasm_image_factory, guests):
    """The runner is the one way a component runs in a process: without it, Create says what is missing and how
    to get it (or to run the component in the daemon instead), and nothing is left running."""
    containerd = containerd_factory(env={"WASM_SHIM_COMPONENT_RUNNER": "/nonexistent/wasm-shim-component-runner"})
    wasm_image = wasm_image_factory(containerd)
    hello = wasm_image("hello-norunner", guests / "hello.component.wasm")
    refused = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "norunner-1", check=False)
    assert refused.returncode != 0
    assert "components run in wasm-shim-component-runner, which is not installed here" in refused.stderr
    assert "/nonexistent/wasm-shim-component-runner" in refused.stderr and f"{ISOLATION}=thread" in refused.stderr
    containerd.ctr("container", "rm", "norunner-1", check=False)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", f"{ISOLATION}=thread", hello,
                         "norunner-2")
    assert out.stdout.strip() == "hello from wasm"
    (daemon,) = daemon_pids(containerd)
    assert _runners(daemon) == []
    assert "wasm-shim-component-runner not found" in shim_log_text(containerd)
