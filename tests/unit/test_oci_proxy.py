"""Which proxy a registry request takes (oci/proxy.py): Go's HTTPS_PROXY / HTTP_PROXY / NO_PROXY rules."""

from __future__ import annotations

import pytest

from wasm_shim.oci.proxy import ProxySettings, excluded


@pytest.mark.parametrize("no_proxy, host, port, expected", [
    ("registry.internal", "registry.internal", 443, True),
    ("registry.internal", "r.registry.internal", 443, True),
    ("registry.internal", "evilregistry.internal", 443, False),
    (".example.com", "example.com", 443, False),
    (".example.com", "r.example.com", 443, True),
    ("*.example.com", "r.example.com", 443, True),
    ("10.0.0.0/8", "10.1.2.3", 5000, True),
    ("10.0.0.0/8", "11.1.2.3", 5000, False),
    ("10.1.2.3", "10.1.2.3", 5000, True),
    ("10.1.2.3:5000", "10.1.2.3", 5000, True),
    ("10.1.2.3:5000", "10.1.2.3", 443, False),
    ("registry.internal:5000", "registry.internal", 5000, True),
    ("registry.internal:5000", "registry.internal", 443, False),
    ("[fd00::1]:443, fd00::/8", "fd00::2", 5000, True),
    ("other, *", "anything.example", 443, True),
    (" , ", "anything.example", 443, False),
])
def test_no_proxy_grammar(no_proxy: str, host: str, port: int, expected: bool) -> None:
    assert excluded(no_proxy, host, port) is expected


def test_the_proxy_for_each_scheme_upper_case_first_and_explicit_values_win() -> None:
    env = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "http_proxy": "proxy:8080",
           "NO_PROXY": "skip.example"}
    settings = ProxySettings.from_environment(env)
    assert settings.proxy_for("https://r.example/v2/") == "http://upper:3128"
    assert settings.proxy_for("http://r.example/v2/") == "http://proxy:8080"  # a bare host:port is http://
    assert settings.proxy_for("https://skip.example/v2/") == ""
    assert settings.proxy_for("https://localhost:5000/v2/") == "" and settings.proxy_for("https://127.0.0.1/") == ""
    assert settings.proxy_for("https://[::1]:5000/v2/") == ""
    explicit = ProxySettings.from_environment(env, https_proxy="http://node:3128", no_proxy="other.example")
    assert explicit.proxy_for("https://skip.example/") == "http://node:3128"
    assert ProxySettings.from_environment({}).proxy_for("https://r.example/") == ""
