"""Signature verifications the shim remembers, so a warm start asks no registry: in memory and on disk.

Owns `VerificationCache`: (manifest digest, the rule's key fingerprints) -> when it was verified, trusted for `ttl`.

On disk (`directory`, normally `<cache_dir>/verified`), one record per entry, `<sha256(digest, keys)>.json`:
`{"digest", "keys", "verified_at", "hmac"}`, where `hmac` is HMAC-SHA256 over the other three under the node's
record key, `record.key` in the same directory (32 random bytes, mode 0600, made by the first shim that stores a
record). A record is what lets an image run without its signatures being checked, so:
- The directory and its parent (the cache dir) must pass oci/files.py `check_private_dir` (real directories, owned
  by root or us, not writable by group or others) when the cache is made; otherwise the disk is not used at all
  (memory only) and the log says which directory and why. The directory is then held open and every record is
  opened relative to that descriptor, so renaming the path afterwards changes nothing.
- A record is opened with O_NOFOLLOW and must be a regular file of root or us, not writable by others, at most
  `MAX_RECORD` bytes, JSON naming the digest and keys asked for, with an HMAC that verifies under the record key.
  One that fails any of these (planted, copied from another node, edited, a symlink) is refused, removed and
  logged, and the image is verified again. The record key itself must be 0600 and ours.
- Records are written to a temporary name (O_EXCL) and renamed: a reader never sees half of one. A record that
  cannot be written costs the next daemon one verification, never a failed container.
Thread-safe: Creates run on the daemon's worker threads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable

from .files import UnsafeFile, check_private_dir, open_checked

log = logging.getLogger(__name__)

KEY_FILE = "record.key"
KEY_SIZE = 32
MAX_RECORD = 4096  # a record is about 250 bytes; anything larger is not ours


class VerificationCache:
    """Digests verified under a key set, in memory and (when `directory` passes the checks) on disk, for `ttl`."""

    def __init__(self, directory: str | None, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self._clock = clock
        self._memory: dict[str, float] = {}
        self._lock = threading.Lock()
        self._secret: bytes | None = None
        self.directory: str | None = None
        self.refused = ""  # why the directory given is not used ("" when it is, or none was given)
        self._dir_fd: int | None = None
        if directory:
            try:
                self._dir_fd = _open_private_dir(directory)
            except UnsafeFile as exc:
                self._refuse_disk(directory, str(exc))
            else:
                self.directory = directory
                weakref.finalize(self, os.close, self._dir_fd)

    def _refuse_disk(self, directory: str, reason: str) -> None:
        self.refused = reason
        self.directory, self._dir_fd = None, None
        log.warning("signature verification cache %s is not used (%s): verifications are kept in memory only",
                    directory, reason)

    @staticmethod
    def _key(digest: str, fingerprint: str) -> str:
        return hashlib.sha256(f"{digest}\n{fingerprint}".encode()).hexdigest()

    def lookup(self, digest: str, fingerprint: str) -> bool:
        key = self._key(digest, fingerprint)
        now = self._clock()
        when = self._memory.get(key)
        if when is None and self._dir_fd is not None:
            when = self._read_record(key + ".json", digest, fingerprint)
            if when is not None:
                self._memory[key] = when
        return when is not None and 0 <= now - when < self.ttl

    def store(self, digest: str, fingerprint: str) -> None:
        key = self._key(digest, fingerprint)
        now = self._clock()
        self._memory[key] = now
        dir_fd = self._dir_fd
        if dir_fd is None:
            return
        name = key + ".json"
        temporary = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            secret = self._record_key(create=True)
            if secret is None:
                return
            record = {"digest": digest, "keys": fingerprint, "verified_at": now,
                      "hmac": _mac(secret, digest, fingerprint, now)}
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except (OSError, UnsafeFile) as exc:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass  # the memory entry stands; the next daemon verifies again
            log.warning("signature verification cache %s: cannot write a record (%s)", self.directory, exc)

    # -- records -------------------------------------------------------------------------------------------------
    def _read_record(self, name: str, digest: str, fingerprint: str) -> float | None:
        assert self._dir_fd is not None
        try:
            fd = open_checked(name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        except UnsafeFile as exc:
            self._discard(name, str(exc))
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_RECORD + 1)
        if len(data) > MAX_RECORD:
            self._discard(name, f"it is over {MAX_RECORD} bytes")
            return None
        try:
            entry = json.loads(data)
            when = entry["verified_at"]
            claimed = entry["hmac"]
            if not isinstance(when, int | float) or isinstance(when, bool) or not isinstance(claimed, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._discard(name, "it is not a record (JSON with digest, keys, verified_at and hmac)")
            return None
        if entry.get("digest") != digest or entry.get("keys") != fingerprint:
            self._discard(name, "it names another digest or key set than its file name says")
            return None
        try:
            secret = self._record_key(create=False)
        except UnsafeFile as exc:
            self._discard(name, f"the record key cannot be used: {exc}")
            return None
        if secret is None or not hmac.compare_digest(claimed, _mac(secret, digest, fingerprint, when)):
            self._discard(name, f"its HMAC does not verify under this node's record key ({KEY_FILE}): it was not "
                                "written by this node's shim")
            return None
        return float(when)

    def _discard(self, name: str, reason: str) -> None:
        log.warning("signature verification record %s/%s refused and removed: %s; the image is verified again",
                    self.directory, name, reason)
        try:
            os.unlink(name, dir_fd=self._dir_fd)
        except OSError:
            pass

    def _record_key(self, *, create: bool) -> bytes | None:
        """The node's record key (made when `create` and missing); None when there is none yet."""
        with self._lock:
            if self._secret is not None:
                return self._secret
            assert self._dir_fd is not None
            secret = _read_key(self._dir_fd)
            if secret is None and create:
                _make_key(self._dir_fd)
                secret = _read_key(self._dir_fd)
            self._secret = secret
            return secret


def _mac(secret: bytes, digest: str, fingerprint: str, when: float) -> str:
    message = json.dumps([digest, fingerprint, when]).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _open_private_dir(directory: str) -> int:
    """A descriptor of `directory` after its and its parent's checks (both made 0700 when missing)."""
    parent = os.path.dirname(os.path.abspath(directory))
    check_private_dir(parent, create=True)
    check_private_dir(directory, create=True)
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeFile(f"{directory}: cannot open it: {exc.strerror}") from None
    before = os.lstat(directory)
    after = os.fstat(fd)
    if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
        os.close(fd)
        raise UnsafeFile(f"{directory} changed while it was checked")
    return fd


def _read_key(dir_fd: int) -> bytes | None:
    try:
        fd = open_checked(KEY_FILE, dir_fd=dir_fd, mode_mask=0o077)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        secret = f.read(KEY_SIZE + 1)
    if len(secret) != KEY_SIZE:
        raise UnsafeFile(f"{KEY_FILE} is {len(secret)} bytes, not {KEY_SIZE}")
    return secret


def _make_key(dir_fd: int) -> None:
    """Write a fresh key under a temporary name and link it into place: of several shims racing, one key wins and
    every one of them reads that one."""
    temporary = f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_SIZE))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, KEY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
