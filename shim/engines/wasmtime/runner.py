"""The component runner: a component in a child process of its own, planned, spawned, signalled and reaped.

Owns finding the runner executable, the plan it is given (``runner_plan``: the one place that says what a
runner process is told), spawning it, and the guest that stands for it in the daemon (``ComponentRunner``).

Why a process. Components block inside wasmtime's own Rust WASI code (sleep, poll, socket accept) where no
Python runs, so by default each component runs in a runner process, ``wasm-shim-component-runner``
(``runner/``: Rust on the wasmtime 48 crates, built by scripts/setup.sh; found at the ``component_runner`` config
path, else beside our interpreter, else on PATH). It is started with ``os.posix_spawn`` (the daemon has threads:
no fork, no preexec_fn) in its own process group, with the guest's stdio as its fds 0-2 (``child.open_stdio``:
neither side blocks on open), its report pipe as fd 3, its plan as fd 4 and nothing else inherited (every other fd
of ours is close-on-exec).

The plan (``runner_plan``: args, env, preopens, memory and CPU limits, the network grant) is JSON in a sealed memfd
the runner reads from fd 4 (``--plan-fd 4``), never in argv or the environment: ``/proc/PID/cmdline`` is readable
by every local user, and Kubernetes puts Secrets in the guest's environment; one argument is also capped at
128 KiB (E2BIG), which a large environment would pass. The memfd is the runner's alone (``/proc/PID/fd`` is
readable only by its owner), holds any size without a writer thread, and is sealed so that what the runner reads
is what the daemon wrote. The runner's own environment is empty.

One compile. The runner is the only engine that compiles a component it runs: at prepare time the daemon asks
it (``check_in_runner``: ``--check CACHE_DIR FILE``) to compile the component into the cache directory (under
its own fingerprint, in our file format, checked like ours) and to name its exports, which the daemon checks
with its own messages; each runner process then only deserializes that file. The daemon remembers the exports
of what it checked, so only the first Create of a component (per daemon) spawns a check. ``wasm-shim
precompile`` warms the same cache (``--precompile``). Without the runner installed a component with process
isolation fails Create saying so (``component-isolation: thread`` still runs it in the daemon).

The runner exits with the guest's status (``base``'s rule) and asks for SIGKILL if its parent thread dies
(PR_SET_PDEATHSIG: ``start`` is called from the daemon's event-loop thread, which lives as long as the daemon),
so no runner outlives a crashed daemon. It is a ``child.ChildGuest``: kill(sig) sends SIGKILL through a pidfd
(never a bare pid that could have been reused); the status is 128 + the first terminating signal.
Pause/Resume are SIGSTOP/SIGCONT. ``stats`` reads the runner's RSS and CPU time from /proc. One watcher thread
per engine polls the runners' pidfds and reaps each with waitid(P_PIDFD) (never waitpid(-1), which would steal
the native engine's children); on_exit runs after the reap, once our own pidfd is closed, so every fd of the
guest is gone.

Network. No sockets unless ``wasm.shim.io/network`` grants them (``network.py`` parses the grammar). wasmtime-py
50 gives components no sockets and no socket-address check, so only the runner honours a grant: it joins
the pod's network namespace (``GuestSpec.network_namespace``, from config.json by bundle.py) before it has a
thread, so every socket lives there, and decides every bind, listen, accept, connect, send and receive with
X. No path in the spec, a thread-isolated
component, a core module (WASI preview1 has no sockets API) or a missing runner fails Create. Name lookup
stays off: the resolver would read the node's /etc/resolv.conf, not the pod's.

OOM. In the runner a resource limiter sees every refused memory.grow; when the guest then fails, the runner
writes ``oom`` on its report pipe (its fd 3), which ``ComponentRunner`` reads after the reap.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal as signals
import subprocess
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from ..base import (
    EngineError,
    EntryKind,
    GuestSpec,
    GuestStdio,
    killed_status,
    signal_terminates,
)
from ..child import ChildGuest, open_stdio
from ..grant import ISOLATION_ANNOTATION, NETWORK_ANNOTATION
from ..network import NetworkGrant, pod_network_namespace
from .components import ComponentPrepared
from .reports import error_summary

log = logging.getLogger(__name__)

COMPONENT_RUNNER = "wasm-shim-component-runner"  # runner/: the default runner process of a component
PRECOMPILE_TIMEOUT = 600  # seconds for the runner to compile one component (a hang bound)
REPORT_FD = 3  # the runner's report pipe (runner/src/exit.rs, `report`)
PLAN_FD = 4  # the runner's plan (runner/src/plan.rs, `read_plan`)
_REPORT_LIMIT = 4096  # bytes we read of it: a few short lines


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
        """The runner executable, or None: then only components in daemon threads can run."""
        if self._found is not None:
            return self._found
        for path in self.candidates():
            if os.path.isfile(path) and os.access(path, os.X_OK):
                self._found = path
                return path
        if not self._warned:
            self._warned = True
            log.warning("%s not found (looked for %s): components can run only in daemon threads "
                        "(component-isolation: thread); build it with scripts/setup.sh", COMPONENT_RUNNER,
                        ", ".join(self.candidates()))
        return None


def pod_network(spec: GuestSpec, kind: EntryKind, isolation: str, network: NetworkGrant) -> str:
    """The network namespace a grant joins; EngineError when the grant cannot be honoured exactly."""
    grant = f"annotation {NETWORK_ANNOTATION}={network}"
    if kind is EntryKind.MODULE:
        raise EngineError(
            f"{grant}: the entrypoint is a WASI preview1 core module, which has no sockets API; only "
            "components (wasi:sockets) can use a network grant"
        )
    if isolation != "process":
        raise EngineError(
            f"{grant} needs {ISOLATION_ANNOTATION}=process: a component in the daemon's threads would open "
            "its sockets in the node's network namespace"
        )
    return pod_network_namespace(spec.network_namespace, grant, "sockets are never opened in the node's namespace")


def runner_plan(prepared: ComponentPrepared, cache_dir: str) -> tuple[str, list[str], dict[str, str], bytes]:
    """How to start the runner of ``prepared``: (program, argv, environment, the plan for its ``PLAN_FD``).

    The plan is the runner's whole view of its guest: every field is written, the runner re-checks what it
    relies on (``Plan`` in runner/src/plan.rs). Nothing of the guest's is in argv or the environment.
    """
    spec = prepared.spec
    plan: dict[str, Any] = {
        "task_id": spec.task_id, "rootfs": spec.rootfs, "root_readonly": spec.root_readonly,
        "args": list(spec.args), "env": [list(pair) for pair in prepared.env],
        "mounts": [[m.destination, m.source, m.readonly] for m in prepared.preopens],
        "memory_limit": spec.memory_limit, "cpu_limit": spec.cpu_limit, "parent": os.getpid(),
        "digest": prepared.digest,
    }
    assert prepared.runner is not None  # prepare refuses process isolation without a runner
    plan.update({
        "wasm": prepared.entry.host_path, "cache_dir": cache_dir, "netns": prepared.netns,
        "network": prepared.network.plan(), "report_fd": REPORT_FD,
        "serve": prepared.serve.plan() if prepared.serve is not None else None,
    })
    argv = [prepared.runner, "--plan-fd", str(PLAN_FD)]
    return prepared.runner, argv, {}, json.dumps(plan).encode()  # env: nothing of ours


def check_in_runner(runner: str, cache_dir: str, path: str, digest: str, name: str) -> tuple[str, ...]:
    """Have the runner compile ``path`` (sha256 ``digest``) into ``cache_dir`` and name its exports.

    EngineError naming ``name`` when the runner cannot compile it or the file changed meanwhile.
    """
    try:
        done = subprocess.run([runner, "--check", cache_dir, path], capture_output=True, text=True,
                              timeout=PRECOMPILE_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{name}: {COMPONENT_RUNNER} --check: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.strip().removeprefix("cannot compile: ")
        raise EngineError(f"{name} is not valid WebAssembly: {error_summary(reason)}")
    try:
        answer = json.loads(done.stdout)
        checked, exports = answer["sha256"], tuple(str(export) for export in answer["exports"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{name}: {COMPONENT_RUNNER} --check answered {done.stdout!r}: {exc}") from None
    if checked != digest:
        raise EngineError(f"{name} changed while it was being checked (sha256 {checked}, read as {digest})")
    return exports


def sealed_memfd(name: str, data: bytes) -> int:
    """A close-on-exec memfd holding ``data``, sealed against any change, positioned at its start."""
    fd = os.memfd_create(name[:200], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _clear_of_targets(fds: list[int]) -> None:
    """Move (in place, close-on-exec) every fd of ``fds`` numbered below ``len(fds)`` to a number at least that.

    posix_spawn applies the dup2 actions in order: with a source numbered like an earlier target (the memfd made
    first may be fd 3, the report pipe's target), it would be overwritten before it is copied.
    """
    for index, fd in enumerate(fds):
        if fd < len(fds):
            fds[index] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, len(fds))
            os.close(fd)


def spawn_runner(
    prepared: ComponentPrepared, stdio: GuestStdio, on_exit: Callable[[int], None], cache_dir: str,
    on_gone: Callable[[ComponentRunner], None],
) -> tuple[ComponentRunner, int]:
    """Spawn the runner of ``prepared`` (see the module docstring); returns at once with its guest and a pidfd
    of the process, which the caller hands to an exit watcher (``ComponentRunner.reaped`` is its callback)."""
    task_id = prepared.spec.task_id
    program, argv, env, plan = runner_plan(prepared, cache_dir)
    plan_fd = sealed_memfd(f"wasm-shim-plan-{task_id}", plan)
    try:
        report = os.pipe2(os.O_CLOEXEC)  # (read end, write end)
    except BaseException:
        os.close(plan_fd)
        raise
    try:
        fds = list(open_stdio(stdio))
    except BaseException:
        for fd in (plan_fd, *report):
            os.close(fd)
        raise
    fds += [report[1], plan_fd]  # the runner's fds REPORT_FD and PLAN_FD
    try:
        _clear_of_targets(fds)  # a dup2 onto fd N must not overwrite a source still to be copied
        pid = os.posix_spawn(
            program, argv, env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
            setpgroup=0, setsigmask=(),
        )
    except OSError as exc:
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
        os.close(report[0])
        raise EngineError(f"cannot watch the runner process of task {task_id}: {exc.strerror}") from None
    runner = ComponentRunner(task_id, pid, os.dup(pidfd), on_exit, on_gone, report[0],
                             serving=prepared.serve is not None)
    log.debug("task %s: component runner pid %d", task_id, pid)
    return runner, pidfd


class ComponentRunner(ChildGuest):
    """A component running in a runner process (see the module docstring); created by ``spawn_runner``.

    Every terminating signal becomes SIGKILL through the pidfd, except SIGTERM and SIGINT to a server (``kill``);
    the first one decides the status (128 + it).
    """

    engine_name: ClassVar[str] = "wasmtime"

    def __init__(
        self, task_id: str, pid: int, pidfd: int, on_exit: Callable[[int], None],
        on_gone: Callable[[ComponentRunner], None], report_fd: int | None = None, serving: bool = False,
    ):
        super().__init__(task_id, pid, pidfd, on_exit)
        self._on_gone = on_gone
        self._report_fd = report_fd  # the read end of the runner's report pipe; read once, after the reap
        self._kill_signal: int | None = None
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

    def _final_status(self, status: int) -> int:  # with self._lock held
        if self._kill_signal is not None:
            return killed_status(self._kill_signal)
        report, self._report_fd = self._report_fd, None
        if report is not None:
            with os.fdopen(report, "rb") as pipe:  # the runner is gone: its end is closed, so this reads to EOF
                lines = pipe.read(_REPORT_LIMIT).split(b"\n")
            self.oom = status != 0 and b"oom" in lines
        return status

    def _gone(self, status: int) -> None:
        report, self._report_fd = self._report_fd, None  # a killed runner's report is not read
        if report is not None:
            os.close(report)
        self._on_gone(self)
        log.debug("task %s: component runner %d ended with status %d", self.task_id, self.pid, status)



