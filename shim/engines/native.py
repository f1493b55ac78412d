"""The native engine: runs ELF binaries and ``#!`` scripts as real containers through runc.

Pods always hold a pause container and often native sidecars; a pod whose RuntimeClass is ``wasmtime`` sends
every one of them through our shim. This module owns delegating those containers to runc from the daemon:
creating and starting them, watching their init process, signalling, measuring
and deleting them. It imports no wasm engine and nothing heavy; runc is run as a subprocess, never linked
(``runc.py``: its command line; ``subreaper.py``: adopting init; ``child.py``: reaping it).

How a container runs (runc's own CLI, runc/docs/terminals.md "pass-through" mode, as containerd's runc shim
uses it):
- ``runc --root <root>/<namespace> create --bundle B --pid-file B/init.pid ID`` with the task's stdio as runc's
  own stdin/stdout/stderr: runc create hands them to the container's init process, so our copies are closed
  right after create and the FIFO readers see EOF when the container's last process exits. runc's own error
  messages go to ``B/log.json`` (``--log-format json``) and become the EngineError text.
- ``runc start ID`` then lets init exec the entrypoint. containerd put ``linux.cgroupsPath`` in config.json;
  runc creates that cgroup and puts init in it (``--systemd-cgroup`` when the path has systemd's
  ``slice:prefix:name`` form, as CRI writes it with SystemdCgroup).

Reaping without a global reaper
    runc create exits once init waits for ``runc start``; init is then re-parented to the nearest child
    subreaper (prctl(2) PR_SET_CHILD_SUBREAPER), which must be the daemon: ``become_subreaper()`` is called
    once at daemon start (and by the engine before its first create, in case a caller forgot). From there init
    is a ``child.ChildGuest``: one watcher thread for the whole engine polls its pidfd and reaps it with
    ``waitid(P_PIDFD, ...)``; a status is ``code`` for a normal exit and ``128 + signal`` for a kill.

Rules (on top of ``base``'s engine contract):
- Unlike a wasm engine's, ``start`` blocks while runc creates and starts the container (tens of milliseconds),
  and so do ``kill`` and ``delete``: callers run them off the event loop (``NativeEngine.runs_off_loop``). ``start``
  either returns a started guest, and then ``on_exit(status)`` is called exactly once after init was reaped
  (from the watcher thread, or from start's own thread for a container that ended before start returned), or
  raises EngineError and never calls ``on_exit`` (whatever runc had created is deleted again).
- ``NativeGuest.kill`` signals through ``runc kill`` (``all``: ``--all``, every process of the container);
  a container that already exited makes it a no-op. ``delete`` runs ``runc delete --force`` and is
  idempotent; it removes runc's state and the container's cgroup. Every runc call has a timeout.
- ``stats``/``pids`` read the container's cgroup (v1: memory.usage_in_bytes, cpuacct.usage; v2: memory.current,
  cpu.stat) at the path init was placed in; ``pids`` is empty once init has exited, and both read nothing
  once the cgroup is gone.
- ``NativeEngine.close`` deletes (and so kills) every container it created that was not deleted yet and stops
  the watcher: a daemon that exits leaves no runc container behind.

Not covered: terminals (stdio.py refuses them for every task), exec processes, pause/resume, checkpoints.
Processes re-parented to the daemon from a container that shares the host's PID namespace are not reaped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import EngineError, EntryKind, Entrypoint, GuestSpec, GuestStdio, StartLater
from .cgroups import cgroup_pids, cgroup_usage, read_cgroups
from .child import ChildGuest, ExitWatcher, check_signal, open_stdio
from .runc import GONE, RUNC_TIMEOUT, Runc, force_delete, read_log_error, systemd_cgroup
from .subreaper import become_subreaper, is_subreaper

log = logging.getLogger(__name__)

DEFAULT_RUNC_ROOT = "/run/wasm-shim/runc"  # + "/<namespace>": like containerd's /run/containerd/runc/<ns>
PID_FILE = "init.pid"  # in the bundle, as containerd's runc shim names it
RUNC_LOG = "log.json"  # in the bundle, likewise


# --- the engine -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NativePrepared:
    spec: GuestSpec
    bundle: str
    executable: Entrypoint
    systemd_cgroup: bool


class NativeEngine:
    """Runs native (ELF / ``#!``) entrypoints as runc containers; see the module docstring."""

    name = "native"
    accepts = frozenset({EntryKind.NATIVE})
    runs_off_loop = True  # start, kill and delete run runc (tens of milliseconds): the task service calls them
    #                       on a worker thread

    def __init__(self, root: str = os.path.join(DEFAULT_RUNC_ROOT, "default"), runc: str = "runc") -> None:
        self.root = root
        self.runc_binary = shutil.which(runc) or ""
        self._runc_name = runc
        self._watcher = ExitWatcher()
        self._lock = threading.Lock()
        self._guests: dict[str, NativeGuest] = {}  # not deleted yet, by container id
        self._closed = False

    # --- Engine protocol ------------------------------------------------------------------------------------

    def cache_stats(self) -> None:
        return None  # runc runs programs as they are: nothing is compiled or cached

    def prepare(self, spec: GuestSpec, entry: Entrypoint, *, cached_only: bool = False) -> NativePrepared:
        """Checks only (a stat): never blocks, so ``cached_only`` changes nothing."""
        executable = entry
        if not self.runc_binary:
            raise EngineError(f"{self._runc_name} is not installed (not found on PATH): native containers "
                              f"(here {executable.guest_path}) run through runc")
        if not spec.bundle or not os.path.isfile(os.path.join(spec.bundle, "config.json")):
            raise EngineError(f"bundle {spec.bundle or '(none)'} has no config.json for runc")
        return NativePrepared(spec, spec.bundle, executable, systemd_cgroup(spec.cgroups_path))

    def stage(self, prepared: Any, stdio: GuestStdio, on_exit: Callable[[int], None]) -> StartLater:
        """Nothing ahead of Start: runc creates and starts the container at once, at ``launch``."""
        return StartLater(self.start, prepared, stdio, on_exit)

    def start(self, prepared: Any, stdio: GuestStdio, on_exit: Callable[[int], None]) -> NativeGuest:
        if not isinstance(prepared, NativePrepared):
            raise TypeError("start() needs what this engine's prepare() returned")
        task_id = prepared.spec.task_id
        with self._lock:
            if self._closed:
                raise EngineError("the native engine is shut down")
            if task_id in self._guests:
                raise EngineError(f"container {task_id} is already running under runc")
        if not is_subreaper():
            become_subreaper()  # the daemon does this at start; a direct caller may not have
        runc = Runc(self.runc_binary, self.root, systemd_cgroup=prepared.systemd_cgroup)
        log_file = os.path.join(prepared.bundle, RUNC_LOG)
        pid_file = os.path.join(prepared.bundle, PID_FILE)
        for stale in (log_file, pid_file):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise EngineError(f"cannot remove stale {stale}: {exc.strerror}") from None
        self._create(runc, prepared, stdio, log_file, pid_file)
        try:
            pid = _read_pid(pid_file)
            pidfd = os.pidfd_open(pid)
        except (EngineError, OSError) as exc:
            force_delete(runc, task_id)
            raise EngineError(f"runc created {task_id} but its init process cannot be watched: {exc}") from None
        guest = NativeGuest(runc, task_id, pid, self._forget)
        # Reaped by the watcher from here on, whatever happens next; on_exit is armed only once start succeeded.
        self._watcher.watch(pidfd, guest.reaped)
        with self._lock:
            self._guests[task_id] = guest
        try:
            guest.cgroups = read_cgroups(guest.pid)
        except EngineError as exc:
            log.warning("native container %s: %s (stats and pids will be empty)", task_id, exc)
        try:
            started = subprocess.run(
                runc.argv("start", task_id, log_file=log_file),
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUNC_TIMEOUT,
            )
            failure = "" if started.returncode == 0 else (read_log_error(log_file) or started.stderr.strip()
                                                         or f"exit status {started.returncode}")
        except subprocess.TimeoutExpired:
            failure = f"did not finish within {RUNC_TIMEOUT:g} s (killed)"
        if failure:
            try:
                guest.delete()
            except EngineError as exc:
                log.error("native container %s: cleaning up after a failed start: %s", task_id, exc)
            raise EngineError(f"runc start {task_id}: {failure}")
        guest.arm(on_exit)
        log.info("native container %s started (pid %d, %s)", task_id, guest.pid, prepared.executable.guest_path)
        return guest

    def close(self, timeout: float = 5.0) -> None:
        """Delete (and so kill) every container not deleted yet, wait up to ``timeout`` for them to be reaped."""
        with self._lock:
            self._closed = True
            guests = list(self._guests.values())
        for guest in guests:
            try:
                guest.delete()
            except EngineError as exc:
                log.error("closing: %s", exc)
        self._watcher.close(timeout)

    @property
    def running(self) -> int:
        """Containers created and not deleted yet."""
        with self._lock:
            return len(self._guests)

    # --- internals ------------------------------------------------------------------------------------------

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._guests.pop(task_id, None)

    def _create(self, runc: Runc, prepared: NativePrepared, stdio: GuestStdio, log_file: str, pid_file: str) -> None:
        task_id = prepared.spec.task_id
        fds = open_stdio(stdio)
        try:
            created = subprocess.run(
                runc.argv("create", "--bundle", prepared.bundle, "--pid-file", pid_file, task_id, log_file=log_file),
                stdin=fds[0], stdout=fds[1], stderr=fds[2], timeout=RUNC_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            self._discard_failed_create(runc, task_id, pid_file)
            raise EngineError(f"runc create {task_id}: did not finish within {RUNC_TIMEOUT:g} s (killed)") from None
        except OSError as exc:
            raise EngineError(f"cannot run {runc.binary}: {exc.strerror}") from None
        finally:
            for fd in fds:  # the container's init has its own copies now (or there is no container)
                os.close(fd)
        if created.returncode != 0:
            reason = read_log_error(log_file) or f"exit status {created.returncode}"
            self._discard_failed_create(runc, task_id, pid_file)
            raise EngineError(f"runc create {task_id} ({prepared.executable.guest_path}): {reason}")


    def _discard_failed_create(self, runc: Runc, task_id: str, pid_file: str) -> None:
        """runc may leave a half-made container (state dir, cgroup, an init already re-parented to us): delete
        it, and let the watcher reap that init so that no zombie stays behind."""
        pidfd = None
        try:
            pid = _read_pid(pid_file)
            if _parent_of(pid) == os.getpid():
                pidfd = os.pidfd_open(pid)
        except (EngineError, OSError):
            pass
        force_delete(runc, task_id)
        if pidfd is not None:
            self._watcher.watch(pidfd, lambda _status: None)


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
        return int(file.read().rsplit(")", 1)[1].split()[1])  # comm may contain ")"


def _read_pid(pid_file: str) -> int:
    try:
        with open(pid_file, encoding="ascii") as file:
            return int(file.read().strip())
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read runc's pid file {pid_file}: {exc}") from None


# --- guests -----------------------------------------------------------------------------------------------------

class NativeGuest(ChildGuest):
    """A runc container of ours: its init process (a ``ChildGuest``), signals through runc, its cgroup's usage,
    and deletion (no pause: see the module docstring)."""

    engine_name: ClassVar[str] = "native"

    def __init__(self, runc: Runc, task_id: str, pid: int, forget: Callable[[str], None]) -> None:
        super().__init__(task_id, pid, None)  # signals go through `runc kill`, which also knows --all
        self.runc = runc
        self.cgroups: dict[str, str] = {}
        self._deleted = False
        self._forget = forget

    def kill(self, signal: int, all: bool = False) -> None:
        """Signal the container's init process, or with ``all`` every process of it (``runc kill [--all]``);
        a no-op once it has exited."""
        check_signal(signal)
        if self.exit_status is not None or self._deleted:
            return
        args = ["kill", *(["--all"] if all else []), self.task_id, str(signal)]
        done = self.runc.run(*args)
        if done.returncode == 0 or self.exit_status is not None or GONE.search(done.stderr):
            return
        raise EngineError(f"runc kill {self.task_id} {signal}: {done.stderr.strip() or done.returncode}")

    def stats(self) -> tuple[int, int]:
        """(memory bytes, cpu ns) of the container's cgroup."""
        return cgroup_usage(self.cgroups)

    def pids(self) -> list[int]:
        """The container's processes (its cgroup's), init first; empty once it has exited."""
        if self.exit_status is not None:
            return []
        found = cgroup_pids(self.cgroups)
        rest = [p for p in found if p != self.pid]
        return [self.pid, *rest]

    def delete(self) -> None:
        """``runc delete --force``: kill what is left, remove runc's state and the cgroup. Idempotent."""
        with self._lock:
            if self._deleted:
                return
            self._deleted = True
        self._forget(self.task_id)
        done = self.runc.run("delete", "--force", self.task_id)
        if done.returncode != 0 and not GONE.search(done.stderr):
            raise EngineError(f"runc delete {self.task_id}: {done.stderr.strip() or done.returncode}")

    def _gone(self, status: int) -> None:
        log.info("native container %s: init %d exited with status %d", self.task_id, self.pid, status)
