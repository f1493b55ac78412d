"""Load and soak through containerd's gRPC API (containerd 2.x), not `ctr`.

M idle guests (``sleep``) are created and started first and stay alive; then 8 client threads, each with its own
gRPC channel, run N create/start/wait/delete cycles between them. Each cycle's guest is ``exit_code K`` with its
own K: it prints ``exiting with K`` into its own ``file://`` stdout and exits K; the test checks every exit status
(from Wait and from Delete) and every output line. A sampler thread reads the daemon's RSS, PSS, fds, threads and
mounts (lab/soak.py ``sample``) every ``SAMPLE_EVERY`` seconds: before (after a warm-up), with the idle
guests up, during the cycles, after the cycles (idle guests still up) and after everything is deleted.

Held: no lost exit status, no lost line; after the cycles the daemon's fds, threads and mounts are what they were
with the idle guests up before the cycles, and its RSS within noise; after the idle guests are gone, fds,
threads and mounts are back to the baseline. Sizes: N=40, M=20 in `make test`; N=1000, M=500 in `make soak`.
With ``WASM_SHIM_SOAK_SERIES`` set, the sampled series is written there as JSON (docs/reliability.md's curves).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.containerd_api import ContainerdAPI, wasm_spec
from lab.shimtools import RUNTIME, daemon_pids
from lab.soak import record, sample, size

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(1800),
              pytest.mark.parametrize("containerd", ["2.x"], indirect=True)]

CLIENTS = 8
SAMPLE_EVERY = 0.5  # seconds between daemon samples
RSS_NOISE_KIB = 32 * 1024  # allocator arenas and caches that grow once under 8-way load; a per-cycle leak is far more
WAIT_BOUND = 120.0  # seconds: a cycle's Wait (a hang guard, not a speed claim)


class Sampler:
    """Samples the daemon in a background thread: a series of (seconds since start, phase, sample)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.phase = "baseline"
        self.series: list[tuple[float, str, dict[str, int]]] = []
        self._stop = threading.Event()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self.series.append((time.monotonic() - self._began, self.phase, sample(self.pid)))
            except ProcessLookupError:
                return

    def mark(self, phase: str) -> dict[str, int]:
        """Switch to ``phase``; a sample taken now."""
        self.phase = phase
        now = sample(self.pid)
        self.series.append((time.monotonic() - self._began, phase, now))
        return now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def peak(self, phase: str) -> dict[str, int]:
        rows = [s for _, p, s in self.series if p == phase]
        return {k: max(r[k] for r in rows) for k in rows[0]} if rows else {}


def _inventory(pid: int) -> tuple[list[str], list[str]]:
    """The daemon's thread names and fd targets (for a failure message: what is left over)."""
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            pass
    fds = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds.append(os.readlink(fd))
        except OSError:
            pass
    return sorted(names), sorted(fds)


def _settle(pid: int, target: dict[str, int], keys: tuple[str, ...], timeout: float = 20.0) -> dict[str, int]:
    """Sample until ``keys`` are at most ``target``'s (threads end and fds close a moment after Delete)."""
    deadline = time.monotonic() + timeout
    now = sample(pid)
    while time.monotonic() < deadline and any(now[k] > target[k] for k in keys):
        time.sleep(0.2)
        now = sample(pid)
    return now


