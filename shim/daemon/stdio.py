"""A task's standard streams: containerd's stdio URIs turned into paths a guest engine can open.

Owns the daemon's side of a task's stdio (docs/protocol.md "Stdio"):
- ""                  null IO: the engine gives the guest an empty stdin / discards output.
- "/path" (a FIFO)    passed through: the engine opens the FIFO itself (ctr and CRI hold the other end).
- "file:///path"      a pipe whose write end the guest gets (as /proc/self/fd/N); a copier thread appends what
                      arrives to the file (O_APPEND, so stdout and stderr interleave by line, never overwrite).
- "binary:///path?k=v" the logging binary is started with args `k v`, env CONTAINER_ID/CONTAINER_NAMESPACE,
                      fd 3 = stdout pipe, fd 4 = stderr pipe, fd 5 = readiness pipe (it closes fd 5 when ready).

Invariants: `close()` releases every fd this module opened (after the guest's exit, so readers see EOF);
`wait_drained()` returns once copiers and the logger have consumed everything (bounded by a timeout), so the exit
event is not published before the output it follows. Terminal mode is refused with a clear error (a wasm guest has
no TTY). Errors name the URI.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from ..engines.base import GuestStdio

_READY_TIMEOUT = 10.0
_F_GETPIPE_SZ = 1032  # fcntl(2), Linux
_STALL_SECONDS = 0.3  # finish(): a reader that has not taken a byte for this long is taken to be absent


class StdioError(Exception):
    """A stdio URI cannot be served; the message names it."""


def _proc_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


@dataclass
class TaskIO:
    guest: GuestStdio
    _fds: list[int] = field(default_factory=list)
    _held: list[int] = field(default_factory=list)  # our O_RDWR hold on each output FIFO (see _hold_fifo)
    _threads: list[threading.Thread] = field(default_factory=list)
    _logger_pid: int = 0
    _closed: bool = False

    def close(self) -> None:
        """Close every fd we hold at once (error paths; after an exit use `finish`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for fd in self._fds + self._held:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._held.clear()

    def unblock_writers(self, done: threading.Event, timeout: float = 2.0) -> None:
        """After a kill (worker thread): a guest blocked writing to an output FIFO nobody reads (the client went
        away; our hold keeps the pipe open) cannot reach an epoch check. While the pipe stays full, discard one
        pipe's worth so the blocked write returns and the guest meets its kill; a pipe with room is left alone
        (a live reader gets everything). Stops when `done` is set or after `timeout`."""
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            for fd in list(self._held):
                try:
                    capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
                    if _buffered(fd) >= capacity:
                        os.read(fd, capacity)
                except OSError:
                    pass
            done.wait(0.05)

    def finish(self, timeout: float = 5.0) -> None:
        """After the guest's exit: hand everything it wrote to the readers, then release it all (worker thread).

        An output FIFO's buffer vanishes when its last fd closes, so our hold stays open until the client's
        reader has taken what is buffered (FIONREAD reaches 0), nothing has been taken for _STALL_SECONDS (no
        reader: a detached client), or `timeout` passes.
        """
        deadline = time.monotonic() + timeout
        for fd in self._held:
            # Wait while a reader is taking the data; give up once nothing moves for _STALL_SECONDS (nobody reads:
            # `ctr run -d` leaves its FIFOs unread, and its exit must not wait the whole timeout for that).
            left = _buffered(fd)
            moved = time.monotonic()
            while left and time.monotonic() < deadline and time.monotonic() - moved < _STALL_SECONDS:
                time.sleep(0.002)
                now_left = _buffered(fd)
                if now_left != left:
                    left, moved = now_left, time.monotonic()
        self.close()
        self.wait_drained(max(0.1, deadline - time.monotonic()))

    def wait_drained(self, timeout: float = 5.0) -> None:
        """Block until copiers and the logging binary have finished (call from a worker thread)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._logger_pid:
            pid, self._logger_pid = self._logger_pid, 0
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
                time.sleep(0.01)
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def _buffered(fd: int) -> int:
    """Bytes waiting in the pipe behind `fd` (FIONREAD); 0 when it cannot be told."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def _copier(read_fd: int, path: str) -> threading.Thread:
    def run() -> None:
        try:
            out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError:
            out = -1
        try:
            while True:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                if out >= 0:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
        finally:
            os.close(read_fd)
            if out >= 0:
                os.close(out)

    thread = threading.Thread(target=run, name=f"stdio-copy:{path}", daemon=True)
    thread.start()
    return thread


def open_task_io(
    container_id: str, namespace: str, stdin: str, stdout: str, stderr: str, terminal: bool
) -> TaskIO:
    if terminal:
        raise StdioError("terminal (TTY) mode is not supported for wasm guests; run without -t / tty: false")
    io = TaskIO(guest=GuestStdio(stdin=None, stdout=None, stderr=None))
    guest_out: str | None
    guest_err: str | None
    try:
        guest_in = _passthrough("stdin", stdin)
        if stdout.startswith("binary://"):
            if stderr and stderr != stdout:
                raise StdioError(f"stdout is a logging binary ({stdout}) but stderr differs ({stderr})")
            guest_out, guest_err = _start_logger(io, stdout, container_id, namespace)
        else:
            guest_out = _output(io, "stdout", stdout)
            guest_err = _output(io, "stderr", stderr)
    except BaseException:
        io.close()
        raise
    io.guest = GuestStdio(stdin=guest_in, stdout=guest_out, stderr=guest_err)
    return io


def _passthrough(name: str, uri: str) -> str | None:
    if not uri:
        return None
    if "://" in uri:
        parsed = urlsplit(uri)
        if parsed.scheme == "fifo":
            return unquote(parsed.path)
        raise StdioError(f"{name} URI {uri!r}: only a FIFO path or empty is supported for {name}")
    return uri


def _hold_fifo(io: TaskIO, name: str, path: str) -> str:
    """Keep the output FIFO open (O_RDWR never blocks) from Create until after the guest's exit.

    The client's reader (ctr's copy goroutine) opens its end asynchronously; a guest that writes and exits
    before that open would leave the FIFO with no writer, the client's open blocked, and — when the client gives
    up at Delete — the output lost. Holding a writer from Create on, like containerd's runc shim does, lets the
    reader attach any time before `close()`; we never read from this fd.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise StdioError(f"{name} FIFO {path}: {exc.strerror}") from None
    io._held.append(fd)
    return path


def _output(io: TaskIO, name: str, uri: str) -> str | None:
    if not uri:
        return None
    if "://" not in uri:
        return _hold_fifo(io, name, uri)
    parsed = urlsplit(uri)
    if parsed.scheme == "fifo":
        return _hold_fifo(io, name, unquote(parsed.path))
    if parsed.scheme != "file":
        raise StdioError(f"{name} URI {uri!r}: unsupported scheme {parsed.scheme!r} (use a FIFO, file:// or binary://)")
    path = unquote(parsed.path)
    if not os.path.isdir(os.path.dirname(path) or "/"):
        raise StdioError(f"{name} URI {uri!r}: directory {os.path.dirname(path)} does not exist")
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    io._fds.append(write_fd)
    io._threads.append(_copier(read_fd, path))
    return _proc_path(write_fd)


def _start_logger(io: TaskIO, uri: str, container_id: str, namespace: str) -> tuple[str, str]:
    parsed = urlsplit(uri)
    binary = unquote(parsed.path)
    if not os.access(binary, os.X_OK):
        raise StdioError(f"logging binary {binary} (from {uri!r}) is missing or not executable")
    args = [binary]
    for key, value in parse_qsl(parsed.query, keep_blank_values=True):
        args.append(key)
        if value:
            args.append(value)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    env = dict(os.environ, CONTAINER_ID=container_id, CONTAINER_NAMESPACE=namespace)
    try:
        # posix_spawn places the pipes at fds 3, 4, 5 (dup2 clears close-on-exec); every other fd of the daemon
        # is close-on-exec, so the logger inherits nothing else. No preexec_fn: the daemon has threads.
        io._logger_pid = os.posix_spawn(
            binary,
            args,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_r, 3),
                (os.POSIX_SPAWN_DUP2, err_r, 4),
                (os.POSIX_SPAWN_DUP2, ready_w, 5),
            ],
            setsid=True,
        )
    except OSError as exc:
        for fd in (out_w, err_w, ready_r):
            os.close(fd)
        raise StdioError(f"cannot start logging binary {binary}: {exc.strerror}") from None
    finally:
        for fd in (out_r, err_r, ready_w):
            os.close(fd)
    io._fds.extend((out_w, err_w))
    try:
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StdioError(
                    f"logging binary {binary} did not signal readiness on fd 5 within {_READY_TIMEOUT:.0f} s"
                )
            readable, _, _ = select.select([ready_r], [], [], left)
            if readable and not os.read(ready_r, 4096):
                break
    finally:
        os.close(ready_r)
    return _proc_path(out_w), _proc_path(err_w)
