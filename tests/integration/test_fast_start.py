"""The shim binary's fast start (shim/launch/fast_start.c): `start` answered from the hint binary.py left, without
Python, and everything it cannot answer handed to the Python launcher beside it with the same arguments and stdin.

The binary is the real one setup built (.venv/bin/containerd-shim-wasmtime-v1), copied beside a stand-in launcher
that reports how it was run, so a fallback is seen instead of starting a daemon; the daemon is a listening unix
socket the test makes. Hints are written where the binary reads them, under keys binary.py's `hint_key` computes:
a hint found is the proof that both sides agree on the key."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.containerd import VENV_BIN
from wasm_shim.shim.launch import contract

pytestmark = pytest.mark.integration

STAND_IN = """#!/bin/sh
# the stand-in for the Python launcher: how was it run?
echo "python fallback: $*"
od -An -tx1 | tr -d ' \\n'
"""


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    here = tmp_path / "bin"
    here.mkdir()
    shutil.copy(VENV_BIN / "containerd-shim-wasmtime-v1", here / "containerd-shim-wasmtime-v1")
    (here / "containerd-shim-wasmtime-v1.py").write_text(STAND_IN)
    (here / "containerd-shim-wasmtime-v1.py").chmod(0o755)
    return here / "containerd-shim-wasmtime-v1"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "daemon.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    try:
        yield path
    finally:
        listener.close()


@pytest.fixture
def keys() -> Iterator[list[str]]:
    written: list[str] = []
    try:
        yield written
    finally:
        for key in written:
            Path(contract.HINT_DIR, key).unlink(missing_ok=True)


def _hint(keys: list[str], address: str, namespace: str, env: dict[str, str], stdin: bytes, socket_path: str,
          answer: bytes, files: list[str] = ()) -> None:  # type: ignore[assignment]
    key = contract.hint_key(address, namespace, env, stdin)
    text = contract.hint_text(socket_path, f"unix://{socket_path}", answer, list(files))
    assert text is not None
    os.makedirs(contract.HINT_DIR, mode=0o700, exist_ok=True)
    Path(contract.HINT_DIR, key).write_bytes(text)
    Path(contract.HINT_DIR, key).chmod(0o600)
    keys.append(key)


def _start(binary: Path, bundle: Path, address: str, env: dict[str, str], stdin: bytes,
           *extra: str) -> subprocess.CompletedProcess[bytes]:
    bundle.mkdir(exist_ok=True)
    argv = [str(binary), "-namespace", "k8s.io", "-address", address, "-publish-binary", "/usr/bin/containerd",
            "-id", "pod-1", *extra, "start"]
    return subprocess.run(argv, input=stdin, env=env, cwd=bundle, capture_output=True, timeout=30, check=False)


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "NAMESPACE": "k8s.io", "TTRPC_ADDRESS": "/run/c.sock.ttrpc",
            "GRPC_ADDRESS": "/run/c.sock", **extra}


_ID = b"\x0a\x40" + b"4" * 64  # field 1: the id containerd 2.x puts in its start input
_STDINS = [
    b"", bytes.fromhex("10 01 1a 06 6b 38 73 2e 69 6f") + b"\0" * 3, _ID + b"\x12\x06k8s.io\x18\x05",
    # Not well-formed, so keyed whole on both sides: a truncated varint, a length past the end, wire types 3 and 7,
    # a fixed32 cut short, a ten-byte tag whose high bits only a 64-bit reader drops, a length over 2**64.
    b"\x08", b"\x0a\xff", b"\x0a\x05ab", b"\x0b\x01", b"\x0f", b"\x0a\x01x\x0d\x01\x02",
    b"\x8a\x80\x80\x80\x80\x80\x80\x80\x80\x02\x01x", b"\x12\x85\x80\x80\x80\x80\x80\x80\x80\x80\x02ab",
]


@pytest.mark.parametrize("stdin", _STDINS)
def test_a_hint_is_found_under_the_key_binary_py_computes(binary: Path, daemon: str, keys: list[str],
                                                           tmp_path: Path, stdin: bytes) -> None:
    address = f"/run/containerd-{secrets.token_hex(4)}.sock"
    env = _env(WASM_SHIM_LOG_LEVEL="debug", WASM_SHIM_A="1", MAX_SHIM_VERSION="2")
    _hint(keys, address, "k8s.io", env, stdin, daemon, b"the answer\x00\xff")
    done = _start(binary, tmp_path / "bundle", address, env, stdin)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"the answer\x00\xff", "answered from the hint, not by the launcher"
    assert (tmp_path / "bundle" / "address").read_text() == f"unix://{daemon}"


def test_the_id_in_containerds_start_input_does_not_decide_the_answer(binary: Path, daemon: str, keys: list[str],
                                                                        tmp_path: Path) -> None:
    """containerd 2.x puts the id of the pod or container being started in field 1 of its start input: the hint
    one start left answers the next one's, whose id differs (grouping "namespace": the id decides nothing)."""
    address = f"/run/containerd-{secrets.token_hex(4)}.sock"
    env = _env(MAX_SHIM_VERSION="2")
    rest = b"\x12\x06k8s.io\x2a\x0f/run/c.sock.ttr"
    _hint(keys, address, "k8s.io", env, b"\x0a\x40" + b"a" * 64 + rest, daemon, b"the answer")
    done = _start(binary, tmp_path / "bundle", address, env, b"\x0a\x40" + b"b" * 64 + rest)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"the answer", done.stdout
    assert contract.without_id(b"\x0a\x40" + b"b" * 64 + rest) == rest


