"""Interop with the real `oras` 1.3 and `cosign` 3.1 CLIs, through `wasm-shim`'s own CLI, on loopback registries.

Two registries: Debian's docker-registry (distribution 2.8: no referrers API, so both tools use the
`sha256-<hex>` fallback tag) and go-containerregistry's registry with the referrers API on (registries.py).
The matrix: oras push -> wasm-shim pull byte-identical, and the module runs;
wasm-shim push -> oras pull byte-identical; cosign signatures in both formats verify with wasm-shim verify and
ours with `cosign verify --key`; key files made by either tool sign for the other. cosign runs offline:
`--tlog-upload=false --use-signing-config=false` to sign, `--insecure-ignore-tlog=true` to verify.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.registries import DockerRegistry, ReferrersRegistry, tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WASM_SHIM = str(REPO / ".venv" / "bin" / "wasm-shim")
PASSWORD = "correct horse"


@pytest.fixture(params=["docker-registry", "referrers-api"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    instance: DockerRegistry | ReferrersRegistry
    if request.param == "docker-registry":
        instance = DockerRegistry(tmp_path / "registry")
    else:
        instance = ReferrersRegistry(tmp_path / "referrers")
    instance.start()
    try:
        yield instance.address
    finally:
        instance.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    return {**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"), "COSIGN_PASSWORD": PASSWORD,
            "COSIGN_YES": "true"}


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def cosign_sign(env: dict[str, str], key: Path, ref: str, legacy: bool) -> None:
    argv = [tool("cosign"), "sign", "--key", str(key), "--tlog-upload=false", "--use-signing-config=false",
            "--allow-http-registry", "-y", ref]
    if legacy:
        argv.insert(2, "--new-bundle-format=false")
    run(argv, env)


def cosign_verify(env: dict[str, str], key: Path, ref: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("cosign"), "verify", "--key", str(key), "--insecure-ignore-tlog=true", "--allow-http-registry",
                ref], env, check=check)


def run_module(path: Path, tmp_path: Path) -> str:
    """Run a WASI preview-1 command module in wasmtime and return its stdout."""
    import wasmtime

    out = tmp_path / "stdout.txt"
    config = wasmtime.WasiConfig()
    config.argv = ["hello"]
    config.stdout_file = str(out)
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    store.set_wasi(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, wasmtime.Module.from_file(engine, str(path)))
    start = instance.exports(store)["_start"]
    try:
        start(store)  # type: ignore[operator]
    except wasmtime.ExitTrap as exc:
        assert exc.code == 0
    return out.read_text()


def test_oras_push_then_wasm_shim_pull(registry: str, env: dict[str, str], guests: Path, tmp_path: Path) -> None:
    work = tmp_path / "push"
    work.mkdir()
    (work / "hello.wasm").write_bytes((guests / "hello.wasm").read_bytes())
    (work / "config.json").write_text(json.dumps({"architecture": "wasm", "os": "wasip1"}))
    ref = f"{registry}/team/hello:v1"
    run([tool("oras"), "push", "--plain-http", ref, "--config", "config.json:application/vnd.wasm.config.v0+json",
         "hello.wasm:application/wasm"], env, cwd=work)
    out = tmp_path / "pulled.wasm"
    run([WASM_SHIM, "pull", ref, "-o", str(out)], env)
    assert out.read_bytes() == (guests / "hello.wasm").read_bytes()
    assert "hello" in run_module(out, tmp_path).lower()


def test_wasm_shim_push_then_oras_pull(registry: str, env: dict[str, str], guests: Path, tmp_path: Path) -> None:
    source = tmp_path / "hello.wasm"
    source.write_bytes((guests / "hello.wasm").read_bytes())
    ref = f"{registry}/team/hello:v2"
    pushed = run([WASM_SHIM, "push", str(source), ref], env).stdout.strip()
    assert pushed.startswith(f"{registry}/team/hello@sha256:")
    out = tmp_path / "oras-out"
    run([tool("oras"), "pull", "--plain-http", ref, "-o", str(out)], env)
    assert (out / "hello.wasm").read_bytes() == source.read_bytes()
    fetched = run([tool("oras"), "manifest", "fetch", "--plain-http", "--descriptor", ref], env).stdout
    assert json.loads(fetched)["digest"] == pushed.split("@")[1]


@pytest.fixture
def image(registry: str, env: dict[str, str], guests: Path, tmp_path: Path) -> tuple[str, str]:
    """A pushed artifact: (tag reference, digest reference)."""
    source = tmp_path / "hello.wasm"
    source.write_bytes((guests / "hello.wasm").read_bytes())
    ref = f"{registry}/team/signed:v1"
    pinned = run([WASM_SHIM, "push", str(source), ref], env).stdout.strip()
    return ref, pinned


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_cosign_signatures_verify_with_wasm_shim(image: tuple[str, str], env: dict[str, str], tmp_path: Path,
                                                  legacy: bool) -> None:
    ref, pinned = image
    run([tool("cosign"), "generate-key-pair"], env, cwd=tmp_path)
    cosign_sign(env, tmp_path / "cosign.key", pinned, legacy)
    verified = run([WASM_SHIM, "verify", "--key", str(tmp_path / "cosign.pub"), ref], env).stdout
    assert f"Verified {pinned}: {'legacy' if legacy else 'bundle'} signature" in verified
    # Their key file signs with our CLI too (scrypt + secretbox envelope read both ways).
    run([WASM_SHIM, "sign", "--key", str(tmp_path / "cosign.key"), "--format", "legacy" if legacy else "bundle",
         ref], env)
    # Another key: refused with the reason.
    other = tmp_path / "other"
    other.mkdir()
    run([WASM_SHIM, "generate-key-pair"], env, cwd=other)
    refused = run([WASM_SHIM, "verify", "--key", str(other / "cosign.pub"), ref], env, check=False)
    # cosign's statuses: 12 when only .sig signatures were there and none verified, 1 for a bundle's.
    assert refused.returncode == (12 if legacy else 1) and "made by another key" in refused.stderr


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_wasm_shim_signatures_verify_with_cosign(image: tuple[str, str], env: dict[str, str], tmp_path: Path,
                                                 legacy: bool) -> None:
    ref, pinned = image
    run([WASM_SHIM, "generate-key-pair"], env, cwd=tmp_path)
    unsigned = cosign_verify(env, tmp_path / "cosign.pub", ref, check=False)
    assert unsigned.returncode != 0
    run([WASM_SHIM, "sign", "--key", str(tmp_path / "cosign.key"), "--format", "legacy" if legacy else "bundle",
         pinned], env)
    verified = cosign_verify(env, tmp_path / "cosign.pub", ref)
    assert pinned.split("@")[1] in verified.stdout
    # Our key file signs with cosign (and cosign's signature verifies with both tools).
    cosign_sign(env, tmp_path / "cosign.key", pinned, legacy)
    cosign_verify(env, tmp_path / "cosign.pub", ref)
    run([WASM_SHIM, "verify", "--key", str(tmp_path / "cosign.pub"), ref], env)


def test_wrong_password_is_named(image: tuple[str, str], env: dict[str, str], tmp_path: Path) -> None:
    ref, _ = image
    run([tool("cosign"), "generate-key-pair"], env, cwd=tmp_path)
    failed = run([WASM_SHIM, "sign", "--key", str(tmp_path / "cosign.key"), ref],
                 {**env, "COSIGN_PASSWORD": "wrong"}, check=False)
    assert failed.returncode == 1 and "cosign.key: wrong password" in failed.stderr
