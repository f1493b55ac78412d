"""A node-local content-addressed blob cache for artifacts the shim pulls itself.

Owns the directory layout `ROOT/blobs/sha256/<hex>` (complete, verified blobs only) and `ROOT/tmp/` (downloads in
progress), `ArtifactCache.get` / `ensure` / `put_bytes`, and eviction.

Trust (what is served is what was verified; the directory is checked before it is used):
- ROOT, blobs/, blobs/sha256/ and tmp/ must pass oci/files.py `check_private_dir` (real directories, owned by root
  or us, not writable by group or others) when the cache is opened. If one does not, the log says which and why
  and this cache keeps its blobs in a private temporary directory of its own instead (mkdtemp's
  `wasm-shim-artifacts.<pid>.*`, removed when the cache is, or by the next fallback once that pid is gone), so the
  daemon works on without a shared disk cache and never reads from the refused one.
- A hit is opened with O_NOFOLLOW and must be a regular file of root or us, not writable by others; its bytes are
  hashed against its name unless the file's identity (device, inode, size, mtime, ctime) is the one this cache
  pinned when it last wrote or hashed it. A file that fails (tampered, truncated, a symlink, another owner) is
  removed and logged, and the caller fetches the blob again.

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

import hashlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from typing import IO

from .digest import StreamVerifier
from .files import UnsafeFile, check_private_dir, open_checked, removed_on_failure
from .reference import check_digest

log = logging.getLogger(__name__)

STALE_TMP = 3600.0
HASH_CHUNK = 1 << 20
FALLBACK_PREFIX = "wasm-shim-artifacts."

Identity = tuple[int, int, int, int, int]


class CacheError(Exception):
    """The cache cannot hold or write a blob; the message says which and why."""


def _identity(info: os.stat_result) -> Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class ArtifactCache:
    def __init__(self, root: str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise CacheError(f"artifact cache size cap must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.refused = ""  # why `root` is not used ("" when it is)
        self._pins: dict[str, Identity] = {}  # digest -> identity of the file this cache wrote or hashed
        self._lock = threading.Lock()
        try:
            self._open(root)
        except UnsafeFile as exc:
            self.refused = str(exc)  # a string: the exception's frames would keep this cache alive
        if self.refused:
            _remove_abandoned(tempfile.gettempdir())
            private = tempfile.mkdtemp(prefix=f"{FALLBACK_PREFIX}{os.getpid()}.")
            weakref.finalize(self, shutil.rmtree, private, True)
            log.warning("artifact cache %s is not used (%s): this daemon keeps artifacts in %s instead, removed "
                        "when it exits", root, self.refused, private)
            try:
                self._open(private)
            except UnsafeFile as again:
                raise CacheError(f"artifact cache {root} is not usable ({self.refused}), nor a private one "
                                 f"({again})") from None
        self._sweep_tmp()

    def _open(self, root: str) -> None:
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        self.tmp = os.path.join(root, "tmp")
        for directory in (root, os.path.join(root, "blobs"), self.blobs, self.tmp):
            check_private_dir(directory, create=True)

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
        """The path of a cached blob whose bytes are `digest`'s (and mark it recently used), or None: absent, or
        refused and removed (see the module's trust rules)."""
        fd = self._open_verified(digest)
        if fd is None:
            return None
        os.close(fd)
        return self.path_of(digest)

    def _open_verified(self, digest: str) -> int | None:
        """A descriptor of the cached blob after the trust checks, positioned at its start; None on a miss."""
        path = self.path_of(digest)
        try:
            fd = open_checked(path)
        except FileNotFoundError:
            return None
        except UnsafeFile as exc:
            self._forget(digest, path, str(exc))
            return None
        try:
            info = os.fstat(fd)
            with self._lock:
                pinned = self._pins.get(digest) == _identity(info)
            if not pinned:
                actual = _hash_fd(fd)
                if actual != digest:
                    self._forget(digest, path, f"its content has digest {actual} (tampered or corrupt)")
                    os.close(fd)
                    return None
            try:
                os.utime(fd)  # least recently used eviction goes by mtime
            except OSError:
                pass
            with self._lock:
                self._pins[digest] = _identity(os.fstat(fd))
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError as exc:
            os.close(fd)
            self._forget(digest, path, f"cannot read it: {exc.strerror}")
            return None
        return fd

    def _forget(self, digest: str, path: str, reason: str) -> None:
        log.warning("artifact cache: blob %s refused and removed (%s); it is fetched again", path, reason)
        with self._lock:
            self._pins.pop(digest, None)
        try:
            os.unlink(path)
        except OSError:
            pass

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
        """The cached blob's path; on a miss (or a refused hit), `fetch(sink)` writes it (the caller's fetch
        verifies as it streams; the bytes are checked once more here before they become visible)."""
        cached = self.get(digest)
        if cached is not None:
            return cached
        self._make_room(size)
        temporary = os.path.join(self.tmp, f"{digest[7:19]}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CacheError(f"cannot write to the artifact cache {self.tmp}: {exc.strerror}") from None
        with removed_on_failure(temporary):
            with os.fdopen(fd, "w+b") as sink:
                fetch(sink)
                sink.flush()
                sink.seek(0)
                verifier = StreamVerifier(digest, size, f"cached blob {digest}")
                while chunk := sink.read(HASH_CHUNK):
                    verifier.update(chunk)
                verifier.finish()
                os.fsync(sink.fileno())
                final = self.path_of(digest)
                os.replace(temporary, final)
                identity = _identity(os.fstat(sink.fileno()))  # after the rename, which may change the ctime
            with self._lock:
                self._pins[digest] = identity
            return final

    def put_bytes(self, digest: str, data: bytes) -> str:
        def write(sink: IO[bytes]) -> None:
            sink.write(data)

        return self.ensure(digest, len(data), write)

    def read_bytes(self, digest: str, limit: int) -> bytes | None:
        """A small cached blob (a manifest), verified as every hit is; None when absent, damaged or over `limit`."""
        fd = self._open_verified(digest)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        return data if len(data) <= limit else None


def _remove_abandoned(parent: str) -> None:
    """Remove the private directories of fallback caches whose daemon is gone (killed before its clean-up ran):
    ours by owner and name, `wasm-shim-artifacts.<pid>.*`, with no process `<pid>` alive."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        pid_text = entry.name.removeprefix(FALLBACK_PREFIX).partition(".")[0]
        if not entry.name.startswith(FALLBACK_PREFIX) or not pid_text.isdigit():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, HASH_CHUNK):
        digest.update(chunk)
    return "sha256:" + digest.hexdigest()
