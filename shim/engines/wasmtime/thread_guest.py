"""A guest running on a thread of the daemon: its store, its thread, its kill and pause flags, its CPU bucket.

Owns what module guests and component guests (``modules.ModuleGuest``, ``components.ComponentGuest``) share
when they run in the daemon; each of them adds only how it is instantiated and run (``_execute``).

Life of a guest, like runc's create/start: staged at Create, launched at Start. ``setup`` (on the caller's
thread: WASI context, store, limits, deadline callback) and ``stage`` (its thread starts, readies what runs no
guest code — a module without a start function is instantiated, ``_ready`` — and parks) happen after Create has
answered (``WasmtimeEngine.stage``), so Start only releases the parked thread (``launch``). ``_main`` then runs the
guest, closes its ``Store`` explicitly (``Store.close()`` frees the instance, the WASI context and every fd wasmtime
opened for it: stdio files and preopened directories), then its own fds, and calls ``on_exit`` last: nothing of a
finished guest waits for the garbage collector. A guest killed or deleted before Start is ``discard``ed: its thread
releases all of that and ends without running any of the guest's code, and without calling ``on_exit``.

Start: ``launch`` returns once the guest's thread is about to run its first wasm instruction (``entering``), or
after ENTER_WAIT at most. Until then the caller (the event loop, answering Start) waits without the GIL, so the
thread runs the Python around its first call uncontended, instead of each of its GIL hand-offs waiting behind the
loop's encoding of the answer and the TaskStart event.

Kill, pause and CPU slicing: ``kill`` sets the flag and asks ``Epochs`` for ticks; the guest sees it at its
next deadline (``at_deadline``) or on its way out of one of our host calls (``check_in``, ``sleep_until``;
see ``poll``). ``pause`` asks for ticks until the guest parks in its deadline callback (or in our poll_oneoff
on the way out) and waits on its condition until ``resume`` or a kill, using no CPU. A guest paused while
blocked in wasmtime's own host code (a stdin read) parks when that call returns; until then the ticker keeps
ticking on its account. A guest with a CPU limit sleeps off its debt at its deadlines (``CpuBucket``); time paused
earns like any other (base.py's "CPU limits").

Thread safety: ``_signal`` guards ``_kill_signal``, ``_paused`` and ``_in_host`` and wakes a guest waiting in
our host calls, in a pause or in a CPU sleep; the other fields are touched by the guest's own thread.
"""

from __future__ import annotations

import abc
import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import wasmtime
from wasmtime import _ffi as wasmtime_ffi

from ..base import (
    EXIT_FAILURE,
    EngineError,
    Guest,
    GuestMount,
    GuestSpec,
    GuestStdio,
    killed_status,
    signal_terminates,
)
from .epochs import CpuBucket, Epochs
from .footprint import StoreLimits
from .reports import failure
from .wasi import WasiContext, build_wasi, release

log = logging.getLogger(__name__)

ENTER_WAIT = 0.002  # seconds launch() waits at most for the guest to reach its first instruction
DISCARD_WAIT = 5.0  # seconds discard() waits at most for a parked thread to release the guest and end


class GuestKilled(Exception):
    """Raised from a host call of a killed guest: wasmtime turns it into a trap that unwinds the guest."""


