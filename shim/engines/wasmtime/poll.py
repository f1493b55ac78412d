"""Our WASI preview1 ``poll_oneoff``: a module sleeping in it can be killed and paused.

Owns the one host call of ours that shadows wasmtime's in the module linker. Epochs do not reach a guest
blocked inside a host call, so clock subscriptions wait on the guest's condition variable instead, and a kill
wakes it and the call raises (a trap: status 128 + signal). fd subscriptions are reported ready at once (their
host fds live in wasmtime's WASI table, out of our reach); the read that follows blocks in wasmtime, which for
stdin the pump handles (``streams``). Monotonic ``abstime`` deadlines use the time the WASI context was made as
wasmtime's clock origin (microseconds apart).

Components sleeping (``wasi:io/poll``) block inside wasmtime's own WASI implementation on a tokio timer, where
no Python function can be put in between (it would receive only opaque handles of wasmtime's own pollables):
that is why components run in a process of their own by default (``runner``).
"""

from __future__ import annotations

import struct
import threading
import time

import wasmtime

from .thread_guest import ThreadGuest

# WASI preview1 (wasi_snapshot_preview1.witx) layouts used by poll_oneoff.
_SUBSCRIPTION_SIZE = 48  # userdata u64 @0, tag u8 @8, payload @16 (clock: id u32 @16, timeout u64 @24,
#                          precision u64 @32, flags u16 @40; fd_read/fd_write: fd u32 @16)
_EVENT = struct.Struct("<QHBxxxxxQHxxxxxx")  # userdata, error, type, fd_readwrite.nbytes, fd_readwrite.flags
_EVENTTYPE_CLOCK = 0
_SUBCLOCKFLAGS_ABSTIME = 1
_CLOCK_REALTIME, _CLOCK_MONOTONIC = 0, 1
_ERRNO_SUCCESS, _ERRNO_FAULT, _ERRNO_INVAL, _ERRNO_NOTSUP = 0, 21, 28, 58


class HostCalls:
    """Our own versions of the blocking WASI preview1 calls, so that a kill reaches a guest blocked in them.

    Defined over ``wasi_snapshot_preview1.poll_oneoff`` in the module linker (shadowing wasmtime's); runs on
    the calling guest's thread, found in ``threads`` (thread ident -> guest). Refers to no engine (no cycle).
    """

    def __init__(self, threads: dict[int, ThreadGuest]):
        self._threads = threads

    def poll_oneoff(self, caller: wasmtime.Caller, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
        """WASI preview1 poll_oneoff: clock subscriptions wait on the guest's kill/pause condition.

        fd subscriptions are reported ready at once (their host fds are inside wasmtime's WASI table, out of
        our reach): the guest's next read/write then blocks in wasmtime, where a blocking stdin is made
        killable by the stdin pump (see ``streams.StdinPump``). Output and regular files are always ready anyway.
        """
        guest = self._threads.get(threading.get_ident())
        memory = caller.get("memory")
        if guest is None or not isinstance(memory, wasmtime.Memory):
            return _ERRNO_NOTSUP
        if nsubs == 0:
            return _ERRNO_INVAL
        size = memory.data_len(caller)
        guest.memory_bytes = size
        if in_ptr + _SUBSCRIPTION_SIZE * nsubs > size or out_ptr + _EVENT.size * nsubs > size or nevents_ptr + 4 > size:
            return _ERRNO_FAULT
        subs = memory.read(caller, in_ptr, in_ptr + _SUBSCRIPTION_SIZE * nsubs)
        now = time.monotonic_ns()
        clocks: list[tuple[int, int, int]] = []  # (deadline on our monotonic clock, userdata, errno)
        ready: list[bytes] = []
        for index in range(nsubs):
            base = index * _SUBSCRIPTION_SIZE
            userdata, tag = struct.unpack_from("<QB", subs, base)
            if tag != _EVENTTYPE_CLOCK:  # fd_read / fd_write: ready now (see the docstring)
                ready.append(_EVENT.pack(userdata, _ERRNO_SUCCESS, tag, 0, 0))
                continue
            clock_id, timeout, _precision, flags = struct.unpack_from("<I4xQQH", subs, base + 16)
            if clock_id not in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
                ready.append(_EVENT.pack(userdata, _ERRNO_INVAL, tag, 0, 0))  # CPU-time clocks: no timers
                continue
            if not flags & _SUBCLOCKFLAGS_ABSTIME:
                deadline = now + timeout
            elif clock_id == _CLOCK_REALTIME:
                deadline = now + (timeout - time.time_ns())
            else:  # wasmtime's monotonic clock counts from when the guest's WASI context was made
                deadline = guest.monotonic_origin + timeout
            clocks.append((deadline, userdata, _ERRNO_SUCCESS))
        if not ready and clocks:
            first = min(deadline for deadline, _, _ in clocks)
            guest.sleep_until(first)  # raises GuestKilled
            now = time.monotonic_ns()
            ready = [_EVENT.pack(u, e, _EVENTTYPE_CLOCK, 0, 0) for d, u, e in clocks if d <= now or d == first]
        guest.check_in()  # a kill or pause that came while we were here
        memory.write(caller, b"".join(ready), out_ptr)
        memory.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
        return _ERRNO_SUCCESS




def module_linker(wasm: wasmtime.Engine, host: HostCalls) -> wasmtime.Linker:
    """The WASI preview1 linker every module is linked against, with our ``poll_oneoff`` over wasmtime's."""
    linker = wasmtime.Linker(wasm)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    linker.allow_shadowing = True  # our poll_oneoff replaces wasmtime's
    linker.define_func(
        "wasi_snapshot_preview1", "poll_oneoff", wasmtime.FuncType([i32] * 4, [i32]), host.poll_oneoff,
        access_caller=True,
    )
    linker.allow_shadowing = False
    return linker
