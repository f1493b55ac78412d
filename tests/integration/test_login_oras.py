"""`wasm-shim login` / `logout` against the real `oras` 1.3, both ways, on Debian's docker-registry with TLS from a
test CA and bcrypt basic auth (loopback).

Covered: credentials our `login` saved are what `oras` pushes with, and `oras login`'s are what we pull with; the
docker config we write keeps its other keys and is 0600; a credential helper named by `credsStore` (a
`docker-credential-*` program on PATH speaking the helper protocol, here a small one the test writes) receives
the secret instead of the file, and oras reads it back through the same helper; wrong credentials are refused
before anything is saved; a password in argv draws oras's warning; `logout` removes what either tool saved.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.registries import DockerRegistry, make_tls, tool
from tests.integration.test_cosign_oras import WASM_SHIM, run

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "s3cret pass"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[DockerRegistry]:
    registry = DockerRegistry(tmp_path / "registry", tls=make_tls(tmp_path / "tls"), users={USER: PASSWORD}).start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    docker = tmp_path / "home" / ".docker"
    docker.mkdir(parents=True)
    return {**os.environ, "HOME": str(tmp_path / "home"), "DOCKER_CONFIG": str(docker)}


def _ca(registry: DockerRegistry) -> str:
    assert registry.tls is not None
    return str(registry.tls.ca_pem)


def _module(tmp_path: Path, guests: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "hello.wasm").write_bytes((guests / "hello.wasm").read_bytes())
    (work / "config.json").write_text(json.dumps({"architecture": "wasm", "os": "wasip1"}))
    return work


ARTIFACT = ["--config", "config.json:application/vnd.wasm.config.v0+json", "hello.wasm:application/wasm"]


def test_our_login_is_what_oras_pushes_with_and_logout_removes_it(
        secured: DockerRegistry, home: dict[str, str], guests: Path, tmp_path: Path) -> None:
    config = Path(home["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"auths": {}, "psFormat": "table {{.ID}}"}))
    ref = f"{secured.address}/team/hello:v1"
    work = _module(tmp_path, guests)
    denied = run([tool("oras"), "push", "--ca-file", _ca(secured), ref, *ARTIFACT], home,
                 cwd=work, check=False)
    assert denied.returncode != 0  # no credentials yet
    done = subprocess_input([WASM_SHIM, "login", "-u", USER, "--password-stdin", "--ca-file", _ca(secured),
                             secured.address], home, PASSWORD + "\n")
    assert done.stdout == "Login Succeeded\n" and "WARNING" not in done.stderr
    saved = json.loads(config.read_text())
    assert saved["psFormat"] == "table {{.ID}}", "other keys are kept"
    assert set(saved["auths"]) == {secured.address}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    run([tool("oras"), "push", "--ca-file", _ca(secured), ref, *ARTIFACT], home, cwd=work)
    out = tmp_path / "pulled.wasm"
    run([WASM_SHIM, "pull", "--ca-file", _ca(secured), ref, "-o", str(out)], home)
    assert out.read_bytes() == (guests / "hello.wasm").read_bytes()
    logout = run([WASM_SHIM, "logout", secured.address], home)
    assert logout.stdout == f"Removed login credentials for {secured.address}\n"
    assert json.loads(config.read_text())["auths"] == {}
    again = run([tool("oras"), "pull", "--ca-file", _ca(secured), ref, "-o", str(tmp_path / "x")], home,
                check=False)
    assert again.returncode != 0


def test_oras_login_is_what_we_pull_with(secured: DockerRegistry, home: dict[str, str], guests: Path,
                                         tmp_path: Path) -> None:
    ref = f"{secured.address}/team/hello:v2"
    subprocess_input([tool("oras"), "login", "-u", USER, "--password-stdin", "--ca-file", _ca(secured),
                      secured.address], home, PASSWORD)
    work = _module(tmp_path, guests)
    run([WASM_SHIM, "push", "--ca-file", _ca(secured), str(work / "hello.wasm"), ref], home)
    out = tmp_path / "oras-out"
    run([tool("oras"), "pull", "--ca-file", _ca(secured), ref, "-o", str(out)], home)
    assert (out / "hello.wasm").read_bytes() == (guests / "hello.wasm").read_bytes()
    run([WASM_SHIM, "logout", secured.address], home)
    assert run([WASM_SHIM, "pull", "--ca-file", _ca(secured), ref, "-o", str(tmp_path / "y")], home,
               check=False).returncode == 1


def test_wrong_credentials_are_refused_before_anything_is_saved(secured: DockerRegistry, home: dict[str, str]) -> None:
    failed = run([WASM_SHIM, "login", "-u", USER, "-p", "wrong", "--ca-file", _ca(secured), secured.address], home,
                 check=False)
    assert failed.returncode == 1
    assert "WARNING! Using --password via the CLI is insecure. Use --password-stdin." in failed.stderr
    assert "(credentials were refused)" in failed.stderr
    assert not (Path(home["DOCKER_CONFIG"]) / "config.json").exists()
    untrusted = run([WASM_SHIM, "login", "-u", USER, "-p", PASSWORD, secured.address], home, check=False)
    assert untrusted.returncode == 1 and "TLS failed" in untrusted.stderr  # the test CA is not the system's


HELPER = """#!{python}
import json, os, sys
store = os.environ["TEST_HELPER_STORE"]
entries = json.load(open(store)) if os.path.exists(store) else {{}}
action = sys.argv[1]
data = sys.stdin.read()
if action == "store":
    doc = json.loads(data)
    entries[doc["ServerURL"]] = doc
elif action == "get":
    if data.strip() not in entries:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(entries[data.strip()]))
elif action == "erase":
    if entries.pop(data.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
elif action == "list":
    print(json.dumps({{k: v["Username"] for k, v in entries.items()}}))
json.dump(entries, open(store, "w"))
"""


def test_a_credential_helper_holds_the_secret_for_both_tools(secured: DockerRegistry, home: dict[str, str],
                                                             guests: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-testvault"
    helper.write_text(HELPER.format(python=sys.executable))
    helper.chmod(0o755)
    env = {**home, "PATH": f"{bin_dir}:{home['PATH']}", "TEST_HELPER_STORE": str(tmp_path / "vault.json")}
    config = Path(home["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"credsStore": "testvault"}))
    subprocess_input([WASM_SHIM, "login", "-u", USER, "--password-stdin", "--ca-file", _ca(secured),
                      secured.address], env, PASSWORD)
    assert PASSWORD not in config.read_text()
    vault = json.loads((tmp_path / "vault.json").read_text())
    assert vault[secured.address] == {"ServerURL": secured.address, "Username": USER, "Secret": PASSWORD}
    ref = f"{secured.address}/team/hello:v3"
    work = _module(tmp_path, guests)
    run([tool("oras"), "push", "--ca-file", _ca(secured), ref, *ARTIFACT], env, cwd=work)
    run([WASM_SHIM, "logout", secured.address], env)
    assert json.loads((tmp_path / "vault.json").read_text()) == {}


def subprocess_input(argv: list[str], env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done
