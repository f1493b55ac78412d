"""The pure parts of the grant and limit mapping (no guest runs here)."""

from __future__ import annotations

import pytest

from wasm_shim.shim.daemon.bundle import cpu_limit
from wasm_shim.shim.engines.base import EngineError
from wasm_shim.shim.engines.network import NETWORK_ANNOTATION, parse_network_grant


@pytest.mark.parametrize("annotations", [{}, {NETWORK_ANNOTATION: "none"}, {NETWORK_ANNOTATION: " None "},
                                         {"other": "x"}])
def test_no_network_is_the_default_and_none_is_accepted(annotations):
    grant = parse_network_grant(annotations)
    assert not grant.granted and grant.plan() == {"kind": "none"}


def test_pod_grants_everything_in_the_pod_namespace():
    grant = parse_network_grant({NETWORK_ANNOTATION: "Pod"})
    assert grant.granted and grant.plan() == {"kind": "pod"}


def test_rules_are_parsed_into_their_canonical_form():
    grant = parse_network_grant({NETWORK_ANNOTATION: "tcp-listen=*:8080, tcp-connect=10.0.0.0/8:5432\n"
                                                      "udp-send=[fd00::/8]:53 udp-bind=127.0.0.1:9000-9009,"})
    assert grant.kind == "rules"
    assert grant.plan()["rules"] == [
        {"use": "tcp-listen", "ip": None, "prefix": 0, "ports": [8080, 8080]},
        {"use": "tcp-connect", "ip": "10.0.0.0", "prefix": 8, "ports": [5432, 5432]},
        {"use": "udp-send", "ip": "fd00::", "prefix": 8, "ports": [53, 53]},
        {"use": "udp-bind", "ip": "127.0.0.1", "prefix": 32, "ports": [9000, 9009]},
    ]
    assert str(grant) == ("tcp-listen=*:8080, tcp-connect=10.0.0.0/8:5432, udp-send=[fd00::/8]:53, "
                          "udp-bind=127.0.0.1/32:9000-9009")


def test_any_port_and_duplicate_rules():
    grant = parse_network_grant({NETWORK_ANNOTATION: "tcp-connect=[::1]:*,tcp-connect=[::1]:*"})
    assert grant.plan()["rules"] == [{"use": "tcp-connect", "ip": "::1", "prefix": 128, "ports": [0, 65535]}]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("allow-all", "not VERB=ADDR:PORTS"),
        ("inherit", "not VERB=ADDR:PORTS"),
        ("tcp-accept=*:80", "unknown verb 'tcp-accept'"),
        ("tcp-connect=10.1.2.3/16:80", "has host bits set"),
        ("tcp-connect=::1:80", "not VERB=ADDR:PORTS"),
        ("tcp-connect=fd00::1:80", "not VERB=ADDR:PORTS"),
        ("tcp-connect=[10.0.0.1]:80", "IPv6 addresses go in brackets"),
        ("tcp-connect=example.com:80", "does not appear to be an IPv4 or IPv6 network"),
        ("tcp-listen=*:70000", "out of range"),
        ("tcp-listen=*:90-80", "reversed"),
        ("tcp-listen=*:http", "not a port or a range"),
        ("tcp-listen=*:80, pod", "'pod': not VERB=ADDR:PORTS"),
    ],
)
def test_bad_network_grants_are_refused_with_the_reason(value, reason):
    with pytest.raises(EngineError, match="wasm.shim.io/network") as caught:
        parse_network_grant({NETWORK_ANNOTATION: value})
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, None),
        ({"linux": {"resources": {"cpu": {"quota": 20000, "period": 100000}}}}, 0.2),
        ({"linux": {"resources": {"cpu": {"quota": 60000}}}}, 0.6),  # period defaults to 100 ms
        ({"linux": {"resources": {"cpu": {"quota": -1, "period": 100000}}}}, None),  # -1: unlimited
        ({"linux": {"resources": {"cpu": {"shares": 512}}}}, None),  # weights are not a cap
        ({"linux": {"resources": {"cpu": {"quota": 150000, "period": 100000}}}}, 1.5),
    ],
)
def test_cpu_limit_from_quota_and_period(spec, expected):
    assert cpu_limit(spec) == expected


def test_the_kubernetes_example_grant_parses():
    """K8s/examples/server-deployment.yaml shows a grant: it must be one the shim accepts."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "k8s/examples/server-deployment.yaml").read_text()
    (value,) = re.findall(r'^\s+wasm\.shim\.io/network: "([^"]+)"$', text, re.M)
    grant = parse_network_grant({NETWORK_ANNOTATION: value})
    assert [rule["use"] for rule in grant.plan()["rules"]] == ["tcp-listen", "tcp-connect"]