class ThreadGuest(Guest):
    """One guest in a thread of the daemon. Created by ``WasmtimeEngine.start``; see the module docstring."""

    engine_name: ClassVar[str] = "wasmtime"
    in_daemon: ClassVar[bool] = True

    def __init__(
        self,
        wasm: wasmtime.Engine,
        epochs: Epochs,
        threads: dict[int, ThreadGuest],
        spec: GuestSpec,
        on_exit: Callable[[int], None],
    ):
        self._wasm = wasm
        self._epochs = epochs
        self._threads = threads  # guests by the thread running them, for our host calls (``poll``)
        self._key = epochs.new_key()
        self.spec = spec
        self._on_exit = on_exit
        self._kill_signal: int | None = None
        self._store: wasmtime.Store | None = None
        self._wasi: WasiContext | None = None
        self._thread: threading.Thread | None = None
        self.exit_status: int | None = None
        self._signal = threading.Condition()
        self._paused = False
        self._in_host = False  # inside our poll_oneoff: it checks for pause/kill itself on the way out
        self.monotonic_origin = 0  # ~ when wasmtime's WASI monotonic clock started for this guest
        self._memory: wasmtime.Memory | None = None
        self.memory_bytes = 0  # linear memory as last sampled (deadlines, host calls, the end)
        limit = spec.cpu_limit
        self._cpu_limit = limit if limit is not None and limit > 0 else None
        self._bucket: CpuBucket | None = None
        self._cpu_final: int | None = None
        self._entered = threading.Event()  # set just before the guest's first wasm call (or its end)
        self._go = threading.Event()  # set by launch or discard: the parked thread goes on
        self._discarded = False  # set (before _go) by discard: the thread releases and ends, running nothing

    @property
    def task_id(self) -> str:
        return self.spec.task_id

    # --- the Guest contract ---------------------------------------------------------------------------------

    def kill(self, signal: int, all: bool = False) -> None:
        """Stop the guest; signal 0 and default-ignored signals do nothing (``base.signal_terminates``)."""
        if not signal_terminates(signal):
            return
        with self._signal:
            if self._kill_signal is None:
                self._kill_signal = signal  # the first terminating signal decides the status
            self._signal.notify_all()
        wasi = self._wasi
        if wasi is not None and wasi.stdin_pump is not None:
            wasi.stdin_pump.stop()  # a guest blocked reading stdin gets EOF
        self._epochs.request_attention(self._key, self)

    def pause(self) -> None:
        """Freeze the guest: it parks at its next epoch deadline (or on leaving a host call) until resumed."""
        with self._signal:
            if self._paused or self._kill_signal is not None:
                return
            self._paused = True
            in_host = self._in_host
        if not in_host:
            self._epochs.request_attention(self._key, self)

    def resume(self) -> None:
        with self._signal:
            self._paused = False
            self._signal.notify_all()
        self._epochs.attended(self)

    def stats(self) -> tuple[int, int]:
        """(linear memory bytes as last sampled, CPU ns of the guest's thread). Components report memory 0."""
        cpu = self._cpu_final
        thread = self._thread
        if cpu is None and thread is not None and thread.ident is not None:
            try:
                cpu = time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
            except OSError:
                cpu = self._cpu_final  # the thread ended in between
        return self.memory_bytes, cpu or 0

    def pids(self) -> list[int]:
        """A thread has no process of its own: the daemon is the process that runs it."""
        return [os.getpid()]

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the guest's thread to end (it ends right after on_exit returns); True if it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # --- setup on the caller's thread -----------------------------------------------------------------------

    def setup(
        self, env: tuple[tuple[str, str], ...], preopens: tuple[GuestMount, ...], stdio: GuestStdio,
        limits: StoreLimits | None = None,
    ) -> None:
        """Build the WASI context and the store (with ``limits``: base.py's memory rule as wasmtime-py can keep it);
        on failure everything opened so far is released."""
        spec = self.spec
        self._wasi = build_wasi(spec, env, preopens, stdio)
        store = wasmtime.Store(self._wasm)
        self._store = store
        self.monotonic_origin = time.monotonic_ns()  # ~ when wasmtime's WASI monotonic clock starts
        store.set_wasi(self._wasi.config)  # the store owns the WASI context (and its fds) from here on
        if limits is not None:
            store.set_limits(**limits.as_kwargs())  # memory.grow and table.grow fail beyond them
        self._epochs.install(store, self._key)

    def stage(self) -> None:
        """Start the guest's thread, which readies the guest (``_ready``) and parks until ``launch`` or ``discard``;
        EngineError (everything released) if no thread can be had."""
        thread = threading.Thread(target=self._main, name=f"wasm-{self.task_id}", daemon=True)
        self._thread = thread
        try:
            thread.start()
        except RuntimeError as exc:
            self._thread = None
            self.release()
            raise EngineError(f"cannot start a thread for task {self.task_id}: {exc}") from None

    def launch(self) -> ThreadGuest:
        """``Staged.launch``: register with the epochs and let the parked thread run the guest."""
        self._epochs.add(self._key, self, self._cpu_limit is not None)
        self._go.set()
        self._entered.wait(ENTER_WAIT)
        return self

    def discard(self) -> None:
        """``Staged.discard``: the parked thread releases everything and ends (waited for, up to DISCARD_WAIT)."""
        self._discarded = True
        self._go.set()
        thread = self._thread
        if thread is not None:
            thread.join(DISCARD_WAIT)

    def entering(self) -> None:
        """Called by ``_execute`` right before the guest's first wasm call: ``launch`` may return now."""
        self._entered.set()

    # --- on the guest's own thread: epoch deadline, host calls ----------------------------------------------

    def at_deadline(self, context: Any) -> int | None:
        """The epoch-deadline callback's work: the kill signal to trap with, or None to go on.

        Samples the linear memory; parks here while paused; sleeps here while over its CPU limit.
        """
        memory = self._memory
        if memory is not None:
            self.memory_bytes = wasmtime_ffi.wasmtime_memory_data_size(context, ctypes.byref(memory._memory))
        if self._kill_signal is None and self._paused:
            self._park()
        if self._kill_signal is None and self._bucket is not None:
            self._throttle(self._bucket)
        return self._kill_signal

    def _park(self) -> None:
        with self._signal:
            self._epochs.attended(self)
            while self._paused and self._kill_signal is None:
                self._signal.wait()
        # The CPU bucket is settled next (at_deadline): the time paused earned like any other, up to a full bucket.

    def _throttle(self, bucket: CpuBucket) -> None:
        debt = bucket.settle(time.monotonic_ns(), time.thread_time_ns())
        if debt > 0:
            with self._signal:
                self._signal.wait_for(lambda: self._kill_signal is not None, debt)
            bucket.slept(time.monotonic_ns())

    def sleep_until(self, deadline_ns: int) -> None:
        """Wait until ``deadline_ns`` (time.monotonic_ns); a kill ends the wait by trapping the guest."""
        with self._signal:
            self._in_host = True
            try:
                while self._kill_signal is None:
                    remaining = deadline_ns - time.monotonic_ns()
                    if remaining <= 0:
                        break
                    self._signal.wait(remaining / 1e9)
            finally:
                self._in_host = False
        self.check_in()

    def check_in(self) -> None:
        """On the way back into wasm from a host call: honour a kill (trap) or a pause (park)."""
        if self._kill_signal is None and self._paused:
            self._park()
        if self._kill_signal is not None:
            raise GuestKilled(f"guest killed by signal {self._kill_signal}")

    # --- the guest thread ---------------------------------------------------------------------------------

    def _main(self) -> None:
        store = self._store
        assert store is not None
        try:
            self._ready(store)
        except BaseException:
            log.exception("task %s: unexpected failure readying the guest", self.task_id)
        self._go.wait()
        if self._discarded:
            self._unready()
            self.release()
            return
        status = EXIT_FAILURE
        me = threading.get_ident()
        self._threads[me] = self
        if self._cpu_limit is not None:
            self._bucket = CpuBucket(self._cpu_limit, time.monotonic_ns(), time.thread_time_ns())
        try:
            status = killed_status(self._kill_signal) if self._kill_signal is not None else self._execute(store)
            if self._kill_signal is not None:
                # Killed while ending: a guest whose stdin read was ended by the kill (EOF) may have returned
                # normally before reaching its deadline; it still ended because of the kill.
                status = killed_status(self._kill_signal)
            self.oom = status != 0 and self._kill_signal is None and self._ended_at_memory_limit()
        except BaseException as exc:
            log.exception("task %s: unexpected failure running the guest", self.task_id)
            self.report(f"wasm: internal error running the guest: {exc!r}\n")
        finally:
            self._entered.set()
            self._threads.pop(me, None)
            self._cpu_final = time.thread_time_ns()
            self._unready()
            self.release()
            self._epochs.remove(self._key, self)
            self.exit_status = status
            try:
                self._on_exit(status)
            except Exception:
                log.exception("task %s: on_exit callback failed", self.task_id)

    def _ready(self, store: wasmtime.Store) -> None:
        """On the guest's thread before it may run (staged, parked): do what runs none of the guest's code. An
        error is kept for ``_execute`` to meet as it would have met it there. Default: nothing."""

    def _unready(self) -> None:
        """Drop what ``_ready`` kept and ``_execute`` did not take (before ``release`` closes the store);
        idempotent."""

    @abc.abstractmethod
    def _execute(self, store: wasmtime.Store) -> int:
        """Instantiate (unless ``_ready`` did) and run the guest in ``store``; its exit status (``base``'s rule)."""

    def _ended_at_memory_limit(self) -> bool:
        """Whether a guest that failed did so at its memory limit (``oom``); False where it cannot be seen."""
        return False

    def failed(self, exc: wasmtime.WasmtimeError | wasmtime.Trap | GuestKilled) -> int:
        """Status for a guest that ended in an error: killed, trapped (134), or another error (1).

        ``reports.failure`` classifies it (base.py's rule: a trap only when it carries a trap code) and words the
        one line left on the guest's stderr. Call it before the error is disposed of.
        """
        if self._kill_signal is not None:
            return killed_status(self._kill_signal)
        if isinstance(exc, GuestKilled):  # never expected: our host calls raise it only for a kill
            status, line = EXIT_FAILURE, f"wasm error: {exc}"
        else:
            status, line = failure(exc)
        # The shim log says why, too: the guest's stderr may have no reader, and an operator looks there.
        log.info("task %s: %s", self.task_id, line)
        self.report(line + "\n")
        return status

    def report(self, message: str) -> None:
        """Best effort: the pipe may be full or its reader gone, and the guest thread must not block on it."""
        fd = self._wasi.stderr_fd if self._wasi is not None else None
        if fd is None:
            log.info("task %s: %s", self.task_id, message.rstrip())
            return
        try:
            os.write(fd, message.encode("utf-8", "replace"))
        except OSError as exc:
            log.info("task %s: could not write to stderr (%s): %s", self.task_id, exc, message.rstrip())

    def release(self) -> None:
        """Free the store (and with it every fd wasmtime opened for this guest), then our own fds."""
        self._memory = None
        store, self._store = self._store, None
        if store is not None:
            store.close()
        wasi = self._wasi
        if wasi is not None:
            release(wasi)
