"""Figures 9 and 10, wasi:http serving: requests/s and latency of a served component (key `http`), and
the first answer after `ctr run` (key `http_start`).

Figure 9, throughput: the `http` guest (lab/guests/src/http, a wasi:http/proxy component) served three ways, each in a
network namespace the bench made (loopback up, as CRI's CNI gives a pod), all listening on 8080 there:
- ours: `ctr run -d --null-io --with-ns network:NETNS` on our runtime (the component runner serves it);
- `wasmtime serve -Scli` of the same file (the wasmtime CLI setup builds; `-Scli` because the guest writes to
  stdout/stderr), started under `nsenter --net=NETNS`;
- the same with `-W timeout=30s`: a per-request deadline, which `wasmtime serve` enforces with epoch
  interruption, as our runner always does (per-request deadlines and CPU limits): the like-for-like baseline;
- each `--peer-shim`, through `ctr` like ours (runwasi's wasmtime shim serves on 0.0.0.0:8080 too).
`wrk` runs inside the namespace (`nsenter --net`), keep-alive, GET of the echo route, for N seconds at each
connection count; a Lua `done` hook prints its totals and latency percentiles as JSON. Rounds alternate the
servers (interleaved A/B); each round gives one requests/s, one p50 and one p99 sample per server and count.
Goal: ours >= 0.9x `wasmtime serve`'s requests/s.

Figure 10, first answer: from spawning `ctr run -d` to the first 200 answer on 127.0.0.1:8080 inside the
namespace (polled every 2 ms from a thread that joined it), for ours in three states prepared (untimed) before
the run — cold: no daemon and an empty compiled cache (the component is compiled; fewer samples: a minute or two
each here); disk: no daemon, the compiled component on disk; warm: the daemon up — against runc running Debian's
static busybox `httpd -f` serving a file, and each peer shim. All in one namespace, one server at a time, torn
down after each.

Invariants: every server is stopped and every namespace deleted on the way out, whatever failed; every wait is
bounded (READY_TIMEOUT for a server to answer, the wrk duration plus a margin for wrk).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lab.netns import network_namespace
from wasm_shim.oci.layout import Symlink, build_image_tar

from .figure import Context, Figure, Row, met, rotate, timed
from .machine import load_average
from .stats import ratio, summarize
from .testbed import BUSYBOX, OURS, RUNC, BenchError, Runtime, Testbed

T = TypeVar("T")

PORT = 8080
TARGET = "/index.html"  # busybox httpd serves the file; the http guest echoes the path (its default route)
READY_TIMEOUT = 600.0  # a hang bound: a cold start compiles a 14 MB StarlingMonkey component (140 s at load 15 here)
POLL_INTERVAL = 0.002
WASMTIME_SERVE = "wasmtime serve"
WASMTIME_SERVE_DEADLINE = "wasmtime serve -W timeout=30s"
GOAL = 0.9
CLONE_NEWNET = 0x40000000
WRK_THREADS = 2  # wrk -t1 -c1 and -t2 -c16: at most one load thread per core of this 2-core machine
STATES = {
    "cold": "no daemon, empty compiled cache",
    "disk": "no daemon, compiled component on disk",
    "warm": "daemon up, compiled component cached",
}
# wrk's own summary, machine-readable: totals, error counts and latency percentiles (microseconds).
WRK_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %.0f, "duration_us": %.0f, "connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, '
    .. '"timeout": %.0f, "p50_us": %.0f, "p99_us": %.0f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run(ctx: Context) -> Figure:
    """Figure 9 (key `http`): requests/s and latency under wrk, ours vs `wasmtime serve` vs peers."""
    figure = Figure("http", "9. wasi:http serving: requests/s and latency under wrk", plot_kind="bar",
                    plot_unit="requests/s")
    return timed(figure, lambda: _measure(ctx, figure, _throughput))


def run_first_answer(ctx: Context) -> Figure:
    """Figure 10 (key `http_start`): the first answer after `ctr run`, ours (cold/disk/warm) vs runc's httpd."""
    figure = Figure("http_start", "10. wasi:http serving: first answer after `ctr run -d` (ms)")
    return timed(figure, lambda: _measure(ctx, figure, _first_answer))


# -- namespaces ----------------------------------------------------------------------------------------------
def netns() -> AbstractContextManager[Path]:
    """A network namespace of the bench's own with loopback up, deleted afterwards."""
    return network_namespace("wsb-http")


