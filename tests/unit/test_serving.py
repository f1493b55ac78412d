"""The serve decision and plan (shim/engines/wasmtime/serving.py): which components are served, and how."""

from __future__ import annotations

import pytest

from wasm_shim.shim.engines.base import EngineError
from wasm_shim.shim.engines.grant import (
    DEFAULT_MAX_BODY,
    DEFAULT_REQUEST_TIMEOUT,
    LISTEN_ANNOTATION,
    MAX_BODY_ANNOTATION,
    TIMEOUT_ANNOTATION,
    parse_grant,
)
from wasm_shim.shim.engines.wasmtime.serving import PROXY_ADDR_ENV, component_role
from wasm_shim.shim.engines.wasmtime.serving import serve_plan as plan_from_grant


def serve_plan(annotations: dict[str, str], env: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """The annotations parsed into the grant (as bundle.py does at Create), then the serve plan built from it."""
    return plan_from_grant(parse_grant(annotations).http, env)

RUN = "wasi:cli/run@0.2.3"
HANDLER = "wasi:http/incoming-handler@0.2.12"


def test_role_follows_the_exported_interface():
    assert component_role([RUN, "greet"], None, "app") == "run"
    assert component_role([HANDLER], None, "app") == "serve"
    assert component_role([HANDLER], "wasi:http/incoming-handler", "app") == "serve"
    assert component_role([RUN], "wasi:cli/run#run", "app") == "run"


@pytest.mark.parametrize(("exports", "export", "message"), [
    ([RUN, HANDLER], None, "exports both wasi:cli/run (wasi:cli/run@0.2.3) and wasi:http/incoming-handler"),
    (["greet"], None, "exports neither wasi:cli/run@0.2.x (a command) nor wasi:http/incoming-handler@0.2.x"),
    ([], None, "(exports: none)"),
    (["wasi:http/incoming-handler@0.3.0"], None, "exports neither"),
    ([HANDLER], "wasi:cli/run", "can only be started through wasi:http/incoming-handler, not 'wasi:cli/run'"),
])
def test_role_refusals_say_why(exports, export, message):
    with pytest.raises(EngineError, match="app") as caught:
        component_role(exports, export, "app")
    assert message in str(caught.value)


def test_listen_address_annotation_then_env_then_default():
    assert serve_plan({}, []).addr == "0.0.0.0:8080"
    assert serve_plan({}, [(PROXY_ADDR_ENV, "127.0.0.1:9000")]).addr == "127.0.0.1:9000"
    assert serve_plan({LISTEN_ANNOTATION: "[::]:80"}, [(PROXY_ADDR_ENV, "127.0.0.1:9000")]).addr == "[::]:80"
    assert serve_plan({LISTEN_ANNOTATION: "[0::1]:80"}, []).addr == "[::1]:80"


@pytest.mark.parametrize(("annotations", "env", "message"), [
    ({LISTEN_ANNOTATION: "localhost:80"}, [], "expected IP:PORT"),
    ({LISTEN_ANNOTATION: "0.0.0.0:0"}, [], "port 0 is out of range"),
    ({LISTEN_ANNOTATION: "::1:80"}, [], "expected IP:PORT"),
    ({LISTEN_ANNOTATION: "[10.0.0.1]:80"}, [], "an IPv6 address goes in brackets"),
    ({}, [(PROXY_ADDR_ENV, "300.1.1.1:80")], f"environment variable {PROXY_ADDR_ENV}='300.1.1.1:80'"),
    ({TIMEOUT_ANNOTATION: "0"}, [], TIMEOUT_ANNOTATION),
    ({TIMEOUT_ANNOTATION: "soon"}, [], "expected seconds"),
    ({MAX_BODY_ANNOTATION: "1MB"}, [], "expected bytes, optionally with Ki, Mi or Gi"),
])
def test_bad_serve_settings_are_refused_with_their_source(annotations, env, message):
    with pytest.raises(EngineError) as caught:
        serve_plan(annotations, env)
    assert message in str(caught.value)


def test_plan_for_the_runner():
    plan = serve_plan({TIMEOUT_ANNOTATION: "2.5s", MAX_BODY_ANNOTATION: "16Mi"}, []).plan()
    assert plan == {"addr": "0.0.0.0:8080", "request_timeout_ms": 2500, "max_body_bytes": 16 << 20,
                    "drain_timeout_ms": 30000, "max_concurrency": 64}
    defaults = serve_plan({}, []).plan()
    assert defaults["request_timeout_ms"] == DEFAULT_REQUEST_TIMEOUT * 1000
    assert defaults["max_body_bytes"] == DEFAULT_MAX_BODY
