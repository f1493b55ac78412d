"""Issue 3: the pure parts of the grant and limit mapping (no guest runs here)."""

from __future__ import annotations

import pytest

from wasm_shim.shim.bundle import cpu_limit
from wasm_shim.shim.engines.base import EngineError
from wasm_shim.shim.engines.wasmtime_engine import NETWORK_ANNOTATION, check_network_grant


@pytest.mark.parametrize("annotations", [{}, {NETWORK_ANNOTATION: "none"}, {NETWORK_ANNOTATION: " None "},
                                         {"other": "x"}])
def test_no_network_is_the_default_and_none_is_accepted(annotations):
    check_network_grant(annotations)


@pytest.mark.parametrize("value", ["tcp-connect=127.0.0.1:*", "allow-all", "inherit"])
def test_network_grants_are_refused_with_the_reason(value):
    with pytest.raises(EngineError, match="wasm.shim.io/network.*not supported"):
        check_network_grant({NETWORK_ANNOTATION: value})


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
