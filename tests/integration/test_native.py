"""Native containers: ELF and #! entrypoints run through runc, delegated from our daemon.

Driven through a real containerd (1.6 and 2.x) with `ctr --runtime io.containerd.wasmtime.v1` and a static
busybox image: what a user sees (output, exit codes, kill, `ctr task ls/ps/metrics`), that the container is a
real process in its own cgroup whose parent is our daemon, that nothing is left behind, and that one daemon runs
wasm and native tasks side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.containerd import Containerd, process_alive
from lab.shimtools import RUNTIME, daemon_pids, shim_log_text, wait_for
from wasm_shim.shim.engines.native import DEFAULT_RUNC_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def runc_root(containerd: Containerd) -> Iterator[Path]:
    """Our daemon's runc root for this containerd's namespace; removed at teardown (the harness does not know it).

    The harness's stop() has killed every process of the namespace's cgroups by the time this runs."""
    root = Path(DEFAULT_RUNC_ROOT) / containerd.namespace
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _tasks(containerd: Containerd) -> dict[str, tuple[int, str]]:
    """`ctr task ls` as id -> (pid, status)."""
    rows = {}
    for line in containerd.ctr("task", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            rows[fields[0]] = (int(fields[1]), fields[-1])
    return rows


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _rootfs_mounts(containerd: Containerd) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if containerd.state in line and "/rootfs" in line]


def _zombie_children(parent: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == parent:
                zombies.append(int(entry.name))
    return zombies


def _assert_nothing_left(containerd: Containerd, runc_root: Path, pids: list[int]) -> None:
    assert containerd.ctr("task", "ls", "-q").stdout.strip() == ""
    for daemon in daemon_pids(containerd):
        assert _zombie_children(daemon) == []
    assert not runc_root.exists() or not list(runc_root.iterdir()), list(runc_root.iterdir())
    assert _rootfs_mounts(containerd) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} ({_cmdline(pid)}) is still there"
    cgroups = [d for d in Path("/sys/fs/cgroup").glob(f"*/{containerd.namespace}/*") if d.is_dir()]
    assert cgroups == [], cgroups


def test_echo_runs_through_runc(containerd, busybox_image, runc_root):
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, busybox_image, "native-echo", "echo", "hello")
    assert out.stdout == "hello\n"
    assert "native-echo" in shim_log_text(containerd) and "engine native" in shim_log_text(containerd)
    _assert_nothing_left(containerd, runc_root, [])


def test_stdout_and_stderr_are_separate(containerd, busybox_image, runc_root):
    out = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, busybox_image, "native-streams",
        "sh", "-c", "echo to-out; echo to-err >&2",
    )
    assert out.stdout == "to-out\n"
    assert "to-err" in out.stderr and "to-err" not in out.stdout


def test_stdin_reaches_the_container(containerd, busybox_image, runc_root):
    # ctr copies its stdin into the stdin FIFO and closes it at EOF; the container reads the FIFO itself.
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, busybox_image, "native-stdin", "cat",
                         input="piped text\n", timeout=30)
    assert out.stdout == "piped text\n"


def test_exit_code_becomes_ctr_exit_code(containerd, busybox_image, runc_root):
    out = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, busybox_image, "native-exit", "sh", "-c", "exit 3", check=False
    )
    assert out.returncode == 3, out.stderr
    _assert_nothing_left(containerd, runc_root, [])


def test_script_entrypoint(containerd, busybox_image, runc_root, tmp_path):
    # A #! script, bind-mounted into the container, run by its interpreter (/bin/sh from the image).
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho script says $1\n")
    script.chmod(0o755)
    out = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, "--mount", f"type=bind,src={tmp_path},dst=/scripts,options=rbind:ro",
        busybox_image, "native-script", "/scripts/hello.sh", "hi",
    )
    assert out.stdout == "script says hi\n"


def test_detached_sleep_is_a_real_process_in_its_cgroup(containerd, busybox_image, runc_root):
    containerd.ctr("container", "create", "--runtime", RUNTIME, busybox_image, "native-sleep", "sleep", "1000")
    containerd.ctr("task", "start", "-d", "native-sleep")
    pid, status = _tasks(containerd)["native-sleep"]
    assert status == "RUNNING"
    assert _cmdline(pid) == ["sleep", "1000"]
    # Re-parented from `runc create` to our daemon (a child subreaper), which reaps it.
    assert [_ppid(pid)] == daemon_pids(containerd)
    # ctr's default cgroupsPath is /<namespace>/<id>; runc put the container there.
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"/{containerd.namespace}/native-sleep" in cgroup
    assert (runc_root / "native-sleep" / "state.json").is_file()

    ps = containerd.ctr("task", "ps", "native-sleep").stdout.split()
    assert str(pid) in ps
    metrics = containerd.ctr("task", "metrics", "native-sleep").stdout
    memory = [line.split() for line in metrics.splitlines() if line.startswith("memory.usage_in_bytes")]
    assert memory and int(memory[0][-1]) > 0, metrics

    containerd.ctr("task", "kill", "-s", "SIGKILL", "native-sleep")
    wait_for(lambda: _tasks(containerd)["native-sleep"][1] == "STOPPED", 10, "native-sleep stopped")
    containerd.ctr("task", "rm", "native-sleep")
    containerd.ctr("container", "rm", "native-sleep")
    _assert_nothing_left(containerd, runc_root, [pid])


def test_kill_attached_run_exits_137(containerd, busybox_image, runc_root):
    run = subprocess.Popen(
        containerd.ctr_argv("run", "--runtime", RUNTIME, busybox_image, "native-kill", "sleep", "1000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # RUNNING shows as soon as Start began; the pid is the container's once runc start returned.
        wait_for(lambda: _cmdline(_tasks(containerd).get("native-kill", (0, ""))[0])[:1] == ["sleep"], 30,
                 "native-kill running sleep")
        pid = _tasks(containerd)["native-kill"][0]
        containerd.ctr("task", "kill", "-s", "SIGKILL", "native-kill")
        _, err = run.communicate(timeout=10)
        assert run.returncode == 137, err
        containerd.ctr("container", "rm", "native-kill")
        _assert_nothing_left(containerd, runc_root, [pid])
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


def test_kill_all_reaches_every_process(containerd, busybox_image, runc_root):
    # PID 1 of a PID namespace ignores a SIGTERM it has no handler for: a plain kill leaves the container running,
    # and only `--all` (runc kill --all) reaches the sleeps, whose end lets PID 1's `wait` return.
    containerd.ctr("container", "create", "--runtime", RUNTIME, busybox_image, "native-all",
                   "--", "sh", "-c", "sleep 1000 & sleep 1000 & wait")  # `--`: ctr's own -c is --config
    containerd.ctr("task", "start", "-d", "native-all")
    wait_for(lambda: len(containerd.ctr("task", "ps", "native-all").stdout.splitlines()) == 4, 10, "3 processes")
    pids = [int(line.split()[0]) for line in containerd.ctr("task", "ps", "native-all").stdout.splitlines()[1:]]
    containerd.ctr("task", "kill", "-s", "SIGTERM", "native-all")
    time.sleep(1.0)  # a bound for a signal to be seen, not a timing assertion: the state is what is checked
    assert _tasks(containerd)["native-all"][1] == "RUNNING", "PID 1 ignores SIGTERM without --all"
    assert all(process_alive(pid) for pid in pids)
    containerd.ctr("task", "kill", "--all", "-s", "SIGTERM", "native-all")
    wait_for(lambda: _tasks(containerd)["native-all"][1] == "STOPPED", 10, "native-all stopped")
    containerd.ctr("task", "rm", "native-all")
    containerd.ctr("container", "rm", "native-all")
    _assert_nothing_left(containerd, runc_root, pids)


def test_wasm_and_native_tasks_in_one_daemon(containerd, busybox_image, wasm_image, guests, runc_root):
    containerd.ctr("container", "create", "--runtime", RUNTIME, busybox_image, "mixed-native", "sleep", "1000")
    containerd.ctr("task", "start", "-d", "mixed-native")
    spin = wasm_image("spin", guests / "spin.wasm")
    containerd.ctr("container", "create", "--runtime", RUNTIME, spin, "mixed-wasm")
    containerd.ctr("task", "start", "-d", "mixed-wasm")
    hello = wasm_image("hello", guests / "hello.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "mixed-hello")
    assert out.stdout.strip() == "hello from wasm"
    echo = containerd.ctr("run", "--rm", "--runtime", RUNTIME, busybox_image, "mixed-echo", "echo", "native too")
    assert echo.stdout == "native too\n"

    tasks = _tasks(containerd)
    daemons = daemon_pids(containerd)
    assert len(daemons) == 1, daemons
    native_pid, wasm_pid = tasks["mixed-native"][0], tasks["mixed-wasm"][0]
    assert wasm_pid == daemons[0]  # a wasm guest is a thread of the daemon
    assert native_pid != wasm_pid and _ppid(native_pid) == daemons[0]
    assert tasks["mixed-native"][1] == tasks["mixed-wasm"][1] == "RUNNING"

    for task in ("mixed-native", "mixed-wasm"):
        containerd.ctr("task", "kill", "-s", "SIGKILL", task)
    for task in ("mixed-native", "mixed-wasm"):
        wait_for(lambda t=task: _tasks(containerd)[t][1] == "STOPPED", 10, f"{task} stopped")
        containerd.ctr("task", "rm", task)
        containerd.ctr("container", "rm", task)
    _assert_nothing_left(containerd, runc_root, [native_pid])
    assert daemon_pids(containerd) == daemons


def test_command_not_on_path_fails_create_with_its_name(containerd, busybox_image, runc_root):
    out = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, busybox_image, "native-missing", "no-such-tool", check=False
    )
    assert out.returncode != 0
    assert "no-such-tool" in out.stderr and "PATH" in out.stderr, out.stderr
    containerd.ctr("container", "rm", "native-missing", check=False)
    _assert_nothing_left(containerd, runc_root, [])


def test_runc_failure_is_reported_and_cleaned_up(containerd, busybox_image, runc_root):
    # The cwd does not exist and cannot be created (the rootfs is read-only): runc create fails; its message
    # reaches ctr, and nothing of the half-made container stays behind.
    out = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, "--rootfs-propagation", "private", "--cwd", "/bin/sh/sub",
        busybox_image, "native-badcwd", "true", check=False,
    )
    assert out.returncode != 0
    assert "runc" in out.stderr and "native-badcwd" in out.stderr, out.stderr
    containerd.ctr("task", "rm", "native-badcwd", check=False)
    containerd.ctr("container", "rm", "native-badcwd", check=False)
    _assert_nothing_left(containerd, runc_root, [])
    assert os.path.isdir(containerd.state)


def test_daemon_shutdown_leaves_no_container_behind(containerd, busybox_image, runc_root):
    containerd.ctr("container", "create", "--runtime", RUNTIME, busybox_image, "native-orphan", "sleep", "1000")
    containerd.ctr("task", "start", "-d", "native-orphan")
    pid = _tasks(containerd)["native-orphan"][0]
    [daemon] = daemon_pids(containerd)
    os.kill(daemon, signal.SIGTERM)  # what an operator or a node shutdown does
    wait_for(lambda: not Path(f"/proc/{daemon}").exists(), 15, "daemon exits")
    assert not Path(f"/proc/{pid}").exists(), "the container's process outlived the daemon"
    assert not (runc_root / "native-orphan").exists()
