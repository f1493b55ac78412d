"""Checking bytes against a descriptor while they stream: size and sha256 digest (image-spec descriptor.md).

Owns `StreamVerifier` (pure: fed chunks, no I/O), `sha256_digest` and `new_sha256`. Invariant: a verifier that
`finish`es without raising has seen exactly `size` bytes whose sha256 is `digest`; it raises DigestMismatch as soon
as more bytes than the descriptor's size arrive, so a lying server cannot make a reader hold more than the size it
announced.

Which sha256: OpenSSL's (hashlib) for anything of BIG bytes or more, or of unknown size: it is several times faster
(20 MiB: 10 ms against 54 ms here) but loading it costs about 2 ms; below BIG, the interpreter's built-in one, so a
command that only hashes manifests and signatures (`verify`) never loads OpenSSL's libcrypto for it.
"""

from __future__ import annotations

from .reference import check_digest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BIG = 1 << 20
_builtin: list[Any] = []  # the built-in sha256 constructor, once looked up (empty: not yet; [None]: not built in)


def new_sha256(size: int | None = None) -> Any:
    """A sha256 hash object for about `size` bytes (see the module docstring for which)."""
    if size is not None and size < BIG:
        if not _builtin:
            try:
                from _sha2 import sha256  # type: ignore[import-not-found]  # CPython 3.12 and later
            except ImportError:
                try:
                    from _sha256 import sha256  # type: ignore[import-not-found,no-redef]  # CPython 3.11
                except ImportError:
                    sha256 = None  # an interpreter built without them: hashlib's
            _builtin.append(sha256)
        if _builtin[0] is not None:
            return _builtin[0]()
    try:
        from _hashlib import openssl_sha256  # what hashlib.sha256 is, without hashlib's other algorithms' set-up
    except ImportError:
        import hashlib

        return hashlib.sha256()
    return openssl_sha256()


class DigestMismatch(ValueError):
    """Bytes do not match the descriptor that named them; the message says what was expected and what came."""


def sha256_digest(data: bytes) -> str:
    hasher = new_sha256(len(data))
    hasher.update(data)
    return "sha256:" + hasher.hexdigest()


class StreamVerifier:
    """Feed chunks with `update`; `finish` checks the total size and the digest."""

    def __init__(self, digest: str, size: int | None, what: str) -> None:
        self.digest = check_digest(digest, what)
        if size is not None and size < 0:
            raise DigestMismatch(f"{what}: negative size {size} in its descriptor")
        self.size = size
        self.what = what
        self.received = 0
        self._hash = new_sha256(size)

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
