"""Epochs: how a guest running wasm is reached from outside (kill, pause) and how its CPU is sliced.

Owns, for one ``wasmtime.Engine``: the table of in-process guests by the key their store carries, the
epoch-deadline callback every store gets, the ticker thread, and the CPU token bucket (``CpuBucket``).

Kill (stopping one guest without touching the others)
    Stores are created with an epoch deadline of one tick and an epoch-deadline *callback* (the C API's
    ``wasmtime_store_epoch_deadline_callback``; wasmtime-py 50 does not wrap it, so we call it through
    ``wasmtime._ffi``). ``Engine.increment_epoch`` is engine-wide: after it, every guest that is executing
    wasm reaches its deadline at its next loop back-edge or function entry and the callback runs on that
    guest's own thread, inside its own store (the only place a store may be touched while wasm runs). The
    callback asks the guest (``at_deadline``): a kill signal -> it returns an error and the guest unwinds
    (status 128 + signal); None -> it extends the deadline by one tick and wasm continues. So a kill never
    traps another guest.

    ``kill`` sets the guest's flag and increments the epoch at once. A callback that read the flag just before
    it was set can extend the deadline past that increment, so the ticker (one thread per engine, started on
    first need) keeps incrementing every ``TICK_SECONDS`` while any guest is pending (killed and still
    running, or paused and not yet parked) or CPU-limited, and sleeps otherwise.

    Cost: nothing while no kill is pending (no ticks, no callbacks); while one is, each guest that is executing
    wasm pays one callback (a ctypes call into Python, a few microseconds plus the GIL) per tick; idle guests
    (blocked in a host call) pay nothing. While a CPU-limited guest runs, every other guest executing wasm
    pays one callback per tick too.

CPU limits
    A guest with a CPU limit runs a ``CpuBucket`` at each of its deadlines, on its own thread's CPU clock; the
    rule (``base``'s docstring, "CPU limits") is shared with the component runner.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Protocol

import wasmtime
from wasmtime import _ffi as wasmtime_ffi  # the epoch-deadline callback is only in the C API bindings

from ..base import CPU_BURST_SECONDS, EngineError

log = logging.getLogger(__name__)

TICK_SECONDS = 0.01  # ticker period while a kill/pause is pending or a CPU-limited guest runs

# The C signature of the epoch-deadline callback (wasmtime/store.h); it returns an owned wasmtime_error_t*
# (NULL = carry on) and may set the next deadline (delta, in ticks) and how to apply it.
_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(wasmtime_ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(wasmtime_ffi.wasmtime_update_deadline_kind_t),
)
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # a NULL function pointer: nothing to finalize
_UPDATE_DEADLINE_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


class EpochGuest(Protocol):
    """What the deadline callback needs of a guest."""

    def at_deadline(self, context: Any) -> int | None:
        """On the guest's own thread: the kill signal to trap with, or None to go on (may park or sleep)."""
        ...


class _DeadlineHandler:
    """The epoch-deadline callback, run on a guest's own thread: trap the guest if it was killed, else go on."""

    def __init__(self, guests: dict[int, EpochGuest]):
        self._guests = guests  # the table of running guests, by the key given to the store
        self.calls = 0

    def __call__(self, context: Any, data: int | None, delta: Any, kind: Any) -> int:
        try:
            self.calls += 1
            guest = self._guests.get(data or 0)
            signal = None if guest is None else guest.at_deadline(context)
            if signal is not None:
                error = wasmtime_ffi.wasmtime_error_new(f"guest killed by signal {signal}".encode())
                return ctypes.cast(error, ctypes.c_void_p).value or 0
        except BaseException:  # an exception must not escape into wasmtime's frames
            log.exception("epoch deadline callback failed")
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0


