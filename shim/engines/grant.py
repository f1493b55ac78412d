"""What a container's annotations grant and ask, typed once: `Grant`.

Owns the `wasm.shim.io/*` annotations and the CRI annotations the shim reads (docs/annotations.md), their parsing
and their defaults. `daemon/bundle.py` calls `parse_grant` once per Create and puts the result in the `GuestSpec`;
engines and the image source read `spec.grant` and never an annotation. Pure: no I/O.

Invariant: a value that cannot be parsed exactly is an EngineError naming the annotation and what is wrong, raised
at Create for every container that carries it, never widened, narrowed or ignored silently.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import EngineError
from .network import NETWORK_ANNOTATION, NO_NETWORK, NetworkGrant, parse_network_grant

ISOLATION_ANNOTATION = "wasm.shim.io/component-isolation"
ISOLATIONS = ("process", "thread")
LISTEN_ANNOTATION = "wasm.shim.io/http-listen"
TIMEOUT_ANNOTATION = "wasm.shim.io/http-request-timeout"
MAX_BODY_ANNOTATION = "wasm.shim.io/http-max-body"
ARTIFACT_ANNOTATION = "wasm.shim.io/artifact"
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"  # "sandbox" for the pause container
CRI_IMAGE_NAME = "io.kubernetes.cri.image-name"  # the image the kubelet passed for the container

DEFAULT_REQUEST_TIMEOUT = 60.0  # seconds for one served request, its body included (a handler that never answers)
DEFAULT_MAX_BODY = 16 << 20  # bytes of one request body
_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi)?$")
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}

__all__ = ["NETWORK_ANNOTATION", "Grant", "HttpSettings", "parse_grant", "parse_listen"]


@dataclass(frozen=True)
class HttpSettings:
    """How a wasi:http/proxy component is served (used only when the component is served)."""

    listen: str | None = None  # IP:PORT from wasm.shim.io/http-listen, canonical; None: the guest's env or default
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY


@dataclass(frozen=True)
class Grant:
    """The annotations' part of what a guest is granted (the spec's part is the rest of `GuestSpec`)."""

    network: NetworkGrant = NO_NETWORK
    isolation: str | None = None  # "process" or "thread"; None: the engine's default
    http: HttpSettings = field(default_factory=HttpSettings)
    artifact: str = ""  # a reference the shim pulls itself, "" when none
    sandbox: bool = False  # CRI's pause container: the node's image, not the pod author's
    image_name: str = ""  # CRI's image-name: the image the pod asked for, "" outside CRI


def parse_grant(annotations: Mapping[str, str]) -> Grant:
    """The grant `annotations` carry; EngineError naming the annotation at fault."""
    isolation = annotations.get(ISOLATION_ANNOTATION, "").strip().lower() or None
    if isolation is not None and isolation not in ISOLATIONS:
        raise EngineError(
            f"annotation {ISOLATION_ANNOTATION}={isolation!r}: use \"process\" (the default: the component runs in "
            "a process of its own and a kill stops it whatever it does) or \"thread\" (in the daemon: cheaper, "
            "but a component sleeping or blocked in a socket call is stopped only when that call returns)"
        )
    listen = annotations.get(LISTEN_ANNOTATION, "").strip()
    http = HttpSettings(
        listen=parse_listen(listen, f"annotation {LISTEN_ANNOTATION}") if listen else None,
        request_timeout=_seconds(annotations.get(TIMEOUT_ANNOTATION), DEFAULT_REQUEST_TIMEOUT),
        max_body=_size(annotations.get(MAX_BODY_ANNOTATION), DEFAULT_MAX_BODY),
    )
    return Grant(
        network=parse_network_grant(annotations),
        isolation=isolation,
        http=http,
        artifact=annotations.get(ARTIFACT_ANNOTATION, "").strip(),
        sandbox=annotations.get(CRI_CONTAINER_TYPE) == "sandbox",
        image_name=annotations.get(CRI_IMAGE_NAME, ""),
    )


def parse_listen(text: str, source: str) -> str:
    """``IP:PORT`` (IPv6 as ``[IP]:PORT``) in canonical form; EngineError naming ``source`` otherwise."""
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
