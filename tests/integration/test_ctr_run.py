"""`ctr run` of wasm guests through our shim, on a private containerd 1.6 and 2.x.

What a user sees: the guest's stdout/stderr, its exit code as ctr's, `ctr task kill` stopping it, `ctr task ls`
states, nothing left behind after `--rm`, and (2.x) containerd talking `containerd.task.v3.Task` to us.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.shimtools import (
    RUNTIME,
    daemon_pids,
    process_footprint,
    shim_log_text,
    wait_for,
)
from lab.shimtools import (
    task_status as _task_status,
)

pytestmark = pytest.mark.integration


@pytest.mark.containerd_1_7  # the smoke set on containerd 1.7
def test_hello_stdout(containerd, wasm_image, guests):
    image = wasm_image("hello", guests / "hello.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "hello-1")
    assert out.stdout.strip() == "hello from wasm"


def test_stderr_is_separate(containerd, wasm_image, guests):
    image = wasm_image("stderr", guests / "stderr.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "stderr-1")
    assert "written to stderr by wasm" in out.stderr
    assert "written to stderr by wasm" not in out.stdout


def test_args_and_env(containerd, wasm_image, guests):
    image = wasm_image("argsenv", guests / "args_env.wasm", env=["FROM_IMAGE=yes"])
    out = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, "--env", "GREETING=hi there", image, "args-1",
        "/app.wasm", "first", "second arg",
    )
    lines = out.stdout.splitlines()
    assert "argv[1]=first" in lines
    assert "argv[2]=second arg" in lines
    assert "env=GREETING=hi there" in lines
    assert "env=FROM_IMAGE=yes" in lines


def test_exit_code_becomes_ctr_exit_code(containerd, wasm_image, guests):
    image = wasm_image("exitcode", guests / "exit_code.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "exit-1", "/app.wasm", "42", check=False)
    assert out.returncode == 42, out.stderr


def test_trap_is_nonzero_with_message(containerd, wasm_image, guests):
    image = wasm_image("trap", guests / "trap.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "trap-1", check=False)
    assert out.returncode == 134
    assert "wasm trap" in out.stderr


@pytest.mark.containerd_1_7  # the smoke set on containerd 1.7
def test_component_hello(containerd, wasm_image, guests):
    image = wasm_image("comp-hello", guests / "hello.component.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "comp-1")
    assert out.stdout.strip() == "hello from wasm"


def test_component_exit_code(containerd, wasm_image, guests):
    # WASI 0.2's wasi:cli/exit carries only ok/err (exit-with-code is not stable), so a component exiting with
    # any non-zero code ends with status 1, as under the wasmtime CLI.
    image = wasm_image("comp-exit", guests / "exit_code.component.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "comp-exit-1", "/app.wasm", "7", check=False)
    assert out.returncode == 1, out.stderr
    assert "exiting with 7" in out.stdout
    ok = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "comp-exit-2", "/app.wasm", "0", check=False)
    assert ok.returncode == 0, ok.stderr


def test_export_entrypoint(containerd, wasm_image, guests):
    image = wasm_image("multi", guests / "multi.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "multi-1", "/app.wasm#greet")
    assert "greet" in out.stdout


@pytest.mark.parametrize("guest", ["spin.wasm", "spin.component.wasm"])
def test_kill_spinning_guest(containerd, wasm_image, guests, guest):
    image = wasm_image("spin-" + guest.split(".")[1], guests / guest)
    task_id = "spin-" + guest.replace(".", "-")
    run = subprocess.Popen(
        containerd.ctr_argv("run", "--runtime", RUNTIME, image, task_id),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: _task_status(containerd, task_id) == "RUNNING", 30, f"{task_id} running")
        containerd.ctr("task", "kill", "-s", "SIGKILL", task_id)
        _, err = run.communicate(timeout=10)
        assert run.returncode == 137, err
        # `ctr run` (without --rm) deletes the task once it has exited and keeps the container.
        assert _task_status(containerd, task_id) == ""
        containerd.ctr("container", "rm", task_id)
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


@pytest.mark.containerd_1_7  # the smoke set on containerd 1.7
def test_detached_lifecycle_states(containerd, wasm_image, guests):
    image = wasm_image("sleep", guests / "spin.wasm")
    containerd.ctr("container", "create", "--runtime", RUNTIME, image, "states-1")
    containerd.ctr("task", "start", "-d", "states-1")
    assert _task_status(containerd, "states-1") == "RUNNING"
    # Delete of a running task is refused with both states named.
    refused = containerd.ctr("task", "rm", "states-1", check=False)
    assert refused.returncode != 0
    containerd.ctr("task", "kill", "-s", "SIGTERM", "states-1")
    wait_for(lambda: _task_status(containerd, "states-1") == "STOPPED", 10, "task stopped")
    containerd.ctr("task", "rm", "states-1")
    containerd.ctr("container", "rm", "states-1")


def test_missing_entrypoint_fails_create_with_path(containerd, wasm_image, guests):
    image = wasm_image("missing", guests / "hello.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "missing-1", "/nope.wasm", check=False)
    assert out.returncode != 0
    assert "/nope.wasm" in out.stderr
    containerd.ctr("container", "rm", "missing-1", check=False)


def test_non_wasm_entrypoint_fails_create(containerd, wasm_image, guests, tmp_path):
    text = tmp_path / "notwasm.txt"
    text.write_text("just text\n")
    image = wasm_image("notwasm", text)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "notwasm-1", check=False)
    assert out.returncode != 0
    assert "/app.wasm" in out.stderr and "WebAssembly" in out.stderr
    containerd.ctr("container", "rm", "notwasm-1", check=False)


def test_v3_task_api_used_on_2x(containerd, wasm_image, guests):
    image = wasm_image("hello", guests / "hello.wasm")
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "v3-1")
    log = shim_log_text(containerd)
    if containerd.kind == "1.6":
        assert "containerd.task.v2.Task/Create" in log
        assert "containerd.task.v3.Task" not in log
    else:
        assert "containerd.task.v3.Task/Create" in log


def test_fifty_runs_leave_nothing_behind(containerd, wasm_image, guests):
    image = wasm_image("hello", guests / "hello.wasm")
    # Warm up until the daemon's worker pool has the threads this load needs; then it must not grow.
    for i in range(20):
        containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, f"warm-{i}")
    pids = daemon_pids(containerd)
    assert len(pids) == 1, pids
    before = process_footprint(pids[0])
    for i in range(50):
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, f"loop-{i}")
        assert out.stdout.strip() == "hello from wasm"
    after = process_footprint(pids[0])
    assert daemon_pids(containerd) == pids, "one daemon serves every run"
    assert containerd.ctr("container", "ls", "-q").stdout.strip() == ""
    assert containerd.ctr("task", "ls", "-q").stdout.strip() == ""
    assert after.threads <= before.threads, (before, after)
    assert after.fds <= before.fds, (before, after)
    # Memory: allow allocator noise, not per-run growth (50 runs x even 100 KiB would be 5 MiB).
    assert after.rss_kib - before.rss_kib < 4096, (before, after)
    mounted = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if containerd.state in line]
    assert not [m for m in mounted if "/rootfs" in m], mounted


def test_daemon_lingers_then_exits_when_idle(containerd_factory, wasm_image_factory, guests):
    containerd = containerd_factory(env={"WASM_SHIM_IDLE_TIMEOUT": "1"})
    image = wasm_image_factory(containerd)("hello", guests / "hello.wasm")
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "idle-1")
    wait_for(lambda: not daemon_pids(containerd), 20, "idle daemon exits")
    # The next container starts a new daemon transparently.
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "idle-2")
    assert out.stdout.strip() == "hello from wasm"
    assert len(daemon_pids(containerd)) == 1


@pytest.mark.parametrize("kind", ["module", "component"])
def test_piped_stdin_reaches_the_guest_and_ends(containerd, wasm_image, guests, kind):
    """`... | ctr run`: the guest reads what was piped in, then end-of-file, and exits (no hang)."""
    wasm = guests / ("cat_file.wasm" if kind == "module" else "cat_file.component.wasm")
    image = wasm_image(f"stdin-{kind}", wasm)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, f"stdin-{kind}", "/app.wasm", "-",
                         input="piped text\nsecond line\n", timeout=30)
    assert out.stdout == "piped text\nsecond line\n", out.stderr
