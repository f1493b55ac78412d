"""What a failed guest leaves on its stderr, and wasmtime's errors as one line for a user.

Owns the text of ``wasm trap: ...`` / ``wasm error: ...`` reports (the exit-status rule that uses them is in
``base``'s docstring) and the freeing of wasmtime error objects. Pure apart from closing those objects.
"""

from __future__ import annotations

import re

import wasmtime

MAX_TRAP_FRAMES = 10  # a trap report includes the wasm backtrace only when it is at most this long
_FRAME = re.compile(r"^\s+\d+:\s+0x[0-9a-f]+ - ")


def dispose(exc: wasmtime.WasmtimeError | wasmtime.Trap) -> None:
    """Free a wasmtime error now rather than at the next garbage collection.

    wasmtime-py raises it from a generator frame that also holds it: a reference cycle (exception ->
    traceback -> frame -> exception) that would keep it, its native error and our frames (with the store
    object) alive until the collector runs.
    """
    exc.__traceback__ = None
    exc.close()


def trap_report(text: str) -> str:
    """The one-line ``wasm trap: ...`` for a guest's stderr, plus the wasm backtrace when it is short.

    wasmtime formats errors as ``error while executing at wasm backtrace:`` + frames + ``Caused by:`` + cause.
    """
    lines = text.splitlines()
    frames = [line.rstrip() for line in lines if _FRAME.match(line)]
    cause = ""
    if "Caused by:" in lines:
        after = [line.strip() for line in lines[lines.index("Caused by:") + 1 :] if line.strip()]
        cause = next((line for line in after if line.startswith("wasm trap:")), after[-1] if after else "")
    if not cause:
        cause = next((line.strip() for line in lines if line.strip()), "unknown error")
    if not cause.startswith("wasm trap:"):
        cause = f"wasm error: {cause}"
    report = cause + "\n"
    if 0 < len(frames) <= MAX_TRAP_FRAMES:
        report += "wasm backtrace:\n" + "\n".join(frames) + "\n"
    return report


def error_summary(text: str) -> str:
    """wasmtime's multi-line error (message, backtrace, ``Caused by:`` chain) as one line for a user."""
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "Caused by:" or re.match(r"^\d+:\s+0x[0-9a-f]+ - ", line):
            continue
        if line.endswith("wasm backtrace:"):
            continue
        parts.append(line.removeprefix("0: ").removeprefix("1: "))
    return ": ".join(parts) or text
