"""Serving ``wasi:http/proxy`` components: which components are served, and the serve plan the runner is given.

Owns the decision "run or serve" (``component_role``: a component exporting ``wasi:cli/run@0.2.x`` runs, one
exporting ``wasi:http/incoming-handler@0.2.x`` is served; neither or both is refused at Create, with the reason)
and the ``serve`` part of the runner plan (``ServePlan``, read by ``Serve`` in runner/src/http.rs) from the
guest's environment and annotations (docs/annotations.md). Pure: no I/O besides what ``serve_network`` checks.

Where it listens: ``wasm.shim.io/http-listen``, else the guest's ``WASMTIME_HTTP_PROXY_SOCKET_ADDR`` (what runwasi's
wasmtime shim reads, so existing manifests keep working), else ``0.0.0.0:8080`` — always inside the pod's network
namespace, which a served component must therefore have (``serve_network``). Listening needs no network grant:
the grant (``wasm.shim.io/network``) governs the guest's own sockets and its outgoing HTTP requests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..base import EngineError, GuestSpec
from ..grant import HttpSettings, parse_listen
from ..network import pod_network_namespace

RUN_EXPORT = re.compile(r"^wasi:cli/run@0\.2\.\d+$")
HTTP_EXPORT = re.compile(r"^wasi:http/incoming-handler@0\.2\.\d+$")

PROXY_ADDR_ENV = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"  # runwasi's wasmtime shim reads the same variable

DEFAULT_LISTEN = "0.0.0.0:8080"  # runwasi's and `wasmtime serve`'s default
DRAIN_TIMEOUT = 30.0  # seconds to finish requests in flight after SIGTERM (Kubernetes' default grace period)
MAX_CONCURRENCY = 64  # requests served at once per container (each is an instance; the pool is sized for it)



@dataclass(frozen=True)
class ServePlan:
    """How the runner serves one component (all of it goes to the runner)."""

    addr: str  # "IP:PORT", IPv6 in brackets
    request_timeout: float  # seconds
    max_body: int  # bytes
    drain_timeout: float = DRAIN_TIMEOUT
    max_concurrency: int = MAX_CONCURRENCY

    def plan(self) -> dict[str, Any]:
        """The ``serve`` object of the runner plan (``Serve`` in runner/src/http.rs)."""
        return {
            "addr": self.addr,
            "request_timeout_ms": round(self.request_timeout * 1000),
            "max_body_bytes": self.max_body,
            "drain_timeout_ms": round(self.drain_timeout * 1000),
            "max_concurrency": self.max_concurrency,
        }


def component_role(exports: Sequence[str], export: str | None, name: str) -> str:
    """"run" for a wasi:cli command, "serve" for a wasi:http/proxy component; EngineError for anything else.

    ``export`` is the entrypoint's ``#export`` selector, if any: it may only name the role's interface.
    """
    listing = ", ".join(exports) or "none"
    runs = [e for e in exports if RUN_EXPORT.match(e)]
    serves = [e for e in exports if HTTP_EXPORT.match(e)]
    if runs and serves:
        raise EngineError(
            f"{name} exports both wasi:cli/run ({runs[0]}) and wasi:http/incoming-handler ({serves[0]}): it is "
            "ambiguous whether to run it as a command or serve it over HTTP; build it for one world"
        )
    if not runs and not serves:
        raise EngineError(
            f"{name} is a component that exports neither wasi:cli/run@0.2.x (a command) nor "
            f"wasi:http/incoming-handler@0.2.x (an HTTP handler) (exports: {listing}); nothing to start"
        )
    role, interfaces, short = ("run", runs, "wasi:cli/run") if runs else ("serve", serves,
                                                                         "wasi:http/incoming-handler")
    if export is not None:
        selector = export.removesuffix("#run").removesuffix("#handle")
        if selector not in (short, short.rsplit("/", 1)[1], *interfaces):
            raise EngineError(f"{name}: this component can only be started through {short}, not {export!r} "
                              f"(exports: {listing})")
    return role


def serve_plan(http: HttpSettings, env: Sequence[tuple[str, str]]) -> ServePlan:
    """The serve plan from the grant's http settings and the guest's environment; EngineError naming a bad value."""
    listen = http.listen
    if listen is None:
        from_env = [value for key, value in env if key == PROXY_ADDR_ENV]
        listen = parse_listen(from_env[-1].strip(), f"environment variable {PROXY_ADDR_ENV}") if from_env \
            else DEFAULT_LISTEN
    return ServePlan(addr=listen, request_timeout=http.request_timeout, max_body=http.max_body)


def serve_network(spec: GuestSpec) -> str:
    """The pod's network namespace a served component listens in; EngineError when there is none."""
    return pod_network_namespace(spec.network_namespace, "a wasi:http/incoming-handler component",
                                 "it is served inside the pod's network namespace")
