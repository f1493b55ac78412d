"""Attestations: `wasm-shim attest` / `verify-attestation` against the real `cosign attest` / `verify-attestation`
(3.1), both ways, in both cosign storage formats, on both loopback registries (with and without the referrers API).

cosign runs offline (`--tlog-upload=false --use-signing-config=false` to attest, `--insecure-ignore-tlog=true` to
verify). Covered: SLSA v1 provenance made by cosign verifies with ours (and its conditions are checked); ours
verifies with cosign; another key, another predicate type and a failing condition are refused with the reason;
`--format json` output parses; an attestation does not pass `wasm-shim verify` as a signature (cosign 3.1's
`verify` does accept a bundle-format attestation as one; ours requires the signature's own predicate type).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.registries import tool
from tests.integration.test_cosign_oras import (  # noqa: F401  (fixtures)
    WASM_SHIM,
    env,
    image,
    registry,
    run,
)

pytestmark = pytest.mark.integration

BUILDER = "https://ci.example/builders/wasm@v1"
PROVENANCE = {"buildDefinition": {"buildType": "https://ci.example/wasm-build/v1",
                                  "externalParameters": {"source": "git+https://example.com/app@refs/tags/v1"}},
              "runDetails": {"builder": {"id": BUILDER}}}


def _cosign_attest(env: dict[str, str], key: Path, ref: str, predicate: Path, legacy: bool) -> None:  # noqa: F811
    argv = [tool("cosign"), "attest", "--key", str(key), "--type", "slsaprovenance1", "--predicate", str(predicate),
            "--tlog-upload=false", "--use-signing-config=false", "--allow-http-registry", "-y", ref]
    if legacy:
        argv.insert(2, "--new-bundle-format=false")
    run(argv, env)


def _cosign_verify_attestation(env: dict[str, str], key: Path, ref: str,  # noqa: F811
                               check: bool = True) -> tuple[int, str, str]:
    done = run([tool("cosign"), "verify-attestation", "--key", str(key), "--type", "slsaprovenance1",
                "--insecure-ignore-tlog=true", "--allow-http-registry", ref], env, check=check)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def provenance(tmp_path: Path) -> Path:
    path = tmp_path / "provenance.json"
    path.write_text(json.dumps(PROVENANCE))
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_cosign_attestations_verify_with_wasm_shim(image: tuple[str, str], env: dict[str, str],  # noqa: F811
                                                   tmp_path: Path, provenance: Path, legacy: bool) -> None:
    ref, pinned = image
    run([tool("cosign"), "generate-key-pair"], env, cwd=tmp_path)
    _cosign_attest(env, tmp_path / "cosign.key", pinned, provenance, legacy)
    pub = str(tmp_path / "cosign.pub")
    verified = run([WASM_SHIM, "verify-attestation", "--key", pub, "--type", "slsaprovenance1",
                    "--condition", f"runDetails.builder.id={BUILDER}", ref], env).stdout
    kind = "legacy" if legacy else "bundle"
    assert f"Verified {pinned}: {kind} attestation https://slsa.dev/provenance/v1 by key" in verified
    doc = json.loads(run([WASM_SHIM, "verify-attestation", "--key", pub, "--type", "https://slsa.dev/provenance/v1",
                          "--format", "json", ref], env).stdout)
    assert doc["digest"] == pinned.split("@")[1] and doc["predicateType"] == "https://slsa.dev/provenance/v1"
    [attestation] = doc["attestations"]
    assert attestation["format"] == kind and attestation["statement"]["predicate"] == PROVENANCE
    assert attestation["statement"]["subject"][0]["digest"]["sha256"] == pinned.split("@sha256:")[1]
    # A failing condition, another predicate type, another key: exit 1 with the reason.
    failed = run([WASM_SHIM, "verify-attestation", "--key", pub, "--type", "slsaprovenance1", "--condition",
                  "runDetails.builder.id=https://evil.example/builder", ref], env, check=False)
    assert failed.returncode == 1
    assert (f'the predicate\'s runDetails.builder.id is "{BUILDER}", the rule requires '
            '"https://evil.example/builder"') in failed.stderr
    other_type = run([WASM_SHIM, "verify-attestation", "--key", pub, "--type", "cyclonedx", ref], env, check=False)
    assert other_type.returncode == 1 and "found attestations of predicate type https://slsa.dev/provenance/v1" \
        in other_type.stderr
    other = tmp_path / "other"
    other.mkdir()
    run([WASM_SHIM, "generate-key-pair"], env, cwd=other)
    refused = run([WASM_SHIM, "verify-attestation", "--key", str(other / "cosign.pub"), "--type", "slsaprovenance1",
                   ref], env, check=False)
    assert refused.returncode == 1 and "made by another key" in refused.stderr
    # An attestation is not a signature: `verify` finds none.
    unsigned = run([WASM_SHIM, "verify", "--key", pub, ref], env, check=False)
    assert unsigned.returncode == 10 and "no signature found" in unsigned.stderr  # cosign's status for none


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_wasm_shim_attestations_verify_with_cosign(image: tuple[str, str], env: dict[str, str],  # noqa: F811
                                                   tmp_path: Path, provenance: Path, legacy: bool) -> None:
    ref, pinned = image
    run([WASM_SHIM, "generate-key-pair"], env, cwd=tmp_path)
    key, pub = tmp_path / "cosign.key", tmp_path / "cosign.pub"
    assert _cosign_verify_attestation(env, pub, ref, check=False)[0] != 0
    argv = [WASM_SHIM, "attest", "--key", str(key), "--type", "slsaprovenance1", "--predicate", str(provenance), ref]
    if legacy:
        argv.insert(2, "--new-bundle-format=false")
    attested = run(argv, env)
    assert f"Attested {pinned}: https://slsa.dev/provenance/v1" in attested.stderr
    _, out, _ = _cosign_verify_attestation(env, pub, ref)
    envelope = json.loads(out.strip().splitlines()[-1])
    import base64

    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicate"] == PROVENANCE and statement["predicateType"] == "https://slsa.dev/provenance/v1"


def test_attest_refuses_bad_input_with_the_reason(image: tuple[str, str], env: dict[str, str],  # noqa: F811
                                                  tmp_path: Path) -> None:
    ref, _ = image
    run([WASM_SHIM, "generate-key-pair"], env, cwd=tmp_path)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text('{"buildDefinition": {}}')
    for argv, message in (
            (["--type", "slsaprovenance1", "--predicate", str(incomplete)], "lacks runDetails"),
            (["--type", "slsa", "--predicate", str(incomplete)], "--type: unknown predicate type 'slsa'"),
            (["--type", "slsaprovenance1", "--predicate", str(tmp_path / "nope.json")], "cannot read predicate")):
        failed = run([WASM_SHIM, "attest", "--key", str(tmp_path / "cosign.key"), *argv, ref], env, check=False)
        assert failed.returncode == 1 and message in failed.stderr, failed.stderr
