"""Nothing private of a guest reaches a place a local user can read: argv, environments, logs (base.py; the runner's
plan, shim/engines/wasmtime/runner.py).

Through a real containerd and `ctr`, as Kubernetes hands a Secret to a container: in the image's (so the spec's)
environment. While a component (in its runner process) and a module (in a daemon thread) run with a secret in
their environment, every process's `/proc/PID/cmdline` (world-readable) and `/proc/PID/environ` is scanned: the
secret is in none of them, and the scan saw the daemon and the runner. The daemon's log files are 0600. A plan far
over the 128 KiB one argument may hold (a large environment) starts its runner.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from lab.shimtools import (
    RUNTIME,
    daemon_pids,
    remove_task,
    task_pid,
    task_status,
    wait_for,
)

pytestmark = pytest.mark.integration

ARG_MAX_STRLEN = 32 * 4096  # Linux's MAX_ARG_STRLEN: one argv or environment string longer than this is E2BIG


def _readable(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone meanwhile, or a kernel thread
        return None


def _leaks(secret: bytes) -> tuple[list[str], set[int]]:
    """Every /proc/PID/{cmdline,environ} that holds ``secret`` (this test process aside), and the pids scanned."""
    found, scanned = [], set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            data = _readable(int(entry.name), name)
            if data is None:
                continue
            scanned.add(int(entry.name))
            if secret in data:
                found.append(f"/proc/{entry.name}/{name}: {data[:200]!r}")
    return found, scanned


def test_a_secret_in_the_environment_is_in_no_argv_environment_or_log(containerd, wasm_image, guests):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    env = [f"DB_PASSWORD={secret}"]
    shown = wasm_image("secret-shown", guests / "args_env.component.wasm", env=env)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, shown, "secret-shown")
    assert f"env=DB_PASSWORD={secret}" in out.stdout  # the guest has it: a leak would be this very string

    component = wasm_image("secret-c", guests / "sleep.component.wasm", env=env)
    module = wasm_image("secret-m", guests / "sleep.wasm", env=env)
    tasks = {"secret-c": component, "secret-m": module}
    for task_id, image in tasks.items():
        containerd.ctr("run", "-d", "--runtime", RUNTIME, image, task_id, "/app.wasm", "100")
    try:
        wait_for(lambda: all(task_status(containerd, t) == "RUNNING" for t in tasks), 20, "both running")
        runner = task_pid(containerd, "secret-c")
        (daemon,) = daemon_pids(containerd)
        assert runner != daemon  # the component is in its runner process, the module in the daemon
        leaks, scanned = _leaks(secret.encode())
        assert not leaks, leaks
        assert {runner, daemon} <= scanned
        assert Path(f"/proc/{runner}/cmdline").read_bytes().split(b"\0")[1:3] == [b"--plan-fd", b"4"]
    finally:
        for task_id in tasks:
            remove_task(containerd, task_id)
    logs = sorted(Path(containerd.shim_socket_dir or "/nonexistent").glob("*.log*"))
    assert logs, "the daemon writes <socket>.log"
    for log in logs:
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
        assert secret not in log.read_text(errors="replace")


def test_a_plan_larger_than_one_argument_may_be_starts_its_runner(containerd, wasm_image, guests):
    """One variable alone over the limit of an argument: the runner starts, and the guest runs.

    (hello does not read its environment: jco's preview1 adapter traps on one this large; the runner's own unit
    test, runner/src/plan.rs, checks that such a plan is read whole.)
    """
    big = "x" * (ARG_MAX_STRLEN + (64 << 10))
    image = wasm_image("big-env", guests / "hello.component.wasm", env=[f"BIG={big}", "AFTER=end"])
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "big-env", timeout=120, check=False)
    assert (out.returncode, out.stdout) == (0, "hello from wasm\n"), out.stderr[-500:]
