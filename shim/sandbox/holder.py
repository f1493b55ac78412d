"""Starting and stopping the process that holds a pod's namespaces (`wasm-shim-sandbox-holder`, holder.c).

Owns: finding the holder binary, spawning one per pod sandbox with the namespaces its ``HolderPlan`` asks for,
learning whether it set itself up (its report pipe), watching it until it is reaped, and signalling it.

How a holder becomes PID 1 of the pod's new PID namespace without a fork of the daemon: ``unshare(2)`` with
CLONE_NEWPID moves only the calling thread's ``pid_for_children`` (namespaces(7): a thread's namespaces are
its own, and CLONE_NEWPID implies neither CLONE_THREAD nor CLONE_VM, so a multi-threaded process may do it),
so one dedicated spawner thread unshares, ``posix_spawn``s the holder (its first child there, PID 1) and
``setns(2)`` back to the daemon's own PID namespace before it does anything else. No other code ever runs on
that thread. The network, IPC and UTS namespaces, the hostname, sysctls, chroot and the drop of privileges are
the holder's own first steps (holder.c), so nothing of the daemon is ever in a pod's namespaces.

Invariants:
- A holder is the daemon's direct child: reaped by ``waitid(P_PIDFD)`` in the watcher (child.py), its pid
  never recycled under us (signals go through its pidfd).
- Every holder waits on the read end of one lifeline pipe whose only writer is this object (close-on-exec, so
  no runc or runner inherits it): when the daemon exits, however it exits, every holder exits too.
- ``spawn`` either returns a holder that reported success, or raises HolderError with its report (the holder
  is then killed and reaped); its ``on_exit`` is called exactly once, after the reap.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..engines.child import ExitWatcher

log = logging.getLogger(__name__)

HOLDER = "wasm-shim-sandbox-holder"
CLONE_NEWPID = 0x20000000  # include/uapi/linux/sched.h
REPORT_TIMEOUT = 10.0  # seconds a holder may take to set itself up before it is killed


class HolderError(Exception):
    """A holder could not be started or did not set itself up; the message says why (its own words)."""


@dataclass(frozen=True)
class HolderPlan:
    """What one holder sets up: see holder.c for the order and pod.py for where each value comes from."""

    root: str  # an empty directory it chroots into
    uid: int
    gid: int
    netns: str | None = None  # the pod's network namespace; None stays in the host's (hostNetwork)
    new_pid: bool = True
    new_ipc: bool = True
    new_uts: bool = True
    hostname: str = ""
    sysctls: tuple[tuple[str, str], ...] = ()

    def argv(self, binary: str) -> list[str]:
        argv = [binary, "--root", self.root, "--uid", str(self.uid), "--gid", str(self.gid)]
        if self.netns:
            argv += ["--netns", self.netns]
        if self.new_ipc:
            argv.append("--new-ipc")
        if self.new_uts:
            argv.append("--new-uts")
            if self.hostname:
                argv += ["--hostname", self.hostname]
        for key, value in self.sysctls:
            argv += ["--sysctl", f"{key}={value}"]
        return argv


def find_holder(configured: str = "") -> str | None:
    """The holder binary: ``configured``, else beside our interpreter (the node bundle), else on PATH."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), HOLDER)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(HOLDER)


