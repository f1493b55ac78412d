"""References, digests, descriptors and streaming digest checks (oci/reference.py, oci/digest.py, oci/manifest.py)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasm_shim.oci.digest import DigestMismatch, StreamVerifier, new_sha256
from wasm_shim.oci.manifest import Descriptor, ManifestError, choose_manifest
from wasm_shim.oci.reference import (
    ReferenceError,
    canonical_name,
    canonical_registry,
    is_digest,
    is_registry,
    is_repository,
    is_tag,
    parse_reference,
)
from wasm_shim.oci.registry import fallback_tag, is_loopback

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("alpine", "docker.io", "library/alpine", "latest", ""),
    ("team/app:v1", "docker.io", "team/app", "v1", ""),
    ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", ""),
    ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", ""),
    ("localhost/app", "localhost", "app", "latest", ""),
    ("localhost:5000/a/b/c", "localhost:5000", "a/b/c", "latest", ""),
    ("ghcr.io/o/app@" + D, "ghcr.io", "o/app", "", D),
    ("ghcr.io/o/app:v2@" + D, "ghcr.io", "o/app", "v2", D),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", ""),
    ("Registry/x", "Registry", "x", "latest", ""),
    ("my_repo/a__b-c.d", "docker.io", "my_repo/a__b-c.d", "latest", ""),
])
def test_parse_reference(text: str, registry: str, repository: str, tag: str, digest: str) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.identifier == (digest or tag)


def test_reference_names_and_api_host() -> None:
    ref = parse_reference("busybox:1")
    assert ref.name == "docker.io/library/busybox"
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/busybox:1"
    local = parse_reference("127.0.0.1:5000/team/app:v1")
    assert local.api_host == "127.0.0.1:5000"
    assert str(local.with_digest(D)) == f"127.0.0.1:5000/team/app:v1@{D}"
    assert local.with_tag(fallback_tag(D)).tag == "sha256-" + "ab" * 32


@pytest.mark.parametrize("text, part", [
    ("", "empty"),
    ("Team/App", "repository"),
    ("a b", "whitespace"),
    ("reg.io/app:bad tag", "whitespace"),
    ("reg.io/app:-x", "tag"),
    ("reg.io/app@sha256:abc", "digest"),
    ("reg.io/app@md5:" + "a" * 32, "digest"),
    ("reg.io//app", "repository"),
    ("reg.io/app_", "repository"),
])
def test_bad_references_name_the_part(text: str, part: str) -> None:
    with pytest.raises(ReferenceError, match=part):
        parse_reference(text)


def test_bare_repository_has_no_tag_when_asked() -> None:
    assert parse_reference("reg.io/x", default_tag=False).tag == ""


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("[::1]")
    assert is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("registry.example")


def test_stream_verifier_accepts_exact_bytes() -> None:
    data = b"x" * 1000
    verifier = StreamVerifier("sha256:" + hashlib.sha256(data).hexdigest(), len(data), "blob")
    verifier.update(data[:10])
    verifier.update(data[10:])
    verifier.finish()


def test_stream_verifier_cuts_off_a_server_sending_more_than_the_size() -> None:
    data = b"x" * 100
    verifier = StreamVerifier("sha256:" + hashlib.sha256(data).hexdigest(), 50, "blob B")
    with pytest.raises(DigestMismatch, match="more than the 50 bytes"):
        verifier.update(data)


def test_stream_verifier_truncated_and_swapped() -> None:
    data = b"hello"
    truncated = StreamVerifier("sha256:" + hashlib.sha256(data).hexdigest(), 5, "blob B")
    truncated.update(b"hel")
    with pytest.raises(DigestMismatch, match="received 3 bytes.*truncated"):
        truncated.finish()
    swapped = StreamVerifier("sha256:" + hashlib.sha256(data).hexdigest(), 5, "blob B")
    swapped.update(b"HELLO")
    with pytest.raises(DigestMismatch, match="tampered"):
        swapped.finish()


def test_descriptor_parse_rejects_bad_fields() -> None:
    assert Descriptor.parse({"mediaType": "a", "digest": D, "size": 3}, "m").size == 3
    for bad in ({"mediaType": "a", "digest": D, "size": -1}, {"mediaType": "a", "digest": "sha256:x", "size": 1},
                {"digest": D, "size": 1}, {"mediaType": "a", "digest": D, "size": True}, "junk"):
        with pytest.raises(ManifestError, match="m"):
            Descriptor.parse(bad, "m")


def test_choose_manifest_prefers_the_wasm_platform() -> None:
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D, "size": 10}
    other = dict(entry, digest="sha256:" + "cd" * 32, platform={"os": "linux", "architecture": "amd64"})
    wasm = dict(entry, platform={"os": "wasip1", "architecture": "wasm"})
    assert choose_manifest({"manifests": [other, wasm]}, "i").digest == D  # type: ignore[union-attr]
    assert choose_manifest({"manifests": [other]}, "i").digest == other["digest"]  # type: ignore[union-attr]
    assert choose_manifest({"manifests": [other, dict(other, digest=D)]}, "i") is None


def test_choose_manifest_then_the_nodes_platform_never_a_guess() -> None:
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 10}
    amd64 = dict(entry, digest="sha256:" + "a1" * 32, platform={"os": "linux", "architecture": "amd64"})
    arm64 = dict(entry, digest="sha256:" + "a2" * 32, platform={"os": "linux", "architecture": "arm64"})
    index = {"manifests": [arm64, amd64]}
    assert choose_manifest(index, "i", ("linux", "amd64")).digest == amd64["digest"]  # type: ignore[union-attr]
    assert choose_manifest(index, "i", ("linux", "s390x")) is None  # several, none for this node: not guessed
    assert choose_manifest(index, "i") is None


NGINX_SPELLINGS = ["nginx", "library/nginx", "docker.io/nginx", "docker.io/library/nginx",
                   "index.docker.io/library/nginx", "index.docker.io/nginx", "registry-1.docker.io/library/nginx",
                   "Docker.IO/nginx", "INDEX.DOCKER.IO/library/nginx", "docker.io:443/nginx",
                   "registry-1.docker.io:443/library/nginx:1.27", "nginx@sha256:" + "ab" * 32]


@pytest.mark.parametrize("text", NGINX_SPELLINGS)
def test_every_spelling_of_docker_hubs_nginx_is_one_name(text: str) -> None:
    assert canonical_name(text) == "docker.io/library/nginx"
    ref = parse_reference(text)
    assert ref.canonical_name == "docker.io/library/nginx"
    assert ref.registry == "docker.io" and ref.api_host == "registry-1.docker.io"


@pytest.mark.parametrize("text", ["ghcr.io/team/app", "GHCR.IO/team/app", "Ghcr.Io:443/team/app:v1",
                                  "ghcr.io:443/team/app@sha256:" + "ab" * 32])
def test_host_case_and_the_https_default_port_make_no_difference(text: str) -> None:
    assert canonical_name(text) == "ghcr.io/team/app"


def test_other_ports_and_hosts_stay_apart_and_the_connection_keeps_what_was_written() -> None:
    assert canonical_name("ghcr.io:5000/team/app") == "ghcr.io:5000/team/app"
    assert canonical_name("127.0.0.1:443/team/app") == "127.0.0.1/team/app"
    assert canonical_name("[::1]:5000/x") == "[::1]:5000/x"
    ref = parse_reference("GHCR.IO:443/team/app")
    assert ref.registry == "GHCR.IO:443" and ref.api_host == "GHCR.IO:443"  # what the client connects to
    assert canonical_registry("Registry-1.Docker.IO:443") == "docker.io"
    assert canonical_name("not a name") == "not a name"


# -- the grammar without regular expressions: each rule against the expression it replaces ------------------------
_COMPONENT_RE = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
GRAMMAR = {
    "repository": (is_repository, re.compile(rf"{_COMPONENT_RE}(?:/{_COMPONENT_RE})*"), "abz09._-/A "),
    "tag": (is_tag, re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"), "aZ09_.-/:"),
    "digest": (is_digest, re.compile(r"sha256:[0-9a-f]{64}"), "sha256:0f9aF"),
    "registry": (is_registry, re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9]"
                                         r"(?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"),
                 "aZ09-.:[]f/"),
}
GRAMMAR_EXAMPLES = ["", "a", "a__b", "a___b", "a._b", "a--b", "-a", "a-", "a/b", "a//b", "/a", "A", "a" * 129,
                    "sha256:" + "ab" * 32, "sha256:" + "AB" * 32, "[::1]:5000", "[::1]:", "[]", "host:", ":5000",
                    "a.b-c.d:80", "a..b", "a.-b", "é", "١", "a\n"]


@pytest.mark.parametrize("rule", list(GRAMMAR))
def test_each_rule_accepts_exactly_what_its_regular_expression_does(rule: str) -> None:
    check, expression, alphabet = GRAMMAR[rule]

    @settings(max_examples=2000, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.text(alphabet, max_size=80) | st.sampled_from(GRAMMAR_EXAMPLES) | st.text(max_size=8))
    def agree(text: str) -> None:
        assert check(text) == bool(expression.fullmatch(text)), text

    agree()


@pytest.mark.parametrize("size", [None, 0, 100, (1 << 20) - 1, 1 << 20, 30 << 20])
def test_every_sha256_is_sha256(size: int | None) -> None:
    data = bytes(range(256)) * 41
    hasher = new_sha256(size)
    hasher.update(data)
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
