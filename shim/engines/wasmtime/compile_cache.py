"""The compiled-artifact cache: compiled modules and components by the sha256 of their bytes.

Owns one bounded in-memory LRU over an optional on-disk store, and the on-disk file format and its checks.

Key: sha256 of the wasm bytes, under a directory named by the engine fingerprint (wasmtime version, the
``Config`` we set, machine). In memory: an LRU of ``memory_entries`` finished artifacts (what every start
reuses: an ``InstancePre``, a component's run export). On disk, under ``cache_dir`` (if given):
``<fingerprint>/<sha256>.<kind>.cwasm`` = magic + sha256(payload) + payload, written to a temporary file and
renamed. Deserializing untrusted bytes is unsafe (they are machine code), so the cache directory must be owned
by us and not accessible to group/others (0700; checked at construction), files are opened with O_NOFOLLOW and
must be ours, and a file whose digest or header does not match, or that wasmtime refuses, is deleted and the
module recompiled. The component runner (``runner/``) writes its own artifacts in the same format and checks
them the same way (``runner/src/cache.rs``, ``Cache``).

Invariants: concurrent requests for the same bytes compile once; only finished artifacts enter memory; a cache
that cannot be written costs the next start a compile, never a failed container.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import wasmtime
import wasmtime.component as wasm_component

from wasm_shim.oci import files

from ..base import CacheStats, EngineError, EntryKind
from .reports import error_summary

log = logging.getLogger(__name__)

CACHE_MAGIC = b"wasm-shim-cwasm-v1\n"

Finished = TypeVar("Finished")


class CacheFileRefused(Exception):
    """A cache file we must not deserialize (not ours, not private, bad header or digest); says why."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def check_private_dir(path: str, create: bool) -> None:
    """The cache directory must be a real directory of ours (or root's), closed to group and others: its files are
    machine code we run. The checks are the node's one rule for trusted directories (oci/files.py)."""
    try:
        files.check_private_dir(path, create=create, mode_mask=0o077)
    except files.UnsafeFile as exc:
        raise EngineError(f"compiled-module cache {exc}: it must be a 0700 directory of ours (its files are machine "
                          "code this process executes)") from None


def read_cache_file(path: str) -> bytes:
    """The payload of the cache file ``path`` once it passed every check; FileNotFoundError if missing.

    Deserializing is running machine code, so the file must be a regular file (not a symlink) of ours (or root's),
    closed to group/others (oci/files.py's rule), start with our magic and carry the sha256 of its payload. Raises
    ``CacheFileRefused`` naming the failed check.
    """
    try:
        fd = files.open_checked(path, mode_mask=0o077)  # FileNotFoundError passes through
    except files.UnsafeFile as exc:
        raise CacheFileRefused(str(exc)) from None
    with os.fdopen(fd, "rb") as file:
        blob = file.read()
    header = len(CACHE_MAGIC) + 32
    payload = blob[header:]
    if blob[: len(CACHE_MAGIC)] != CACHE_MAGIC or blob[len(CACHE_MAGIC) : header] != sha256(payload):
        raise CacheFileRefused("header or digest mismatch")
    return payload


class CompileCache(Generic[Finished]):
    """Compiled artifacts by sha256 of their bytes: a bounded in-memory LRU over an optional on-disk store."""

    def __init__(self, engine: wasmtime.Engine, fingerprint: str, cache_dir: str | None, memory_entries: int):
        self._engine = engine
        self._memory: OrderedDict[str, Finished] = OrderedDict()
        self._memory_entries = memory_entries
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}
        self._counts = {name: 0 for name in CacheStats.__dataclass_fields__}
        self._dir: str | None = None
        if cache_dir is not None:
            check_private_dir(cache_dir, create=True)
            self._dir = os.path.join(cache_dir, fingerprint)
            check_private_dir(self._dir, create=True)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def peek(self, digest: str, kind: EntryKind) -> Finished | None:
        """The finished artifact of ``digest`` when it is in memory (a memory hit, counted), else None."""
        key = f"{digest}.{kind.value}"
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self._counts["memory_hits"] += 1
            return hit

    def get(
        self, digest: str, kind: EntryKind, wasm: bytes, name: str, finish: Callable[[Any], Finished]
    ) -> tuple[Finished, str]:
        """The finished artifact for ``wasm`` and where it came from: "memory", "disk" or "compiled".

        ``finish`` turns a fresh Module/Component into what every start shares (links it, finds its entry);
        only finished artifacts enter the memory cache.
        """
        key = f"{digest}.{kind.value}"
        with self._lock:
            hit = self._memory_hit(key)
            if hit is not None:
                return hit, "memory"
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:  # concurrent prepares of the same bytes compile once
            with self._lock:
                hit = self._memory_hit(key)  # the compile this prepare waited for
                if hit is not None:
                    return hit, "memory"
            try:
                source = "disk"
                artifact = self._load(key, kind)
                if artifact is None:
                    source = "compiled"
                    artifact = self._compile(kind, wasm, name)
                    self._store(key, artifact)
                finished = finish(artifact)
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
            with self._lock:
                self._memory[key] = finished
                while len(self._memory) > self._memory_entries:
                    self._memory.popitem(last=False)
            return finished, source

    def _memory_hit(self, key: str) -> Finished | None:
        """The finished artifact in memory, counted and made most recent; None on a miss (caller holds _lock)."""
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            self._counts["memory_hits"] += 1
        return hit

    def _compile(self, kind: EntryKind, wasm: bytes, name: str) -> Any:
        self._count("compiles")
        try:
            if kind is EntryKind.MODULE:
                return wasmtime.Module(self._engine, wasm)
            return wasm_component.Component(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise EngineError(f"{name} is not valid WebAssembly: {error_summary(str(exc))}") from None

    def _path(self, key: str) -> str | None:
        return None if self._dir is None else os.path.join(self._dir, key + ".cwasm")

    def _load(self, key: str, kind: EntryKind) -> Any:
        path = self._path(key)
        if path is None:
            return None
        try:
            payload = read_cache_file(path)
        except FileNotFoundError:
            return None
        except CacheFileRefused as exc:
            self._discard(path, str(exc))
            return None
        try:
            if kind is EntryKind.MODULE:
                artifact: Any = wasmtime.Module.deserialize(self._engine, payload)
            else:
                artifact = wasm_component.Component.deserialize(self._engine, payload)
        except wasmtime.WasmtimeError as exc:
            self._discard(path, f"wasmtime refused it: {error_summary(str(exc))}")
            return None
        self._count("disk_hits")
        return artifact

    def _store(self, key: str, artifact: Any) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            self._write(path, bytes(artifact.serialize()))
        except OSError as exc:
            # The cache is an optimisation: a full disk must not fail the container.
            log.warning("cannot write compiled-module cache file %s: %s", path, exc)

    def _write(self, path: str, payload: bytes) -> str:
        """Write a cache file (temporary name, fsync, rename); return the payload's sha256 (hex)."""
        digest = sha256(payload)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(CACHE_MAGIC + digest + payload)
                file.flush()
                os.fsync(file.fileno())
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._count("disk_writes")
        return digest.hex()

    def _discard(self, path: str, why: str) -> None:
        log.warning("discarding compiled-module cache file %s: %s", path, why)
        self._count("disk_discarded")
        try:
            os.unlink(path)
        except OSError:
            pass
