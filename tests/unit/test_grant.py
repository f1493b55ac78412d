"""The typed grant (shim/engines/grant.py): every annotation the shim reads, parsed once, with its defaults."""

from __future__ import annotations

import pytest

from wasm_shim.shim.engines.base import EngineError
from wasm_shim.shim.engines.grant import Grant, HttpSettings, parse_grant
from wasm_shim.shim.engines.network import NO_NETWORK


def test_no_annotations_grant_nothing() -> None:
    assert parse_grant({}) == Grant()
    assert Grant().network == NO_NETWORK and Grant().isolation is None and not Grant().sandbox


def test_every_field_from_its_annotation() -> None:
    grant = parse_grant({
        "wasm.shim.io/network": "tcp-listen=*:8080",
        "wasm.shim.io/component-isolation": " Thread ",
        "wasm.shim.io/http-listen": "[0::1]:81",
        "wasm.shim.io/http-request-timeout": "2.5s",
        "wasm.shim.io/http-max-body": "1Mi",
        "wasm.shim.io/artifact": "registry.example/team/app:v1",
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.image-name": "registry.example/team/app:v1",
        "unrelated": "ignored",
    })
    assert str(grant.network) == "tcp-listen=*:8080"
    assert grant.isolation == "thread"
    assert grant.http == HttpSettings(listen="[::1]:81", request_timeout=2.5, max_body=1 << 20)
    assert grant.artifact == grant.image_name == "registry.example/team/app:v1"
    assert grant.sandbox


@pytest.mark.parametrize(("annotations", "message"), [
    ({"wasm.shim.io/component-isolation": "vm"}, "wasm.shim.io/component-isolation='vm'"),
    ({"wasm.shim.io/network": "tcp-listen=*"}, "wasm.shim.io/network"),
    ({"wasm.shim.io/http-listen": "localhost:80"}, "wasm.shim.io/http-listen='localhost:80': expected IP:PORT"),
    ({"wasm.shim.io/http-max-body": "lots"}, "wasm.shim.io/http-max-body='lots'"),
])
def test_a_bad_value_is_refused_naming_its_annotation(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(EngineError) as caught:
        parse_grant(annotations)
    assert message in str(caught.value)