@pytest.mark.parametrize("change", ["environment", "stdin", "config file", "dead daemon", "untrusted hint",
                                    "another action"])
def test_anything_the_hint_does_not_hold_goes_to_the_launcher_intact(binary: Path, daemon: str, keys: list[str],
                                                                      tmp_path: Path, change: str) -> None:
    address = f"/run/containerd-{secrets.token_hex(4)}.sock"
    config = tmp_path / "options.toml"
    config.write_text('grouping = "namespace"\n')
    env, stdin = _env(), b"\x0a\x03abc\x12\x06k8s.io"
    _hint(keys, address, "k8s.io", env, stdin, daemon, b"the answer", [contract.file_state(str(config))])
    extra: tuple[str, ...] = ()
    if change == "environment":
        env = _env(WASM_SHIM_LOG_LEVEL="debug")
    elif change == "stdin":
        stdin = b"\x0a\x03abc\x12\x06k8s.iq"
    elif change == "config file":
        config.write_text('grouping = "namespace"\nlog_level = "debug"\n')
    elif change == "dead daemon":
        os.unlink(daemon)
    elif change == "untrusted hint":
        Path(contract.HINT_DIR, keys[-1]).chmod(0o644)
    else:
        extra = ("-bundle", str(tmp_path / "bundle"))
    argv_action = "delete" if change == "another action" else "start"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    argv = [str(binary), "-namespace", "k8s.io", "-address", address, *extra, argv_action]
    done = subprocess.run(argv, input=stdin, env=env, cwd=bundle, capture_output=True, timeout=30, check=False)
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "python fallback: " + " ".join(argv[1:]), (lines, done.stderr)
    assert (lines[1] if len(lines) > 1 else "") == stdin.hex(), "the same stdin bytes, handed on"
    assert not (bundle / "address").exists()


def test_without_proc_the_launcher_is_found_by_the_path_it_was_run_by(binary: Path) -> None:
    # The installer's preflight runs the bundle's shim binary chrooted into the node's root, where /proc may not be
    # mounted: /proc/self/exe is then missing, and the launcher beside the binary is found through argv[0].
    script = f"mount -t tmpfs none /proc && exec {binary} -v"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[0] == "python fallback: -v"
