"""What the registry commands import: each import is paid on every call a script makes, so a pull imports what it
uses and nothing else (docs/benchmarks.md "The CLI beside oras and cosign").

The real launcher (.venv/bin/wasm-shim, scripts/setup.sh's) runs the real command against a real registry
(Debian's docker-registry on loopback) under `-X importtime`, which names every module imported; the interpreter's
own start (`-c pass` under the same flags) is subtracted. A plain-HTTP `pull` and `tags` may import only ALLOWED
(the standard library's few modules they use, and ours); OpenSSL's hashlib only when the blob is large enough to
need it (oci/digest.py BIG); `--version` nothing of the registry side and no parser; `verify` (which needs
cryptography, and cryptography brings its own) none of the HTTP stacks, argparse or the node side.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.registries import DockerRegistry
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.digest import BIG
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / ".venv" / "bin" / "wasm-shim"

# What a plain-HTTP pull of a small module may import beyond the interpreter's start.
ALLOWED = {
    "__future__", "_collections", "_collections_abc", "_json", "_operator", "_sha256", "_sha2", "_socket", "_stat",
    "binascii", "collections", "collections.abc", "errno", "genericpath", "itertools", "keyword", "operator", "os",
    "os.path", "posixpath", "reprlib", "select", "stat",
}
OPENSSL_HASHING = {"hashlib", "_hashlib", "_blake2"}
NEVER = {  # what the registry commands used to import, or must never: HTTP stacks, parsers, the node side
    "urllib3", "http.client", "email", "ssl", "argparse", "wasm_shim.shim.node", "wasm_shim.shim.daemon",
    "wasm_shim.shim.engines", "wasm_shim.shim.launch", "wasmtime", "grpc", "google.protobuf", "kubernetes", "nacl",
}


def imported(argv: list[str], env: dict[str, str]) -> set[str]:
    """The modules `argv` (a Python command line's arguments) imports beyond the interpreter's own start."""
    def run(args: list[str]) -> set[str]:
        done = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", *args], capture_output=True,
                              text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-2000:]
        return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line and "imported package" not in line}

    return run([str(LAUNCHER), *argv]) - run(["-c", "pass"])


def ours(modules: set[str]) -> bool:
    return any(m == "wasm_shim" or m.startswith("wasm_shim.") for m in modules)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("imports")
    instance = DockerRegistry(work / "registry").start()
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        (work / "cosign.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        with RegistryClient(DockerCredentials({})) as client:
            for name, size in (("small", 4096), ("large", BIG + 1)):
                (work / f"{name}.wasm").write_bytes(b"\0asm\x01\0\0\0" + bytes(size - 8))
                ref = parse_reference(f"{instance.address}/team/{name}:v1")
                sign_image(client, ref.with_digest(push_wasm(client, str(work / f"{name}.wasm"), ref)), key)
        yield instance.address, work
    finally:
        instance.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    clean = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy", "no_proxy")}
    return {**clean, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker")}


def test_a_pull_imports_only_what_it_uses(registry: tuple[str, Path], env: dict[str, str], tmp_path: Path) -> None:
    address, _ = registry
    small = imported(["pull", f"{address}/team/small:v1", "-o", str(tmp_path / "small.wasm")], env)
    assert (tmp_path / "small.wasm").stat().st_size == 4096
    foreign = {m for m in small if not m.startswith("wasm_shim")} - ALLOWED
    assert not foreign, f"a pull of a small module imports {sorted(foreign)}, which it does not need"
    assert not {m for m in small if m.startswith("wasm_shim.")} & NEVER
    large = imported(["pull", f"{address}/team/large:v1", "-o", str(tmp_path / "large.wasm")], env)
    assert {m for m in large if not m.startswith("wasm_shim")} - ALLOWED <= OPENSSL_HASHING
    assert "_hashlib" in large  # a large blob is hashed by OpenSSL, the fast one


def test_tags_and_the_version_import_only_what_they_use(registry: tuple[str, Path], env: dict[str, str]) -> None:
    address, _ = registry
    tags = imported(["tags", f"{address}/team/small"], env)
    assert {m for m in tags if not m.startswith("wasm_shim")} <= ALLOWED, sorted(tags - ALLOWED)
    version = imported(["--version"], env)  # the version is the shim binary's (shim/launch), and nothing else
    assert not {m for m in version if m.startswith("wasm_shim.oci")}, sorted(version)
    assert not version & {"argparse", "re", "json", "socket", "urllib3", "typing", "dataclasses"}, sorted(version)


def test_verify_imports_no_http_stack_no_argparse_and_nothing_of_the_node(registry: tuple[str, Path],
                                                                        env: dict[str, str]) -> None:
    address, work = registry
    modules = imported(["verify", "--key", str(work / "cosign.pub"), f"{address}/team/small:v1"], env)
    assert ours(modules) and "cryptography" in modules
    assert not {m for m in modules if m in NEVER or m.split(".")[0] in NEVER or
                any(m.startswith(n + ".") for n in NEVER)}, sorted(m for m in modules if m.split(".")[0] in NEVER)
