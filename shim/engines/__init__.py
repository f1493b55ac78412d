"""Guest engines behind one declared contract (``base.Engine``, ``base.Guest``): the ``wasmtime`` package runs
WebAssembly, ``native`` runs ELF/``#!`` entrypoints through runc.

Import engines by module (``from wasm_shim.shim.engines.wasmtime import WasmtimeEngine``): importing this
package must stay cheap, so it imports no engine (``import wasmtime`` alone costs ~65 ms, which the ``start``
subcommand must never pay).
"""
