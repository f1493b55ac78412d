"""WebAssembly components (``wasi:cli/run`` commands): inspected, checked, and run in a thread or a runner.

Owns what is specific to components: inspecting a compiled component's exports once (``inspect_component``,
the step that decides what a component can be started as), the entry check (a component runs only through
``wasi:cli/run@0.2.x``), how it is isolated (``component_isolation``), and running it in a thread of the
daemon (``ComponentGuest``; the default is a runner process, ``runner``, which alone compiles the components
it runs: the daemon never compiles those a second time).

Isolation. Components block inside wasmtime's own Rust WASI code (sleep, poll, socket accept) where no Python
runs and no epoch reaches, so by default each component runs in a child process of its own, the runner, where a
kill is SIGKILL. ``wasm.shim.io/component-isolation: thread`` keeps a component that never blocks in the daemon
(cheaper; one that sleeps is killed only when its sleep ends, with the kill's status).

Exit statuses: ``run`` returning ok is 0, err is 1; ``wasi:cli/exit`` with a code is that code; traps and other
errors follow ``base``'s rule. Memory: wasmtime-py 50 can neither count a component's core instances, memories
and tables before it runs nor sum them while it runs, so a component with a memory limit never runs in a daemon
thread (``WasmtimeEngine.prepare`` sends it to the runner, which sums them: base.py's "Memory limits");
``ComponentGuest`` refuses one. In a thread, ``stats`` reports memory 0 (no component memories are exposed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import wasmtime
import wasmtime.component as wasm_component

from ..base import EXIT_FAILURE, EngineError, Entrypoint, GuestMount, GuestSpec
from ..network import NO_NETWORK, NetworkGrant
from .epochs import Epochs
from .reports import dispose
from .serving import ServePlan
from .thread_guest import GuestKilled, ThreadGuest

RUN_INTERFACE = re.compile(r"^wasi:cli/run@0\.2\.\d+$")


@dataclass(frozen=True)
class CompiledComponent:
    """A compiled component and what every start of it needs, shared by all guests of the same bytes."""

    digest: str
    component: wasm_component.Component
    run_index: wasm_component.ExportIndex | None  # wasi:cli/run@0.2.x#run, when exported
    exports: tuple[str, ...]  # the names of its exports (interfaces and functions), for messages


@dataclass(frozen=True)
class ComponentPrepared:
    """A component ready to start: what it is, the guest's grant, and where it runs.

    In a runner process (``isolation == "process"``) the component is compiled by the runner alone (``runner``,
    ``check_in_runner``) and ``compiled`` is None; in a daemon thread ``compiled`` is the daemon's artifact.
    """

    spec: GuestSpec
    entry: Entrypoint
    digest: str  # sha256 (hex) of the component's bytes
    exports: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    preopens: tuple[GuestMount, ...]
    isolation: str  # "process" (a runner) or "thread"
    network: NetworkGrant = NO_NETWORK  # granted: only the component runner honours it (runner/)
    netns: str | None = None  # the pod's network namespace the runner joins (granted only)
    runner: str | None = None  # the component runner executable (process isolation)
    compiled: CompiledComponent | None = None  # thread isolation: compiled in the daemon
    serve: ServePlan | None = None  # set for a wasi:http/proxy component: the runner serves it (serving.py)


def inspect_component(wasm: wasmtime.Engine, component: wasm_component.Component, digest: str) -> CompiledComponent:
    """What every start of this component reuses: its export names and the index of wasi:cli/run#run (if any)."""
    exports = tuple(component.type.exports(wasm))
    interfaces = [export for export in exports if RUN_INTERFACE.match(export)]
    run_index = None
    if interfaces:
        interface = component.get_export_index(interfaces[0])
        if interface is not None:
            run_index = component.get_export_index("run", interface)
    return CompiledComponent(digest, component, run_index, exports)


def exports_run(exports: tuple[str, ...]) -> bool:
    """Whether a component with these export names is a wasi:cli command (exports wasi:cli/run@0.2.x)."""
    return any(RUN_INTERFACE.match(export) for export in exports)


def check_component_entry(exports: tuple[str, ...], runs: bool, entry: Entrypoint, name: str) -> None:
    """A component runs only as a wasi:cli command; ``path#export`` may only name that interface.

    ``runs``: it exports wasi:cli/run@0.2.x with its ``run`` function.
    """
    listing = ", ".join(exports) or "none"
    if not runs:
        raise EngineError(
            f"{name} is a component that does not export wasi:cli/run@0.2.x (exports: {listing}); "
            "only wasi:cli command components can run"
        )
    if entry.export is not None:
        selector = entry.export.removesuffix("#run")
        interfaces = [export for export in exports if RUN_INTERFACE.match(export)]
        if selector not in ("wasi:cli/run", "run", *interfaces):
            raise EngineError(
                f"{name}: a component can only be started through wasi:cli/run, not {entry.export!r} "
                f"(exports: {listing})"
            )


class ComponentGuest(ThreadGuest):
    """A component running on a thread of the daemon (``component-isolation: thread``)."""

    def __init__(
        self, wasm: wasmtime.Engine, epochs: Epochs, threads: dict[int, ThreadGuest],
        linker: wasm_component.Linker, prepared: ComponentPrepared, on_exit: Callable[[int], None],
    ):
        if prepared.network.granted:  # refused in prepare: a thread would open sockets in the node's namespace
            raise EngineError("a network grant is only honoured by the component runner, in the pod's namespace")
        if prepared.compiled is None:
            raise TypeError("a component for a daemon thread is compiled in the daemon (isolation thread)")
        if prepared.spec.memory_limit:  # prepare sends these to the runner: a thread could not bound them
            raise EngineError("a component with a memory limit runs in the component runner, never a daemon thread")
        super().__init__(wasm, epochs, threads, prepared.spec, on_exit)
        self._linker = linker
        self.prepared = prepared
        self._compiled = prepared.compiled

    def _execute(self, store: wasmtime.Store) -> int:
        compiled = self._compiled
        try:
            assert compiled.run_index is not None  # checked in prepare
            instance = self._linker.instantiate(store, compiled.component)
            run = instance.get_func(store, compiled.run_index)
            if run is None:
                self.report(f"wasm: {self.prepared.entry.guest_path}: wasi:cli/run#run is not a function\n")
                return EXIT_FAILURE
            self.entering()
            result = run(store)
            # wasi:cli/run#run returns result<_, _>; wasmtime-py lifts it as a Variant tagged "ok" or "err".
            failed = isinstance(result, wasm_component.Variant) and result.tag == "err"
            return EXIT_FAILURE if failed else 0
        except wasmtime.ExitTrap as exc:
            code = exc.code
            dispose(exc)
            return code & 0xFF  # wasi:cli/exit: a POSIX exit status keeps the low 8 bits
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:  # a kill, a trap (a WasmtimeError here), an error
            try:
                return self.failed(exc)
            finally:
                dispose(exc)
        except GuestKilled as exc:
            exc.__traceback__ = None
            return self.failed(exc)
