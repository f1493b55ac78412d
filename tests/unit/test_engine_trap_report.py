"""The one line a failed guest's stderr gets, and whether it is a trap (base.py's rule, ``reports.failure``).

What no vector in tests/vectors/engine_rules.json can make: errors as wasmtime-py hands a component's failure to
the daemon, text only. A trap is a trap code, so only a root cause that is exactly wasmtime's description of one
makes a trap; a host error that mentions a trap stays an error. No backtrace reaches the guest's stderr.
"""

from __future__ import annotations

import wasmtime

from wasm_shim.shim.engines.base import EXIT_FAILURE, EXIT_TRAP
from wasm_shim.shim.engines.wasmtime.reports import error_summary, failure, trap_descriptions

COMPONENT_TRAP = """error while executing at wasm backtrace:
    0:    0x18a - <unknown>!__original_main
    1:    0x155 - <unknown>!_start
    2:   0x1096 - <unknown>!_start.command_export
note: using the `WASMTIME_BACKTRACE_DETAILS=1` environment variable may show more debugging information

Caused by:
    wasm trap: wasm `unreachable` instruction executed
"""


def test_a_component_trap_is_one_line_without_its_backtrace() -> None:
    assert failure(wasmtime.WasmtimeError(COMPONENT_TRAP)) == (
        EXIT_TRAP, "wasm trap: wasm `unreachable` instruction executed")


def test_text_that_only_mentions_a_trap_is_an_error() -> None:
    made_up = wasmtime.WasmtimeError("failed to read /data\n\nCaused by:\n    wasm trap: the disk is on fire\n")
    assert failure(made_up) == (EXIT_FAILURE, "wasm error: failed to read /data: wasm trap: the disk is on fire")
    above = wasmtime.WasmtimeError("wasm trap: integer divide by zero\n\nCaused by:\n    bad file descriptor\n")
    assert failure(above)[0] == EXIT_FAILURE  # the root cause decides, not a line above it


def test_every_trap_code_has_its_description() -> None:
    descriptions = trap_descriptions()
    assert set(descriptions.values()) == set(wasmtime.TrapCode)
    assert descriptions["wasm trap: call stack exhausted"] is wasmtime.TrapCode.STACK_OVERFLOW


def test_error_summary_joins_the_cause_chain() -> None:
    text = "failed to parse WebAssembly module\n\nCaused by:\n    magic header not detected\n"
    assert error_summary(text) == "failed to parse WebAssembly module: magic header not detected"