class Epochs:
    """The in-process guests of one wasmtime engine and the ticks that reach them. Thread-safe."""

    def __init__(self, wasm: wasmtime.Engine):
        if not hasattr(wasmtime_ffi, "wasmtime_store_epoch_deadline_callback"):  # a wasmtime-py version check
            raise EngineError("wasmtime-py lacks wasmtime_store_epoch_deadline_callback (kill needs it)")
        self._wasm = wasm
        self._cond = threading.Condition()  # guards every field below
        self._guests: dict[int, EpochGuest] = {}
        self._next_key = 1
        self._pending: set[EpochGuest] = set()  # killed and still running, or paused and not yet parked
        self._limited: set[EpochGuest] = set()  # running with a CPU limit: the ticker slices their time
        self._ticker: threading.Thread | None = None
        self._stopped = False
        # The callback object must not refer back to the engine: a cycle would keep a closed engine (and its
        # compiled code) alive until the garbage collector runs.
        self._handler = _DeadlineHandler(self._guests)
        self._callback = _DeadlineCallback(self._handler)

    @property
    def callbacks(self) -> int:
        """How often a guest reached its epoch deadline (a measurement of what kills cost running guests)."""
        return self._handler.calls

    def new_key(self) -> int:
        with self._cond:
            key = self._next_key
            self._next_key += 1
            return key

    def install(self, store: wasmtime.Store, key: int) -> None:
        """Give ``store`` a deadline of one tick and our callback, which finds its guest by ``key``."""
        store.set_epoch_deadline(1)
        wasmtime_ffi.wasmtime_store_epoch_deadline_callback(
            store.ptr(), self._callback, ctypes.c_void_p(key), _NO_FINALIZER
        )

    def add(self, key: int, guest: EpochGuest, cpu_limited: bool) -> None:
        """``guest`` runs from now on; a CPU-limited one keeps the ticker running until ``remove``."""
        with self._cond:
            self._guests[key] = guest
            if cpu_limited:
                self._limited.add(guest)
                self._start_ticker()
                self._cond.notify_all()

    def remove(self, key: int, guest: EpochGuest) -> None:
        with self._cond:
            if self._guests.get(key) is guest:
                del self._guests[key]
            self._pending.discard(guest)
            self._limited.discard(guest)

    def running(self) -> list[EpochGuest]:
        with self._cond:
            return list(self._guests.values())

    def request_attention(self, key: int, guest: EpochGuest) -> None:
        """Make ``guest`` reach its epoch deadline soon (a kill or a pause), ticking until it has."""
        with self._cond:
            if self._guests.get(key) is not guest:
                return  # already finished (or never registered)
            self._pending.add(guest)
            self._start_ticker()
            self._cond.notify_all()
        self._wasm.increment_epoch()

    def attended(self, guest: EpochGuest) -> None:
        """``guest`` has seen its pause (it is parked): no more ticks on its account."""
        with self._cond:
            self._pending.discard(guest)

    def close(self, timeout: float) -> None:
        """Stop the ticker for good (the engine is closing)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            ticker = self._ticker
        if ticker is not None:
            ticker.join(timeout)

    def _start_ticker(self) -> None:  # with self._cond held
        if self._ticker is None and not self._stopped:
            self._ticker = threading.Thread(target=self._tick, name="wasm-epoch-ticker", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        """The ticker: increments the epoch every TICK_SECONDS while a guest needs it (_pending, _limited)."""
        with self._cond:
            while not self._stopped:
                if not self._pending and not self._limited:
                    self._cond.wait()
                    continue
                self._wasm.increment_epoch()
                self._cond.wait(TICK_SECONDS)


class CpuBucket:
    """The CPU token bucket of one guest (the rule is ``base``'s "CPU limits"); pure: times are passed in.

    The guest earns ``cpus`` CPU-ns per wall-ns, holds at most ``cpus * CPU_BURST_SECONDS`` CPU-seconds, starts
    full, and sleeps off any debt; time paused is wall time like any other. ``runner/src/limits.rs`` is the same
    bucket, and both answer tests/vectors/engine_rules.json.
    """

    def __init__(self, cpus: float, wall_ns: int, cpu_ns: int):
        self.cpus = cpus
        self._capacity = cpus * CPU_BURST_SECONDS * 1e9
        self._tokens = self._capacity
        self._wall = wall_ns
        self._cpu = cpu_ns

    def settle(self, wall_ns: int, cpu_ns: int) -> float:
        """Account for the time since the last call; the seconds of debt to sleep off now (0.0 for none)."""
        earned = self.cpus * (wall_ns - self._wall)
        self._tokens = min(self._tokens + earned - (cpu_ns - self._cpu), self._capacity)
        self._wall, self._cpu = wall_ns, cpu_ns
        return -self._tokens / self.cpus / 1e9 if self._tokens < 0 else 0.0

    def slept(self, wall_ns: int) -> None:
        """The guest slept (off its debt) until ``wall_ns``: it earned its share meanwhile and used no CPU."""
        self._tokens = min(self._tokens + self.cpus * (wall_ns - self._wall), self._capacity)
        self._wall = wall_ns
