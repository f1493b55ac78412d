"""`wasm-shim` for hands that know oras and cosign: their flag names, `--format json` output that scripts parse,
`--version`, and cosign's exit statuses for `verify`; checked side by side with the real oras 1.3 and cosign 3.1
on loopback registries (with and without the referrers API), and in a linked network namespace for `--plain-http`
(a loopback registry needs no flag at all).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import linked_namespace
from lab.registries import DockerRegistry, make_tls, tool
from tests.integration.test_cosign_oras import (  # noqa: F401  (fixtures)
    WASM_SHIM,
    cosign_verify,
    env,
    registry,
    run,
)

pytestmark = pytest.mark.integration


def _artifact_dir(tmp_path: Path, guests: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "hello.wasm").write_bytes((guests / "hello.wasm").read_bytes())
    (work / "config.json").write_text(json.dumps({"architecture": "wasm", "os": "wasip1"}))
    return work


def test_json_output_parses_and_has_oras_shapes(registry: str, env: dict[str, str], guests: Path,  # noqa: F811
                                               tmp_path: Path) -> None:
    work = _artifact_dir(tmp_path, guests)
    ours = json.loads(run([WASM_SHIM, "push", "--format", "json", str(work / "hello.wasm"),
                           f"{registry}/team/ours:v1"], env).stdout)
    theirs = json.loads(run([tool("oras"), "push", "--plain-http", "--format", "json", f"{registry}/team/theirs:v1",
                             "--config", "config.json:application/vnd.wasm.config.v0+json",
                             "hello.wasm:application/wasm"], env, cwd=work).stdout)
    assert set(ours) == set(theirs)
    assert ours["reference"] == f"{registry}/team/ours@{ours['digest']}"
    assert ours["referenceAsTags"] == [f"{registry}/team/ours:v1"]
    assert ours["artifactType"] == "application/vnd.wasm.config.v0+json"
    fetched = json.loads(run([tool("oras"), "manifest", "fetch", "--plain-http", "--descriptor",
                              f"{registry}/team/ours:v1"], env).stdout)
    assert (fetched["digest"], fetched["size"]) == (ours["digest"], ours["size"])

    pulled = json.loads(run([WASM_SHIM, "pull", "--format", "json", f"{registry}/team/theirs:v1", "-o",
                             str(tmp_path / "app.wasm")], env).stdout)
    oras_pulled = json.loads(run([tool("oras"), "pull", "--plain-http", "--format", "json",
                                  f"{registry}/team/theirs:v1", "-o", str(tmp_path / "oras")], env).stdout)
    assert set(pulled) == set(oras_pulled) and set(pulled["files"][0]) == set(oras_pulled["files"][0])
    assert pulled["reference"] == oras_pulled["reference"]
    assert pulled["files"][0]["digest"] == oras_pulled["files"][0]["digest"]
    assert pulled["files"][0]["path"] == str(tmp_path / "app.wasm")

    tags = json.loads(run([WASM_SHIM, "tags", "--format", "json", f"{registry}/team/ours"], env).stdout)
    assert tags == json.loads(run([tool("oras"), "repo", "tags", "--plain-http", "--format", "json",
                                   f"{registry}/team/ours"], env).stdout) == {"tags": ["v1"]}

    run([WASM_SHIM, "generate-key-pair"], env, cwd=tmp_path)
    signed = json.loads(run([WASM_SHIM, "sign", "--key", str(tmp_path / "cosign.key"), "--format", "json",
                             f"{registry}/team/ours:v1"], env).stdout)
    assert signed == {"reference": ours["reference"], "digest": ours["digest"], "signatureFormat": "bundle"}
    verified = json.loads(run([WASM_SHIM, "verify", "--key", str(tmp_path / "cosign.pub"), "--format", "json",
                               f"{registry}/team/ours:v1"], env).stdout)
    assert verified["digest"] == ours["digest"] and verified["signatures"][0]["format"] == "bundle"


def test_verify_exits_as_cosign_does(registry: str, env: dict[str, str], guests: Path,  # noqa: F811
                                     tmp_path: Path) -> None:
    pushed = run([WASM_SHIM, "push", str(guests / "hello.wasm"), f"{registry}/team/app:v1"], env).stdout.strip()
    run([tool("cosign"), "generate-key-pair"], env, cwd=tmp_path)
    pub = tmp_path / "cosign.pub"
    cases = {"unsigned": (pushed, 10), "no such tag": (f"{registry}/team/app:nope", 11)}
    for what, (ref, status) in cases.items():
        ours = run([WASM_SHIM, "verify", "--key", str(pub), ref], env, check=False)
        theirs = cosign_verify(env, pub, ref, check=False)
        assert ours.returncode == theirs.returncode == status, (what, ours.stderr, theirs.stderr)
    other = tmp_path / "other"
    other.mkdir()
    run([WASM_SHIM, "generate-key-pair"], env, cwd=other)
    run([WASM_SHIM, "sign", "--key", str(other / "cosign.key"), "--new-bundle-format=false", pushed], env)
    ours = run([WASM_SHIM, "verify", "--key", str(pub), pushed], env, check=False)
    theirs = cosign_verify(env, pub, pushed, check=False)
    assert ours.returncode == theirs.returncode == 12 and "made by another key" in ours.stderr
    run([WASM_SHIM, "sign", "--key", str(other / "cosign.key"), pushed], env)  # a bundle too: cosign says 1 then
    ours = run([WASM_SHIM, "verify", "--key", str(pub), pushed], env, check=False)
    theirs = cosign_verify(env, pub, pushed, check=False)
    assert ours.returncode == theirs.returncode == 1, (ours.stderr, theirs.stderr)
    assert run([WASM_SHIM, "verify", "--key", str(other / "cosign.pub"), pushed], env).returncode == 0
    # The signature formats by every name: ours, cosign's, and sign's older --format.
    for flags, kind in ((["--signature-format", "legacy"], "legacy"), (["--new-bundle-format=true"], "bundle"),
                        (["--format", "legacy"], "legacy")):
        done = run([WASM_SHIM, "sign", "--key", str(other / "cosign.key"), *flags, pushed], env)
        assert f"({kind} format)" in done.stderr


def test_version_and_usage(env: dict[str, str]) -> None:  # noqa: F811
    version = run([WASM_SHIM, "--version"], env).stdout
    from wasm_shim.shim.node.containerd_config import RUNTIME_TYPE

    assert version == run([WASM_SHIM, "version"], env).stdout and version.startswith("wasm-shim ")
    assert f"(runtime {RUNTIME_TYPE})" in version
    bad = run([WASM_SHIM, "pull", "--format", "yaml", "r/x:v1", "-o", "x"], env, check=False)
    assert bad.returncode == 2 and "invalid choice: 'yaml'" in bad.stderr


@pytest.fixture
def remote_plain(tmp_path: Path) -> Iterator[str]:
    with linked_namespace("wshcli") as namespace:
        instance = DockerRegistry(tmp_path / "registry", host=namespace.peer_ip, netns=namespace.name).start()
        try:
            yield instance.address
        finally:
            instance.stop()


def test_oras_flag_names_reach_a_plain_http_and_a_private_ca_registry(
        remote_plain: str, env: dict[str, str], guests: Path, tmp_path: Path) -> None:  # noqa: F811
    ref = f"{remote_plain}/team/app:v1"
    refused = run([WASM_SHIM, "push", "--timeout", "5", str(guests / "hello.wasm"), ref], env, check=False)
    assert refused.returncode == 1  # not loopback: plain HTTP must be asked for
    for flags in (["--plain-http"], ["--insecure-registry", remote_plain]):
        run([WASM_SHIM, "push", *flags, str(guests / "hello.wasm"), ref], env)
        run([WASM_SHIM, "pull", *flags, ref, "-o", str(tmp_path / "app.wasm")], env)
    run([tool("oras"), "pull", "--plain-http", ref, "-o", str(tmp_path / "oras")], env)
    tls_registry = DockerRegistry(tmp_path / "tls-registry", tls=make_tls(tmp_path / "tls")).start()
    try:
        assert tls_registry.tls is not None
        tls_ref = f"{tls_registry.address}/team/app:v1"
        for flag in ("--ca-file", "--ca-bundle"):
            run([WASM_SHIM, "push", flag, str(tls_registry.tls.ca_pem), str(guests / "hello.wasm"), tls_ref], env)
        config = tmp_path / "elsewhere.json"
        config.write_text(json.dumps({"auths": {}}))
        run([WASM_SHIM, "tags", "--registry-config", str(config), "--ca-file", str(tls_registry.tls.ca_pem),
             f"{tls_registry.address}/team/app"], {k: v for k, v in env.items() if k != "DOCKER_CONFIG"})
        assert os.path.exists(config)
    finally:
        tls_registry.stop()
