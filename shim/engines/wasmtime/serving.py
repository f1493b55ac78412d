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

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..base import EngineError, GuestSpec

RUN_EXPORT = re.compile(r"^wasi:cli/run@0\.2\.\d+$")
HTTP_EXPORT = re.compile(r"^wasi:http/incoming-handler@0\.2\.\d+$")

LISTEN_ANNOTATION = "wasm.shim.io/http-listen"
TIMEOUT_ANNOTATION = "wasm.shim.io/http-request-timeout"
MAX_BODY_ANNOTATION = "wasm.shim.io/http-max-body"
PROXY_ADDR_ENV = "WASMTIME_HTTP_PROXY_SOCKET_ADDR"  # runwasi's wasmtime shim reads the same variable

DEFAULT_LISTEN = "0.0.0.0:8080"  # runwasi's and `wasmtime serve`'s default
DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds for one request, its body included (a handler that never answers)
DEFAULT_MAX_BODY = 16 << 20  # bytes of one request body
DRAIN_TIMEOUT = 30.0  # seconds to finish requests in flight after SIGTERM (Kubernetes' default grace period)
MAX_CONCURRENCY = 64  # requests served at once per container (each is an instance; the pool is sized for it)

_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


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


def serve_plan(annotations: Mapping[str, str], env: Sequence[tuple[str, str]]) -> ServePlan:
    """The serve plan from the annotations and the guest's environment; EngineError naming a bad value."""
    listen = annotations.get(LISTEN_ANNOTATION, "").strip()
    source = f"annotation {LISTEN_ANNOTATION}"
    if not listen:
        from_env = [value for key, value in env if key == PROXY_ADDR_ENV]
        listen, source = (from_env[-1].strip(), f"environment variable {PROXY_ADDR_ENV}") if from_env \
            else (DEFAULT_LISTEN, "default")
    return ServePlan(
        addr=parse_listen(listen, source),
        request_timeout=_seconds(annotations.get(TIMEOUT_ANNOTATION), DEFAULT_REQUEST_TIMEOUT),
        max_body=_size(annotations.get(MAX_BODY_ANNOTATION), DEFAULT_MAX_BODY),
    )


def parse_listen(text: str, source: str) -> str:
    """``IP:PORT`` (IPv6 as ``[IP]:PORT``) in canonical form; EngineError otherwise."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", text)
    if match is None:
        raise EngineError(f"{source}={text!r}: expected IP:PORT such as 0.0.0.0:8080 or [::]:8080 (no host names)")
    host, port_text = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise EngineError(f"{source}={text!r}: {host!r} is not an IP address") from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise EngineError(f"{source}={text!r}: port {port} is out of range (1-65535)")
    if isinstance(ip, ipaddress.IPv6Address) != bool(match.group(1)):
        raise EngineError(f"{source}={text!r}: an IPv6 address goes in brackets, an IPv4 one does not")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _seconds(text: str | None, default: float) -> float:
    if text is None or not text.strip():
        return default
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise EngineError(f"annotation {TIMEOUT_ANNOTATION}={text!r}: expected seconds, more than 0 and at most "
                          "86400 (such as 30 or 2.5)")
    return value


def _size(text: str | None, default: int) -> int:
    if text is None or not text.strip():
        return default
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise EngineError(f"annotation {MAX_BODY_ANNOTATION}={text!r}: expected bytes, optionally with Ki, Mi or Gi "
                          "(such as 1048576 or 16Mi)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def serve_network(spec: GuestSpec) -> str:
    """The pod's network namespace a served component listens in; EngineError when there is none."""
    path = spec.network_namespace
    if path is None:
        raise EngineError(
            "a wasi:http/incoming-handler component is served inside the pod's network namespace, and the OCI "
            "spec names none (linux.namespaces has no network entry with a path); a pod's containers have one "
            "under CRI, with ctr use --with-ns network:/var/run/netns/NAME"
        )
    if not os.path.exists(path):
        raise EngineError(f"network namespace {path} does not exist (needed to serve the component)")
    return path
