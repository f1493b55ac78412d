"""`wasm-shim node install|uninstall|status` on a node seen through a host root: the lock, the rollback and the
report around the steps, which live one job per module:

- host.py: the host-root view and atomic writes; changes.py: each edit with its undo, the undo log;
- prefix.py: which directory the installer may own; record.py: the install record (`<prefix>/state.json`);
- install.py, uninstall.py, status.py: the operations; policy_files.py: the node's signature policy;
- restart.py: containerd's restart and the wait for CRI; restart_slots.py: how many nodes restart at once;
  distributions.py: layouts and config plans (pure); preflight.py: the bundle run on the node first.

Invariants:
- One installer at a time per node (session.Session.lock); a second one stops having changed nothing.
- Every change an install makes is recorded in the undo log before it counts; any failure (bad input, a write
  refused, containerd not answering CRI after the restart) replays the log backwards, under the lock, and restarts
  containerd again on the bytes it had if a restart was tried, so the node is as found (its previous install
  included, which stays in use: `Reporter.failed(kept=...)`).
- At most N nodes restart containerd at once when the chart gives restart slots (restart_slots.py): a run that
  will restart takes one before its first write and gives it back after the restart (or the rollback's).
- Uninstall removes exactly what the install record names and takes our block out of containerd's config as it
  is then (uninstall.py); what it leaves, and why, goes to stderr and to the reporter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from .distributions import InstallError, Layout
from .host import Host, write_atomic
from .install import install, options_toml
from .policy_files import read_policy_dir
from .prefix import LOCK_FILE, refuse_system_dir
from .record import STATE_FILE, Record, load
from .restart import say, wait_for_cri
from .session import Options, Session, Slots
from .status import status
from .uninstall import uninstall

__all__ = ["Host", "Node", "Options", "Reporter", "options_toml", "read_policy_dir", "wait_for_cri",
           "write_atomic"]


def warm(s: Session, layout: Layout) -> None:
    """Start the node's shim daemon through containerd and wait for its `warm_images` (warmup.py); warnings only."""
    from ..config import ShimConfig
    from .warmup import STATUS_FILE, warm_up

    config = ShimConfig().merged(s.o.shim_options, "--option")
    socket = s.host.path(s.o.cri_socket or layout.cri_socket)
    status_path = s.host.path(os.path.join(config.cache_dir, STATUS_FILE))
    for warning in warm_up(socket, s.o.handler, config.warm_images, status_path, s.o.warm_timeout, say):
        say(f"warning: warm-up: {warning}")


class Reporter:
    """Where the outcome goes besides stdout (the node object, via report.KubeReporter). This one: nowhere."""

    def ready(self, version: str, layout: str) -> None: ...

    def failed(self, reason: str, kept: str = "") -> None:
        """The install did not happen; ``kept``: the version that was installed before and still is (an upgrade
        rolled back whole), so the node still runs wasm."""

    def removed(self, left: Sequence[str] = ()) -> None:
        """Uninstalled; ``left``: what stays on the node and why (an operator's files, a table they changed)."""


class Node:
    """One node's install state and the operations on it."""

    def __init__(self, options: Options, *, run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
                 cri_ready: Callable[[str, float], str] | None = None, slots: Slots | None = None) -> None:
        self.s = Session(options, run=run, cri_ready=cri_ready, slots=slots)

    def _record(self) -> Record | None:
        return load(self.s.host, self.s.prefix, self.s.node_view(self.s.prefix))

    def install(self, reporter: Reporter) -> int:
        s = self.s
        created: list[str] = []
        previous = None
        try:
            try:
                refuse_system_dir(s.prefix, "--prefix")  # before the lock file goes into it
                s.lock(created)
                previous = self._record()
                version, layout = install(s, previous, created)
            except InstallError as exc:
                # Still under the lock: nobody else sees the node half-way back.
                errors = s.changes.undo.replay()
                if s.restarter.tried is not None:
                    # containerd may be down or running our config: bring it back on the bytes it had.
                    try:
                        s.restarter.restart(s.restarter.tried)
                    except InstallError as again:
                        errors.append(f"restart after the rollback: {again}")
                reason = str(exc) + ("; while undoing: " + "; ".join(errors) if errors else "")
                sys.stderr.write(f"wasm-shim node install: {reason}\n")
                if errors:
                    sys.stderr.write("wasm-shim node install: the node could not be fully put back (above)\n")
                else:
                    sys.stderr.write("wasm-shim node install: the node is as it was before this run\n")
                kept = previous.version if previous is not None and not errors else ""
                if kept:
                    sys.stderr.write(f"wasm-shim node install: version {kept} stays installed and in use\n")
                reporter.failed(reason, kept=kept)
                return 1
        finally:
            s.after_restart()  # after the rollback's restart too
            s.unlock()
        if s.o.warm_timeout > 0:
            warm(s, layout)
        reporter.ready(version, layout.name)
        return 0

    def uninstall(self, reporter: Reporter) -> int:
        s = self.s
        if not s.host.exists(s.p(STATE_FILE)) and not s.host.exists(s.p(LOCK_FILE)):
            say("not installed on this node: nothing to do")
            reporter.removed()
            return 0
        try:
            s.lock([])
            try:
                outcome = uninstall(s, self._record())
            finally:
                s.after_restart()
                s.unlock()
        except InstallError as exc:
            sys.stderr.write(f"wasm-shim node uninstall: {exc}\n")
            reporter.failed(str(exc))
            return 1
        for item in outcome.left:
            sys.stderr.write(f"wasm-shim node uninstall: {item}\n")
        if outcome.problem:
            sys.stderr.write(f"wasm-shim node uninstall: {outcome.problem}\n")
            reporter.failed(outcome.problem)
            return 1
        reporter.removed(outcome.left)
        return 0

    def status(self) -> dict[str, object]:
        try:
            record = self._record()
        except InstallError as exc:
            return {"installed": True, "record_error": str(exc), "config_as_installed": False}
        return status(self.s, record)
