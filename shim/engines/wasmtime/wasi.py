"""The WASI context of an in-process guest: exactly its grant, nothing ambient (docs/design.md, rule 7).

Owns the mapping of a prepared guest's grant onto a ``wasmtime.WasiConfig``: argv = process.args (args[0] as
written), env = process.env, the rootfs preopened at ``/`` (read-only when the root is), each directory mount
preopened at its destination (read-only honoured: wasmtime-py 50 exposes only ``fs_mutable``, which maps to
read-only dir and file permissions), and stdio from ``GuestStdio`` (``streams``). WASI preview1 has no working
directory: ``process.cwd`` only resolves a relative args[0] (wasi-libc starts at ``/``). No sockets: wasmtime-py
50 builds a component's WASI context with TCP off, and a network grant never reaches this code (only the
component runner honours one).

Invariant: on an error, everything opened so far is closed before the EngineError leaves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import wasmtime

from ..base import EngineError, GuestMount, GuestSpec, GuestStdio
from .streams import StdinPump, open_for_wasmtime, stdin_pump


@dataclass
class WasiContext:
    """A built WASI config and the fds of ours that go with it (the guest owns them once it runs)."""

    config: wasmtime.WasiConfig
    stdin_pump: StdinPump | None = None
    stderr_fd: int | None = None  # ours, non-blocking: for the trap report


def build_wasi(
    spec: GuestSpec, env: Sequence[tuple[str, str]], preopens: Sequence[GuestMount], stdio: GuestStdio
) -> WasiContext:
    """The WASI config of a guest."""
    wasi = wasmtime.WasiConfig()
    context = WasiContext(wasi)
    try:
        _configure(context, spec, env, preopens, stdio)
    except BaseException:
        wasi.close()  # frees what it opened so far (stdio files, preopened directories) now, not at GC
        release(context)
        raise
    return context


def release(context: WasiContext) -> None:
    """Close our own fds of ``context`` (the pump and the stderr writer); idempotent."""
    pump, context.stdin_pump = context.stdin_pump, None
    if pump is not None:
        pump.close()
    fd, context.stderr_fd = context.stderr_fd, None
    if fd is not None:
        os.close(fd)


def _configure(
    context: WasiContext,
    spec: GuestSpec,
    env: Sequence[tuple[str, str]],
    preopens: Sequence[GuestMount],
    stdio: GuestStdio,
) -> None:
    wasi = context.config
    wasi.argv = list(spec.args)
    wasi.env = [list(pair) for pair in env]
    if stdio.stdin is not None:
        context.stdin_pump = stdin_pump(stdio.stdin, spec.task_id)
        if context.stdin_pump is None:
            open_for_wasmtime(stdio.stdin, "stdin", lambda path: setattr(wasi, "stdin_file", path))
        else:
            pump = context.stdin_pump
            try:
                wasi.stdin_file = f"/proc/self/fd/{pump.guest_end}"
            except wasmtime.WasmtimeError:
                raise EngineError(f"stdin {stdio.stdin}: cannot open it for the guest") from None
            os.close(pump.guest_end)  # wasmtime has its own fd now; the pump's writer is the only one
            pump.guest_end = -1
            pump.start()
    if stdio.stdout is not None:
        open_for_wasmtime(stdio.stdout, "stdout", lambda path: setattr(wasi, "stdout_file", path))
    if stdio.stderr is not None:
        context.stderr_fd = open_for_wasmtime(
            stdio.stderr, "stderr", lambda path: setattr(wasi, "stderr_file", path), keep_writer=True
        )
    _preopen(wasi, spec.rootfs, "/", spec.root_readonly, "rootfs")
    for mount in preopens:
        _preopen(wasi, mount.source, mount.destination, mount.readonly, f"mount {mount.destination}")


def _preopen(wasi: wasmtime.WasiConfig, host: str, guest: str, readonly: bool, what: str) -> None:
    try:
        wasi.preopen_dir(host, guest, not readonly)
    except wasmtime.WasmtimeError:
        raise EngineError(f"{what}: cannot open directory {host}") from None
