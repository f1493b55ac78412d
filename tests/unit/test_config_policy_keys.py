"""The shim options of the supply chain: `policy`, `artifact_dir`, `artifact_cache_mb` (shim/config.py)."""

from __future__ import annotations

import re

import pytest

from wasm_shim.shim.config import ConfigError, load_config


def _env(**values: str) -> dict[str, str]:
    return {"WASM_SHIM_CONFIG": "", **{f"WASM_SHIM_{k.upper()}": v for k, v in values.items()}}


def test_defaults_mean_no_policy_and_a_1_gib_artifact_cache() -> None:
    config = load_config(environ=_env())
    assert config.policy == ""
    assert config.artifact_dir == "/var/lib/wasm-shim/artifacts" and config.artifact_cache_mb == 1024


def test_values_from_options_and_environment() -> None:
    config = load_config(options_body='policy = "/etc/wasm-shim/policy.toml"\nartifact_cache_mb = 64\n',
                         environ=_env(artifact_dir="/srv/artifacts"))
    assert config.policy == "/etc/wasm-shim/policy.toml"
    assert config.artifact_cache_mb == 64 and config.artifact_dir == "/srv/artifacts"


@pytest.mark.parametrize("key, value, message", [
    ("policy", "policy.toml", "policy must be an absolute path"),
    ("artifact_dir", "artifacts", "artifact_dir must be an absolute path"),
    ("artifact_cache_mb", "0", "artifact_cache_mb must be a positive whole number"),
    ("artifact_cache_mb", "lots", "artifact_cache_mb must be a whole number"),
])
def test_bad_values_are_named(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=_env(**{key: value}))


def test_artifact_registries_default_to_none_and_come_as_a_list_or_a_comma_separated_string() -> None:
    assert load_config(environ=_env()).artifact_registries == ()  # the annotation is refused by default
    listed = load_config(options_body='artifact_registries = ["ghcr.io/team", "127.0.0.1:5000", "[::1]:5000"]\n',
                         environ=_env())
    assert listed.artifact_registries == ("ghcr.io/team", "127.0.0.1:5000", "[::1]:5000")
    # The installer's options file and the environment carry one string.
    joined = load_config(environ=_env(artifact_registries="ghcr.io/team, docker.io/bitnami/ ,"))
    assert joined.artifact_registries == ("ghcr.io/team", "docker.io/bitnami/")
    assert hash(joined) == hash(load_config(environ=_env(artifact_registries="ghcr.io/team,docker.io/bitnami/")))


@pytest.mark.parametrize("value, message", [
    ("https://ghcr.io/team", "entry 'https://ghcr.io/team': give HOST[:PORT] or HOST[:PORT]/PATH, without a scheme"),
    ("ghcr.io/team/*", "entry 'ghcr.io/team/*': a repository path is lower-case letters"),
    ("ghcr.io/team:v1", "entry 'ghcr.io/team:v1': a repository path"),
    ("ghcr", "entry 'ghcr': 'ghcr' is not a registry HOST[:PORT]"),
    ("registry:http", "entry 'registry:http': 'registry:http' is not a registry"),
    ("[::1", "entry '[::1': '[::1' is not a registry"),
])
def test_bad_artifact_registries_are_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"environment: artifact_registries {message}")):
        load_config(environ=_env(artifact_registries=value))
    with pytest.raises(ConfigError, match="artifact_registries must be a list of HOST"):
        load_config(options_body="artifact_registries = [1]\n", environ=_env())
