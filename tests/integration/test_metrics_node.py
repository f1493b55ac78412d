"""The node's one metrics endpoint over every daemon: `wasm-shim metrics serve` reading each daemon's socket in
`metrics_dir`, under a real containerd with `grouping = container` (one daemon per container).

Checked: two daemons' series through one HTTP endpoint, told apart by `daemon=`, each with its info; the directory
and sockets root-only; a socket nobody listens on (a killed daemon's) skipped and counted; a directory of another
owner refused by the daemon, which then still runs its containers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.containerd import VENV_BIN
from lab.procs import stop_process
from lab.shimtools import RUNTIME, daemon_pids, remove_task, shim_log_text, task_status, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def node_endpoint(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """(metrics dir, port): `wasm-shim metrics serve` on 127.0.0.1 over a fresh directory (created by the daemons)."""
    directory = tmp_path / "metrics"
    port = free_port()
    with (tmp_path / "node-metrics.log").open("wb") as log:
        process = subprocess.Popen([str(VENV_BIN / "wasm-shim"), "metrics", "serve", "--dir", str(directory),
                                    "--listen", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(port), 20, "the node metrics endpoint to listen")
        yield directory, port
    finally:
        stop_process(process)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def test_two_daemons_through_one_endpoint(containerd_factory, wasm_image_factory, guests, node_endpoint) -> None:
    directory, port = node_endpoint
    containerd = containerd_factory(env={"WASM_SHIM_GROUPING": "container", "WASM_SHIM_METRICS_DIR": str(directory)})
    make = wasm_image_factory(containerd)
    sleeper = make("sleep", guests / "sleep.wasm")
    ns = containerd.namespace
    for name in ("sleeper-a", "sleeper-b"):
        containerd.ctr("run", "-d", "--runtime", RUNTIME, sleeper, name, "/app.wasm", "60")
    try:
        for name in ("sleeper-a", "sleeper-b"):
            wait_for(lambda name=name: task_status(containerd, name) == "RUNNING", 20, f"{name} running")
        assert len(daemon_pids(containerd)) == 2
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        sockets = sorted(directory.glob("*.sock"))
        assert len(sockets) == 2
        assert all(oct(s.stat().st_mode & 0o777) == "0o600" for s in sockets)

        samples = scrape(port)
        info = {labels["daemon"]: labels for name, labels, _ in samples if name == "wasm_shim_daemon_info"}
        assert set(info) == {s.name[: -len(".sock")] for s in sockets}
        groups = {labels["group"] for labels in info.values()}
        assert groups == {"container:sleeper-a", "container:sleeper-b"}
        assert {labels["namespace"] for labels in info.values()} == {ns}
        assert all(labels["grouping"] == "container" for labels in info.values())
        # Each daemon's own series, told apart by daemon=: one running task each, one start each.
        running = {labels["daemon"]: value for name, labels, value in samples
                   if name == "wasm_shim_tasks" and labels.get("state") == "running"}
        assert running == dict.fromkeys(info, 1.0)
        memory = {labels["task"]: labels["daemon"] for name, labels, _ in samples
                  if name == "wasm_shim_task_memory_bytes"}
        assert set(memory) == {"sleeper-a", "sleeper-b"} and len(set(memory.values())) == 2
        up = {labels["daemon"]: value for name, labels, value in samples if name == "wasm_shim_daemon_up"}
        assert up == dict.fromkeys(info, 1.0)
        assert ("wasm_shim_node_daemons", {}, 2.0) in samples

        # A daemon killed outright leaves its socket behind: skipped, counted as stale, the other still read.
        victim = next(d for d, labels in info.items() if labels["group"] == "container:sleeper-b")
        os.kill(int(info[victim]["pid"]), signal.SIGKILL)
        wait_for(lambda: int(info[victim]["pid"]) not in daemon_pids(containerd), 20, "the killed daemon gone")
        # (While the killed process is torn down, a connection may still be reset: up 0 for that scrape.)
        wait_for(lambda: ("wasm_shim_node_stale_sockets", {}, 1.0) in scrape(port), 20, "the stale socket counted")
        samples = scrape(port)
        assert ("wasm_shim_node_daemons", {}, 1.0) in samples
        assert {labels["daemon"] for name, labels, _ in samples if name == "wasm_shim_daemon_info"} == set(info) - {
            victim}
    finally:
        for name in ("sleeper-a", "sleeper-b"):
            remove_task(containerd, name)


def test_metrics_dir_of_another_owner_is_refused(containerd_factory, wasm_image_factory, guests, tmp_path) -> None:
    directory = tmp_path / "foreign"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    containerd = containerd_factory(env={"WASM_SHIM_METRICS_DIR": str(directory)})
    hello = wasm_image_factory(containerd)("hello", guests / "hello.wasm")
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "hello-1")
    assert done.stdout.strip() == "hello from wasm"
    assert list(directory.iterdir()) == []
    deadline = time.monotonic() + 10
    while "belongs to uid 65534" not in shim_log_text(containerd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"metrics_dir {directory}: belongs to uid 65534" in shim_log_text(containerd)


# -- the reader alone, over real daemon-style endpoints (metrics.serve_http) on unix sockets --------------------
def _exposition(starts: int) -> bytes:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    Counter("wasm_shim_instance_starts", "Guests started", ["namespace"], registry=registry).labels("k8s.io").inc(
        starts)
    return generate_latest(registry)


@pytest.mark.asyncio
async def test_reader_merges_families_and_survives_bad_daemons(tmp_path: Path) -> None:
    import asyncio

    from wasm_shim.shim.daemon.metrics import serve_http
    from wasm_shim.shim.daemon.metrics_node import NodeMetrics

    directory = tmp_path / "m"
    directory.mkdir(mode=0o700)

    async def good_a() -> bytes:
        return _exposition(1)

    async def good_b() -> bytes:
        return _exposition(2)

    async def garbage() -> bytes:
        return b"this is { not an exposition\n"

    servers = [await serve_http(good_a, path=str(directory / "aaaa.sock")),
               await serve_http(good_b, path=str(directory / "bbbb.sock")),
               await serve_http(garbage, path=str(directory / "cccc.sock"))]

    release = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await release.wait()  # accepts and does not answer
        finally:
            writer.close()

    servers.append(await asyncio.start_unix_server(stall, str(directory / "dddd.sock")))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(directory / "eeee.sock"))  # bound, never listening: a killed daemon's socket
    stale.close()
    (directory / "notes.txt").write_text("not a socket name")
    try:
        text = (await NodeMetrics(str(directory), timeout=1.0).exposition()).decode()
    finally:
        release.set()
        await asyncio.sleep(0.05)
        for server in servers:
            server.close()
            await server.wait_closed()
    assert text.count("# TYPE wasm_shim_instance_starts_total counter") == 1  # one family, both daemons
    samples = [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]
    assert ("wasm_shim_instance_starts_total", {"namespace": "k8s.io", "daemon": "aaaa"}, 1.0) in samples
    assert ("wasm_shim_instance_starts_total", {"namespace": "k8s.io", "daemon": "bbbb"}, 2.0) in samples
    up = {labels["daemon"]: value for name, labels, value in samples if name == "wasm_shim_daemon_up"}
    assert up == {"aaaa": 1.0, "bbbb": 1.0, "cccc": 0.0, "dddd": 0.0}
    assert ("wasm_shim_node_daemons", {}, 2.0) in samples
    assert ("wasm_shim_node_stale_sockets", {}, 1.0) in samples


def test_metrics_serve_refuses_a_bad_listen_address() -> None:
    done = subprocess.run([str(VENV_BIN / "wasm-shim"), "metrics", "serve", "--listen", "9464"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--listen '9464': expected HOST:PORT" in done.stderr
