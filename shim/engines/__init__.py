"""Guest engines behind one small interface (``base.Engine``): ``wasmtime_engine`` runs WebAssembly.

Import engines by module (``from wasm_shim.shim.engines.wasmtime_engine import WasmtimeEngine``): importing this
package must stay cheap, so it imports no engine (``import wasmtime`` alone costs ~65 ms, which the ``start``
subcommand must never pay).
"""
