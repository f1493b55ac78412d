"""The shim options of the supply chain: `policy`, `artifact_dir`, `artifact_cache_mb` (shim/config.py)."""

from __future__ import annotations

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