def in_netns(path: Path, body: Callable[[], T]) -> T:
    """``body()`` on a thread of its own that joined the namespace at ``path`` (setns(2) moves only the calling
    thread; the thread ends with ``body``, so no other code runs in that namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    outcome: list[T] = []
    failure: list[BaseException] = []

    def thread() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {path}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            outcome.append(body())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=thread, name=f"netns {path.name}", daemon=True)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]


def first_answer(path: Path, deadline: float, gave_up: Callable[[], str | None]) -> float:
    """Perf_counter() when GET TARGET on 127.0.0.1:PORT inside ``path`` first answered 200. Polls until then,
    until ``deadline`` (perf_counter) or until ``gave_up()`` returns a reason (the server's start failed)."""
    request = f"GET {TARGET} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()

    def poll() -> float:
        last = "no attempt"
        while True:
            now = time.perf_counter()
            if now > deadline:
                raise BenchError(f"no 200 answer on 127.0.0.1:{PORT} in {path.name} in time (last: {last})")
            reason = gave_up()
            if reason:
                raise BenchError(reason)
            try:
                with socket.create_connection(("127.0.0.1", PORT), timeout=max(0.1, deadline - now)) as conn:
                    conn.sendall(request)
                    head = conn.makefile("rb").readline(200)
                if head.split(b" ", 2)[1:2] == [b"200"]:
                    return time.perf_counter()
                last = f"answered {head!r}"
            except OSError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            time.sleep(POLL_INTERVAL)

    return in_netns(path, poll)


# -- servers -------------------------------------------------------------------------------------------------
@dataclass
class Server:
    """One thing answering HTTP on PORT inside ``netns``; ``stop()`` tears it down (idempotent)."""

    label: str
    netns: Path
    stop: Callable[[], None]


def _images(testbed: Testbed) -> dict[str, str]:
    """The http guest as a wasm image, and busybox with httpd and a file for runc: their references."""
    tars = testbed.workdir / "images"
    tars.mkdir(exist_ok=True)
    wasm_ref = "localhost/wasm-shim-bench/http:latest"
    build_image_tar(tars / "http.tar", wasm_ref, {"/app.wasm": testbed.guests / "http.component.wasm"},
                    entrypoint=["/app.wasm"], architecture="amd64", os="linux")
    testbed.containerd.import_image(tars / "http.tar")
    httpd_ref = "localhost/wasm-shim-bench/busybox-httpd:latest"
    files: dict[str, bytes | Path | Symlink] = {
        "/bin/busybox": BUSYBOX,
        "/bin/httpd": Symlink("busybox"),
        "/www/index.html": b"hello from busybox httpd\n",
    }
    build_image_tar(tars / "busybox-httpd.tar", httpd_ref, files, entrypoint=["/bin/httpd"], env=["PATH=/bin"])
    testbed.containerd.import_image(tars / "busybox-httpd.tar")
    return {"wasm": wasm_ref, "httpd": httpd_ref}


def _ctr_argv(testbed: Testbed, images: dict[str, str], runtime: Runtime, task_id: str, path: Path) -> list[str]:
    if runtime.wasm:
        image, argv = images["wasm"], ["/app.wasm"]
    else:
        image, argv = images["httpd"], ["/bin/httpd", "-f", "-p", str(PORT), "-h", "/www"]
    return testbed.containerd.ctr_argv("run", "-d", "--null-io", "--runtime", runtime.runtime,
                                   "--with-ns", f"network:{path}", image, task_id, *argv)


def _ctr_stop(testbed: Testbed, task_id: str) -> None:
    testbed.containerd.ctr("task", "delete", "--force", task_id, check=False, timeout=60)
    testbed.containerd.ctr("container", "rm", task_id, check=False, timeout=60)


def start_ctr(testbed: Testbed, images: dict[str, str], runtime: Runtime, path: Path) -> tuple[Server, float]:
    """`ctr run -d` of the served workload on ``runtime`` in ``path``; (the server, seconds from spawning ctr
    to the first 200 answer)."""
    task_id = testbed.new_id("http")
    cmd = _ctr_argv(testbed, images, runtime, task_id, path)
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=testbed.containerd.ctr_env(), text=True)
    server = Server(runtime.label, path, lambda: _ctr_stop(testbed, task_id))

    def gave_up() -> str | None:
        if proc.poll() is None or proc.returncode == 0:
            return None
        return (f"`{' '.join(cmd)}` exited {proc.returncode}\n{proc.stderr.read() if proc.stderr else ''}"
                f"--- containerd log (tail)\n{testbed.containerd.log_tail()}")

    try:
        answered = first_answer(path, began + READY_TIMEOUT, gave_up)
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` exited {proc.returncode}\n{err}")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        server.stop()
        raise
    return server, answered - began


def start_wasmtime_serve(cli: str, component: Path, path: Path, log: Path, deadline: bool = False) -> Server:
    """`wasmtime serve` of ``component`` inside ``path`` (``deadline``: with `-W timeout=30s`), ready (answering)
    when this returns."""
    cmd = ["nsenter", f"--net={path}", "--", cli, "serve", "--addr", f"0.0.0.0:{PORT}", "-Scli",
           *(["-W", "timeout=30s"] if deadline else []), str(component)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def gave_up() -> str | None:
        if proc.poll() is None:
            return None
        return f"`{' '.join(cmd)}` exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"

    try:
        first_answer(path, time.perf_counter() + READY_TIMEOUT, gave_up)
    except BaseException:
        stop()
        raise
    return Server(WASMTIME_SERVE_DEADLINE if deadline else WASMTIME_SERVE, path, stop)


# -- load ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """One wrk run: requests/s, latency p50/p99 (ms), and the requests that failed (any wrk error count)."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(path: Path, script: Path, connections: int, seconds: float) -> Load:
    threads = min(connections, WRK_THREADS)
    cmd = ["nsenter", f"--net={path}", "--", "wrk", "-t", str(threads), "-c", str(connections),
           "-d", f"{seconds:g}s", "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{PORT}{TARGET}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(cmd)}` did not finish within {seconds + 60:g} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise BenchError(f"`{' '.join(cmd)}` exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    totals = json.loads(lines[-1])
    errors = sum(int(totals[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return Load(totals["requests"] / (totals["duration_us"] / 1e6), totals["p50_us"] / 1000,
                totals["p99_us"] / 1000, errors)


# -- the figure ----------------------------------------------------------------------------------------------
def _measure(ctx: Context, figure: Figure, part: Callable[[Context, Figure, Testbed, dict[str, str]], None]) -> None:
    began = load_average()
    with ctx.new_testbed(figure.key) as testbed:
        part(ctx, figure, testbed, _images(testbed))
    ended = load_average()
    figure.notes.append(f"load average (1/5 min) at the figure's start {began[0]:.2f} {began[1]:.2f}, at its end "
                        f"{ended[0]:.2f} {ended[1]:.2f} (a shared 2-core machine: absolute figures move with it, "
                        "ratios within a round much less)")
    if not testbed.peers:
        figure.notes.append("no peer shim given (--peer-shim PATH)")


def _first_answer(ctx: Context, figure: Figure, testbed: Testbed, images: dict[str, str]) -> None:
    baselines: list[Runtime] = [RUNC, *testbed.peers]
    counts = ctx.counts
    samples: dict[str, list[float]] = {f"wasm-shim {state}": [] for state in STATES}
    samples.update({rt.label: [] for rt in baselines})
    with netns() as path:
        # A new testbed: no daemon, nothing compiled. Our first start is a cold sample; the baselines' first
        # starts are untimed warm-ups (images unpacked, binaries in the page cache).
        testbed.stop_daemons()
        testbed.clear_cache()
        server, seconds = start_ctr(testbed, images, OURS, path)
        server.stop()
        samples["wasm-shim cold"].append(seconds * 1000)
        for rt in baselines:
            server, _ = start_ctr(testbed, images, rt, path)
            server.stop()
        for i in range(counts.http_first_runs):
            # Every state in every iteration, except cold: it compiles the component, so it runs only in the
            # first http_cold_runs - 1 iterations (the warm-up above was the first cold sample).
            states = [state for state in STATES if state != "cold" or i < counts.http_cold_runs - 1]
            for j, state in enumerate(states):
                for rt in rotate([OURS, *baselines], i + j):
                    if rt is OURS:
                        if state != "warm":
                            testbed.stop_daemons()
                        if state == "cold":
                            testbed.clear_cache()
                        label = f"wasm-shim {state}"
                    else:
                        label = rt.label
                    server, seconds = start_ctr(testbed, images, rt, path)
                    server.stop()
                    samples[label].append(seconds * 1000)
            ctx.log(f"  http: first answer, iteration {i + 1}/{counts.http_first_runs}")
    runc = summarize(samples[RUNC.label])
    for state, what in STATES.items():
        s = summarize(samples[f"wasm-shim {state}"])
        figure.rows.append(Row(f"wasm-shim {state} ({what})", "ms", s,
                               ratio(s.p50, runc.p50)))
    for rt in baselines:
        s = summarize(samples[rt.label])
        what = "busybox httpd, a file" if rt is RUNC else "http guest; its own caches as they come"
        figure.rows.append(Row(f"{rt.label} ({what})", "ms", s,
                               ratio(s.p50, runc.p50)))
    figure.series = {label: values for label, values in samples.items() if values}
    netns_path = Path("/var/run/netns/NETNS")
    figure.commands = [" ".join(_ctr_argv(testbed, images, rt, "ID", netns_path)) for rt in (OURS, RUNC)]
    figure.notes.append(f"{counts.http_first_runs} iteration(s), the cold state in "
                        f"{counts.http_cold_runs} of them (each compiles the component); runc and peers run "
                        "beside every wasm-shim state; vs base = vs runc")


def _throughput(ctx: Context, figure: Figure, testbed: Testbed, images: dict[str, str]) -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is missing (apt-get install wrk; scripts/setup.sh installs it): the load generator")
    counts = ctx.counts
    component = ctx.guests / "http.component.wasm"
    script = ctx.workdir / "wrk-summary.lua"
    script.write_text(WRK_SCRIPT)
    figure.commands = [
        " ".join(_ctr_argv(testbed, images, OURS, "ID", Path("/var/run/netns/NETNS"))),
        f"nsenter --net=NETNS -- wasmtime serve --addr 0.0.0.0:{PORT} -Scli [-W timeout=30s] http.component.wasm",
        f"nsenter --net=NETNS -- wrk -t min(C,{WRK_THREADS}) -c C -d {counts.http_seconds:g}s "
        f"--timeout 10s -s wrk-summary.lua http://127.0.0.1:{PORT}{TARGET}",
    ]
    with ExitStack() as stack:
        servers: list[Server] = []
        for rt in [OURS, *testbed.peers]:
            server, _ = start_ctr(testbed, images, rt, stack.enter_context(netns()))
            stack.callback(server.stop)
            servers.append(server)
        if ctx.wasmtime_cli:
            for deadline in (False, True):
                server = start_wasmtime_serve(ctx.wasmtime_cli, component, stack.enter_context(netns()),
                                              ctx.workdir / "wasmtime-serve.log", deadline)
                stack.callback(server.stop)
                servers.append(server)
        else:
            figure.notes.append("no wasmtime CLI found: `scripts/setup.sh --with wasmtime-cli` builds 48.0.0 "
                                "(or pass --wasmtime-cli PATH); the goal is not judged")
        for server in servers:  # untimed warm-up: connections, caches, the pooling allocator's slots
            wrk(server.netns, script, max(counts.http_connections), min(2.0, counts.http_seconds))
        loads: dict[tuple[str, int], list[Load]] = {(s.label, c): [] for s in servers
                                                   for c in counts.http_connections}
        for i in range(counts.http_rounds):
            for server in rotate(servers, i):
                for connections in counts.http_connections:
                    loads[server.label, connections].append(
                        wrk(server.netns, script, connections, counts.http_seconds))
            ctx.log(f"  http: throughput round {i + 1}/{counts.http_rounds}")
    for connections in counts.http_connections:
        base = loads.get((WASMTIME_SERVE, connections), [])
        base_rps = summarize([load.rps for load in base]).p50
        for server in servers:
            got = loads[server.label, connections]
            rps = summarize([load.rps for load in got])
            r = ratio(rps.p50, base_rps)
            goal = f">= {GOAL}x {WASMTIME_SERVE}" if server.label == OURS.label else ""
            errors = sum(load.errors for load in got)
            note = f"{errors} failed requests (wrk's error counts)" if errors else ""
            name = f"{server.label}, {connections} connection(s)"
            figure.rows.append(Row(f"{name}: requests/s", "req/s", rps, r, goal,
                                   met(r, goal_min=GOAL) if goal else None, note))
            for q, pick in (("p50", lambda load: load.p50_ms), ("p99", lambda load: load.p99_ms)):
                s = summarize([pick(load) for load in got])
                figure.rows.append(Row(f"{name}: latency {q}", "ms", s,
                                       ratio(s.p50, summarize([pick(load) for load in base]).p50)))
            figure.series[f"{server.label} x{connections}"] = [load.rps for load in got]
        like = loads.get((WASMTIME_SERVE_DEADLINE, connections), [])
        if like and loads.get((OURS.label, connections)):
            ours_rps = summarize([load.rps for load in loads[OURS.label, connections]]).p50
            like_rps = summarize([load.rps for load in like]).p50
            figure.notes.append(f"like for like at {connections} connection(s): ours {ratio(ours_rps, like_rps):.2f}x "
                                f"`{WASMTIME_SERVE_DEADLINE}` (both with epoch interruption)")
    figure.notes.append(f"{counts.http_rounds} round(s) of {counts.http_seconds:g} s per server and "
                        "connection count, servers alternating; a latency row's p50 column is the median over "
                        f"rounds of wrk's per-round percentile; vs base = vs {WASMTIME_SERVE}")
