"""Credentials from the docker config and WWW-Authenticate challenges (oci/auth.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from wasm_shim.oci.auth import AuthError, Credential, DockerCredentials, parse_challenge


def test_bearer_challenge_with_quoted_and_escaped_values() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                                'scope="repository:team/app:pull,push", error="insufficient_scope"')
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.example/token", "service": "registry.example",
                                "scope": "repository:team/app:pull,push", "error": "insufficient_scope"}
    assert parse_challenge('Basic realm="Registry Realm"').params == {"realm": "Registry Realm"}
    assert parse_challenge('bearer realm="a\\"b"').params["realm"] == 'a"b'
    assert parse_challenge("Basic").scheme == "basic"


def _config(tmp_path: Path, doc: object) -> DockerCredentials:
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return DockerCredentials.from_environment({"DOCKER_CONFIG": str(tmp_path)})


def test_auths_entries_by_host(tmp_path: Path) -> None:
    creds = _config(tmp_path, {"auths": {
        "127.0.0.1:5000": {"auth": base64.b64encode(b"alice:pa:ss").decode()},
        "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
        "https://ghcr.io": {"identitytoken": "refresh"},
    }})
    alice = creds.lookup("127.0.0.1:5000")
    assert alice is not None and (alice.username, alice.password) == ("alice", "pa:ss")
    assert "pa:ss" not in repr(alice)
    bob = creds.lookup("docker.io")
    assert bob is not None and bob.username == "bob"
    token = creds.lookup("ghcr.io")
    assert token is not None and token.identity_token == "refresh"
    assert creds.lookup("127.0.0.1:5001") is None


def test_missing_config_means_anonymous(tmp_path: Path) -> None:
    assert DockerCredentials.from_environment({"DOCKER_CONFIG": str(tmp_path / "none")}).lookup("x.io") is None


def test_malformed_config_and_auth_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(AuthError, match="config.json is not valid JSON"):
        DockerCredentials.from_environment({"DOCKER_CONFIG": str(tmp_path)})
    creds = _config(tmp_path, {"auths": {"r.io": {"auth": base64.b64encode(b"nocolon").decode()}}})
    with pytest.raises(AuthError, match="r.io: `auth` has no ':'"):
        creds.lookup("r.io")


def _helper(tmp_path: Path, name: str, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    program = bindir / f"docker-credential-{name}"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real helper program speaking the docker-credential-helpers protocol: server on stdin, JSON on stdout.
    _helper(tmp_path, "test", 'read server\n[ "$1" = get ] || exit 3\n'
            'if [ "$server" = "reg.example" ]; then\n'
            '  printf \'{"ServerURL":"%s","Username":"carol","Secret":"s3"}\' "$server"\n'
            'elif [ "$server" = "tok.example" ]; then\n'
            '  printf \'{"ServerURL":"%s","Username":"<token>","Secret":"rt"}\' "$server"\n'
            'else echo "credentials not found in native keychain"; exit 1; fi\n', monkeypatch)
    creds = _config(tmp_path, {"credHelpers": {"reg.example": "test"}, "credsStore": "test"})
    carol = creds.lookup("reg.example")
    assert carol is not None and (carol.username, carol.password) == ("carol", "s3")
    token = creds.lookup("tok.example")
    assert token is not None and token.identity_token == "rt" and not token.username
    assert creds.lookup("elsewhere.example") is None


def test_failing_or_missing_helper_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _helper(tmp_path, "broken", "echo boom >&2; exit 2\n", monkeypatch)
    creds = _config(tmp_path, {"credHelpers": {"r.io": "broken", "s.io": "absent"}})
    with pytest.raises(AuthError, match="docker-credential-broken failed for r.io .exit 2.: boom"):
        creds.lookup("r.io")
    with pytest.raises(AuthError, match="docker-credential-absent .* is not on PATH"):
        creds.lookup("s.io")


def test_store_and_erase_keep_the_rest_of_the_config(tmp_path: Path) -> None:
    import stat

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}}, "detachKeys": "ctrl-e"}))
    credentials = DockerCredentials.from_environment({"DOCKER_CONFIG": str(tmp_path)})
    assert credentials.store("Registry.Example:5000", Credential("u", "p")) == str(path)
    assert credentials.store("docker.io", Credential("", "", "refresh")) == str(path)
    saved = json.loads(path.read_text())
    assert saved["detachKeys"] == "ctrl-e" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved["auths"] == {"https://index.docker.io/v1/": {"identitytoken": "refresh"},
                              "Registry.Example:5000": {"auth": "dTpw"}}
    again = DockerCredentials.from_environment({"DOCKER_CONFIG": str(tmp_path)})
    assert again.lookup("Registry.Example:5000") == Credential("u", "p")
    assert again.erase("Registry.Example:5000") and not again.erase("Registry.Example:5000")
    assert set(json.loads(path.read_text())["auths"]) == {"https://index.docker.io/v1/"}


def test_store_names_a_missing_helper(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"r.example": "nosuchhelper"}}))
    credentials = DockerCredentials.from_environment({"DOCKER_CONFIG": str(tmp_path)})
    with pytest.raises(AuthError, match="credential helper docker-credential-nosuchhelper .* is not on PATH"):
        credentials.store("r.example", Credential("u", "p"))
