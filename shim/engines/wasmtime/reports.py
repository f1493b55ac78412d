"""What a failed guest leaves on its stderr, and wasmtime's errors as one line for a user.

Owns the classification of a guest's failure (``failure``: base.py's exit-status rule, the trap part) and the
text of its one line, ``wasm trap: ...`` or ``wasm error: ...``, and the freeing of wasmtime error objects.

A trap is a failure that carries a wasmtime trap code: a core module's ``wasmtime.Trap`` has it as
``trap_code``; a component's error reaches us as a ``WasmtimeError`` whose only content is text, so there the
root cause of its chain must be exactly wasmtime's own description of a trap code (``wasm trap: integer divide by
zero``), which ``trap_descriptions`` asks the wasmtime library for. No other text makes a trap. The runner's
``exit.rs`` applies the same rule to the same test vectors (tests/vectors/engine_rules.json).
"""

from __future__ import annotations

import functools
import re

import wasmtime
from wasmtime import _ffi as wasmtime_ffi  # a trap made from a code: its description, from the library itself

from ..base import EXIT_FAILURE, EXIT_TRAP

_FRAME = re.compile(r"^\d+:\s+(0x[0-9a-f]+ - |<)")


def dispose(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> None:
    """Free a wasmtime error now rather than at the next garbage collection.

    wasmtime-py raises it from a generator frame that also holds it: a reference cycle (exception ->
    traceback -> frame -> exception) that would keep it, its native error and our frames (with the store
    object) alive until the collector runs.
    """
    exc.__traceback__ = None
    exc.close()


@functools.cache
def trap_descriptions() -> dict[str, wasmtime.TrapCode]:
    """wasmtime's one-line description of every trap code (``wasm trap: ...``), as this library words it."""
    descriptions = {}
    for code in wasmtime.TrapCode:
        trap = wasmtime.Trap._from_ptr(wasmtime_ffi.wasmtime_trap_new_code(code.value))
        try:
            descriptions[trap.message.strip()] = code
        finally:
            trap.close()
    return descriptions


def _causes(text: str) -> list[str]:
    """wasmtime's error text as its chain of causes, outermost first, backtraces left out."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if (not line or line == "Caused by:" or line.endswith("wasm backtrace:") or line.startswith("note: ")
                or _FRAME.match(line)):
            continue
        parts.append(re.sub(r"^\d+: ", "", line))
    return parts


def trap_code(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> wasmtime.TrapCode | None:
    """The trap code ``exc`` carries, or None when it is not a trap (see the module docstring)."""
    if isinstance(exc, wasmtime.Trap):
        return exc.trap_code
    causes = _causes(str(exc))
    return trap_descriptions().get(causes[-1]) if causes else None


def failure(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> tuple[int, str]:
    """(status, the one line for the guest's stderr) of a guest that failed with ``exc`` (base.py's rule)."""
    code = trap_code(exc)
    if code is not None:
        description = next(text for text, known in trap_descriptions().items() if known is code)
        return EXIT_TRAP, description
    return EXIT_FAILURE, f"wasm error: {error_summary(str(exc))}"


def error_summary(text: str) -> str:
    """wasmtime's multi-line error (message, backtrace, ``Caused by:`` chain) as one line for a user."""
    return ": ".join(_causes(text)) or text.strip() or "unknown error"
