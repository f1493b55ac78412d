"""The component runner: a component in a child process of its own, planned, spawned, signalled and reaped.

Owns finding the runner executable, the plan it is given (``runner_plan``: the one place that says what a
runner process is told), spawning it, and the guest that stands for it in the daemon (``ComponentRunner``).

Why a process. Components block inside wasmtime's own Rust WASI code (sleep, poll, socket accept) where no
Python runs, so by default each component runs in a runner process, started with ``os.posix_spawn`` (the daemon
has threads: no fork, no preexec_fn) in its own process group, with the guest's stdio as its fds 0-2 (opened by
the daemon with FIFO guards, so neither side blocks on open), nothing else inherited (every other fd of ours
is close-on-exec) and one argument, a JSON plan: args, env, preopens, memory and CPU limits, the network grant.
The daemon always compiles the component first (bad input fails Create with our messages). Two runners take
the same kind of plan:

- ``wasm-shim-component-runner`` (``runner/``: Rust on the wasmtime 48 crates, built by scripts/setup.sh; found
  at the ``component_runner`` config path, else beside our interpreter, else on PATH), the default. It starts
  in milliseconds, compiles the component with its own engine once per node (cached in our cache directory
  under its own fingerprint, checked like ours; ``wasm-shim precompile`` warms it through ``--precompile``),
  and it is the only one that can give a component sockets.
- ``python -m wasm_shim.shim.engines.wasmtime.python_runner PLAN``, the fallback when the Rust runner is not
  installed (said once in the log): it loads the compiled component from our own cache file (re-checking the
  directory, the file and the digest; it never compiles) and runs it in a thread of that process.

Both exit with the guest's status (``base``'s rule) and ask for SIGKILL if their parent thread dies
(PR_SET_PDEATHSIG: ``start`` is called from the daemon's event-loop thread, which lives as long as the daemon),
so no runner outlives a crashed daemon. Kill(sig) sends SIGKILL through a pidfd (never a bare pid that could
have been reused); the status is 128 + the first terminating signal. Pause/Resume are SIGSTOP/SIGCONT.
``stats`` reads the runner's RSS and CPU time from /proc. One watcher thread per engine polls the runners'
pidfds and reaps each with waitid(P_PIDFD) (never waitpid(-1), which would steal the native engine's
children); on_exit runs after the reap, once our own pidfd is closed, so every fd of the guest is gone.

Network. No sockets unless ``wasm.shim.io/network`` grants them (``network.py`` parses the grammar). wasmtime-py
50 gives components no sockets and no socket-address check, so only the Rust runner honours a grant: it joins
the pod's network namespace (config.json ``linux.namespaces``, the network entry's path) before it has a
thread, so every socket lives there, and decides every bind, listen, accept, connect, send and receive with
wasmtime's socket-address check (``runner/src/main.rs``, ``allowed``). No path in the spec, a thread-isolated
component, a core module (WASI preview1 has no sockets API) or a missing Rust runner fails Create. Name lookup
stays off: the resolver would read the node's /etc/resolv.conf, not the pod's.

OOM. In the Rust runner a resource limiter sees every refused memory.grow; when the guest then fails, the
runner writes ``oom`` on its report pipe (its fd 3), which ``ComponentRunner`` reads after the reap (the Python
runner reports nothing).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal as signals
import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from ..base import (
    EngineError,
    Guest,
    GuestSpec,
    GuestStdio,
    WasmKind,
    killed_status,
    network_namespace_path,
    signal_terminates,
)
from ..network import NETWORK_ANNOTATION, NetworkGrant
from .components import ISOLATION_ANNOTATION, ComponentPrepared
from .streams import open_for_wasmtime

log = logging.getLogger(__name__)

COMPONENT_RUNNER = "wasm-shim-component-runner"  # runner/: the default runner process of a component
PYTHON_RUNNER_MODULE = "wasm_shim.shim.engines.wasmtime.python_runner"
PRECOMPILE_TIMEOUT = 600  # seconds for the Rust runner to compile one component (a hang bound)
REPORT_FD = 3  # the Rust runner's report pipe (runner/src/main.rs, `report`)
_REPORT_LIMIT = 4096  # bytes we read of it: a few short lines
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class RunnerLocator:
    """Finds the Rust component runner: the configured path, else beside our interpreter, else on PATH.

    Found once, then remembered (this is on every component's Create); while it is missing, each call looks
    again, so a runner installed later is picked up without restarting the daemon. Its absence is logged once.
    """

    def __init__(self, configured: str = ""):
        self._configured = configured  # "" = search
        self._found: str | None = None
        self._warned = False

    def candidates(self) -> list[str]:
        if self._configured:
            return [self._configured]
        candidates = [os.path.join(os.path.dirname(sys.executable), COMPONENT_RUNNER)]
        found = shutil.which(COMPONENT_RUNNER)
        if found and found not in candidates:
            candidates.append(found)
        return candidates

    def find(self) -> str | None:
        """The runner executable, or None: components then run in the Python runner, network grants fail."""
        if self._found is not None:
            return self._found
        for path in self.candidates():
            if os.path.isfile(path) and os.access(path, os.X_OK):
                self._found = path
                return path
        if not self._warned:
            self._warned = True
            log.warning("%s not found (looked for %s): components run in the Python runner (slower to start, "
                        "no network grants); build it with scripts/setup.sh", COMPONENT_RUNNER,
                        ", ".join(self.candidates()))
        return None


def pod_network(spec: GuestSpec, kind: WasmKind, isolation: str, network: NetworkGrant) -> str:
    """The network namespace a grant joins; EngineError when the grant cannot be honoured exactly."""
    grant = f"annotation {NETWORK_ANNOTATION}={network}"
    if kind is WasmKind.MODULE:
        raise EngineError(
            f"{grant}: the entrypoint is a WASI preview1 core module, which has no sockets API; only "
            "components (wasi:sockets) can use a network grant"
        )
    if isolation != "process":
        raise EngineError(
            f"{grant} needs {ISOLATION_ANNOTATION}=process: a component in the daemon's threads would open "
            "its sockets in the node's network namespace"
        )
    path = network_namespace_path(spec.bundle) if spec.bundle else None
    if path is None:
        raise EngineError(
            f"{grant}: the OCI spec names no network namespace to join (linux.namespaces has no network "
            "entry with a path); a pod's containers have one under CRI, with ctr use "
            "--with-ns network:/var/run/netns/NAME. Sockets are never opened in the node's namespace"
        )
    if not os.path.exists(path):
        raise EngineError(f"{grant}: network namespace {path} does not exist")
    return path


def runner_plan(prepared: ComponentPrepared, cache_dir: str) -> tuple[str, list[str], dict[str, str], bool]:
    """How to start the runner of ``prepared``: (program, argv, environment, whether it has a report pipe).

    The plan is the runner's whole view of its guest: every field is written, the runner re-checks what it
    relies on (``Plan`` in runner/src/main.rs; ``run_plan`` in python_runner.py).
    """
    spec = prepared.spec
    plan: dict[str, Any] = {
        "task_id": spec.task_id, "rootfs": spec.rootfs, "root_readonly": spec.root_readonly,
        "args": list(spec.args), "env": [list(pair) for pair in prepared.env],
        "mounts": [[m.destination, m.source, m.readonly] for m in prepared.preopens],
        "memory_limit": spec.memory_limit, "cpu_limit": spec.cpu_limit, "parent": os.getpid(),
        "digest": prepared.compiled.digest,
    }
    if prepared.runner is not None:
        plan.update({
            "wasm": prepared.entry.host_path, "cache_dir": cache_dir, "netns": prepared.netns,
            "network": prepared.network.plan(), "report_fd": REPORT_FD,
            "serve": prepared.serve.plan() if prepared.serve is not None else None,
        })
        return prepared.runner, [prepared.runner, json.dumps(plan)], {}, True  # env: nothing of ours
    artifact = prepared.artifact
    assert artifact is not None  # prepare wrote it for the Python runner
    plan.update({
        "artifact": artifact.path, "payload_sha256": artifact.payload_sha256, "cwd": spec.cwd,
        "guest_path": prepared.entry.guest_path, "host_path": prepared.entry.host_path,
    })
    # Only what locates the interpreter's modules (the guest's env is in the plan, never inherited).
    env = {key: value for key, value in os.environ.items() if key.startswith("PYTHON") or key == "PATH"}
    return sys.executable, [sys.executable, "-m", PYTHON_RUNNER_MODULE, json.dumps(plan)], env, False


def spawn_runner(
    prepared: ComponentPrepared, stdio: GuestStdio, on_exit: Callable[[int], None], cache_dir: str,
    on_gone: Callable[[ComponentRunner], None],
) -> tuple[ComponentRunner, int]:
    """Spawn the runner of ``prepared`` (see the module docstring); returns at once with its guest and a pidfd
    of the process, which the caller hands to an exit watcher (``ComponentRunner.reaped`` is its callback)."""
    task_id = prepared.spec.task_id
    program, argv, env, reports = runner_plan(prepared, cache_dir)
    report = os.pipe2(os.O_CLOEXEC) if reports else None  # (read end, write end)
    try:
        fds = open_runner_stdio(stdio)
    except BaseException:
        for fd in report or ():
            os.close(fd)
        raise
    if report is not None:
        fds.append(report[1])  # becomes the runner's fd 3 (REPORT_FD)
    try:
        pid = os.posix_spawn(
            program, argv, env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
            setpgroup=0, setsigmask=(),
        )
    except OSError as exc:
        if report is not None:
            os.close(report[0])
        raise EngineError(f"cannot start a runner process for task {task_id}: {exc.strerror}") from None
    finally:
        for fd in fds:
            os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:  # never expected: the child is unreaped; make sure it does not run on
        os.kill(pid, signals.SIGKILL)
        os.waitpid(pid, 0)
        if report is not None:
            os.close(report[0])
        raise EngineError(f"cannot watch the runner process of task {task_id}: {exc.strerror}") from None
    runner = ComponentRunner(task_id, pid, os.dup(pidfd), on_exit, on_gone,
                             report[0] if report is not None else None, serving=prepared.serve is not None)
    log.debug("task %s: component runner pid %d", task_id, pid)
    return runner, pidfd


class ComponentRunner(Guest):
    """A component running in a runner process (see the module docstring); created by ``spawn_runner``.

    Thread-safe. ``_lock`` guards the pidfd we signal through (a dup of the watcher's, closed before on_exit,
    so a kill after the reap can never reach a recycled fd) and the kill signal.
    """

    engine_name: ClassVar[str] = "wasmtime"

    def __init__(
        self, task_id: str, pid: int, pidfd: int, on_exit: Callable[[int], None],
        on_gone: Callable[[ComponentRunner], None], report_fd: int | None = None, serving: bool = False,
    ):
        self._on_gone = on_gone
        self._report_fd = report_fd  # the read end of the Rust runner's report pipe; read once, after the reap
        self.oom = False  # the runner reported that the guest failed after its memory limit refused it
        self.task_id = task_id
        self.pid = pid
        self._pidfd: int | None = pidfd
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._kill_signal: int | None = None
        self._done = threading.Event()
        self._last_stats = (0, 0)
        self.exit_status: int | None = None
        self._serving = serving  # an HTTP server: SIGTERM/SIGINT drain it (runner/src/http.rs) instead of a kill

    def kill(self, signal: int, all: bool = False) -> None:
        """SIGKILL to the runner for any terminating signal, except that a server gets SIGTERM and SIGINT as they
        are (it stops accepting, finishes its requests in flight, exits; a later SIGKILL still ends it at once).
        The first terminating signal decides the status (128 + it)."""
        if not signal_terminates(signal):
            return
        with self._lock:
            if self._kill_signal is None:
                self._kill_signal = signal
            drains = self._serving and signal in (signals.SIGTERM, signals.SIGINT)
            self._send(signal if drains else signals.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: every thread of the runner stops, whatever the guest is doing; a kill still ends it."""
        with self._lock:
            self._send(signals.SIGSTOP)

    def resume(self) -> None:
        with self._lock:
            self._send(signals.SIGCONT)

    def stats(self) -> tuple[int, int]:
        """(resident set size in bytes, CPU ns) of the runner process, from /proc/PID/stat (proc(5))."""
        with self._lock:
            if self._pidfd is None:
                return self._last_stats
            try:
                with open(f"/proc/{self.pid}/stat", "rb") as file:
                    fields = file.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                return self._last_stats
            # After the ")" of comm: fields[0] is field 3 (state); utime 14, stime 15, rss 24 (pages).
            ticks = int(fields[11]) + int(fields[12])
            self._last_stats = (int(fields[21]) * _PAGE_SIZE, ticks * 1_000_000_000 // _CLOCK_TICKS)
            return self._last_stats

    def pids(self) -> list[int]:
        return [self.pid]

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the runner was reaped and on_exit returned; True if it has."""
        return self._done.wait(timeout)

    def _send(self, signal: int) -> None:  # with self._lock held
        if self._pidfd is None:
            return  # reaped: nothing to signal
        try:
            signals.pidfd_send_signal(self._pidfd, signal)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def reaped(self, status: int) -> None:
        """From the exit watcher, once, after waitid reaped the runner."""
        with self._lock:
            fd, self._pidfd = self._pidfd, None
            if fd is not None:
                os.close(fd)
            if self._kill_signal is not None:
                status = killed_status(self._kill_signal)
            report, self._report_fd = self._report_fd, None
        if report is not None:
            with os.fdopen(report, "rb") as pipe:  # the runner is gone: its end is closed, so this reads to EOF
                lines = pipe.read(_REPORT_LIMIT).split(b"\n")
            self.oom = status != 0 and self._kill_signal is None and b"oom" in lines
        self.exit_status = status
        self._on_gone(self)
        log.debug("task %s: component runner %d ended with status %d", self.task_id, self.pid, status)
        try:
            self._on_exit(status)
        except Exception:
            log.exception("task %s: on_exit callback failed", self.task_id)
        finally:
            self._done.set()


def open_runner_stdio(stdio: GuestStdio) -> list[int]:
    """The runner's fds 0, 1, 2, opened here (close-on-exec; posix_spawn's dup2 places them); EngineError."""
    fds: list[int] = []

    def opener(flags: int) -> Callable[[str], None]:
        return lambda path: fds.append(os.open(path, flags | os.O_CLOEXEC, 0o644))

    try:
        for stream, path, flags in (
            ("stdin", stdio.stdin, os.O_RDONLY),
            ("stdout", stdio.stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            ("stderr", stdio.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            if path is None:
                fds.append(os.open(os.devnull, (os.O_RDONLY if stream == "stdin" else os.O_WRONLY) | os.O_CLOEXEC))
            else:
                open_for_wasmtime(path, stream, opener(flags))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


