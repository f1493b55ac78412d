"""`make demo`: a WebAssembly guest runs through containerd with our shim, beside a runc container.

Starts a private containerd (Debian's 1.6) in a temp dir on its own sockets, builds the hello guest from C,
packs it into an OCI image, and runs it with `ctr run --rm --runtime io.containerd.wasmtime.v1`; then runs a
static busybox echo under runc for comparison. Last, a component granted one listening port
(`wasm.shim.io/network: tcp-listen=*:8080`) serves a client inside a network namespace the demo makes for it
(standing in for a pod's), and the same grant refuses it an outgoing connection. Everything it starts is stopped
and removed at the end.
Usage: .venv/bin/python scripts/demo.py [--containerd 1.6|2.x]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.guests.fixtures import build_guests  # noqa: E402
from tests.harness.containerd import VENV_BIN, launch  # noqa: E402
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
    containerd = launch(options.containerd, tmp, path_prepend=[VENV_BIN])
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
        print(f"    guest says: {out.strip()}   ({first_ms:.0f} ms, first run: starts the shim daemon, compiles)")
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
        containerd.ctr("task", "kill", "-s", "SIGKILL", "demo-net", check=False)
        for _ in range(100):  # up to 5 s for the exit to be reported
            rows = [line.split() for line in containerd.ctr("task", "ls", check=False).stdout.splitlines()[1:]]
            if not any(row[0] == "demo-net" and row[-1] != "STOPPED" for row in rows if row):
                break
            time.sleep(0.05)
        containerd.ctr("task", "rm", "demo-net", check=False)
        containerd.ctr("container", "rm", "demo-net", check=False)
        containerd.ctr("container", "rm", "demo-net-out", check=False)
        subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True, timeout=10)


if __name__ == "__main__":
    sys.exit(main())
