"""A private network namespace with loopback up: what CRI's CNI gives a pod, and where benches and tests listen.

Owns the namespace it makes: ``network_namespace`` adds it under /var/run/netns, yields its path and deletes it on
the way out, whatever happened inside. Nothing in it reaches the machine's network.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
