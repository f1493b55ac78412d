"""The registries a pod may name (oci/allowlist.py): entries, canonical comparison, refusals naming the list."""

from __future__ import annotations

import re

import pytest

from wasm_shim.oci.allowlist import AllowListError, RegistryAllowList, parse_source, source_refusal
from wasm_shim.oci.reference import parse_reference

ENTRIES = ["ghcr.io/team", "127.0.0.1:5000", "docker.io/nginx", "docker.io/bitnami/", "registry.example:8443/a/b"]


@pytest.mark.parametrize("reference", [
    "ghcr.io/team/app:v1",
    "ghcr.io/team:v1",  # the prefix itself
    "ghcr.io/team/deep/er/app@sha256:" + "ab" * 32,
    "GHCR.IO/team/app:v1",  # host case
    "ghcr.io:443/team/app",  # the HTTPS default port
    "Ghcr.Io:443/team/app",
    "127.0.0.1:5000/anything/at/all:v1",
    "nginx:1.27",  # docker.io's short form of docker.io/library/nginx
    "library/nginx",
    "docker.io/nginx",
    "index.docker.io/library/nginx",
    "registry-1.docker.io/library/nginx",
    "Docker.IO:443/library/nginx",
    "bitnami/redis",  # docker.io/bitnami/ is a namespace
    "docker.io/bitnami/redis:7",
    "registry.example:8443/a/b/c",
])
def test_allowed_spellings(reference: str) -> None:
    assert RegistryAllowList.parse(ENTRIES).refusal(parse_reference(reference)) is None


@pytest.mark.parametrize("reference", [
    "ghcr.io/teamster/app",  # a prefix is matched per path component
    "ghcr.io/other/app",
    "127.0.0.1:5001/team/app",  # another port is another registry
    "localhost:5000/team/app",  # another host, even if it resolves to the same address
    "127.0.0.1/team/app",
    "redis",  # docker.io/library/redis
    "nginx/nginx",  # docker.io/nginx/nginx: the entry docker.io/nginx is docker.io/library/nginx
    "docker.io/library/bitnami",  # docker.io/bitnami/ is the namespace, not library/bitnami
    "registry.example:8443/a/bc",
    "registry.example/a/b",  # the port is part of the registry
    "evil.example/ghcr.io/team/app",
])
def test_refused_references_name_the_reference_and_the_list(reference: str) -> None:
    refusal = RegistryAllowList.parse(ENTRIES).refusal(parse_reference(reference))
    assert refusal is not None
    assert refusal.startswith(f"{parse_reference(reference)} is not fetched: ")
    assert f"(artifact_registries: {', '.join(ENTRIES)})" in refusal


def test_an_empty_list_refuses_everything_and_says_so() -> None:
    refusal = source_refusal(parse_reference("ghcr.io/team/app:v1"), [])
    assert refusal == ("ghcr.io/team/app:v1 is not fetched: this node allows pods to name no registry (the shim "
                       "option artifact_registries is empty)")


@pytest.mark.parametrize("entry, message", [
    ("https://ghcr.io", "without a scheme"),
    ("ghcr.io/*", "no wildcards, tags or digests"),
    ("ghcr.io/app@sha256:" + "ab" * 32, "no wildcards, tags or digests"),
    ("ghcr.io/app:v1", "no tags"),
    ("ghcr", "'ghcr' is not a registry host"),
    ("team/app", "'team' is not a registry host"),
    ("ghcr.io/Team", "repository 'Team' is not valid"),
    ("ghcr.io:http", "registry 'ghcr.io:http' is not a valid host"),
    ("ghcr.io /team", "empty or contains whitespace"),
    ("", "empty or contains whitespace"),
])
def test_bad_entries_are_errors_naming_them(entry: str, message: str) -> None:
    expected = f"artifact_registries entry {re.escape(repr(entry))}.*{re.escape(message)}"
    with pytest.raises(AllowListError, match=expected):
        parse_source(entry)
    # Through the check the shim makes: a broken list refuses (never allows more than a correct one would).
    refusal = source_refusal(parse_reference("ghcr.io/team/app"), ["ghcr.io", entry])
    assert refusal is not None and "is not fetched: artifact_registries entry" in refusal


def test_entries_in_canonical_form() -> None:
    assert parse_source("GHCR.io:443/team").registry == "ghcr.io"
    assert parse_source("index.docker.io/nginx").path == "library/nginx"
    assert parse_source("docker.io/bitnami/").path == "bitnami"
    assert parse_source("[::1]:5000").registry == "[::1]:5000"
