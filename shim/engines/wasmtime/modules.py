"""Core WebAssembly modules (WASI preview1 commands and reactors): compiled, checked, and run in a thread.

Owns what is specific to modules: the finished artifact every start of a module shares (an ``InstancePre``:
imports are resolved once, at prepare time, so a module importing something we do not provide fails in
``prepare`` with the import named), the choice of the entry export (``_start``, or ``path#export`` of a
function taking no parameters, after ``_initialize`` for a reactor), and running it (``ModuleGuest``).

Memory and OOM (base.py's "Memory limits"): what the module declares (``footprint.declarations``, read once with
its compilation) and the guest's limit give the store's limits (``footprint.store_limits``: one memory, its tables,
the rest for the memory; a module that cannot be bounded so fails ``prepare``), so a memory.grow or table.grow
beyond them fails inside the guest (malloc returns NULL). wasmtime-py 50 cannot observe a refused growth (its C
API has static limits but no resource-limiter callback), so ``oom`` is set when a guest ends in failure with its
linear memory near its cap (``_ended_at_memory_limit``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import wasmtime

from ..base import EngineError, Entrypoint, GuestMount, GuestSpec
from .epochs import Epochs
from .footprint import Declarations, StoreLimits, declarations
from .reports import dispose, error_summary
from .thread_guest import GuestKilled, ThreadGuest

WASM_PAGE = 65536


@dataclass(frozen=True)
class CompiledModule:
    """A compiled module and what every start of it needs, shared by all guests of the same bytes."""

    digest: str
    module: wasmtime.Module
    instance_pre: wasmtime.InstancePre  # imports resolved against the WASI linker
    function_exports: tuple[str, ...]  # exported functions taking no parameters
    declared: Declarations | str  # its memories and tables, or why they could not be read (footprint)
    # Every export as (kind, parameter count): read once here, since asking wasmtime (an FFI call per export)
    # at every Create was a measurable part of the start path. kind: "func", "memory", "table", "global".
    export_shapes: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModulePrepared:
    """A module ready to start: the compiled artifact, the export to call, and the guest's grant."""

    spec: GuestSpec
    entry: Entrypoint
    compiled: CompiledModule
    export: str
    initialize: bool  # call the reactor's `_initialize` before `export`
    env: tuple[tuple[str, str], ...]
    preopens: tuple[GuestMount, ...]
    limits: StoreLimits | None = None  # the store's limits under the guest's memory limit (footprint)


def finish_module(
    linker: wasmtime.Linker, module: wasmtime.Module, digest: str, name: str, wasm: bytes
) -> CompiledModule:
    """What every start of this module reuses: an InstancePre (imports resolved once, here) and what it declares."""
    try:
        pre = linker.instantiate_pre(module)
    except wasmtime.WasmtimeError as exc:
        raise EngineError(f"{name} cannot be linked: {error_summary(str(exc))}") from None
    shapes: dict[str, tuple[str, int]] = {}
    for export in module.exports:
        kind = export.type
        if isinstance(kind, wasmtime.FuncType):
            shapes[export.name] = ("func", len(kind.params))
        else:
            shapes[export.name] = (type(kind).__name__.removesuffix("Type").lower(), 0)
    functions = tuple(name for name, (kind, params) in shapes.items() if kind == "func" and not params)
    declared: Declarations | str
    try:
        declared = declarations(wasm)
    except ValueError as exc:
        declared = str(exc)
    return CompiledModule(digest, module, pre, functions, declared, shapes)


