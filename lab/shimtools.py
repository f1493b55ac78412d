"""Helpers for tests that drive our shim through a real containerd: finding its daemons and tasks, reading their
logs, measuring their footprint, removing a task. Starts nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.containerd import Containerd
from wasm_shim.shim.launch.binary import DAEMON_MODULE

RUNTIME = "io.containerd.wasmtime.v1"


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


def task_status(containerd: Containerd, task_id: str) -> str:
    """The STATUS column of `ctr task ls` for `task_id` ("" when containerd has no such task)."""
    for line in containerd.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == task_id:
            return fields[-1]
    return ""


def task_pid(containerd: Containerd, task_id: str) -> int:
    """The PID column of `ctr task ls` for `task_id` (for a component: its runner process)."""
    for line in containerd.ctr("task", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == task_id:
            return int(fields[1])
    raise AssertionError(f"task {task_id} not listed")


def remove_task(containerd: Containerd, task_id: str) -> None:
    """SIGKILL the task if it runs, wait until it stopped, delete task and container (whatever exists of them)."""
    containerd.ctr("task", "kill", "-s", "SIGKILL", task_id, check=False)
    wait_for(lambda: task_status(containerd, task_id) in ("STOPPED", ""), 10, f"{task_id} stopped")
    containerd.ctr("task", "rm", task_id, check=False)
    containerd.ctr("container", "rm", task_id, check=False)


def daemon_pids(containerd: Containerd) -> list[int]:
    """Our shim daemons serving this containerd (their argv names its address)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if DAEMON_MODULE.encode() in argv and containerd.address.encode() in argv:
            pids.append(int(entry.name))
    return sorted(pids)


@dataclass(frozen=True)
class Footprint:
    threads: int
    fds: int
    rss_kib: int


def process_footprint(pid: int) -> Footprint:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return Footprint(
        threads=int(status["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_kib=int(status["VmRSS"].split()[0]),
    )


def shim_log_text(containerd: Containerd) -> str:
    """Every daemon log (`<socket>.log`) in this containerd's shim socket dir."""
    directory = containerd.shim_socket_dir
    assert directory is not None
    return "".join(p.read_text(errors="replace") for p in sorted(Path(directory).glob("*.log*")))
