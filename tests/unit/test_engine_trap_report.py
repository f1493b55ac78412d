"""The trap line a guest's stderr gets, and the one-line summary of wasmtime's multi-line errors."""

from __future__ import annotations

from wasm_shim.shim.engines.wasmtime.reports import MAX_TRAP_FRAMES, error_summary, trap_report

MODULE_TRAP = """error while executing at wasm backtrace:
    0:    0x18a - <unknown>!__original_main
    1:    0x155 - <unknown>!_start
    2:   0x1096 - <unknown>!_start.command_export

Caused by:
    wasm trap: wasm `unreachable` instruction executed
"""


def test_trap_line_then_short_backtrace() -> None:
    assert trap_report(MODULE_TRAP) == (
        "wasm trap: wasm `unreachable` instruction executed\n"
        "wasm backtrace:\n"
        "    0:    0x18a - <unknown>!__original_main\n"
        "    1:    0x155 - <unknown>!_start\n"
        "    2:   0x1096 - <unknown>!_start.command_export\n"
    )


def test_long_backtrace_is_left_out() -> None:
    frames = "".join(f"   {i}:    0x{i:x} - <unknown>!f{i}\n" for i in range(MAX_TRAP_FRAMES + 1))
    text = f"error while executing at wasm backtrace:\n{frames}\nCaused by:\n    wasm trap: out of bounds\n"
    assert trap_report(text) == "wasm trap: out of bounds\n"


def test_error_that_is_not_a_trap() -> None:
    assert trap_report("something odd happened") == "wasm error: something odd happened\n"


def test_error_summary_joins_the_cause_chain() -> None:
    text = "failed to parse WebAssembly module\n\nCaused by:\n    magic header not detected\n"
    assert error_summary(text) == "failed to parse WebAssembly module: magic header not detected"