def test_cycles_from_parallel_clients_with_idle_guests(containerd, guests, tmp_path):
    cycles = size(40, 1000)
    idle = size(20, 500)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    shutil.copy(guests / "exit_code.wasm", rootfs / "exit.wasm")
    shutil.copy(guests / "sleep.wasm", rootfs / "sleep.wasm")
    outputs = tmp_path / "out"
    outputs.mkdir()
    apis = [ContainerdAPI(containerd.address, containerd.namespace) for _ in range(CLIENTS)]
    failures: list[str] = []

    def cycle(n: int) -> None:
        api = apis[n % CLIENTS]
        cid = f"cycle-{n}" if n >= 0 else f"warm-{-n}"
        status = abs(n) % 120
        out = outputs / f"{cid}.log"
        api.create_container(cid, RUNTIME, wasm_spec(["/exit.wasm", str(status)]))
        try:
            api.create_task(cid, str(rootfs), stdout=f"file://{out}", stderr=f"file://{out}")
            api.start(cid)
            waited = api.wait(cid, timeout=WAIT_BOUND)
            deleted = api.delete_task(cid)
        finally:
            api.delete_container(cid)
        text = out.read_text() if out.exists() else "(no output file)"
        if (waited, deleted) != (status, status):
            failures.append(f"{cid}: Wait said {waited}, Delete {deleted}, expected {status}")
        if text != f"exiting with {status}\n":
            failures.append(f"{cid}: output {text!r}")
        out.unlink(missing_ok=True)

    def start_idle(n: int) -> None:
        api = apis[n % CLIENTS]
        cid = f"idle-{n}" if n >= 0 else f"idlewarm-{-n}"
        api.create_container(cid, RUNTIME, wasm_spec(["/sleep.wasm", "3600"]))
        api.create_task(cid, str(rootfs))
        api.start(cid)

    def stop_idle(n: int) -> None:
        api = apis[n % CLIENTS]
        cid = f"idle-{n}" if n >= 0 else f"idlewarm-{-n}"
        api.kill(cid)
        status = api.wait(cid, timeout=WAIT_BOUND)
        if status != 137:
            failures.append(f"{cid}: killed, but exit status {status}")
        api.delete_task(cid)
        api.delete_container(cid)

    began = time.monotonic()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            # Warm-up: the daemon starts, both modules compile (each keeps a memory image: one fd), the pools grow.
            list(pool.map(cycle, range(-CLIENTS, 0)))
            list(pool.map(start_idle, range(-CLIENTS, 0)))
            list(pool.map(stop_idle, range(-CLIENTS, 0)))
            (pid,) = daemon_pids(containerd)
            sampler = Sampler(pid)
            try:
                baseline = sampler.mark("baseline")
                base_inventory = _inventory(pid)
                time.sleep(1)
                sampler.mark("idle-up")
                list(pool.map(start_idle, range(idle)))
                with_idle = sampler.mark("idle")
                time.sleep(1)
                sampler.mark("cycles")
                list(pool.map(cycle, range(cycles)))
                sampler.mark("after-cycles")
                after_cycles = _settle(pid, with_idle, ("fds", "threads", "mounts"))
                sampler.mark("idle-down")
                list(pool.map(stop_idle, range(idle)))
                sampler.mark("after")
                after = _settle(pid, baseline, ("fds", "threads", "mounts"))
                sampler.mark("after")
            finally:
                sampler.stop()
    finally:
        for api in apis:
            api.close()
    seconds = time.monotonic() - began

    assert not failures, failures[:20]
    leftovers = _inventory(pid)
    assert daemon_pids(containerd) == [pid], "one daemon throughout"
    for key in ("fds", "threads", "mounts"):
        assert after_cycles[key] <= with_idle[key], (key, with_idle, after_cycles, leftovers)
        assert after[key] <= baseline[key], (key, baseline, after, leftovers, base_inventory)
    assert after_cycles["rss_kib"] <= with_idle["rss_kib"] + RSS_NOISE_KIB, (with_idle, after_cycles)
    assert after["rss_kib"] <= with_idle["rss_kib"] + RSS_NOISE_KIB, (with_idle, after)
    peak = sampler.peak("cycles")

    series_path = os.environ.get("WASM_SHIM_SOAK_SERIES")
    if series_path:
        Path(series_path).write_text(json.dumps({"cycles": cycles, "idle": idle, "clients": CLIENTS,
                                                 "series": sampler.series}))
    record("load: create/start/wait/delete cycles, 8 gRPC clients, idle guests alive",
           tried=f"{cycles} cycles from {CLIENTS} clients with {idle} idle guests",
           held=(f"every exit status (Wait and Delete) and output line; with idle guests {with_idle}, after cycles "
                 f"{after_cycles}, peak during cycles {peak}"),
           before=baseline, after=after, seconds=seconds)
