"""Before an install touches containerd's config: run the copied bundle on the node itself (its shim binary, the
native modules its daemon loads, its component runner) and refuse a node they cannot start on: another CPU
architecture, a glibc older than the bundle needs, a loader or library missing.

How a command runs "on the node": the installer's container sees the node's / at the host root; a process that
chroots there execs the bundle with the node's own kernel, dynamic loader and C library, as containerd's exec of
the shim will. Where the node's processes name the host root by another path (`node_root` other than `/`: a
fixture root in tests, where the node is this machine), the files are run through that path instead, when this
process sees the same directory there; when it does not (the installer image run by a test against a fixture
root), nothing here can run as the node would, and the check is skipped, saying so.

Invariants: nothing here writes to the node; a check passes only when the program ran and printed what it prints
when it works (a version, `usage:`), so a loader error, a crash or a wrong binary is never taken for a start;
the reason names the program, the bundle path and what the loader or kernel said, with the node's CPU and glibc
and the bundle's needs beside them.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Callable

from .distributions import InstallError
from .host import Host
from .restart import say

#: (what, argv relative to the bundle, text its output holds when it started, exit status when it started)
CHECKS: tuple[tuple[str, tuple[str, ...], str, int], ...] = (
    ("the shim binary", ("bin/containerd-shim-wasmtime-v1", "-v"), "containerd-shim-wasmtime-v1", 0),
    # What the shim daemon imports with native code (wasmtime's C library through ctypes, grpc, protobuf's upb,
    # cryptography's Rust extension, the stdlib's OpenSSL and libffi), then one wasmtime Engine.
    ("the shim daemon's native modules", ("python/bin/python3", "-I", "-c",
                                          "import ssl, ctypes, grpc, google.protobuf, wasmtime, "
                                          "cryptography.hazmat.bindings._rust, wasm_shim.shim.daemon.main; "
                                          "wasmtime.Engine(); print('wasm-shim daemon modules load')"),
     "wasm-shim daemon modules load", 0),
    ("the component runner", ("python/bin/wasm-shim-component-runner",), "usage: wasm-shim-component-runner", 2),
)
#: ELF e_machine -> the architecture name `uname -m` gives (elf.h).
MACHINES = {3: "i686", 8: "mips", 20: "ppc", 21: "ppc64le", 22: "s390x", 40: "arm", 62: "x86_64", 183: "aarch64",
            243: "riscv64"}
LIBC_PATHS = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/usr/lib64/libc.so.6",
              "/lib/aarch64-linux-gnu/libc.so.6", "/usr/lib/libc.so.6", "/lib/libc.so.6")

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def elf_machine(path: str) -> str:
    """The architecture an ELF file (or the interpreter a #! script names) is built for; "" if neither."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return ""
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
        return MACHINES.get(machine, f"machine {machine}")
    return ""


def node_glibc(host: Host) -> str:
    """The newest GLIBC_x.y version the node's libc.so.6 defines ("" when none of the usual paths has one)."""
    for path in LIBC_PATHS:
        data = host.read(path) if host.exists(path) else None
        if data:
            versions = {(int(a), int(b)) for a, b in re.findall(rb"GLIBC_(\d+)\.(\d+)", data)}
            if versions:
                major, minor = max(versions)
                return f"{major}.{minor}"
    return ""


def check(host: Host, node_root: str, bundle: str, needs: str, *, run: Run = subprocess.run) -> None:
    """Run CHECKS against `bundle` (a node path) on the node; InstallError with the first that cannot start.
    `needs` is the bundle's glibc floor (BUNDLE.json), for the message."""
    root = os.path.abspath(node_root)
    through_chroot = root == "/"
    if not through_chroot and not (os.path.isdir(root) and os.path.samefile(root, host.root)):
        say(f"not running the bundle before install: --node-root {root} is not where this process sees the host "
            f"root ({host.root})")
        return

    def on_node(node_path: str) -> str:
        return node_path if through_chroot else os.path.join(root, node_path.lstrip("/"))

    def enter() -> None:  # in the child, before exec: the node's / becomes ours
        os.chroot(host.root)
        os.chdir("/")

    for what, argv, expect, status in CHECKS:
        program = os.path.join(bundle, argv[0])
        command = [on_node(program), *argv[1:]]
        try:
            done = run(command, capture_output=True, timeout=120, check=False, cwd="/",
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
                       preexec_fn=enter if through_chroot and host.root != "/" else None)
        except subprocess.TimeoutExpired:
            problem = "did not finish in 120 s"
        except OSError as exc:
            problem = _exec_problem(host, program, exc)
        else:
            out = (done.stdout or b"").decode("utf-8", "replace") + (done.stderr or b"").decode("utf-8", "replace")
            if done.returncode == status and expect in out:
                continue
            problem = f"exited {done.returncode}: {out.strip()[-600:] or '(no output)'}"
        machine, glibc = os.uname().machine, node_glibc(host) or "not found"
        built = elf_machine(host.path(program)) or "x86_64"
        raise InstallError(
            f"the bundle cannot start on this node: {what} ({program}) {problem}. This node: {machine}, glibc "
            f"{glibc}; the bundle: {built}, glibc >= {needs or '?'} (docs/node-install.md, supported nodes). "
            "Nothing else was changed")


def _exec_problem(host: Host, program: str, exc: OSError) -> str:
    if exc.errno == errno.ENOEXEC:
        built = elf_machine(host.path(program))
        if not built:  # a #! script: its interpreter is what the kernel could not run
            try:
                with open(host.path(program), "rb") as f:
                    first = f.readline()
            except OSError:
                first = b""
            if first.startswith(b"#!"):
                interpreter = first[2:].split()[0].decode("utf-8", "replace")
                built = elf_machine(host.path(interpreter.removeprefix(host.root)))
        return f"cannot be executed here: it is built for {built or 'another architecture'}, this node is " \
               f"{os.uname().machine} ({exc.strerror})"
    return f"cannot be executed: {exc.strerror or exc}"
