"""The network grant of a wasm guest: the ``wasm.shim.io/network`` annotation, parsed and checked (no I/O).

Owns: the grammar of the annotation and its canonical form for the component runner (``runner/``, which enforces
it in wasmtime's socket-address check). No network unless granted (docs/design.md, rule 7), and a grant that cannot be
parsed exactly is refused with a message that says why, never widened or narrowed silently.

Grammar (docs/annotations.md)::

    value  := "none" | "pod" | rule ("," | whitespace) rule ...
    rule   := verb "=" addr ":" ports
    verb   := "tcp-listen" | "tcp-connect" | "udp-bind" | "udp-send"
    addr   := "*" | IPV4 ["/" LEN] | "[" IPV6 ["/" LEN] "]"
    ports  := "*" | PORT | PORT "-" PORT

``none`` (or no annotation): no sockets. ``pod``: every address, TCP and UDP, in the pod's network namespace.
Rules: exactly the listed uses, in the pod's network namespace; what each verb also allows (the implicit bind of
a connect, accepting clients of a listener, receiving replies from a send target) is defined in
``runner/src/network.rs`` (``allowed``) and documented in docs/annotations.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import EngineError

NETWORK_ANNOTATION = "wasm.shim.io/network"
VERBS = ("tcp-listen", "tcp-connect", "udp-bind", "udp-send")

_RULE = re.compile(r"^(?P<verb>[a-z-]+)=(?P<addr>\*|\[[^\]]*\]|[^:\[\]]+):(?P<ports>[^:]+)$")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NetworkRule:
    """One use of the network: ``verb`` on ``network`` (None = any address, IPv4 or IPv6), ports ``low..high``."""

    verb: str
    network: IpNetwork | None
    low: int
    high: int

    def __str__(self) -> str:
        if self.network is None:
            addr = "*"
        elif self.network.version == 6:
            addr = f"[{self.network.with_prefixlen}]"
        else:
            addr = self.network.with_prefixlen
        ports = "*" if (self.low, self.high) == (0, 65535) else str(self.low) if self.low == self.high \
            else f"{self.low}-{self.high}"
        return f"{self.verb}={addr}:{ports}"

    def plan(self) -> dict[str, Any]:
        """The canonical form the component runner reads (``Rule`` in runner/src/plan.rs)."""
        return {
            "use": self.verb,
            "ip": None if self.network is None else str(self.network.network_address),
            "prefix": 0 if self.network is None else self.network.prefixlen,
            "ports": [self.low, self.high],
        }


@dataclass(frozen=True)
class NetworkGrant:
    """What a guest may do on the network: ``kind`` "none", "pod" (everything) or "rules" (exactly ``rules``)."""

    kind: str = "none"
    rules: tuple[NetworkRule, ...] = ()

    @property
    def granted(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return ", ".join(map(str, self.rules)) if self.kind == "rules" else self.kind

    def plan(self) -> dict[str, Any]:
        """The canonical form the component runner reads (``Grant`` in runner/src/plan.rs)."""
        if self.kind == "rules":
            return {"kind": "rules", "rules": [rule.plan() for rule in self.rules]}
        return {"kind": self.kind}


NO_NETWORK = NetworkGrant()


def parse_network_grant(annotations: Mapping[str, str]) -> NetworkGrant:
    """The grant asked for by ``annotations``; EngineError naming the annotation and the fault otherwise."""
    value = annotations.get(NETWORK_ANNOTATION, "").strip()
    if value.lower() in ("", "none"):
        return NO_NETWORK
    if value.lower() == "pod":
        return NetworkGrant("pod")
    rules = []
    for item in re.split(r"[\s,]+", value):
        if item:
            rules.append(_parse_rule(item, value))
    return NetworkGrant("rules", tuple(dict.fromkeys(rules)))


def _parse_rule(item: str, value: str) -> NetworkRule:
    def bad(reason: str) -> EngineError:
        return EngineError(
            f"annotation {NETWORK_ANNOTATION}={value!r}: {item!r}: {reason}. Use \"none\", \"pod\" or rules "
            f"VERB=ADDR:PORTS separated by commas, VERB one of {', '.join(VERBS)}, ADDR \"*\", an IPv4 address or "
            "network (10.0.0.0/8) or an IPv6 one in brackets ([fd00::/8]), PORTS \"*\", 8080 or 8000-8099 "
            "(docs/annotations.md)"
        )

    match = _RULE.match(item)
    if match is None:
        raise bad("not VERB=ADDR:PORTS")
    verb = match["verb"]
    if verb not in VERBS:
        raise bad(f"unknown verb {verb!r}")
    addr = match["addr"]
    network: IpNetwork | None = None
    if addr != "*":
        bracketed = addr.startswith("[")
        text = addr[1:-1] if bracketed else addr
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise bad(f"address {addr!r}: {exc}") from None
        if (network.version == 6) != bracketed:
            raise bad("IPv6 addresses go in brackets ([::1]:80), IPv4 ones do not")
    ports = match["ports"]
    if ports == "*":
        low, high = 0, 65535
    else:
        parts = ports.split("-")
        if len(parts) > 2 or not all(p.isdigit() for p in parts):
            raise bad(f"ports {ports!r}: not a port or a range")
        low, high = int(parts[0]), int(parts[-1])
        if high > 65535 or low > high:
            raise bad(f"ports {ports!r}: out of range 0-65535 or reversed")
    return NetworkRule(verb, network, low, high)


def pod_network_namespace(path: str | None, who: str, why: str) -> str:
    """`path`, the existing network namespace a spec joins (a pod's; `GuestSpec.network_namespace`), for `who`;
    EngineError saying `why` it is needed when there is none or it is gone. Every network use of a guest asks
    this one lookup."""
    if path is None:
        raise EngineError(
            f"{who}: the OCI spec names no network namespace to join (linux.namespaces has no network entry with a "
            "path); a pod's containers have one under CRI, with ctr use --with-ns network:/var/run/netns/NAME. "
            f"It is needed because {why}"
        )
    if not os.path.exists(path):
        raise EngineError(f"{who}: network namespace {path} does not exist (it is needed because {why})")
    return path
