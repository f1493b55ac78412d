"""The wasmtime engine: compiles, caches, runs and kills WebAssembly guests (core modules and components).

This package is the only code that imports ``wasmtime`` (docs/design.md, rule 6). One job per module:

- ``engine``       ``WasmtimeEngine``: prepare (resolve, check, compile or load) and start; close.
- ``cache``        the compiled-artifact cache (memory LRU + private on-disk files, digest-checked).
- ``epochs``       kill/pause reaching running wasm (deadline callback, ticker) and the CPU token bucket.
- ``poll``         our WASI preview1 ``poll_oneoff``, so a sleeping module can be killed and paused.
- ``streams``      stdio paths opened for wasmtime without blocking, and the killable stdin pump.
- ``wasi``         a guest's WASI context: exactly its grant.
- ``thread_guest`` a guest on a thread of the daemon (what modules and components share there).
- ``modules``      core modules: linking, the entry export, ``ModuleGuest``.
- ``components``   components: export inspection, the entry check, isolation, ``ComponentGuest``.
- ``runner``       the component runner process: locating it, the check, its plan, ``ComponentRunner``.
- ``footprint``    a module's memories and tables, and its memory limit as wasmtime-py's store limits.
- ``reports``      trap or error (by trap code), and the ``wasm trap: ...`` / ``wasm error: ...`` line.

Import it only where wasmtime is wanted: ``import wasmtime`` alone costs ~65 ms, which the ``start`` subcommand
must never pay.
"""

from ..base import CacheStats
from .components import ComponentGuest, ComponentPrepared
from .engine import WasmtimeEngine, WasmtimeGuest, WasmtimePrepared
from .epochs import TICK_SECONDS
from .modules import ModuleGuest, ModulePrepared
from .reports import error_summary, failure
from .runner import ComponentRunner

__all__ = [
    "TICK_SECONDS",
    "CacheStats",
    "ComponentGuest",
    "ComponentPrepared",
    "ComponentRunner",
    "ModuleGuest",
    "ModulePrepared",
    "WasmtimeEngine",
    "WasmtimeGuest",
    "WasmtimePrepared",
    "error_summary",
    "failure",
]
