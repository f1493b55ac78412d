"""The network grant (`wasm.shim.io/network`) through `ctr`, on containerd 1.6 and 2.x, with real sockets.

Each test makes a network namespace of its own (`ip netns add`, loopback up) that stands for the pod's, runs the
`net` component (lab/guests/src/net: listen / connect / udp-send / udp-echo / create, one action per run) with
`--with-ns network:<that namespace>`, and talks to it from inside the same namespace (`nsenter --net`). Traffic
never leaves that namespace. What is proven: no grant = no sockets; `pod` = sockets, in the pod's namespace and not
the node's; rules = exactly the uses listed (each verb granted and denied); a component blocked in accept is
killed at once and its port can be bound again by the next container; refusals name their reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.shimtools import RUNTIME, remove_task, task_pid, wait_for
from lab.shimtools import task_status as _status
from wasm_shim.shim.engines.base import EngineError, GuestSpec, locate_entrypoint
from wasm_shim.shim.engines.grant import parse_grant
from wasm_shim.shim.engines.wasmtime import WasmtimeEngine

pytestmark = pytest.mark.integration

NETWORK = "wasm.shim.io/network"
ISOLATION = "wasm.shim.io/component-isolation"
TIMEOUT = 60  # a hang bound for one ctr run (the first start compiles a 1.6 MB QuickJS component twice)

def prepare(engine: Any, spec: GuestSpec) -> Any:
    """What the task service does before an engine's prepare: find and read args[0] once."""
    return engine.prepare(spec, locate_entrypoint(spec))



@pytest.fixture
def net_image(wasm_image, guests) -> str:
    return wasm_image("net-c", guests / "net.component.wasm")


