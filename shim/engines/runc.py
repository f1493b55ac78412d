"""runc's command line as the native engine uses it: one binary and state root, bounded calls, runc's own words.

Owns no container state: ``Runc`` builds argv (``--root``, ``--log``/``--log-format json``, ``--systemd-cgroup``)
and runs runc with a timeout, turning a runc that cannot be run or hangs into EngineError. Invariants:
- every call has a timeout (``RUNC_TIMEOUT`` for create/start, ``RUNC_QUICK_TIMEOUT`` for kill and delete);
- an error names runc's own message: the error lines of its JSON log (``runc_log_error``), else its stderr;
- ``force_delete`` and the "already gone" messages (``GONE``) make deletion idempotent.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess

from .errors import EngineError

log = logging.getLogger(__name__)

RUNC_TIMEOUT = 30.0  # seconds for one runc create/start; a hung runc is killed and reported
RUNC_QUICK_TIMEOUT = 10.0  # kill, delete

# runc's messages when the container is already gone; kill and delete are idempotent.
GONE = re.compile(r"container not running|process already finished|does not exist|no such process", re.IGNORECASE)
# systemd cgroup paths are "slice:prefix:name" (runc libcontainer/cgroups/systemd, CRI with SystemdCgroup).
_SYSTEMD_CGROUP = re.compile(r"^[^/:]*:[^:/]*:[^:/]*$")


def runc_log_error(text: str) -> str:
    """The error lines of a runc ``--log-format json`` log, joined; the last non-empty line when none is JSON."""
    errors = []
    plain = ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            plain = line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
            errors.append(str(entry.get("msg", "")).strip())
    return "; ".join(e for e in errors if e) or plain


def systemd_cgroup(cgroups_path: str) -> bool:
    return bool(_SYSTEMD_CGROUP.match(cgroups_path))


class Runc:
    """One runc binary and state root; every call is bounded by a timeout and reports runc's own words."""

    def __init__(self, binary: str, root: str, *, systemd_cgroup: bool = False) -> None:
        self.binary = binary
        self.root = root
        self.systemd_cgroup = systemd_cgroup

    def argv(self, *args: str, log_file: str | None = None) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if log_file:
            argv += ["--log", log_file, "--log-format", "json"]
        if self.systemd_cgroup:
            argv.append("--systemd-cgroup")
        return [*argv, *args]

    def run(self, *args: str, timeout: float = RUNC_QUICK_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run runc with output captured; EngineError when it cannot be run or does not finish in time."""
        argv = self.argv(*args)
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EngineError(f"`runc {' '.join(args)}` did not finish within {timeout:g} s (killed)") from None
        except OSError as exc:
            raise EngineError(f"cannot run {self.binary}: {exc.strerror}") from None


def read_log_error(log_file: str) -> str:
    try:
        with open(log_file, encoding="utf-8", errors="replace") as file:
            return runc_log_error(file.read())
    except OSError:
        return ""


def force_delete(runc: Runc, task_id: str) -> None:
    try:
        done = runc.run("delete", "--force", task_id)
    except EngineError as exc:
        log.error("cleaning up %s: %s", task_id, exc)
        return
    if done.returncode != 0 and not GONE.search(done.stderr):
        log.error("cleaning up %s: runc delete: %s", task_id, done.stderr.strip())
