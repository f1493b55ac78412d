"""The daemon's Prometheus endpoint and log lines under a real containerd.

containerd is started with `WASM_SHIM_METRICS_ADDRESS` in its environment (config source 4, inherited by the shim),
once on loopback TCP and once on a unix socket. Guests run through `ctr`; the endpoint is scraped with an HTTP
client and the text parsed with prometheus_client's own parser. Checked: tasks by state, instance starts and the
Start latency histogram, compile-cache misses then hits, an OOM event, a running task's memory, and that the
daemon's info lines carry task= and namespace=.
"""

from __future__ import annotations

import http.client
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.shimtools import RUNTIME, daemon_pids, remove_task, shim_log_text, task_status, wait_for
from lab.soak import record

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(240)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def scrape_tcp(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")  # prometheus_client's format
        return response.read().decode()


def scrape_unix(path: str) -> str:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parsed = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            parsed[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return parsed


def value(parsed: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in parsed.items() if n == name and set(labels.items()) <= set(ls))


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_metrics_endpoint_under_containerd(containerd_factory, wasm_image_factory, guests, transport, tmp_path):
    port = free_port()
    unix_path = f"/tmp/wsh-metrics-{port}.sock"
    address = f"127.0.0.1:{port}" if transport == "tcp" else f"unix:{unix_path}"
    containerd = containerd_factory(env={"WASM_SHIM_METRICS_ADDRESS": address})
    make = wasm_image_factory(containerd)

    def scrape() -> dict:
        return samples(scrape_tcp(port) if transport == "tcp" else scrape_unix(unix_path))

    hello = make("hello", guests / "hello.wasm")
    sleeper = make("sleep", guests / "sleep.wasm")
    alloc = make("alloc", guests / "alloc.wasm")
    ns = containerd.namespace
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "hello-1")
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, hello, "hello-2")  # the same module: a cache hit
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleeper, "sleeper", "/app.wasm", "1")
    try:
        wait_for(lambda: task_status(containerd, "sleeper") == "RUNNING", 20, "sleeper running")
        oom = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--memory-limit", str(32 << 20), alloc, "oom-1",
                             "/app.wasm", "0", "abort", check=False)
        assert oom.returncode == 134, oom.stderr
        if transport == "unix":
            assert oct(Path(unix_path).stat().st_mode & 0o777) == "0o600"
        parsed = scrape()
        assert value(parsed, "wasm_shim_tasks", namespace=ns, state="running") == 1
        assert value(parsed, "wasm_shim_instance_starts_total", namespace=ns) == 4
        assert value(parsed, "wasm_shim_instance_start_seconds_count") == 4
        assert value(parsed, "wasm_shim_instance_start_seconds_bucket", le="+Inf") == 4
        assert value(parsed, "wasm_shim_oom_events_total", namespace=ns) == 1
        assert value(parsed, "wasm_shim_compile_cache_misses_total", engine="wasmtime") >= 3  # hello, sleep, alloc
        assert value(parsed, "wasm_shim_compile_cache_hits_total", engine="wasmtime") >= 1  # hello again
        assert value(parsed, "wasm_shim_task_memory_bytes", namespace=ns, task="sleeper") > 0
        assert value(parsed, "wasm_shim_rpc_calls_total", method="Create", code="OK") == 4
        # Not found: a 404, and the daemon keeps serving.
        if transport == "tcp":
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
            assert missing.value.code == 404
            missing.value.close()
        # Garbage on the endpoint costs that connection only.
        with socket.create_connection(("127.0.0.1", port), timeout=10) if transport == "tcp" else \
                socket.socket(socket.AF_UNIX) as junk:
            if transport == "unix":
                junk.settimeout(10)
                junk.connect(unix_path)
            junk.sendall(b"\x00\xff" * 100 + b"\r\n\r\n")
            assert junk.recv(100).startswith(b"HTTP/1.1 405")
        assert value(scrape(), "wasm_shim_tasks", namespace=ns, state="running") == 1
    finally:
        remove_task(containerd, "sleeper")
    assert value(scrape(), "wasm_shim_tasks", namespace=ns) == 0

    # The log: one logfmt line per record; lifecycle lines at info carry the task and the namespace.
    log = shim_log_text(containerd)
    for needle in (f'msg="task started" task=sleeper namespace={ns}', f"task=hello-1 namespace={ns}",
                   f'msg="task ran out of memory (limit 33554432 bytes)" task=oom-1 namespace={ns}'):
        assert needle in log, needle
    assert all(line.startswith("time=") and " level=" in line for line in log.splitlines() if line), log[-2000:]
    assert len(daemon_pids(containerd)) == 1
    record(f"operations: metrics endpoint ({transport}, containerd {containerd.kind})",
           tried="4 guests (2 hello, a sleeper, an OOM) through ctr, scrapes parsed by prometheus_client, "
                 "a 404 and a garbage request",
           held="tasks by state, starts + latency histogram, cache misses/hits, OOM, task memory all as run; "
                "log lines carry task= and namespace=")


def test_metrics_are_off_by_default(containerd, wasm_image, guests):
    image = wasm_image("hello", guests / "hello.wasm")
    containerd.ctr("run", "--rm", "--runtime", RUNTIME, image, "hello-off")
    assert "metrics endpoint" not in shim_log_text(containerd)
    pids = daemon_pids(containerd)
    assert pids, "the daemon should stay up for its idle timeout"
    for pid in pids:
        listening = set()  # inodes of listening TCP sockets in the daemon's network namespace
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    listening.add(fields[9])
        sockets = {str(fd.readlink())[len("socket:["):-1] for fd in Path(f"/proc/{pid}/fd").iterdir()
                   if str(fd.readlink()).startswith("socket:[")}
        assert not (sockets & listening), "the daemon listens on TCP without metrics_address"
    record(f"operations: metrics off by default (containerd {containerd.kind})", tried="a guest, no metrics_address",
           held="no metrics endpoint logged, no TCP listener among the daemon's sockets")
