"""A private network namespace with loopback up: what CRI's CNI gives a pod, and where benches and tests listen.

Owns the namespaces it makes: ``network_namespace`` adds one under /var/run/netns, yields its path and deletes it on
the way out, whatever happened inside. Nothing in it reaches the machine's network. ``linked_namespace`` adds one
joined to this namespace by a veth pair on a /30 of 10.234.0.0/16 nobody here uses: a peer at a non-loopback
address (what Go clients, which never proxy loopback, and the shim's "plain HTTP only on loopback" rule see as a
remote host), reachable from here and from nowhere else.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@contextmanager
def network_namespace(prefix: str) -> Iterator[Path]:
    """A fresh namespace named ``prefix-<random>`` with ``lo`` up; its /var/run/netns path."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        yield Path("/var/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, timeout=10)


@dataclass(frozen=True)
class LinkedNamespace:
    name: str  # for `ip netns exec NAME ...`
    path: Path
    host_ip: str  # this side of the veth pair
    peer_ip: str  # the namespace's side


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


@contextmanager
def linked_namespace(prefix: str) -> Iterator[LinkedNamespace]:
    """A fresh namespace with ``lo`` up and a veth pair to this one (``host_ip`` here, ``peer_ip`` there)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], check=True, capture_output=True, text=True, timeout=10).stdout
    for _ in range(100):
        third, fourth = random.randrange(256), random.randrange(0, 256, 4)
        host_ip, peer_ip = f"10.234.{third}.{fourth + 1}", f"10.234.{third}.{fourth + 2}"
        if f" {host_ip}/" not in used and f" {peer_ip}/" not in used:
            break
    tag = uuid.uuid4().hex[:8]
    outside, inside = f"wsh{tag}", f"wsp{tag}"
    with network_namespace(prefix) as path:
        try:
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", path.name)
            _ip("addr", "add", f"{host_ip}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", path.name, "addr", "add", f"{peer_ip}/30", "dev", inside)
            _ip("-n", path.name, "link", "set", inside, "up")
            yield LinkedNamespace(path.name, path, host_ip, peer_ip)
        finally:
            subprocess.run(["ip", "link", "delete", outside], check=False, capture_output=True, timeout=10)
