"""Serving wasi:http/proxy components through `ctr`, on containerd 1.6 and 2.x, with real HTTP clients.

Each test makes a network namespace of its own (the pod's, as in test_network.py), runs the `http` guest
(lab/guests/src/http: a wasi:http/incoming-handler component) with `--with-ns network:<it>`, and talks HTTP to
it from inside that namespace (lab/http_client.py under `nsenter --net`). What is proven: the
listener accepts once requests can be served (readiness); path, headers and large streamed bodies both ways; a
trapping request answers 500 while others keep being served; requests run in parallel; SIGTERM drains the
request in flight and stops; the memory limit applies per request; timeouts, body caps, malformed and slow
clients get clear errors with the runner's memory bounded; outgoing requests follow the network grant; the
listen address comes from WASMTIME_HTTP_PROXY_SOCKET_ADDR or the annotation; bad components are refused at Create.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lab import http_client
from lab.shimtools import RUNTIME, remove_task, task_pid, task_status, wait_for

pytestmark = pytest.mark.integration

NETWORK = "wasm.shim.io/network"
LISTEN = "wasm.shim.io/http-listen"
TIMEOUT = "wasm.shim.io/http-request-timeout"
MAX_BODY = "wasm.shim.io/http-max-body"
CLIENT = Path(http_client.__file__).resolve()
READY_TIMEOUT = 180  # a hang bound: the first start compiles a 14 MB StarlingMonkey component


@pytest.fixture
def http_image(wasm_image, guests) -> str:
    return wasm_image("http-c", guests / "http.component.wasm")


def client(netns: Path, *steps: dict, timeout: float = 240) -> list:
    """Run http_client.py inside `netns` with these steps; its results."""
    done = subprocess.run(["nsenter", f"--net={netns}", sys.executable, str(CLIENT), json.dumps(list(steps))],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def get(port: int, path: str, **fields) -> dict:
    return {"op": "request", "port": port, "path": path, **fields}


def fnv1a(data: bytes) -> str:
    value = 2166136261
    for byte in data:
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return f"{value:08x}"


def pattern(size: int) -> bytes:
    return http_client.pattern(size)  # the client's own body generator, so both sides agree


def stream_pattern(size: int) -> bytes:
    """What the guest's /stream?bytes=SIZE sends (its PATTERN repeated)."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+\n"  # 64 bytes
    return (line * (size // len(line) + 1))[:size]


class Served:
    """`ctr run --rm` of the http guest in the background, its stdout/stderr collected; ready when it accepts."""

    def __init__(self, containerd, image: str, task_id: str, netns: Path, port: int = 8080,
                 annotations: dict[str, str] | None = None, flags: tuple[str, ...] = ()):
        argv = ["run", "--rm", "--runtime", RUNTIME, "--with-ns", f"network:{netns}", *flags]
        for key, value in (annotations or {}).items():
            argv += ["--annotation", f"{key}={value}"]
        argv += [image, task_id]
        self.containerd, self.task_id, self.netns, self.port = containerd, task_id, netns, port
        self.process = subprocess.Popen(containerd.ctr_argv(*argv), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=containerd.ctr_env())
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def ready(self) -> None:
        [result] = client(self.netns, {"op": "ready", "port": self.port, "timeout": READY_TIMEOUT})
        assert result["ready"], (self.out, self.err)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.task_id} did not stop: {self.out} {self.err}") from None
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    def stop(self) -> None:
        remove_task(self.containerd, self.task_id)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.containerd.ctr("container", "rm", self.task_id, check=False)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.stop()
        else:
            self.containerd.ctr("container", "rm", self.task_id, check=False)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def test_serves_path_headers_and_streamed_bodies(containerd, http_image, pod_netns):
    with Served(containerd, http_image, "http-basic", pod_netns) as served:
        served.ready()
        upload = 3 << 20
        echo, stream, chunked, sized, log = client(
            pod_netns,
            get(8080, "/hello/world?x=1", headers={"x-test": "from the test"}),
            get(8080, "/stream?bytes=5000000"),
            get(8080, "/upload", method="POST", body_bytes=upload, chunked=True),
            get(8080, "/upload", method="PUT", body_bytes=12345),
            get(8080, "/log"),
        )
        assert echo["status"] == 200, echo
        assert echo["text"] == "method GET\npath /hello/world?x=1\nx-test from the test\n"
        assert echo["headers"]["x-path"] == "/hello/world?x=1"
        assert echo["headers"]["x-test-echo"] == "from the test"
        assert stream["status"] == 200 and stream["length"] == 5_000_000, stream
        assert stream["sha256"] == hashlib.sha256(stream_pattern(5_000_000)).hexdigest()
        assert "content-length" not in stream["headers"]  # streamed as it was written
        assert chunked["text"] == f"received {upload} bytes fnv1a {fnv1a(pattern(upload))}\n", chunked
        assert sized["text"] == f"received 12345 bytes fnv1a {fnv1a(pattern(12345))}\n", sized
        assert log["status"] == 200
        wait_for(lambda: "log: to stdout" in served.out and "log: to stderr" in served.err, 10,
                 "the guest's log lines in the container's stdout and stderr")
        assert any("serving on http://0.0.0.0:8080/" in line for line in served.err), served.err


def test_a_trapping_request_answers_500_and_the_service_keeps_serving(containerd, http_image, pod_netns):
    with Served(containerd, http_image, "http-trap", pod_netns) as served:
        served.ready()
        results = client(pod_netns, *[get(8080, path) for path in ("/trap", "/a", "/trap", "/trap", "/b")])
        assert [r["status"] for r in results] == [500, 200, 500, 500, 200], results
        assert "trap" in results[0]["text"], results[0]
        assert results[4]["text"].startswith("method GET\npath /b\n")
        assert any("request 0 (GET /trap): 500" in line for line in served.err), served.err


def test_requests_run_in_parallel(containerd, http_image, pod_netns):
    with Served(containerd, http_image, "http-parallel", pod_netns) as served:
        served.ready()
        # A request sleeping 20 s is in flight while 16 others are answered: they did not queue behind it.
        [results] = client(pod_netns, {"op": "parallel", "requests": [
            get(8080, "/sleep?ms=20000"), *[get(8080, f"/n/{i}") for i in range(16)]]})
        assert all(r["status"] == 200 for r in results), results
        assert results[0]["text"] == "slept 20000 ms\n"
        assert results[0]["done"] == 16, [r["done"] for r in results]  # the sleeper finished last
        assert sorted(r["done"] for r in results[1:]) == list(range(16))


def test_sigterm_drains_the_request_in_flight_then_stops(containerd, http_image, pod_netns):
    served = Served(containerd, http_image, "http-drain", pod_netns)
    with served:
        served.ready()
        in_flight: list = []
        waiter = threading.Thread(target=lambda: in_flight.extend(client(pod_netns, get(8080, "/sleep?ms=4000"))))
        waiter.start()
        wait_for(lambda: "sleeping 4000 ms" in served.out, 60, "the request in flight")
        containerd.ctr("task", "kill", "-s", "SIGTERM", "http-drain")
        # Not accepting any more: a new connection is refused while the first request is still being served.
        wait_for(lambda: not client(pod_netns, {"op": "ready", "port": 8080, "timeout": 0})[0]["ready"], 10,
                 "the listener closed")
        waiter.join(timeout=60)
        assert in_flight and in_flight[0]["status"] == 200 and in_flight[0]["text"] == "slept 4000 ms\n", in_flight
        served.wait(timeout=60)
        assert any("drained" in line for line in served.err), served.err
        assert task_status(containerd, "http-drain") in ("", "STOPPED")


def test_memory_limit_applies_per_request(containerd, http_image, pod_netns):
    limit = 128 << 20
    with Served(containerd, http_image, "http-mem", pod_netns, flags=("--memory-limit", str(limit))) as served:
        served.ready()
        small, big, after, small_again = client(
            pod_netns, get(8080, "/alloc?mib=8"), get(8080, "/alloc?mib=400"), get(8080, "/after"),
            get(8080, "/alloc?mib=8"))
        assert small["status"] == 200 and small["text"] == "allocated 8 MiB\n", small
        assert big["status"] == 500, big  # that instance ran out; the next ones start fresh
        assert after["status"] == 200 and small_again["status"] == 200, (after, small_again)


def test_bad_clients_and_handlers_get_clear_errors_with_bounded_memory(containerd, http_image, pod_netns):
    annotations = {TIMEOUT: "10", MAX_BODY: "1Mi"}
    with Served(containerd, http_image, "http-bad", pod_netns, annotations=annotations) as served:
        served.ready()
        pid = task_pid(containerd, "http-bad")
        before = _rss(pid)
        upload = "POST /upload HTTP/1.1\r\nHost: test\r\n"
        spin, sleeper, declared, chunked, ok = client(
            pod_netns,
            get(8080, "/spin"),
            get(8080, "/sleep?ms=600000"),
            # Content-Length over the cap: refused before any of the body is sent.
            {"op": "raw", "port": 8080, "data": upload + f"Content-Length: {2 << 20}\r\n\r\n", "timeout": 30},
            # Chunked, no length: refused once the guest has read past the cap.
            {"op": "raw", "port": 8080, "data": upload + "Transfer-Encoding: chunked\r\n\r\n",
             "body_bytes": (1 << 20) + 4096, "chunked": True, "timeout": 30},
            get(8080, "/upload", method="POST", body_bytes=1 << 20),
        )
        assert spin["status"] == 504 and "no response within 10000 ms" in spin["text"], spin
        assert sleeper["status"] == 504, sleeper
        assert declared["received"].startswith("HTTP/1.1 413"), declared
        assert chunked["received"].startswith("HTTP/1.1 413"), chunked
        assert ok["status"] == 200 and ok["text"].startswith(f"received {1 << 20} bytes"), ok
        malformed, slow, _ = client(
            pod_netns,
            {"op": "raw", "port": 8080, "data": "NOT HTTP AT ALL\r\n\r\n", "timeout": 20},
            {"op": "raw", "port": 8080, "data": "GET / HTTP/1.1\r\nHost: slow\r\n", "timeout": 40},
            {"op": "abandon", "port": 8080, "path": "/upload", "declared": 1 << 20, "send": 4096},
        )
        assert malformed["received"].startswith("HTTP/1.1 400"), malformed
        assert slow["closed"], slow  # hyper's header timeout ended the slowloris connection
        # A burst of large uploads and downloads, then the runner's resident memory is still bounded.
        # (uploads are hashed byte by byte in interpreted JavaScript: kept small enough for the 10 s deadline)
        burst = [get(8080, "/upload", method="POST", body_bytes=200_000) for _ in range(8)]
        burst += [get(8080, "/stream?bytes=4000000") for _ in range(16)]
        [results] = client(pod_netns, {"op": "parallel", "requests": burst})
        assert all(r.get("status") == 200 for r in results), results
        after = _rss(pid)
        print(f"\nrunner RSS before the bad clients {before >> 20} MiB, after them and a burst {after >> 20} MiB")
        assert after - before < 512 << 20, (before, after)
        [final] = client(pod_netns, get(8080, "/still-here"))
        assert final["status"] == 200, final
    assert any("no response within 10000 ms" in line for line in served.err), served.err


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


_ORIGIN = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from the origin"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.timeout = 60
server.handle_request()
"""


def test_outgoing_requests_follow_the_network_grant(containerd, http_image, pod_netns):
    origin_port = 18080
    with subprocess.Popen(["nsenter", f"--net={pod_netns}", sys.executable, "-c", _ORIGIN, str(origin_port)],
                          stdout=subprocess.PIPE, text=True) as origin:
        try:
            assert origin.stdout is not None and origin.stdout.readline().strip() == "ready"
            with Served(containerd, http_image, "http-out-none", pod_netns) as served:
                served.ready()
                [denied] = client(pod_netns, get(8080, f"/fetch?to=127.0.0.1:{origin_port}"))
                assert denied["status"] == 502 and denied["text"] == "denied: HTTP-request-denied\n", denied
            grant = {NETWORK: f"tcp-connect=127.0.0.1:{origin_port}"}
            with Served(containerd, http_image, "http-out-rule", pod_netns, annotations=grant) as served:
                served.ready()
                fetched, other = client(pod_netns, get(8080, f"/fetch?to=127.0.0.1:{origin_port}"),
                                        get(8080, f"/fetch?to=127.0.0.1:{origin_port + 1}"))
                assert fetched["status"] == 200 and fetched["text"] == "fetched 200 hello from the origin", fetched
                assert other["status"] == 502 and other["text"].startswith("denied:"), other
        finally:
            origin.kill()
            origin.communicate()


def test_listen_address_from_env_and_annotation(containerd, wasm_image, guests, pod_netns):
    image = wasm_image("http-env", guests / "http.component.wasm", env=["WASMTIME_HTTP_PROXY_SOCKET_ADDR=0.0.0.0:9090"])
    with Served(containerd, image, "http-env", pod_netns, port=9090) as served:
        served.ready()
        [result] = client(pod_netns, get(9090, "/env"))
        assert result["status"] == 200, result
    with Served(containerd, image, "http-annot", pod_netns, port=9191,
                annotations={LISTEN: "127.0.0.1:9191"}) as served:
        served.ready()
        [result] = client(pod_netns, get(9191, "/annotation"))
        assert result["status"] == 200, result


def test_refusals_at_create_name_their_reason(containerd, wasm_image, guests, http_image, pod_netns, tmp_path):
    empty = tmp_path / "empty.component.wasm"
    empty.write_bytes(b"\0asm\x0d\x00\x01\x00")  # a component with no exports at all (component-model binary)
    neither = wasm_image("http-neither", empty)
    joins = ("--with-ns", f"network:{pod_netns}")
    cases = {
        "neither": (neither, joins, "exports neither wasi:cli/run"),
        "no-netns": (http_image, (), "served inside the pod's network namespace"),
        "thread": (http_image, (*joins, "--annotation", "wasm.shim.io/component-isolation=thread"),
                   "component-isolation=process"),
        "listen": (http_image, (*joins, "--annotation", f"{LISTEN}=localhost:80"), "expected IP:PORT"),
        "timeout": (http_image, (*joins, "--annotation", f"{TIMEOUT}=-1"), TIMEOUT),
    }
    for name, (image, flags, expected) in cases.items():
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, f"http-{name}", check=False,
                             timeout=READY_TIMEOUT)
        assert out.returncode != 0, name
        assert expected in out.stderr, (name, out.stderr)
        containerd.ctr("container", "rm", f"http-{name}", check=False)
