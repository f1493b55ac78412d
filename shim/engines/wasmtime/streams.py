"""A guest's standard streams in the daemon: opening stdio paths for wasmtime, and the stdin pump.

Owns the FIFO guard (so neither the guest nor the daemon blocks on open(2) of a FIFO) and the stdin pump (so
a kill can end a guest's blocking read of stdin).

Stdio paths are opened before ``start`` returns, by wasmtime itself (its file streams cost ~2.5 us per write;
the ``*_custom`` callbacks run on wasmtime's tokio workers and cost ~100 us). Opening a FIFO blocks until the
other side exists (fifo(7)), so around wasmtime's open we hold a non-blocking guard fd on the other side and
close it right after: the guest never blocks on open, sees EOF on stdin when the last writer leaves, and EPIPE
on stdout when the reader is gone (rather than blocking forever on a full pipe).

A FIFO/pipe stdin is not handed to wasmtime directly: a pump thread (``StdinPump``) copies it into a pipe of
ours whose only writer it holds, and a kill closes that writer: the guest's read returns EOF, the guest
re-enters wasm, reaches its deadline and unwinds.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import threading
from collections.abc import Callable

import wasmtime

from ..base import EngineError

log = logging.getLogger(__name__)


class StdinPump:
    """Copies a stdin FIFO/pipe into a pipe of ours that the guest reads, so a kill can end its read with EOF.

    wasmtime reads stdin with a blocking read(2) inside its own code, where no epoch or Python function
    reaches; closing the only writer of the guest's pipe is what wakes it (pipe(7): EOF once every writer is
    closed). One thread per guest that has a stdin; it ends on EOF of the source, when the guest closes its
    end, or when ``stop`` is called (kill, or the guest's end).
    """

    def __init__(self, source: str, task_id: str):
        self._task_id = task_id
        self._source = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.guest_end, self._sink = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._sink, False)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=f"wasm-stdin-{task_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # already woken (the pipe is full) or closed

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread, wait for it, and close every fd of ours."""
        self.stop()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("task %s: the stdin pump did not stop within %.1f s", self._task_id, timeout)
                return  # leave its fds alone: the thread still uses them
        else:
            self._close_streams()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self.guest_end >= 0:
            os.close(self.guest_end)
            self.guest_end = -1

    def _close_streams(self) -> None:
        for fd in (self._source, self._sink):
            if fd >= 0:
                os.close(fd)
        self._source = self._sink = -1

    def _run(self) -> None:
        pending = b""
        try:
            while True:
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                if pending:
                    poller.register(self._sink, select.POLLOUT)
                else:
                    poller.register(self._source, select.POLLIN)
                events = dict(poller.poll())
                if self._wake_r in events:
                    return
                try:
                    if self._sink in events:
                        if events[self._sink] & (select.POLLERR | select.POLLHUP):
                            return  # the guest closed its end
                        pending = pending[os.write(self._sink, pending) :]
                    elif self._source in events:
                        chunk = os.read(self._source, 65536)
                        if not chunk:
                            return  # EOF: every writer of the source is gone
                        pending = chunk
                except BlockingIOError:
                    continue  # a spurious wake-up: poll again
        except OSError as exc:
            log.info("task %s: stdin pump stopped: %s", self._task_id, exc)
        finally:
            self._close_streams()


def open_for_wasmtime(
    path: str, stream: str, hand_to_wasmtime: Callable[[str], None], keep_writer: bool = False
) -> int | None:
    """Let wasmtime open ``path`` for ``stream`` without blocking; optionally return a writer fd of our own.

    open(2) of a FIFO blocks until the other side exists (fifo(7)). A guard fd on the other side, opened
    non-blocking (O_RDWR for stdin: a writer; O_RDONLY for output: a reader) and closed as soon as wasmtime
    has its fd, makes that open immediate without changing what the guest sees afterwards.
    """
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        is_fifo = False
        if stream == "stdin":
            raise EngineError(f"{stream} {path}: no such file or FIFO") from None
    except OSError as exc:
        raise EngineError(f"{stream} {path}: {exc.strerror}") from None
    guard = None
    mine = None
    try:
        if is_fifo:
            flags = os.O_RDWR if stream == "stdin" else os.O_RDONLY
            guard = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            hand_to_wasmtime(path)
        except wasmtime.WasmtimeError:
            raise EngineError(f"{stream} {path}: cannot open it for the guest") from None
        if keep_writer:
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if is_fifo else os.O_APPEND)
            mine = os.open(path, flags)
    except OSError as exc:
        raise EngineError(f"{stream} {path}: {exc.strerror}") from None
    finally:
        if guard is not None:
            os.close(guard)
    return mine


def stdin_pump(path: str, task_id: str) -> StdinPump | None:
    """A pump for a FIFO or pipe stdin (see ``StdinPump``); None for anything else (files do not block)."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
        return StdinPump(path, task_id)
    except FileNotFoundError:
        raise EngineError(f"stdin {path}: no such file or FIFO") from None
    except OSError as exc:
        raise EngineError(f"stdin {path}: {exc.strerror}") from None


