"""A guest that is a child process of the daemon: reaping, pidfd signals, /proc usage, stdio.

Owns what the native engine (a runc container's init process, re-parented to the daemon as its subreaper) and
the component runner (a process the daemon spawns) share: one exit watcher thread per engine that polls pidfds
and reaps each process exactly once, exit statuses from waitid(2), signals through a pidfd, usage from
``/proc/PID/stat``, and opening a task's stdio as the child's fds 0-2.

Rules:
- A process is reaped with ``waitid(P_PIDFD, ...)``, which names exactly that process: never waitpid(-1),
  which would steal the statuses of runc invocations, logging binaries and other children that their own
  starters wait for.
- ``ChildGuest`` delivers its exit to ``on_exit`` exactly once, after the reap, once its own pidfd is closed
  (so a signal after the reap can never reach a recycled pid), also when ``on_exit`` is armed after the reap.
- Signals go through a pidfd of the guest's own (a dup of the watcher's), never a bare pid.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal as signals
import stat
import threading
from collections.abc import Callable

from .base import EngineError, Guest, GuestStdio

log = logging.getLogger(__name__)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- exit statuses ------------------------------------------------------------------------------------------

def exit_status(result: os.waitid_result) -> int:
    """A waitid(2) result as containerd's exit status: the code, or 128 + signal for a killed process."""
    if result.si_code == os.CLD_EXITED:
        return int(result.si_status)
    return 128 + int(result.si_status)  # CLD_KILLED / CLD_DUMPED: si_status is the signal


def check_signal(signal: int) -> None:
    if not 0 < signal < signals.NSIG:
        raise EngineError(f"invalid signal number {signal}")


# --- usage --------------------------------------------------------------------------------------------------

def proc_usage(pid: int) -> tuple[int, int] | None:
    """(resident set size in bytes, CPU ns) of ``pid`` from /proc/PID/stat (proc(5)); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()  # comm may contain ")"
    except (OSError, IndexError):
        return None
    # After the ")" of comm: fields[0] is field 3 (state); utime 14, stime 15, rss 24 (pages).
    ticks = int(fields[11]) + int(fields[12])
    return int(fields[21]) * _PAGE_SIZE, ticks * 1_000_000_000 // _CLOCK_TICKS


# --- stdio ----------------------------------------------------------------------------------------------------

def open_stdio(stdio: GuestStdio) -> tuple[int, int, int]:
    """Open the task's stdio paths for the container (None -> /dev/null) without blocking on a FIFO.

    open(2) of a FIFO blocks until the other side exists (fifo(7)). stdin is opened non-blocking (never waits
    for a writer) and then made blocking again, since the container inherits the open file description;
    an output FIFO gets a non-blocking guard reader for the moment of the open, so the open is immediate and
    what the container sees afterwards is unchanged. A regular file is created and truncated.
    """
    opened: list[int] = []
    try:
        opened.append(_open_input(stdio.stdin))
        opened.append(_open_output("stdout", stdio.stdout))
        opened.append(_open_output("stderr", stdio.stderr))
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return opened[0], opened[1], opened[2]


def _open_input(path: str | None) -> int:
    if path is None:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise EngineError(f"stdin {path}: {exc.strerror}") from None
    os.set_blocking(fd, True)
    return fd


def _open_output(stream: str, path: str | None) -> int:
    if path is None:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    guard = None
    try:
        try:
            is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
        except FileNotFoundError:
            is_fifo = False
        if is_fifo:
            guard = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise EngineError(f"{stream} {path}: {exc.strerror}") from None
    finally:
        if guard is not None:
            os.close(guard)


# --- the guest ----------------------------------------------------------------------------------------------

class ChildGuest(Guest):
    """A guest whose main process ``pid`` is a child of the daemon, reaped by an ``ExitWatcher``.

    Thread-safe. Subclasses say how it is signalled (``kill``) and may adjust the reaped status
    (``_final_status``) and add what happens when it is gone (``_gone``). ``_lock`` guards the pidfd and the
    exit status.
    """

    def __init__(self, task_id: str, pid: int, pidfd: int | None, on_exit: Callable[[int], None] | None = None):
        self.task_id = task_id
        self.pid = pid
        self._pidfd = pidfd  # ours, for signals (None: the subclass signals another way); closed at the reap
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._exit_status: int | None = None
        self._done = threading.Event()
        self._last_usage = (0, 0)

    @property
    def exit_status(self) -> int | None:
        """None while the process runs; its status once it was reaped."""
        return self._exit_status

    def arm(self, on_exit: Callable[[int], None]) -> None:
        """Deliver the exit to ``on_exit`` once, also if the process has already been reaped."""
        with self._lock:
            status = self._exit_status
            if status is None:
                self._on_exit = on_exit
        if status is not None:
            on_exit(status)

    def stats(self) -> tuple[int, int]:
        """(resident set size in bytes, CPU ns) of the process; the last reading once it has ended."""
        with self._lock:
            if self._exit_status is None:
                usage = proc_usage(self.pid)
                if usage is not None:
                    self._last_usage = usage
            return self._last_usage

    def pids(self) -> list[int]:
        return [self.pid]

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the process was reaped and on_exit returned; True if it has."""
        return self._done.wait(timeout)

    def _send(self, signal: int) -> None:  # with self._lock held
        if self._pidfd is None:
            return  # reaped: nothing to signal
        try:
            signals.pidfd_send_signal(self._pidfd, signal)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def _final_status(self, status: int) -> int:  # with self._lock held
        return status

    def _gone(self, status: int) -> None:
        """After the reap, before on_exit (outside the lock)."""

    def reaped(self, status: int) -> None:
        """From the exit watcher, once, after waitid reaped the process."""
        with self._lock:
            fd, self._pidfd = self._pidfd, None
            if fd is not None:
                os.close(fd)
            status = self._final_status(status)
            self._exit_status = status
            on_exit, self._on_exit = self._on_exit, None
        try:
            self._gone(status)
            if on_exit is not None:
                on_exit(status)
        except Exception:
            log.exception("task %s: exit callback failed", self.task_id)
        finally:
            self._done.set()


