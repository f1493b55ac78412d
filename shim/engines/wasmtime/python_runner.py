"""The Python component runner: ``python -m wasm_shim.shim.engines.wasmtime.python_runner PLAN``.

The fallback runner process when the Rust runner (``runner/``) is not installed (see ``runner``). It loads
the compiled component the daemon wrote (re-checking the directory, the file and the digest; it never
compiles) and runs it with the daemon's own engine code in a thread; one interpreter and ``import wasmtime``
per guest make it slower to start and bigger than the Rust runner, and it gives no sockets.

Exit: the guest's status (``base``'s rule); 1 with ``wasm error: component runner: ...`` on stderr when the
plan or the artifact is refused. It dies with the daemon (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal as signals
import sys

from ..base import EXIT_FAILURE, EngineError, Entrypoint, GuestMount, GuestSpec, killed_status
from .cache import RunnerArtifact
from .components import ComponentPrepared
from .engine import WasmtimeEngine

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def run_plan(plan_text: str) -> int:
    """The runner's main: load the checked artifact, run the guest; its status."""
    plan = json.loads(plan_text)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signals.SIGKILL, 0, 0, 0)
    if os.getppid() != plan["parent"]:
        return killed_status(signals.SIGKILL)  # the daemon died before the line above took effect
    engine = WasmtimeEngine(cache_dir=None, component_isolation="thread")
    compiled = engine.load_runner_component(RunnerArtifact(plan["artifact"], plan["payload_sha256"]))
    spec = GuestSpec(
        task_id=plan["task_id"], rootfs=plan["rootfs"], root_readonly=plan["root_readonly"],
        args=tuple(plan["args"]), env=(), cwd=plan["cwd"], memory_limit=plan["memory_limit"],
        cpu_limit=plan["cpu_limit"],
    )
    prepared = ComponentPrepared(
        spec, Entrypoint(plan["guest_path"], plan["host_path"], None), compiled,
        tuple((key, value) for key, value in plan["env"]),
        tuple(GuestMount(dest, source, readonly) for dest, source, readonly in plan["mounts"]),
        "thread",
    )
    guest = engine.start_thread(prepared, None, lambda status: None)
    guest.join()
    return guest.exit_status if guest.exit_status is not None else EXIT_FAILURE


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.stderr.write(f"usage: python -m {__spec__.name if __spec__ else __name__} PLAN\n")
        os._exit(2)
    try:
        status = run_plan(argv[0])
    except EngineError as exc:
        os.write(2, f"wasm error: component runner: {exc}\n".encode("utf-8", "replace"))
        status = EXIT_FAILURE
    except BaseException as exc:  # the guest's stderr is where the user looks
        os.write(2, f"wasm error: component runner failed: {exc!r}\n".encode("utf-8", "replace"))
        status = EXIT_FAILURE
    os._exit(status)  # no interpreter teardown: the guest's fds are closed by the kernel, now


if __name__ == "__main__":
    main(sys.argv[1:])
