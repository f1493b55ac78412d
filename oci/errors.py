"""The registry client's errors (raised by oci/transport.py and oci/registry.py; importable from either)."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry request failed or answered something that does not check out; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(RegistryError):
    """The registry answered 404 for a manifest, blob or repository."""