class ExitWatcher:
    """One thread that polls the pidfds of every watched init process and reaps each exactly once.

    Registration goes through a queue and an eventfd (the thread owns the epoll set). ``close`` stops the
    thread once every watched process was reaped, or after its timeout.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[int, Callable[[int], None]]] = []
        self._watched = 0
        self._thread: threading.Thread | None = None
        self._wake = -1
        self._stopping = False
        self._idle = threading.Condition(self._lock)

    def watch(self, pidfd: int, on_reaped: Callable[[int], None]) -> None:
        """Own ``pidfd`` from now on: reap its process when it exits, then call ``on_reaped(status)``."""
        with self._lock:
            if self._thread is None:
                self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._thread = threading.Thread(target=self._run, name="child-exits", daemon=True)
                self._thread.start()
            self._queue.append((pidfd, on_reaped))
            self._watched += 1
        os.eventfd_write(self._wake, 1)

    def close(self, timeout: float) -> None:
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._idle.wait_for(lambda: self._watched == 0, timeout)
            self._stopping = True
        os.eventfd_write(self._wake, 1)
        thread.join(timeout)

    def _run(self) -> None:
        poller = select.epoll()
        callbacks: dict[int, Callable[[int], None]] = {}
        poller.register(self._wake, select.EPOLLIN)
        try:
            while True:
                for fd, _ in poller.poll():
                    if fd == self._wake:
                        os.eventfd_read(self._wake)
                        with self._lock:
                            queued, self._queue = self._queue, []
                            if self._stopping:
                                return
                        for pidfd, callback in queued:
                            callbacks[pidfd] = callback
                            poller.register(pidfd, select.EPOLLIN)
                        continue
                    status = _reap(fd)
                    if status is None:
                        continue  # spurious; still running
                    poller.unregister(fd)
                    os.close(fd)
                    callback = callbacks.pop(fd)
                    try:
                        callback(status)
                    except Exception:
                        log.exception("exit callback failed")
                    with self._lock:
                        self._watched -= 1
                        self._idle.notify_all()
        finally:
            for fd in callbacks:
                os.close(fd)
            poller.close()
            with self._lock:
                os.close(self._wake)
                self._wake = -1
                self._thread = None
                self._stopping = False
                self._watched = 0
                self._idle.notify_all()


def _reap(pidfd: int) -> int | None:
    """waitid(P_PIDFD) without blocking: the status of that one process, or None while it runs."""
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        # Not our child (no subreaper above it): the exit is seen, the status is not. Report a failure.
        log.error("an init process exited that is not the daemon's child; its exit status is unknown")
        return 255
    except OSError as exc:
        if exc.errno == errno.EINTR:
            return None
        raise
    if result is None:
        return None
    return exit_status(result)