def module_entry(compiled: CompiledModule, entry: Entrypoint, name: str) -> tuple[str, bool]:
    """(export to call, whether to call `_initialize` first) for a core module; EngineError if none."""
    exports = compiled.export_shapes
    listing = ", ".join(compiled.function_exports) or "none"
    wanted = entry.export or "_start"
    shape = exports.get(wanted)
    if shape is None:
        if entry.export is None:
            raise EngineError(
                f"{name} has no _start export (it is not a WASI command); pick a function with "
                f"{entry.guest_path}#EXPORT (function exports: {listing})"
            )
        raise EngineError(f"{name} has no export named {wanted!r} (function exports: {listing})")
    kind, params = shape
    if kind != "func":
        raise EngineError(f"{name}: export {wanted!r} is a {kind}, not a function (function exports: {listing})")
    if params:
        raise EngineError(
            f"{name}: export {wanted!r} takes {params} parameter(s); an entrypoint must take none "
            f"(function exports: {listing})"
        )
    initialize = entry.export is not None and wanted != "_initialize" and "_initialize" in exports
    return wanted, initialize


class ModuleGuest(ThreadGuest):
    """A core module running on a thread of the daemon."""

    def __init__(
        self, wasm: wasmtime.Engine, epochs: Epochs, threads: dict[int, ThreadGuest], prepared: ModulePrepared,
        on_exit: Callable[[int], None],
    ):
        super().__init__(wasm, epochs, threads, prepared.spec, on_exit)
        self.prepared = prepared
        self._calls: list[wasmtime.Func] | None = None  # instantiated by _ready: the functions to call, in order
        self._early: wasmtime.WasmtimeError | wasmtime.Trap | None = None  # _ready's instantiation failed so

    def _ready(self, store: wasmtime.Store) -> None:
        """Instantiate now when that runs none of the guest's code: no start function (``footprint``)."""
        declared = self.prepared.compiled.declared
        if isinstance(declared, str) or declared.start:
            return  # a start function (or a module this reader could not read) runs at instantiation: at Start
        try:
            self._calls = self._instantiate(store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self._early = exc

    def _unready(self) -> None:
        self._calls = None
        early, self._early = self._early, None
        if early is not None:
            dispose(early)

    def _instantiate(self, store: wasmtime.Store) -> list[wasmtime.Func]:
        """A new instance in ``store``: its memory noted, and the functions to call (`_initialize` first: a WASI
        reactor is initialised before use)."""
        prepared = self.prepared
        exports = prepared.compiled.instance_pre.instantiate(store).exports(store)
        memory = exports.get("memory")
        if isinstance(memory, wasmtime.Memory):
            self._memory = memory
            self.memory_bytes = memory.data_len(store)
        calls = []
        for name in ("_initialize", prepared.export) if prepared.initialize else (prepared.export,):
            func = exports[name]
            assert isinstance(func, wasmtime.Func)  # checked in prepare
            calls.append(func)
        return calls

    def _execute(self, store: wasmtime.Store) -> int:
        try:
            calls, self._calls = self._calls, None
            early, self._early = self._early, None
            if early is not None:
                raise early  # met here as an instantiation at Start would have met it
            if calls is None:
                calls = self._instantiate(store)
            try:
                for func in calls:
                    self.entering()
                    func(store)
            finally:
                self._sample_memory(store)
            return 0
        except wasmtime.ExitTrap as exc:
            code = exc.code
            dispose(exc)
            return code & 0xFF  # WASI proc_exit(n): a POSIX exit status keeps the low 8 bits
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            # WasmtimeError: a kill or another error; Trap: a core module's trap.
            try:
                return self.failed(exc)
            finally:
                dispose(exc)
        except GuestKilled as exc:  # raised by our host calls; wasmtime hands it back to us as it was
            exc.__traceback__ = None
            return self.failed(exc)

    def _sample_memory(self, store: wasmtime.Store) -> None:
        if self._memory is not None:
            self.memory_bytes = self._memory.data_len(store)

    def _ended_at_memory_limit(self) -> bool:
        """Ended with its linear memory within an eighth of its cap (at least one page).

        The refused request may be large (malloc asks for what it needs at once), so "near" is generous: a
        guest that fails there did so for lack of memory.
        """
        limits = self.prepared.limits
        if limits is None or self._memory is None:
            return False
        cap = limits.memory_size
        return self.memory_bytes + max(cap // 8, WASM_PAGE) > cap
