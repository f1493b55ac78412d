"""The node-local artifact cache (oci/cache.py): atomic, digest-checked, size-capped with LRU eviction."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import IO

import pytest

from wasm_shim.oci.cache import ArtifactCache, CacheError
from wasm_shim.oci.digest import DigestMismatch


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_get_and_lru_eviction(tmp_path: Path) -> None:
    cache = ArtifactCache(str(tmp_path), max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    paths = []
    for i, blob in enumerate(blobs[:2]):
        paths.append(cache.put_bytes(_digest(blob), blob))
        os.utime(paths[-1], (1000 + i, 1000 + i))
    assert cache.get(_digest(blobs[0])) == paths[0]  # a hit refreshes blob 0: blob 1 is now the oldest
    cache.put_bytes(_digest(blobs[2]), blobs[2])
    assert cache.get(_digest(blobs[1])) is None
    assert cache.get(_digest(blobs[0])) is not None and cache.get(_digest(blobs[2])) is not None
    assert cache.usage() == 200


def test_blob_over_the_cap_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(str(tmp_path), max_bytes=10)
    with pytest.raises(CacheError, match="a blob of 11 bytes does not fit .*10 bytes cap"):
        cache.put_bytes(_digest(b"x" * 11), b"x" * 11)
    assert _all_files(tmp_path) == []


def test_failed_or_wrong_fetch_leaves_nothing(tmp_path: Path) -> None:
    cache = ArtifactCache(str(tmp_path), max_bytes=1000)
    good = b"good bytes"

    def broken(sink: IO[bytes]) -> None:
        sink.write(good[:4])
        raise ConnectionError("stream broke")

    with pytest.raises(ConnectionError):
        cache.ensure(_digest(good), len(good), broken)

    def swapped(sink: IO[bytes]) -> None:
        sink.write(b"evil bytes")

    with pytest.raises(DigestMismatch, match="tampered"):
        cache.ensure(_digest(good), len(good), swapped)
    assert _all_files(tmp_path) == []


def test_damaged_small_blob_is_forgotten_and_stale_downloads_swept(tmp_path: Path) -> None:
    cache = ArtifactCache(str(tmp_path), max_bytes=1000)
    data = b'{"schemaVersion":2}'
    path = cache.put_bytes(_digest(data), data)
    assert cache.read_bytes(_digest(data), 100) == data
    Path(path).write_bytes(b"damaged")
    assert cache.read_bytes(_digest(data), 100) is None
    assert not Path(path).exists()
    stale = tmp_path / "tmp" / "leftover"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    ArtifactCache(str(tmp_path), max_bytes=1000)
    assert not stale.exists()
