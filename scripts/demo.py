"""`make demo`: a WebAssembly guest runs through containerd with our shim, beside a runc container.

Starts a private containerd (Debian's 1.6) in a temp dir on its own sockets, builds the hello guest from C,
packs it into an OCI image, and runs it with `ctr run --rm --runtime io.containerd.wasmtime.v1`; then runs a
static busybox echo under runc for comparison. Last, a component granted one listening port
(`wasm.shim.io/network: tcp-listen=*:8080`) serves a client inside a network namespace the demo makes for it
(standing in for a pod's), and the same grant refuses it an outgoing connection.

Then the supply chain: Debian's docker-registry on 127.0.0.1 (a free port), and the CLI a user runs
(`.venv/bin/wasm-shim push` hello.wasm as a wasm OCI artifact, `generate-key-pair`, `sign`, `verify`); then a
second containerd whose shim has a signature policy (`policy`, given as WASM_SHIM_POLICY) runs the signed artifact
through the annotation `wasm.shim.io/artifact` (the shim's own registry path on containerd 1.6) and refuses an
unsigned one, printing the refusal `ctr run` shows. Last, wasi:http: the http component, precompiled into the
demo's shim cache, is served in a network namespace of its own; one request with a header to its echo path, one to
its trapping path (500), and the next request still answered.

Everything it starts is stopped and removed at the end, except the compiled-module cache of the demo's containerd
(~/.cache/wasm-shim/demo-shim-cache, beside the guest build cache), kept so a second run need not compile the
http component again.
Usage: .venv/bin/python scripts/demo.py [--containerd 1.6|2.x]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.containerd import VENV_BIN, Kind, launch  # noqa: E402
from lab.guests.fixtures import build_guests, cache_root  # noqa: E402
from lab.registries import DockerRegistry  # noqa: E402
from lab.shimtools import task_status, wait_for  # noqa: E402
from wasm_shim.oci.layout import Symlink, build_image_tar  # noqa: E402

RUNTIME = "io.containerd.wasmtime.v1"
CLIENT = """
import socket, time
for _ in range(600):  # up to 60 s: the first start compiles the component
    try:
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as conn:
            print(conn.recv(1024).decode().strip())
            break
    except ConnectionRefusedError:
        time.sleep(0.1)
"""
HTTP_CLIENT = """
import socket, time, urllib.error, urllib.request
deadline = time.monotonic() + 120  # the first start of a cold cache compiles the 14 MB component
while True:
    try:
        socket.create_connection(("127.0.0.1", 8080), timeout=5).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("nothing listened on 127.0.0.1:8080 within 120 s")
        time.sleep(0.1)
