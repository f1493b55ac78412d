"""The child-process plumbing (shim/engines/child.py) and the native engine's without runc: exit statuses, the
pidfd exit watcher, stdio, cgroups, runc's log. Real child processes and FIFOs; no sockets, no containers."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from wasm_shim.shim.engines.base import EngineError, GuestStdio
from wasm_shim.shim.engines.cgroups import cgroup_dir, cgroup_pids, cgroup_usage, parse_proc_cgroup, read_cgroups
from wasm_shim.shim.engines.child import ExitWatcher, check_signal, exit_status, open_stdio
from wasm_shim.shim.engines.runc import runc_log_error


def _spawn(*args: str) -> int:
    return os.posix_spawn(sys.executable, [sys.executable, "-c", *args], os.environ)


def _reaped_status(pid: int) -> int:
    result = os.waitid(os.P_PID, pid, os.WEXITED)
    assert result is not None
    return exit_status(result)


def test_exit_status_is_the_code_or_128_plus_signal() -> None:
    assert _reaped_status(_spawn("raise SystemExit(3)")) == 3
    assert _reaped_status(_spawn("pass")) == 0
    pid = _spawn("import time; time.sleep(30)")
    os.kill(pid, signal.SIGKILL)
    assert _reaped_status(pid) == 137


def test_signal_numbers_are_checked() -> None:
    check_signal(signal.SIGTERM)
    for bad in (0, -1, signal.NSIG, 1000):
        with pytest.raises(EngineError, match="invalid signal"):
            check_signal(bad)


def test_watcher_reaps_each_process_once_and_reports_its_status() -> None:
    watcher = ExitWatcher()
    statuses: dict[int, int] = {}
    done = threading.Event()

    def record(pid: int):  # type: ignore[no-untyped-def]
        def on_reaped(status: int) -> None:
            statuses[pid] = status
            if len(statuses) == 3:
                done.set()
        return on_reaped

    quick = _spawn("raise SystemExit(7)")
    sleeper = _spawn("import time; time.sleep(30)")
    other = _spawn("import time; time.sleep(0.2)")
    for pid in (quick, sleeper, other):
        watcher.watch(os.pidfd_open(pid), record(pid))
    os.kill(sleeper, signal.SIGTERM)
    assert done.wait(10), statuses
    assert statuses == {quick: 7, sleeper: 128 + signal.SIGTERM, other: 0}
    for pid in (quick, sleeper, other):  # reaped: no zombie left, and the pid is no child of ours any more
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    watcher.close(5)
    assert watcher._thread is None


def test_watcher_close_waits_for_watched_processes() -> None:
    watcher = ExitWatcher()
    seen: list[int] = []
    pid = _spawn("import time; time.sleep(0.3)")
    watcher.watch(os.pidfd_open(pid), seen.append)
    watcher.close(10)
    assert seen == [0]


def test_stdio_none_is_the_null_device() -> None:
    fds = open_stdio(GuestStdio())
    try:
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in fds] == ["/dev/null"] * 3
        assert all(not os.get_inheritable(fd) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_stdio_fifos_open_without_a_peer_and_stay_blocking(tmp_path: Path) -> None:
    paths = {name: tmp_path / name for name in ("in", "out", "err")}
    for path in paths.values():
        os.mkfifo(path)
    # ctr holds the readers of stdout/stderr; stdin has no writer yet, which must not block the open.
    readers = [os.open(paths[n], os.O_RDONLY | os.O_NONBLOCK) for n in ("out", "err")]
    fds = open_stdio(GuestStdio(stdin=str(paths["in"]), stdout=str(paths["out"]), stderr=str(paths["err"])))
    try:
        assert all(os.get_blocking(fd) for fd in fds)
        os.write(fds[1], b"to out")
        os.write(fds[2], b"to err")
        assert os.read(readers[0], 100) == b"to out"
        assert os.read(readers[1], 100) == b"to err"
        writer = os.open(paths["in"], os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"typed")
        os.close(writer)
        assert os.read(fds[0], 100) == b"typed"
        assert os.read(fds[0], 100) == b""  # the last writer left: EOF, the container's stdin ends
    finally:
        for fd in (*fds, *readers):
            os.close(fd)


def test_stdio_regular_file_is_created_and_truncated(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    out.write_text("old contents\n")
    fds = open_stdio(GuestStdio(stdout=str(out)))
    try:
        os.write(fds[1], b"new\n")
    finally:
        for fd in fds:
            os.close(fd)
    assert out.read_text() == "new\n"


def test_stdio_error_names_the_stream_and_path(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"stdin .*/missing: No such file"):
        open_stdio(GuestStdio(stdin=str(tmp_path / "missing")))
    with pytest.raises(EngineError, match=r"stderr .*/no/dir/err"):
        open_stdio(GuestStdio(stderr=str(tmp_path / "no" / "dir" / "err")))


def test_proc_cgroup_v1_and_v2_lines() -> None:
    text = "12:pids:/ns/c1\n4:cpu,cpuacct:/ns/c1\n1:name=systemd:/ns/c1\n0::/unified/c1\n"
    paths = parse_proc_cgroup(text)
    assert paths["pids"] == paths["cpuacct"] == paths["cpu,cpuacct"] == "/ns/c1"
    assert paths["name=systemd"] == "/ns/c1"
    assert paths[""] == "/unified/c1"
    assert cgroup_dir(paths, "", "/sys/fs/cgroup") == "/sys/fs/cgroup/unified/c1"
    assert cgroup_dir(paths, "memory", "/sys/fs/cgroup") is None


def test_usage_and_pids_of_our_own_cgroup() -> None:
    # The test process's real cgroups (v1 here; v2 elsewhere): both readings must come from the kernel's files.
    cgroups = read_cgroups(os.getpid())
    memory, cpu_ns = cgroup_usage(cgroups)
    assert memory > 0 and cpu_ns > 0
    assert os.getpid() in cgroup_pids(cgroups)


def test_usage_of_a_vanished_cgroup_is_zero(tmp_path: Path) -> None:
    cgroups = parse_proc_cgroup("5:memory:/gone\n3:cpuacct:/gone\n")
    assert cgroup_usage(cgroups, str(tmp_path)) == (0, 0)
    assert cgroup_pids(cgroups, str(tmp_path)) == []


def test_runc_log_errors_are_extracted() -> None:
    log = (
        '{"level":"info","msg":"starting","time":"t"}\n'
        '{"level":"error","msg":"runc create failed: unable to start container process: exec: \\"x\\"","time":"t"}\n'
    )
    assert runc_log_error(log) == 'runc create failed: unable to start container process: exec: "x"'
    assert runc_log_error("not json at all\n") == "not json at all"
    assert runc_log_error("") == ""


def test_guest_delivers_an_exit_that_came_before_start_returned() -> None:
    # A container like `true` can be reaped before start() arms on_exit: the status must still arrive, once.
    from wasm_shim.shim.engines.native import NativeGuest
    from wasm_shim.shim.engines.runc import Runc

    guest = NativeGuest(Runc("runc", "/nonexistent"), "t", 0, lambda _id: None)
    guest.reaped(3)
    seen: list[int] = []
    guest.arm(seen.append)
    assert seen == [3] and guest.exit_status == 3
    armed = NativeGuest(Runc("runc", "/nonexistent"), "u", 0, lambda _id: None)
    armed.arm(seen.append)
    armed.reaped(137)
    assert seen == [3, 137]
    assert armed.pids() == []
    armed.kill(9)  # a no-op once the container has exited: no runc call
