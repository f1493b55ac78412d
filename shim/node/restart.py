"""Restarting containerd on a node through its init, and waiting until its CRI answers again.

Owns the restart command (the layout's own through `nsenter` into PID 1's namespaces, or the operator's
`--restart-command`) and `wait_for_cri`. The installer pod has hostPID, so PID 1 is the node's init.

Invariants: a restart counts as done only when containerd answers CRI's `Version` on its socket (a socket that
accepts is not enough: containerd 1.6 keeps serving with its CRI plugin failed to load, and a bad runtime table
does that); every failure is an InstallError naming the command and what it printed, within the timeout.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable

from .distributions import NSENTER, InstallError, Layout, Probe, detect
from .host import Host

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def say(message: str) -> None:
    sys.stdout.write(f"wasm-shim node: {message}\n")
    sys.stdout.flush()


class Restarter:
    """Restarts containerd for a layout: `command` (shell words) overrides the layout's, `cri_socket` its socket."""

    def __init__(self, host: Host, *, command: str = "", cri_socket: str = "", timeout: float = 90.0,
                 run: Run = subprocess.run, cri_ready: Callable[[str, float], str] | None = None) -> None:
        self.host = host
        self.command = command
        self.cri_socket = cri_socket
        self.timeout = timeout
        self._run = run
        self._cri_ready = cri_ready or wait_for_cri
        self.tried: Layout | None = None  # set once a restart was tried: a rollback restarts again

    def restart(self, layout: Layout) -> None:
        argv = shlex.split(self.command) if self.command else list(layout.restart)
        self.tried = layout
        say(f"restarting containerd: {shlex.join(argv)}")
        try:
            done = self._run(argv, capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"restart command {shlex.join(argv)} did not run: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or b"").decode("utf-8", "replace").strip()[-400:]
            raise InstallError(f"restart command {shlex.join(argv)} failed (exit {done.returncode}): {tail}")
        socket = self.cri_socket or layout.cri_socket
        problem = self._cri_ready(self.host.path(socket), self.timeout)
        if problem:
            raise InstallError(f"containerd did not come back after the restart: {problem}")


def layout_for_restart(probe: Probe, layout: str, config_path: str, config_version: int) -> Layout:
    """The layout an install recorded, for restarting containerd at uninstall (its config may be gone by then)."""
    try:
        return detect(probe, layout=layout, containerd_config=config_path if layout == "containerd" else "",
                      config_version=config_version)
    except InstallError:
        # The config is gone or unreadable now; the restart command and socket do not depend on it.
        return Layout(layout, config_path, 2, "merge", (*NSENTER, "systemctl", "restart", "containerd"),
                      "/run/containerd/containerd.sock")


def wait_for_cri(socket_path: str, timeout: float) -> str:
    """"" once containerd answers CRI's Version on `socket_path` (within `timeout` s); else what went wrong."""
    import grpc

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not os.path.exists(socket_path):
            last = f"{socket_path} does not exist"
            time.sleep(0.5)
            continue
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        try:
            call = channel.unary_unary("/runtime.v1.RuntimeService/Version")
            call(b"", timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            return ""
        except grpc.RpcError as exc:
            last = f"CRI Version on {socket_path}: {exc.code().name} {exc.details() or ''}".strip()
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return last + " (containerd is up but its CRI plugin is not: see containerd's log)"
        finally:
            channel.close()
        time.sleep(0.5)
    return last + f" after {timeout:g} s"
