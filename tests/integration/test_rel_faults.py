"""Faults — the daemon killed, containerd restarted, the compiled cache damaged or on a full disk.

- SIGKILL of the daemon while tasks run (modules and a component): containerd sees every task exit (137, through
  the shim's `delete` binary, which finds no daemon and reports the task killed), nothing hangs, the component's
  runner process dies with the daemon, the tasks' rootfs mounts are gone, and the next container gets a fresh
  daemon on the same socket path (the dead one's socket is replaced, not left behind).
- containerd restarted (SIGTERM, then started again with the same config) while tasks run: the running task is
  still there and killable, and a task that exited while containerd was down has its exit status (0) reported.
- containerd SIGKILLed while a `ctr run` (Create) is in flight: afterwards whatever exists of that container can
  be removed, its rootfs is unmounted, and the next container runs.
- A corrupted or truncated compiled-module file is detected (digest), deleted, recompiled and rewritten; the guest
  runs. A cache dir on a full tmpfs: a clear log line and the guest runs uncached; a cache dir that cannot even be
  created (no inodes left): the daemon says so and runs without an on-disk cache.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.containerd import Containerd, process_alive
from lab.containerd_api import ContainerdAPI
from lab.shimtools import (
    RUNTIME,
    daemon_pids,
    remove_task,
    shim_log_text,
    task_pid,
    task_status,
    wait_for,
)
from lab.soak import record, sample

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(300)]


def _rootfs_mounts(containerd: Containerd) -> list[str]:
    """Mount points under this containerd's state dir (the bundles' rootfs mounts)."""
    state = os.path.realpath(containerd.state)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(state + "/")]


def _exit_status(containerd: Containerd, task_id: str) -> int:
    with ContainerdAPI(containerd.address, containerd.namespace) as api:
        return api.get(task_id).exit_status


class Events:
    """`ctr events` in the background: the /tasks/exit events (container id -> exit status) of this namespace."""

    def __init__(self, containerd: Containerd) -> None:
        self._proc = subprocess.Popen(containerd.ctr_argv("events"), stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, env=containerd.ctr_env())
        self.exits: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.3)  # subscribed

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if " /tasks/exit " in line:
                event = json.loads(line[line.index("{"):])
                self.exits[event["container_id"]] = event.get("exit_status", 0)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.communicate(timeout=10)
        self._reader.join(timeout=10)


def _restart_containerd(containerd: Containerd, how: signal.Signals = signal.SIGTERM, *, start: bool = True) -> None:
    """Stop this containerd with ``how`` and (with ``start``) start it again with the same config and env."""
    assert containerd.process is not None
    containerd.process.send_signal(how)
    containerd.process.wait(timeout=30)
    if start:
        _start_again(containerd)


def _start_again(containerd: Containerd) -> None:
    with containerd.log_path.open("ab") as log:
        containerd.process = subprocess.Popen(
            [containerd.containerd_binary, "--config", str(containerd.config_path)], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, env=containerd.env, cwd=containerd.tmp, start_new_session=True)
    wait_for(lambda: containerd.ctr("version", check=False, timeout=10).returncode == 0, 30, "containerd back")


def test_daemon_sigkill_while_tasks_run(containerd, wasm_image, guests):
    # A module-only image runs without a rootfs mount; images with a file beside the module are mounted, so the
    # killed daemon leaves mounts that must be cleaned up.
    extra = {"/data.txt": b"more than the module\n"}
    bare = wasm_image("sleep", guests / "sleep.wasm")
    sleep = wasm_image("sleep-more", guests / "sleep.wasm", extra=extra)
    comp = wasm_image("sleep-c", guests / "sleep.component.wasm", extra=extra)
    tasks = {"victim-a": bare, "victim-b": sleep, "victim-c": comp}
    for task_id, image in tasks.items():
        containerd.ctr("run", "-d", "--runtime", RUNTIME, image, task_id, "/app.wasm", "3600")
    for task_id in tasks:
        wait_for(lambda: task_status(containerd, task_id) == "RUNNING", 20, f"{task_id} running")  # noqa: B023
    runner = task_pid(containerd, "victim-c")
    (daemon,) = daemon_pids(containerd)
    socket_dir = containerd.shim_socket_dir
    assert socket_dir is not None
    sockets = sorted(p.name for p in socket_dir.iterdir() if p.is_socket())
    mounted = _rootfs_mounts(containerd)
    assert len(mounted) >= 2, mounted

    events = Events(containerd)
    try:
        os.kill(daemon, signal.SIGKILL)
        # containerd runs our `delete` binary for each task (it finds no daemon: "killed", 137) and publishes
        # the exit; a client (CRI, ctr) learns of it from that event.
        wait_for(lambda: set(events.exits) >= set(tasks), 30, "an exit event for every task")
    finally:
        events.close()
    assert events.exits == dict.fromkeys(tasks, 137), events.exits
    wait_for(lambda: not process_alive(runner), 10, "the component's runner to die with the daemon")
    for task_id in tasks:
        containerd.ctr("task", "rm", task_id, timeout=30, check=False)  # containerd has deleted it already
        containerd.ctr("container", "rm", task_id, timeout=30)
    assert _rootfs_mounts(containerd) == [], "the killed tasks' rootfs mounts"

    hello = wasm_image("hello", guests / "hello.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "after-kill", timeout=60)
    assert out.stdout == "hello from wasm\n"
    (fresh,) = daemon_pids(containerd)
    assert fresh != daemon
    # Same group, same socket path: the new daemon replaced the dead one's socket; nothing stale is left.
    assert sorted(p.name for p in socket_dir.iterdir() if p.is_socket()) == sockets
    record(f"fault: daemon SIGKILL ({containerd.kind})", tried="SIGKILL of the daemon with 2 modules + 1 component",
           held="every task exit 137 seen by containerd; runner gone; mounts gone; fresh daemon on the same socket",
           before={"tasks": len(tasks), "mounts": len(mounted)}, after={"mounts": len(_rootfs_mounts(containerd))})


def test_containerd_restart_keeps_tasks(containerd, wasm_image, guests):
    sleep = wasm_image("sleep", guests / "sleep.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleep, "long", "/app.wasm", "3600")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleep, "short", "/app.wasm", "1", "3")
    for task_id in ("long", "short"):
        wait_for(lambda: task_status(containerd, task_id) == "RUNNING", 20, f"{task_id} running")  # noqa: B023
    (daemon,) = daemon_pids(containerd)
    before = sample(daemon)

    _restart_containerd(containerd, start=False)
    # "short" exits while containerd is down: its exit event has nowhere to go yet.
    wait_for(lambda: 'msg="task exited with status 0" task=short ' in shim_log_text(containerd), 30, "short to exit")
    _start_again(containerd)

    assert daemon_pids(containerd) == [daemon], "the daemon outlived containerd"
    wait_for(lambda: task_status(containerd, "short") == "STOPPED", 30, "containerd to see short's exit")
    assert _exit_status(containerd, "short") == 0
    assert task_status(containerd, "long") == "RUNNING"
    containerd.ctr("task", "kill", "-s", "SIGKILL", "long")
    wait_for(lambda: task_status(containerd, "long") == "STOPPED", 10, "long stopped")
    assert _exit_status(containerd, "long") == 137
    for task_id in ("long", "short"):
        containerd.ctr("task", "rm", task_id)
        containerd.ctr("container", "rm", task_id)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, sleep, "after-restart", "/app.wasm", "0", "1")
    assert "slept" in out.stdout
    record(f"fault: containerd restart ({containerd.kind})",
           tried="containerd stopped (SIGTERM) with 2 tasks, one exiting while it was down, then started",
           held="same daemon; the exit (0) that happened while down reached containerd; the other still killable (137)",
           before=before, after=sample(daemon))


def test_containerd_killed_during_create(containerd, wasm_image, guests):
    sleep = wasm_image("sleep", guests / "sleep.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleep, "bystander", "/app.wasm", "3600")
    wait_for(lambda: task_status(containerd, "bystander") == "RUNNING", 20, "bystander running")
    (daemon,) = daemon_pids(containerd)
    before = sample(daemon)
    inflight = subprocess.Popen(
        containerd.ctr_argv("run", "-d", "--runtime", RUNTIME, sleep, "inflight", "/app.wasm", "3600"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=containerd.ctr_env())
    wait_for(lambda: Path(containerd.state, "io.containerd.runtime.v2.task", containerd.namespace,
                          "inflight").exists(), 20, "the Create to reach the runtime")
    _restart_containerd(containerd, signal.SIGKILL)
    inflight.communicate(timeout=30)

    remove_task(containerd, "inflight")  # whatever exists of it: a task, a container, or nothing
    wait_for(lambda: not any("/inflight/" in p for p in _rootfs_mounts(containerd)), 20, "inflight unmounted")
    assert task_status(containerd, "bystander") == "RUNNING"
    hello = wasm_image("hello", guests / "hello.wasm")
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "after-crash", timeout=60)
    assert out.stdout == "hello from wasm\n"
    remove_task(containerd, "bystander")
    after = sample(daemon)
    assert daemon_pids(containerd) == [daemon]
    record(f"fault: containerd SIGKILL during Create ({containerd.kind})",
           tried="containerd SIGKILLed while `ctr run` was creating a task, then started",
           held="the half-made container removable and unmounted; bystander untouched; next run works",
           before=before, after=after)


def _stop_daemon(containerd: Containerd) -> None:
    """SIGTERM the (idle) daemon so the next run starts with an empty in-memory cache."""
    for pid in daemon_pids(containerd):
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not daemon_pids(containerd), 20, "the daemon to exit")


@pytest.mark.parametrize("containerd", ["2.x"], indirect=True)
def test_damaged_cache_entry_is_recompiled(containerd, wasm_image, guests):
    image = wasm_image("hello", guests / "hello.wasm")
    cache = Path(containerd.env["WASM_SHIM_CACHE_DIR"])
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "cache-1")
    (entry,) = cache.glob("*/*.module.cwasm")
    good = entry.read_bytes()
    damages = {
        "flipped": good[:-64] + bytes(b ^ 0xFF for b in good[-64:]),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "header-only": good[:51],
    }
    for n, (name, damaged) in enumerate(damages.items()):
        _stop_daemon(containerd)
        entry.write_bytes(damaged)
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, f"cache-damaged-{n}")
        assert out.stdout == "hello from wasm\n", name
        assert entry.read_bytes() == good, f"{name}: the entry was not rewritten"
    log = shim_log_text(containerd)
    discarded = re.findall(r"discarding compiled-module cache file \S+: (.*)", log)
    assert len(discarded) == len(damages), discarded
    sources = re.findall(r"task cache-damaged-\d: module [0-9a-f]+ from (\w+)", log)
    assert sources == ["compiled"] * len(damages), sources
    record("fault: damaged compiled-cache entry", tried=f"{len(damages)} damages: {', '.join(damages)}",
           held="each detected (digest/header), deleted, recompiled and rewritten; the guest ran")


def _tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "wsh-cache", str(path)], check=True, timeout=10)


def _fill(path: Path) -> None:
    """Fill the tmpfs at ``path`` (a bounded loop: it is small)."""
    with open(path / "filler", "wb") as f:
        for _ in range(4096):
            try:
                f.write(b"\0" * 65536)
                f.flush()
            except OSError:
                return


@pytest.mark.parametrize("containerd_factory", ["2.x"], indirect=True)
@pytest.mark.parametrize("full", ["no-space", "no-inodes"])
def test_cache_on_a_full_disk_runs_uncached(containerd_factory, wasm_image_factory, guests, tmp_path, full):
    disk = tmp_path / "disk"
    options = "size=256k,mode=0700" if full == "no-space" else "size=1m,nr_inodes=2,mode=0700"
    _tmpfs(disk, options)
    try:
        if full == "no-space":
            (disk / "cache").mkdir(mode=0o700)
        _fill(disk)
        containerd = containerd_factory(env={"WASM_SHIM_CACHE_DIR": str(disk / "cache")})
        image = wasm_image_factory(containerd)("hello", guests / "hello.wasm")
        for n in range(2):
            out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, f"full-{n}", timeout=60)
            assert out.stdout == "hello from wasm\n"
        log = shim_log_text(containerd)
        if full == "no-space":
            assert re.search(r"cannot write compiled-module cache file \S+: .*No space left on device", log), \
                log[-2000:]
        else:
            assert re.search(r"compiled-module cache \S+ is unusable .*No space left on device.*without", log), \
                log[-2000:]
        containerd.stop()  # before the unmount: the daemon has files open there
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=10)
    record(f"fault: cache dir on a full tmpfs ({full})", tried=f"tmpfs {options}, filled; 2 runs of hello",
           held="a clear log line; the guest ran uncached each time")
