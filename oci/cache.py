"""A node-local content-addressed blob cache for artifacts the shim pulls itself.

Owns the directory layout `ROOT/blobs/sha256/<hex>` (complete, verified blobs only) and `ROOT/tmp/` (downloads in
progress), `ArtifactCache.get` / `ensure` / `put_bytes`, and eviction.

Invariants:
- A file under blobs/ is complete and its sha256 is its name: it is written under tmp/ by a fetch that checks the
  digest while streaming, fsynced, then renamed into place (rename is atomic on one filesystem), so a reader never
  sees a partial blob. A failed fetch removes its temporary file.
- The total size of blobs/ stays within `max_bytes`: before a blob is added, the least recently used blobs (by
  mtime, refreshed on every hit) are removed until it fits; a blob larger than the cap is refused with the sizes.
  Eviction can remove a blob another process is copying out of the cache; an open file stays readable (POSIX
  unlink), and the next start fetches it again.
- Safe to share between daemons of one node: names are unique per process and fetch, renames are atomic, and two
  fetches of one digest both produce the same bytes.
- Leftover temporary files older than an hour (a daemon killed mid-download) are removed when the cache is opened.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from typing import IO

from .digest import StreamVerifier
from .files import removed_on_failure
from .reference import check_digest

STALE_TMP = 3600.0


class CacheError(Exception):
    """The cache cannot hold or write a blob; the message says which and why."""


class ArtifactCache:
    def __init__(self, root: str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise CacheError(f"artifact cache size cap must be positive, got {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = os.path.join(root, "blobs", "sha256")
        self.tmp = os.path.join(root, "tmp")
        try:
            os.makedirs(self.blobs, mode=0o700, exist_ok=True)
            os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the artifact cache in {root}: {exc.strerror}") from None
        self._sweep_tmp()

    def _sweep_tmp(self) -> None:
        now = time.time()
        for entry in os.scandir(self.tmp):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP:
                    os.unlink(entry.path)
            except OSError:
                pass

    def path_of(self, digest: str) -> str:
        return os.path.join(self.blobs, check_digest(digest).removeprefix("sha256:"))

    def get(self, digest: str) -> str | None:
        """The path of a cached blob (and mark it recently used), or None."""
        path = self.path_of(digest)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:
            pass
        return path

    def usage(self) -> int:
        total = 0
        for entry in os.scandir(self.blobs):
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
        return total

    def _make_room(self, size: int) -> None:
        if size > self.max_bytes:
            raise CacheError(f"a blob of {size} bytes does not fit in the artifact cache ({self.max_bytes} bytes "
                             f"cap, {self.root})")
        entries = []
        for entry in os.scandir(self.blobs):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(e[1] for e in entries)
        for _, blob_size, path in sorted(entries):
            if total + size <= self.max_bytes:
                break
            try:
                os.unlink(path)
                total -= blob_size
            except FileNotFoundError:
                total -= blob_size
            except OSError:
                continue

    def ensure(self, digest: str, size: int, fetch: Callable[[IO[bytes]], None]) -> str:
        """The cached blob's path; on a miss, `fetch(sink)` writes it (the caller's fetch verifies as it streams;
        the bytes are checked once more here before they become visible)."""
        cached = self.get(digest)
        if cached is not None:
            return cached
        self._make_room(size)
        temporary = os.path.join(self.tmp, f"{digest[7:19]}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CacheError(f"cannot write to the artifact cache {self.tmp}: {exc.strerror}") from None
        with removed_on_failure(temporary):
            with os.fdopen(fd, "w+b") as sink:
                fetch(sink)
                sink.flush()
                sink.seek(0)
                verifier = StreamVerifier(digest, size, f"cached blob {digest}")
                while chunk := sink.read(1 << 20):
                    verifier.update(chunk)
                verifier.finish()
                os.fsync(sink.fileno())
            final = self.path_of(digest)
            os.replace(temporary, final)
            return final

    def put_bytes(self, digest: str, data: bytes) -> str:
        def write(sink: IO[bytes]) -> None:
            sink.write(data)

        return self.ensure(digest, len(data), write)

    def read_bytes(self, digest: str, limit: int) -> bytes | None:
        """A small cached blob (a manifest), re-checked against its digest; None when absent or damaged."""
        path = self.get(digest)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError:
            return None
        verifier = StreamVerifier(digest, None, f"cached blob {digest}")
        try:
            verifier.update(data)
            verifier.finish()
        except ValueError:
            try:
                os.unlink(path)  # damaged on disk: forget it, it will be fetched again
            except OSError:
                pass
            return None
        return data if len(data) <= limit else None