for path, headers in (("/hello/from/the/demo", {"x-test": "demo"}), ("/trap", {}), ("/after/the/trap", {})):
    request = urllib.request.Request("http://127.0.0.1:8080" + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, body, response_headers = response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as error:
        status, body, response_headers = error.code, error.read().decode(), error.headers
    sent = "".join(f" ({k}: {v})" for k, v in headers.items())
    echoed = f", x-test-echo: {response_headers.get('x-test-echo')}" if "x-test-echo" in response_headers else ""
    print(f"GET {path}{sent} -> {status}{echoed}, body {body.strip()!r}")
"""


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def timed(containerd, *args: str) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    out = containerd.ctr(*args)
    return out.stdout, (time.perf_counter() - began) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containerd", choices=("1.6", "2.x"), default="1.6")
    options = parser.parse_args()

    step("building the guests from source (clang wasm32-wasi, jco)")
    guests = build_guests()
    print(f"    {guests / 'hello.wasm'} ({(guests / 'hello.wasm').stat().st_size} bytes)")

    tmp = Path(tempfile.mkdtemp(prefix="wsh-demo-", dir="/tmp"))
    step(f"starting a private containerd {options.containerd} in {tmp}")
    shim_cache = cache_root().parent / "demo-shim-cache"
    shim_cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    containerd = launch(options.containerd, tmp, path_prepend=[VENV_BIN],
                        env={"WASM_SHIM_CACHE_DIR": str(shim_cache)})
    try:
        print(f"    address {containerd.address}, namespace {containerd.namespace}")
        step("packing hello.wasm into an OCI image and importing it")
        hello_tar = tmp / "hello.tar"
        build_image_tar(hello_tar, "localhost/demo/hello:latest", {"/hello.wasm": guests / "hello.wasm"},
                        entrypoint=["/hello.wasm"])
        containerd.import_image(hello_tar)
        busybox_tar = tmp / "busybox.tar"
        build_image_tar(busybox_tar, "localhost/demo/busybox:latest",
                        {"/bin/busybox": Path("/bin/busybox"), "/bin/echo": Symlink("busybox")},
                        entrypoint=["/bin/echo"], cmd=["hello from runc"])
        containerd.import_image(busybox_tar)

        step(f"ctr run --rm --runtime {RUNTIME} localhost/demo/hello:latest demo-wasm")
        out, first_ms = timed(containerd, "run", "--rm", "--runtime", RUNTIME, "localhost/demo/hello:latest", "demo-1")
        print(f"    guest says: {out.strip()}   ({first_ms:.0f} ms, first run: starts the shim daemon)")
        wasm = [timed(containerd, "run", "--rm", "--runtime", RUNTIME, "localhost/demo/hello:latest",
                      f"demo-{i}")[1] for i in range(2, 7)]
        runc = []
        for i in range(5):
            out, ms = timed(containerd, "run", "--rm", "--runtime", "io.containerd.runc.v2",
                            "localhost/demo/busybox:latest", f"demo-runc-{i}")
            runc.append(ms)
        print(f"    runc says:  {out.strip()}")
        wasm.sort()
        runc.sort()
        step("warm runs, median of 5 (whole `ctr run --rm`, this machine, not a benchmark: see `make bench`)")
        print(f"    wasm (our shim): {wasm[2]:.0f} ms    runc busybox echo: {runc[2]:.0f} ms")
        network_demo(containerd, guests, tmp)
        supply_chain_demo(options.containerd, guests, tmp, busybox_tar)
        http_demo(containerd, guests, tmp, shim_cache)
        tasks = containerd.ctr("task", "ls", "-q").stdout.strip()
        print(f"    tasks left behind: {tasks or 'none'}")
    finally:
        step("stopping containerd and cleaning up")
        containerd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\ndone.")
    return 0


def network_demo(containerd, guests: Path, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """A component with a one-port network grant, in a network namespace of ours (standing in for a pod's)."""
    netns = f"wsh-demo-{tmp.name[-8:]}"
    grant = "wasm.shim.io/network=tcp-listen=*:8080"
    step(f"a component granted one port ({grant}) in network namespace {netns}")
    tar = tmp / "net.tar"
    build_image_tar(tar, "localhost/demo/net:latest", {"/net.wasm": guests / "net.component.wasm"},
                    entrypoint=["/net.wasm"])
    containerd.import_image(tar)
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        flags = ("--runtime", RUNTIME, "--annotation", grant, "--with-ns", f"network:/var/run/netns/{netns}")
        containerd.ctr("run", "-d", *flags, "localhost/demo/net:latest", "demo-net", "/net.wasm", "listen",
                       "0.0.0.0", "8080")
        client = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-c", CLIENT],
                                capture_output=True, text=True, timeout=90)
        print(f"    a client in {netns} connected to 127.0.0.1:8080 and got: {client.stdout.strip()!r}")
        denied = containerd.ctr("run", "--rm", *flags, "localhost/demo/net:latest", "demo-net-out", "/net.wasm",
                                "connect", "127.0.0.1", "9", check=False)
        print(f"    the same grant, connecting out to 127.0.0.1:9: {denied.stdout.strip()!r}")
    finally:
        remove_task(containerd, "demo-net", "SIGKILL")
        containerd.ctr("container", "rm", "demo-net-out", check=False)
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True, timeout=10)


def remove_task(containerd, task_id: str, signal: str) -> None:  # type: ignore[no-untyped-def]
    """Signal a detached task, wait (bounded) for it to stop, and remove it and its container."""
    containerd.ctr("task", "kill", "-s", signal, task_id, check=False)
    try:
        wait_for(lambda: task_status(containerd, task_id) in ("STOPPED", ""), 20, f"task {task_id} to stop")
    except AssertionError:
        containerd.ctr("task", "kill", "-s", "SIGKILL", task_id, check=False)
        wait_for(lambda: task_status(containerd, task_id) in ("STOPPED", ""), 10, f"task {task_id} to stop")
    containerd.ctr("task", "rm", task_id, check=False)
    containerd.ctr("container", "rm", task_id, check=False)


