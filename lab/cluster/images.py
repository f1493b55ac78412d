"""The OCI images every node of the e2e cluster gets, built locally as single-layer image tarballs.

Owns the image names the cluster and the e2e suite agree on. Nothing is pulled: the pause program and the wasm
guests are built from lab/guests, busybox is Debian's busybox-static, and each image is written with
``wasm_shim.oci.layout`` (deterministic bytes, so an unchanged input gives the same digest). The tarballs are
imported with ``ctr -n k8s.io images import`` by the node supervisors before their kubelets start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wasm_shim.oci.layout import FileSource, Symlink, build_image_tar

PAUSE = "wasm-shim.local/pause:e2e"  # containerd's sandbox image on every node (lab.cluster.files containerd_config)
BUSYBOX = "wasm-shim.local/busybox:e2e"
WASM_HELLO = "wasm-shim.local/wasm-hello:e2e"  # prints "hello from wasm", exits 0
WASM_SLEEP = "wasm-shim.local/wasm-sleep:e2e"  # prints "sleeping S s", then sleeps (a long-running guest)
WASM_NET = "wasm-shim.local/wasm-net:e2e"  # the wasi:sockets component: `listen ADDR PORT COUNT` serves a greeting
WASM_HTTP = "wasm-shim.local/wasm-http:e2e"  # the wasi:http/incoming-handler component (lab/guests/src/http)
WASM_EXIT = "wasm-shim.local/wasm-exit:e2e"  # prints "exiting with N", exits with argv[1]
WASM_CAT = "wasm-shim.local/wasm-cat:e2e"  # copies the file argv[1] to stdout; "cat_file: PATH: REASON", exit 1
BUSYBOX_BINARY = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "sleep", "echo", "cat", "nc", "hostname", "ip", "ls", "true", "false", "env")


def build(out: Path, guests: Path) -> list[Path]:
    """Write every image tarball into ``out`` and return their paths (pause first)."""
    if not BUSYBOX_BINARY.exists():
        raise FileNotFoundError(f"{BUSYBOX_BINARY} is missing: apt-get install busybox-static")
    for needed in ("pause", "hello.wasm", "sleep.wasm", "net.component.wasm", "http.component.wasm", "exit_code.wasm",
                   "cat_file.wasm"):
        if not (guests / needed).exists():
            raise FileNotFoundError(f"{guests / needed} is missing: lab/guests/build.sh {guests}")
    out.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, dict[str, FileSource], list[str]]] = [
        (PAUSE, {"/pause": guests / "pause"}, ["/pause"]),
        (BUSYBOX, {"/bin/busybox": BUSYBOX_BINARY, **{f"/bin/{a}": Symlink("busybox") for a in BUSYBOX_APPLETS}},
         ["/bin/sh"]),
        (WASM_HELLO, {"/hello.wasm": guests / "hello.wasm"}, ["/hello.wasm"]),
        (WASM_SLEEP, {"/sleep.wasm": guests / "sleep.wasm"}, ["/sleep.wasm"]),
        (WASM_NET, {"/net.wasm": guests / "net.component.wasm"}, ["/net.wasm"]),
        (WASM_HTTP, {"/http.wasm": guests / "http.component.wasm"}, ["/http.wasm"]),
        (WASM_EXIT, {"/exit_code.wasm": guests / "exit_code.wasm"}, ["/exit_code.wasm"]),
        (WASM_CAT, {"/cat_file.wasm": guests / "cat_file.wasm"}, ["/cat_file.wasm"]),
    ]
    paths = []
    for ref, files, entrypoint in images:
        path = out / (ref.split("/")[-1].replace(":", "-") + ".tar")
        env = ["PATH=/bin"] if ref == BUSYBOX else []
        build_image_tar(path, ref, files, entrypoint=entrypoint, env=env)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the image tarballs")
    args = parser.parse_args()
    from lab.guests.fixtures import build_guests  # the cached guest build the test suite uses

    for path in build(args.out, build_guests()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