def _in_netns(netns: Path, code: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet inside `netns` (argv[1:] = args); its stdout is the result."""
    return subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=timeout)


_CLIENT = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except ConnectionRefusedError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
data = b""
while chunk := s.recv(1024):
    data += chunk
print(data.decode(), end="")
"""

_TCP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
s.settimeout(float(sys.argv[3]))
c, _ = s.accept()
c.sendall(b"hello from the pod")
c.close()
"""

_UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(float(sys.argv[3]))
data, _ = s.recvfrom(1024)
print(data.decode(), flush=True)
"""


class Run:
    """A foreground `ctr run --rm` of the net component, started in the background so the test can talk to it."""

    def __init__(self, containerd, image: str, task_id: str, grant: str | None, netns: Path | None, *args: str,
                 flags: tuple[str, ...] = ()):
        argv = ["run", "--rm", "--runtime", RUNTIME, *flags]
        if grant is not None:
            argv += ["--annotation", f"{NETWORK}={grant}"]
        if netns is not None:
            argv += ["--with-ns", f"network:{netns}"]
        argv += [image, task_id, "/app.wasm", *args]
        self.containerd, self.task_id = containerd, task_id
        self.process = subprocess.Popen(containerd.ctr_argv(*argv), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=containerd.ctr_env())

    def wait(self) -> tuple[int, str, str]:
        try:
            out, err = self.process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            self.containerd.ctr("task", "kill", "-s", "SIGKILL", self.task_id, check=False)
            raise AssertionError(f"ctr run {self.task_id} hung: {out!r} {err!r}") from None
        finally:
            self.containerd.ctr("container", "rm", self.task_id, check=False)
        return self.process.returncode, out, err


def _run(containerd, image, task_id, grant, netns, *args, flags=()) -> tuple[int, str, str]:
    return Run(containerd, image, task_id, grant, netns, *args, flags=flags).wait()


@contextlib.contextmanager
def _server(netns: Path, code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python server inside `netns` that has printed "ready" (bound); killed and reaped afterwards."""
    with subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready", server.stderr.read() if server.stderr else ""
            yield server
        finally:
            server.kill()
            server.communicate()


def _free_port() -> int:
    """A port number to use inside a fresh namespace (any is free there; a random one keeps logs readable)."""
    return 20000 + int.from_bytes(os.urandom(2), "big") % 20000


def test_no_grant_means_no_sockets(containerd, net_image, pod_netns):
    code, out, err = _run(containerd, net_image, "net-none", None, pod_netns, "create")
    assert code == 1 and "denied: access-denied" in out, (out, err)
    code, out, err = _run(containerd, net_image, "net-none-2", "none", None, "listen", "127.0.0.1", "8080")
    assert code == 1 and "denied: access-denied" in out, (out, err)


def test_pod_grant_serves_inside_the_pod_namespace_only(containerd, net_image, pod_netns):
    port = _free_port()
    run = Run(containerd, net_image, "net-pod", "pod", pod_netns, "listen", "0.0.0.0", str(port))
    client = _in_netns(pod_netns, _CLIENT, "127.0.0.1", str(port), "30", timeout=TIMEOUT)
    code, out, err = run.wait()
    assert client.stdout == "hello from wasm\n", client.stderr
    assert code == 0, (out, err)
    assert out.splitlines() == [f"listening 0.0.0.0:{port}", "served"]
    # The node's namespace never had that port: the same client from here finds nothing listening.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_tcp_rules_allow_exactly_what_they_list(containerd, net_image, pod_netns):
    allowed, other = _free_port(), _free_port() + 1
    with _server(pod_netns, _TCP_SERVER, "127.0.0.1", str(allowed), "30"):
        rules = f"tcp-connect=127.0.0.1:{allowed}"
        code, out, err = _run(containerd, net_image, "net-conn", rules, pod_netns, "connect", "127.0.0.1",
                              str(allowed))
        assert code == 0 and out.splitlines() == ["connected", "received hello from the pod"], (out, err)
    # Same grant: another port, another address, listening, UDP — all denied in the guest.
    for task_id, args in (("net-port", ("connect", "127.0.0.1", str(other))),
                          ("net-addr", ("connect", "127.0.0.2", str(allowed))),
                          ("net-listen", ("listen", "127.0.0.1", str(allowed))),
                          ("net-udp", ("udp-send", "127.0.0.1", str(allowed), "x"))):
        code, out, err = _run(containerd, net_image, task_id, rules, pod_netns, *args)
        assert code == 1 and "denied: access-denied" in out, (task_id, out, err)

    listen = f"tcp-listen=*:{allowed}"
    run = Run(containerd, net_image, "net-serve", listen, pod_netns, "listen", "127.0.0.1", str(allowed))
    client = _in_netns(pod_netns, _CLIENT, "127.0.0.1", str(allowed), "30", timeout=TIMEOUT)
    code, out, err = run.wait()
    assert client.stdout == "hello from wasm\n" and code == 0, (client.stderr, out, err)
    for task_id, args in (("net-serve-2", ("listen", "127.0.0.1", str(other))),
                          ("net-serve-3", ("connect", "127.0.0.1", str(allowed)))):
        code, out, err = _run(containerd, net_image, task_id, listen, pod_netns, *args)
        assert code == 1 and "denied: access-denied" in out, (task_id, out, err)


def test_udp_rules(containerd, net_image, pod_netns):
    port = _free_port()
    with _server(pod_netns, _UDP_SERVER, "127.0.0.1", str(port), "30") as server:
        code, out, err = _run(containerd, net_image, "udp-send", f"udp-send=127.0.0.1:{port}", pod_netns,
                              "udp-send", "127.0.0.1", str(port), "datagram-from-wasm")
        assert code == 0 and "sent" in out, (out, err)
        assert server.stdout is not None and server.stdout.readline().strip() == "datagram-from-wasm"
    code, out, err = _run(containerd, net_image, "udp-deny", f"udp-send=127.0.0.1:{port}", pod_netns,
                          "udp-send", "127.0.0.1", str(port + 1), "x")
    assert code == 1 and "denied: access-denied" in out, (out, err)
    code, out, err = _run(containerd, net_image, "udp-bind-deny", f"udp-send=127.0.0.1:{port}", pod_netns,
                          "udp-echo", "127.0.0.1", str(port))
    assert code == 1 and "denied: access-denied" in out, (out, err)


def test_kill_in_accept_frees_the_port_for_the_next_container(containerd, net_image, pod_netns):
    """Kill stops a component blocked in accept and frees its port, so a restarted container binds it."""
    port = _free_port()
    grant = f"tcp-listen=*:{port}"
    containerd.ctr("run", "-d", "--runtime", RUNTIME, "--annotation", f"{NETWORK}={grant}",
                   "--with-ns", f"network:{pod_netns}", net_image, "net-blocked", "/app.wasm", "listen", "0.0.0.0",
                   str(port), "0")
    try:
        wait_for(lambda: _status(containerd, "net-blocked") == "RUNNING", 30, "net-blocked running")
        first = _in_netns(pod_netns, _CLIENT, "127.0.0.1", str(port), "30", timeout=TIMEOUT)
        assert first.stdout == "hello from wasm\n", first.stderr  # it serves, then blocks in accept again
        began = time.monotonic()
        containerd.ctr("task", "kill", "-s", "SIGKILL", "net-blocked")
        wait_for(lambda: _status(containerd, "net-blocked") == "STOPPED", 10, "net-blocked stopped")
        print(f"\nkill of a component blocked in accept -> STOPPED seen by ctr: {time.monotonic() - began:.3f} s")
    finally:
        remove_task(containerd, "net-blocked")
    run = Run(containerd, net_image, "net-again", grant, pod_netns, "listen", "0.0.0.0", str(port))
    client = _in_netns(pod_netns, _CLIENT, "127.0.0.1", str(port), "30", timeout=TIMEOUT)
    code, out, err = run.wait()
    assert client.stdout == "hello from wasm\n" and code == 0, (client.stderr, out, err)


def test_grant_refusals_name_their_reason(containerd, wasm_image, guests, net_image, pod_netns):
    module = wasm_image("net-hello-m", guests / "hello.wasm")
    component = wasm_image("net-hello-c", guests / "hello.component.wasm")
    joins = ("--with-ns", f"network:{pod_netns}")
    cases = {
        "no-netns": ("pod", (), component, "names no network namespace"),
        "gone-netns": ("pod", ("--with-ns", "network:/var/run/netns/wasmshim-does-not-exist"), component,
                       "does not exist"),
        "module": ("pod", joins, module, "no sockets API"),
        "thread": ("pod", (*joins, "--annotation", f"{ISOLATION}=thread"), component, f"{ISOLATION}=process"),
        "grammar": ("tcp-connect=10.1.2.3/16:80", joins, component, "has host bits set"),
        "verb": ("tcp-accept=*:80", joins, component, "unknown verb"),
    }
    for name, (grant, flags, image, expected) in cases.items():
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", f"{NETWORK}={grant}", *flags,
                             image, f"net-{name}", check=False)
        assert out.returncode != 0, name
        assert NETWORK in out.stderr and expected in out.stderr, (name, out.stderr)
        containerd.ctr("container", "rm", f"net-{name}", check=False)
    ok = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", f"{NETWORK}=pod", *joins, component,
                        "net-ok")
    assert ok.stdout.strip() == "hello from wasm"


def test_a_missing_component_runner_fails_prepare_with_its_name(tmp_path, guests, pod_netns):
    """Without the runner a grant cannot be honoured: Create fails saying what is missing and how to get it."""
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    shutil.copyfile(guests / "hello.component.wasm", rootfs / "app.wasm")
    engine = WasmtimeEngine(cache_dir=None, component_runner=str(tmp_path / "no-such-runner"))
    try:
        guest = GuestSpec(task_id="t", rootfs=str(rootfs), root_readonly=True, args=("/app.wasm",), env=(),
                          cwd="/", grant=parse_grant({NETWORK: "tcp-listen=*:80"}),
                          network_namespace=str(pod_netns))
        with pytest.raises(EngineError, match="wasm-shim-component-runner, which is not installed") as caught:
            prepare(engine, guest)
        assert "no-such-runner" in str(caught.value) and "tcp-listen=*:80" in str(caught.value)
    finally:
        engine.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_component_runner_applies_the_rest_of_the_spec(containerd, wasm_image, guests, pod_netns, tmp_path):
    """A granted component gets the same args, env, mounts, limits and exit statuses as one without a grant."""
    grant = ("--annotation", f"{NETWORK}=pod", "--with-ns", f"network:{pod_netns}")

    def run(image: str, task_id: str, *args: str, flags: tuple[str, ...] = ()):
        return containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, task_id, "/app.wasm", *args,
                              check=False, timeout=TIMEOUT)

    args_env = wasm_image("net-args", guests / "args_env.component.wasm")
    env = ("--env", "GREETING=hello there")
    plain = run(args_env, "spec-plain", "one", "two words", flags=env)
    granted = run(args_env, "spec-granted", "one", "two words", flags=(*grant, *env))
    assert granted.returncode == 0 and granted.stdout == plain.stdout, (plain.stdout, granted.stdout, granted.stderr)
    assert "argv[2]=two words\n" in granted.stdout and "env=GREETING=hello there\n" in granted.stdout

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("from the host\n")
    ro = ("--mount", f"type=bind,src={shared},dst=/data,options=rbind:ro")
    cat = run(wasm_image("net-cat", guests / "cat_file.component.wasm"), "spec-cat", "/data/note.txt",
              flags=(*grant, *ro))
    assert cat.returncode == 0 and cat.stdout == "from the host\n", cat.stderr
    write = run(wasm_image("net-writer", guests / "writer.component.wasm"), "spec-write", "/data/new.txt", "x",
                flags=(*grant, *ro))
    assert write.returncode == 1 and not (shared / "new.txt").exists(), write.stderr

    trap = run(wasm_image("net-trap", guests / "trap.component.wasm"), "spec-trap", flags=grant)
    assert trap.returncode == 134 and "wasm trap" in trap.stderr, (trap.returncode, trap.stderr)

    # (the C alloc guest adapted by jco asserts inside the preview1 adapter once malloc grew memory, so the
    # JavaScript guest allocates here)
    net = wasm_image("net-c", guests / "net.component.wasm")
    capped = run(net, "spec-alloc", "alloc", "100", flags=(*grant, "--memory-limit", str(64 << 20)))
    assert capped.returncode == 0 and "allocation failed at" in capped.stdout, (capped.stdout[-200:], capped.stderr)
    reached = max(int(n) for n in re.findall(r"^(\d+) MiB$", capped.stdout, re.M))
    free = run(net, "spec-alloc-free", "alloc", "100", flags=grant)
    assert "reached 100 MiB" in free.stdout, (free.stdout[-200:], free.stderr)
    assert reached < 64, capped.stdout[-200:]
    print(f"\ncomponent runner, alloc under a 64 MiB limit: {reached} MiB (100 without)")

    spin = wasm_image("net-spin", guests / "spin.component.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, *grant, "--cpus", "0.25", spin, "spec-spin")
    try:
        wait_for(lambda: _status(containerd, "spec-spin") == "RUNNING", 30, "spec-spin running")
        pid = task_pid(containerd, "spec-spin")
        time.sleep(1)  # past the compile and the start-up burst
        first, began = _cpu_seconds(pid), time.monotonic()
        time.sleep(3)
        rate = (_cpu_seconds(pid) - first) / (time.monotonic() - began)
        assert rate < 0.25 * 1.3, rate  # the quota holds (other load can only lower it)
        containerd.ctr("task", "pause", "spec-spin")
        assert _status(containerd, "spec-spin") == "PAUSED"
        time.sleep(0.2)
        frozen = _cpu_seconds(pid)
        time.sleep(1)
        assert _cpu_seconds(pid) - frozen < 0.02  # a paused runner uses no CPU
        containerd.ctr("task", "resume", "spec-spin")
        assert _status(containerd, "spec-spin") == "RUNNING"
        print(f"\ncomponent runner spinning under --cpus 0.25: {rate:.3f} CPU")
    finally:
        remove_task(containerd, "spec-spin")