def wasm_shim(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run the `wasm-shim` CLI as a user would, print its command line and output, and return its stdout."""
    print(f"    $ wasm-shim {' '.join(args)}")
    done = subprocess.run([str(VENV_BIN / "wasm-shim"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    for line in (done.stdout + done.stderr).splitlines():
        print(f"      {line}")
    if done.returncode != 0:
        raise RuntimeError(f"wasm-shim {args[0]} exited {done.returncode}")
    return done.stdout


def supply_chain_demo(kind: Kind, guests: Path, tmp: Path, busybox_tar: Path) -> None:
    """Push, sign and verify with the CLI; then a node whose shim enforces a signature policy."""
    step("starting Debian's docker-registry on loopback")
    registry = DockerRegistry(tmp / "registry").start()
    try:
        print(f"    registry at {registry.address}")
        keys = tmp / "keys"
        keys.mkdir()
        signed = f"{registry.address}/demo/hello:v1"
        unsigned = f"{registry.address}/demo/unsigned:v1"
        step("a user publishes hello.wasm as a wasm OCI artifact, makes a key pair, signs it and verifies it")
        pushed = wasm_shim("push", str(guests / "hello.wasm"), signed, cwd=keys).strip()
        password = {"COSIGN_PASSWORD": "demo password"}
        wasm_shim("generate-key-pair", cwd=keys, env=password)
        wasm_shim("sign", "--key", "cosign.key", pushed, cwd=keys, env=password)
        wasm_shim("verify", "--key", "cosign.pub", signed, cwd=keys)
        wasm_shim("push", str(guests / "hello.wasm"), unsigned, "--annotation", "demo=unsigned", cwd=keys)
        policy = keys / "policy.toml"
        policy.write_text('default = "allow"\n'
                          f'[[rule]]\nimages = ["{registry.address}/demo/*"]\nkeys = ["cosign.pub"]\n'
                          'mode = "enforce"\n[registry]\ntimeout = 5\n')
        node_dir = tmp / "node"
        step(f"a second containerd whose shim enforces the policy {policy}")
        for line in policy.read_text().splitlines():
            print(f"      {line}")
        node = launch(kind, node_dir, path_prepend=[VENV_BIN],
                      env={"WASM_SHIM_POLICY": str(policy), "WASM_SHIM_ARTIFACT_DIR": str(node_dir / "artifacts"),
                           "WASM_SHIM_ARTIFACT_REGISTRIES": f"{registry.address}/demo"})
        try:
            node.import_image(busybox_tar)  # the stand-in image: the shim puts the artifact's module in its rootfs
            for ref, task_id in ((signed, "demo-signed"), (unsigned, "demo-unsigned")):
                annotation = f"wasm.shim.io/artifact={ref}"
                step(f"ctr run --rm --runtime {RUNTIME} --annotation {annotation} localhost/demo/busybox:latest "
                     f"{task_id} /app.wasm")
                done = node.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation", annotation,
                                "localhost/demo/busybox:latest", task_id, "/app.wasm", check=False, timeout=120)
                if done.returncode == 0:
                    print(f"    ran; guest says: {done.stdout.strip()}")
                else:
                    print(f"    refused (ctr exited {done.returncode}):")
                    for line in done.stderr.strip().splitlines():
                        if not line.startswith("time="):  # ctr 2.x's own log lines (a cgroup v1 deprecation)
                            print(f"      {line}")
                node.ctr("container", "rm", task_id, check=False)
        finally:
            node.stop()
            shutil.rmtree(node_dir, ignore_errors=True)
    finally:
        registry.stop()


def http_demo(containerd, guests: Path, tmp: Path, shim_cache: Path) -> None:  # type: ignore[no-untyped-def]
    """A wasi:http/proxy component served in a network namespace of ours (standing in for a pod's)."""
    netns = f"wsh-http-{tmp.name[-8:]}"
    component = guests / "http.component.wasm"
    step("precompiling the http component into the demo containerd's shim cache (as an operator warms a node)")
    began = time.perf_counter()
    wasm_shim("precompile", "--cache-dir", str(shim_cache), str(component), cwd=tmp)
    print(f"    ({time.perf_counter() - began:.1f} s; a warm cache makes this and the start below quick)")
    step(f"serving it (wasi:http/incoming-handler on 0.0.0.0:8080) in network namespace {netns}")
    tar = tmp / "http.tar"
    build_image_tar(tar, "localhost/demo/http:latest", {"/http.wasm": component}, entrypoint=["/http.wasm"])
    containerd.import_image(tar)
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        began = time.perf_counter()
        containerd.ctr("run", "-d", "--runtime", RUNTIME, "--annotation", "wasm.shim.io/http-request-timeout=10",
                       "--with-ns", f"network:/var/run/netns/{netns}", "localhost/demo/http:latest", "demo-http",
                       timeout=120)
        client = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-c", HTTP_CLIENT],
                                capture_output=True, text=True, timeout=300)
        print(f"    a client in {netns} ({time.perf_counter() - began:.1f} s from `ctr run -d` until the answers):")
        for line in (client.stdout + client.stderr).strip().splitlines():
            print(f"      {line}")
    finally:
        remove_task(containerd, "demo-http", "SIGTERM")  # SIGTERM: the server drains and exits
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True, timeout=10)


if __name__ == "__main__":
    sys.exit(main())
