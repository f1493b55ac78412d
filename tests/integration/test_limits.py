"""Limits and freezing through `ctr`: memory limit and OOM, CPU quotas, Pause/Resume, cache reuse.

- `ctr run --memory-limit` caps the guest's linear memory: the `alloc` guest gets fewer MiB than without; a guest
  that fails at its limit (traps) makes the daemon publish `/tasks/oom` before `/tasks/exit`.
- `ctr run --cpus 0.2` / `0.6`: two spinning guests get CPU time roughly in that ratio (measured as the CPU time
  of each guest's thread, reported through Stats: `ctr task metrics`). The band is wide: other processes on the
  machine can hold back the faster guest, never speed up the slower one.
- `ctr task pause/resume`: PAUSED/RUNNING with /tasks/paused and /tasks/resumed; a paused spinner uses no CPU.
- A second start of the same module does not compile it again (the engine's debug log line names the source).
- A memory limit bounds the guest as a whole (base.py's "Memory limits"), whatever it tries: hostile guests built
  from source (several memories, a growing table, many instances) filling 240 MiB under `--memory-limit` 64 MiB
  are refused at Create (modules the daemon cannot bound, with the reason) or run in the component runner, where
  every growth past the limit fails: their runner's peak RSS stays near the limit and /tasks/oom is published.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lab.shimtools import RUNTIME, remove_task, shim_log_text, task_pid, wait_for
from lab.shimtools import task_status as _status

pytestmark = pytest.mark.integration


class _Events:
    """`ctr events` in the background: the topics published in this namespace, in order."""

    def __init__(self, containerd):
        self._proc = subprocess.Popen(
            containerd.ctr_argv("events"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env=containerd.ctr_env(),
        )
        time.sleep(0.3)  # subscribed

    def stop(self) -> list[str]:
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        return out.splitlines()


def _mib_reached(stdout: str) -> int:
    counts = [int(m) for m in re.findall(r"^(\d+) MiB$", stdout, re.M)]
    return max(counts, default=0)


def test_memory_limit_caps_allocation(containerd, wasm_image, guests):
    image = wasm_image("alloc", guests / "alloc.wasm")
    free = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "alloc-free", "/app.wasm", "100")
    assert "reached 100 MiB" in free.stdout
    capped = containerd.ctr(
        "run", "--rm", "--runtime", RUNTIME, "--memory-limit", str(64 << 20), image, "alloc-64", "/app.wasm", "100"
    )
    assert "malloc failed at" in capped.stdout, capped.stdout[-200:]
    assert 32 <= _mib_reached(capped.stdout) < 64  # the heap starts after the data segments and stack


def test_oom_event_when_guest_fails_at_its_limit(containerd, wasm_image, guests):
    image = wasm_image("alloc", guests / "alloc.wasm")
    events = _Events(containerd)
    try:
        out = containerd.ctr(
            "run", "--rm", "--runtime", RUNTIME, "--memory-limit", str(32 << 20), image, "alloc-oom",
            "/app.wasm", "0", "abort", check=False,
        )
    finally:
        lines = events.stop()
    assert out.returncode == 134, out.stderr
    topics = [topic for line in lines for topic in ("/tasks/oom", "/tasks/exit") if f" {topic} " in line]
    assert topics[:2] == ["/tasks/oom", "/tasks/exit"], lines


def _cpu_seconds(containerd, task_id: str) -> float:
    out = containerd.ctr("task", "metrics", "--format", "json", task_id).stdout
    data = json.loads(out)
    metrics = data.get("Data") or data.get("data") or data
    cpu = metrics.get("cpu") or metrics.get("CPU") or {}
    if "usage_usec" in cpu:
        return cpu["usage_usec"] / 1e6
    return cpu["usage"]["total"] / 1e9


def test_cpu_quotas_share_time_in_ratio(containerd, wasm_image, guests):
    """0.2 and 0.6 CPU: the slow guest is capped near 0.2; the fast one gets its 0.6 or what the machine gives.

    An unlimited spinner in the same daemon measures what the machine gives one guest right now (other work on
    this 2-core host can hold every guest back, which no quota can undo). When it gets at least 0.6 CPU, the
    two limited guests must share in about the 1:3 ratio of their quotas.
    """
    image = wasm_image("spin", guests / "spin.wasm")
    limits = {"slow": ("--cpus", "0.2"), "fast": ("--cpus", "0.6"), "free": ()}
    for task_id, flags in limits.items():
        containerd.ctr("run", "-d", "--runtime", RUNTIME, *flags, image, task_id)
    try:
        wait_for(lambda: all(_status(containerd, t) == "RUNNING" for t in limits), 10, "running")
        time.sleep(0.5)
        start = {t: _cpu_seconds(containerd, t) for t in limits}
        began = time.monotonic()
        time.sleep(4)
        elapsed = time.monotonic() - began
        rate = {t: (_cpu_seconds(containerd, t) - start[t]) / elapsed for t in limits}
    finally:
        for task_id in limits:
            remove_task(containerd, task_id)
    assert rate["slow"] < 0.2 * 1.3, rate  # the cap holds whatever the load
    assert rate["fast"] > min(0.6, rate["free"]) * 0.7, rate  # our slicing does not hold it back further
    if rate["free"] >= 0.6:
        assert 0.2 < rate["slow"] / rate["fast"] < 0.5, rate  # 1:3 within a generous band


def test_pause_and_resume(containerd, wasm_image, guests):
    image = wasm_image("spin", guests / "spin.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "frozen")
    events = _Events(containerd)
    try:
        wait_for(lambda: _status(containerd, "frozen") == "RUNNING", 10, "running")
        containerd.ctr("task", "pause", "frozen")
        assert _status(containerd, "frozen") == "PAUSED"
        time.sleep(0.2)  # parked
        first = _cpu_seconds(containerd, "frozen")
        time.sleep(1)
        assert _cpu_seconds(containerd, "frozen") - first < 0.01  # a paused spinner uses no CPU
        refused = containerd.ctr("task", "pause", "frozen", check=False)
        assert refused.returncode != 0 and "PAUSED" in refused.stderr.upper()
        containerd.ctr("task", "resume", "frozen")
        assert _status(containerd, "frozen") == "RUNNING"
        time.sleep(0.5)
        assert _cpu_seconds(containerd, "frozen") - first > 0.05  # it runs again
        containerd.ctr("task", "pause", "frozen")
        remove_task(containerd, "frozen")  # a paused guest is killable
    finally:
        lines = events.stop()
    topics = [t for line in lines for t in ("/tasks/paused", "/tasks/resumed", "/tasks/exit") if f" {t} " in line]
    assert topics == ["/tasks/paused", "/tasks/resumed", "/tasks/paused", "/tasks/exit"], lines


def test_second_start_does_not_compile(containerd, wasm_image, guests):
    image = wasm_image("hello-cache", guests / "hello.wasm")
    for n in (1, 2):
        containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, f"cache-{n}")
    log = shim_log_text(containerd)
    sources = re.findall(r"task cache-(\d): module [0-9a-f]+ from (\w+)", log)
    assert sources == [("1", "compiled"), ("2", "memory")], sources


def test_component_runner_compiles_once_per_node(containerd, wasm_image, guests):
    """The Rust component runner caches its own compilation (in the daemon's cache dir): a second start of the
    same component, in another runner process, deserializes that file instead of compiling (the file is
    written by a temporary name and a rename, so a second compile would leave a new inode)."""
    image = wasm_image("hello-cache-c", guests / "hello.component.wasm")
    digest = hashlib.sha256((guests / "hello.component.wasm").read_bytes()).hexdigest()
    cache = Path(containerd.env["WASM_SHIM_CACHE_DIR"])
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "cache-c-1")
    (compiled,) = cache.glob(f"component-runner-*/{digest}.component.cwasm")
    first = compiled.stat()
    assert stat.S_IMODE(first.st_mode) == 0o600 and stat.S_IMODE(compiled.parent.stat().st_mode) == 0o700
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "cache-c-2")
    assert out.stdout.strip() == "hello from wasm"
    again = compiled.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    # A damaged cache file is never run: it is ignored and replaced by a fresh compile.
    compiled.write_bytes(compiled.read_bytes()[:-100] + b"\0" * 100)
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "cache-c-3")
    assert out.stdout.strip() == "hello from wasm"
    assert compiled.stat().st_ino != first.st_ino


def test_oom_event_for_a_component_in_the_runner(containerd, wasm_image, guests):
    """The component runner reports a guest that failed after its memory limit refused it: /tasks/oom, then exit."""
    image = wasm_image("net-oom", guests / "net.component.wasm")
    events = _Events(containerd)
    try:
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--memory-limit", str(32 << 20), image,
                             "runner-oom", "/app.wasm", "alloc", "100", "fail", check=False)
        graceful = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--memory-limit", str(32 << 20), image,
                                  "runner-no-oom", "/app.wasm", "alloc", "100")
    finally:
        lines = events.stop()
    assert out.returncode == 1 and "allocation failed at" in out.stdout, (out.stdout[-200:], out.stderr)
    assert "allocation failed at" in graceful.stdout  # handled: exit 0, so no OOM
    topics = [(topic, task) for line in lines for topic in ("/tasks/oom", "/tasks/exit")
              for task in ("runner-oom", "runner-no-oom") if f" {topic} " in line and task in line]
    assert [t for t in topics if t[1] == "runner-oom"] == [("/tasks/oom", "runner-oom"), ("/tasks/exit", "runner-oom")]
    assert [t for t in topics if t[1] == "runner-no-oom"] == [("/tasks/exit", "runner-no-oom")], lines


HOSTILE_LIMIT = 64 << 20
RUNNER_SLACK_MIB = 48  # the runner itself beside its guest's memory: wasmtime, the mapped component, stacks
REFUSED = re.compile(r"^(?:memory|table)\.grow refused at (\d+) MiB$", re.M)


class _Output:
    """A `ctr run` in the background whose stdout lines are collected as they come."""

    def __init__(self, containerd, *args: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(containerd.ctr_argv("run", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=containerd.ctr_env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def refused_or_ended(self) -> bool:
        return REFUSED.search(self.text()) is not None or self.proc.poll() is not None

    def finish(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=30)
        self._reader.join(10)
        return self.proc.returncode, err


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_hostile_guests_stay_within_a_memory_limit(containerd, wasm_image, guests):
    flags = ("--memory-limit", str(HOSTILE_LIMIT))
    # Modules run in the daemon, whose wasmtime-py limits each memory and table alone: Create refuses what it
    # cannot bound, saying why (the pod's events show it).
    for name, reason in (("multimem", "declares 4 linear memories"),
                         ("tablegrow", "declares a table without a maximum size")):
        image = wasm_image(f"{name}-m", guests / f"{name}.wasm")
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, f"{name}-m", check=False)
        assert out.returncode != 0 and reason in out.stderr, out.stderr[-400:]
    # Components run in their runner, which sums every memory and table: the growth past the limit fails. With an
    # argument the guest then holds what it has (spinning), so its runner's peak RSS can be read before the kill.
    for name in ("multimem", "tablegrow"):
        image = wasm_image(f"{name}-c", guests / f"{name}.component.wasm")
        task_id = f"{name}-c"
        run = _Output(containerd, "--rm", "--runtime", RUNTIME, *flags, image, task_id, "/app.wasm", "hold")
        try:
            wait_for(run.refused_or_ended, 60, f"{name}: a refusal")
            refused = REFUSED.search(run.text())
            assert refused is not None, run.text()[-300:]  # never "filled 240 MiB"
            peak_mib = _status_kib(task_pid(containerd, task_id), "VmHWM") / 1024
        finally:
            remove_task(containerd, task_id)
            run.finish()
        assert int(refused.group(1)) < HOSTILE_LIMIT >> 20
        assert peak_mib < (HOSTILE_LIMIT >> 20) + RUNNER_SLACK_MIB, f"{name}: runner peak RSS {peak_mib:.0f} MiB"
    # Many instances, each with its memory: refused at the limit, the guest fails, and that is an OOM.
    image = wasm_image("instances-c", guests / "instances.component.wasm")
    events = _Events(containerd)
    try:
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, "instances-c", check=False)
    finally:
        lines = events.stop()
    assert out.returncode == 134 and REFUSED.search(out.stdout), (out.stdout[-300:], out.stderr)
    topics = [topic for line in lines for topic in ("/tasks/oom", "/tasks/exit") if f" {topic} " in line]
    assert topics[:2] == ["/tasks/oom", "/tasks/exit"], lines