class Holder:
    """One running holder: its pid (in the daemon's PID namespace) and exit status once reaped."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd  # ours (a dup of the watcher's); closed at the reap
        self._lock = threading.Lock()
        self.exit_status: int | None = None
        self._reaped = threading.Event()
        self._on_exit: Callable[[int], None] | None = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with self._lock:
            if self._pidfd is None:
                return  # reaped
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass  # exited, not yet reaped

    def wait(self, timeout: float | None = None) -> bool:
        return self._reaped.wait(timeout)

    def arm(self, on_exit: Callable[[int], None]) -> None:
        with self._lock:
            status = self.exit_status
            if status is None:
                self._on_exit = on_exit
        if status is not None:
            on_exit(status)

    def reaped(self, status: int) -> None:
        with self._lock:
            fd, self._pidfd = self._pidfd, None
            if fd is not None:
                os.close(fd)
            self.exit_status = status
            on_exit, self._on_exit = self._on_exit, None
        self._reaped.set()
        if on_exit is not None:
            on_exit(status)


class Holders:
    """Spawns holders on its own thread and watches them; ``close`` kills every one still running."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawn")
        self._own_pid_ns: int | None = None  # an fd of the daemon's PID namespace, opened on the spawner thread
        self._lifeline_read, self._lifeline_write = os.pipe()  # both close-on-exec (PEP 446)
        self._watcher = ExitWatcher()
        self._lock = threading.Lock()
        self._running: dict[int, Holder] = {}

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def spawn(self, plan: HolderPlan) -> Holder:
        """Start a holder for ``plan`` and wait until it has set itself up (blocking: call off the loop)."""
        report_read, report_write = os.pipe()
        try:
            pid = self._spawner.submit(self._spawn_on_thread, plan, report_write).result()
        finally:
            os.close(report_write)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # cannot happen for a child not yet reaped; never leave it unwatched
            os.close(report_read)
            raise HolderError(f"cannot watch holder {pid}: {exc.strerror}") from None
        holder = Holder(pid, os.dup(pidfd))
        with self._lock:
            self._running[pid] = holder
        self._watcher.watch(pidfd, lambda status: self._reaped(holder, status))
        try:
            report = _read_report(report_read, REPORT_TIMEOUT)
        finally:
            os.close(report_read)
        if report is None or report:
            holder.kill()
            holder.wait(REPORT_TIMEOUT)
            raise HolderError(report.strip() if report else
                              f"it did not set itself up within {REPORT_TIMEOUT:g} s (killed)")
        return holder

    def close(self, timeout: float = 5.0) -> None:
        """Kill every holder, wait up to ``timeout`` for their reaping, stop the threads, drop the lifeline."""
        with self._lock:
            holders = list(self._running.values())
        for holder in holders:
            holder.kill()
        self._watcher.close(timeout)
        self._spawner.shutdown(wait=True)
        for fd in (self._lifeline_write, self._lifeline_read):
            os.close(fd)
        if self._own_pid_ns is not None:
            os.close(self._own_pid_ns)

    def _reaped(self, holder: Holder, status: int) -> None:
        with self._lock:
            self._running.pop(holder.pid, None)
        holder.reaped(status)

    def _spawn_on_thread(self, plan: HolderPlan, report_write: int) -> int:
        """On the spawner thread only: unshare its pid_for_children, spawn, restore (see the module docstring)."""
        if self._own_pid_ns is None:
            self._own_pid_ns = os.open("/proc/thread-self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        if plan.new_pid:
            self._call("unshare(CLONE_NEWPID)", self._libc.unshare, CLONE_NEWPID)
        try:
            return os.posix_spawn(
                self.binary, plan.argv(self.binary), {},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, report_write, 2),
                    (os.POSIX_SPAWN_DUP2, self._lifeline_read, 3),
                ],
            )
        except OSError as exc:
            raise HolderError(f"cannot run {self.binary}: {exc.strerror}") from None
        finally:
            if plan.new_pid:
                # Back to the daemon's own PID namespace for this thread's next child; a thread left in a pod's
                # would put the next pod's holder into it, so a failure here stops the daemon's spawning.
                try:
                    self._call("setns(own PID namespace)", self._libc.setns, self._own_pid_ns, CLONE_NEWPID)
                except HolderError:
                    log.critical("the sandbox spawner thread cannot return to the daemon's PID namespace")
                    self._spawner.shutdown(wait=False)
                    raise

    def _call(self, what: str, function: Callable[..., int], *args: int) -> None:
        if function(*args) != 0:
            code = ctypes.get_errno()
            raise HolderError(f"{what}: {os.strerror(code)}")


def _read_report(fd: int, timeout: float) -> str | None:
    """The holder's report: "" once it closed the pipe having written nothing (success), its text otherwise,
    None if it neither wrote nor closed within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode("utf-8", "replace")
        chunks.append(chunk)
