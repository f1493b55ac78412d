"""Checking bytes against a descriptor while they stream: size and sha256 digest (image-spec descriptor.md).

Owns `StreamVerifier` (pure: fed chunks, no I/O) and `sha256_digest`. Invariant: a verifier that `finish`es without
raising has seen exactly `size` bytes whose sha256 is `digest`; it raises DigestMismatch as soon as more bytes than
the descriptor's size arrive, so a lying server cannot make a reader hold more than the size it announced.
"""

from __future__ import annotations

import hashlib

from .reference import check_digest


class DigestMismatch(ValueError):
    """Bytes do not match the descriptor that named them; the message says what was expected and what came."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class StreamVerifier:
    """Feed chunks with `update`; `finish` checks the total size and the digest."""

    def __init__(self, digest: str, size: int | None, what: str) -> None:
        self.digest = check_digest(digest, what)
        if size is not None and size < 0:
            raise DigestMismatch(f"{what}: negative size {size} in its descriptor")
        self.size = size
        self.what = what
        self.received = 0
        self._hash = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.size is not None and self.received > self.size:
            raise DigestMismatch(f"{self.what}: the registry sent more than the {self.size} bytes its descriptor says")
        self._hash.update(chunk)

    def finish(self) -> None:
        if self.size is not None and self.received != self.size:
            raise DigestMismatch(f"{self.what}: received {self.received} bytes, its descriptor says {self.size} "
                                 "(truncated)")
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            raise DigestMismatch(f"{self.what}: content has digest {actual}, expected {self.digest} "
                                 "(tampered or corrupt)")
