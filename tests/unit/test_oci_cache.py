"""The node-local artifact cache (oci/cache.py): atomic, digest-checked, size-capped with LRU eviction."""

from __future__ import annotations

import hashlib
import logging
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


class Fetches:
    """A fetch that writes `data` and counts how often it was asked."""

    def __init__(self, data: bytes) -> None:
        self.data, self.count = data, 0

    def __call__(self, sink: IO[bytes]) -> None:
        self.count += 1
        sink.write(self.data)


@pytest.mark.parametrize("damage", ["other bytes", "truncated", "symlink", "other bytes, same size and mtime"])
def test_a_tampered_blob_is_detected_removed_and_fetched_again(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               damage: str) -> None:
    good = b"\0asm\x01\0\0\0good module"
    fetch = Fetches(good)
    cache = ArtifactCache(str(tmp_path), max_bytes=1000)
    path = Path(cache.ensure(_digest(good), len(good), fetch))
    assert fetch.count == 1 and cache.ensure(_digest(good), len(good), fetch) == str(path) and fetch.count == 1
    if damage == "symlink":
        planted = tmp_path / "planted.wasm"
        planted.write_bytes(good)  # even the right bytes: a cache entry is never a link to elsewhere
        path.unlink()
        path.symlink_to(planted)
    else:
        st = path.stat()
        path.write_bytes(good[:5] if damage == "truncated" else good.replace(b"good", b"evil"))
        if damage == "other bytes, same size and mtime":
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime still tells
    with caplog.at_level(logging.WARNING):
        served = cache.ensure(_digest(good), len(good), fetch)
    assert fetch.count == 2, "fetched again"
    assert Path(served).read_bytes() == good and not Path(served).is_symlink()
    assert f"artifact cache: blob {path} refused and removed" in caplog.text
    # A new daemon (no pins) checks the bytes too, and takes the good file as it is.
    assert ArtifactCache(str(tmp_path), max_bytes=1000).ensure(_digest(good), len(good), fetch) == served
    assert fetch.count == 2


@pytest.mark.parametrize("problem", ["root mode", "blobs mode", "symlink", "owner"])
def test_a_cache_directory_that_fails_its_checks_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             problem: str) -> None:
    good = b"\0asm\x01\0\0\0good module"
    root = tmp_path / "artifacts"
    planted_dir = tmp_path / "planted" if problem == "symlink" else root
    blobs = planted_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / _digest(good)[7:]).write_bytes(b"\0asm\x01\0\0\0evil module")  # a local user's file, under the name
    if problem == "symlink":
        root.symlink_to(planted_dir)
    elif problem == "root mode":
        os.chmod(root, 0o777)
    elif problem == "blobs mode":
        os.chmod(blobs, 0o777)
    elif os.geteuid() == 0:
        os.chown(root, 65534, 65534)
    else:
        pytest.skip("chown needs root")
    with caplog.at_level(logging.WARNING):
        cache = ArtifactCache(str(root), max_bytes=1000)
    assert cache.refused and cache.root != str(root)
    assert f"artifact cache {root} is not used (" in caplog.text
    fetch = Fetches(good)
    served = Path(cache.ensure(_digest(good), len(good), fetch))
    assert fetch.count == 1 and served.read_bytes() == good
    assert not served.is_relative_to(planted_dir)
    private = Path(cache.root)
    assert private.stat().st_mode & 0o777 == 0o700
    del cache
    import gc

    gc.collect()
    assert not private.exists(), "the private fallback directory goes with the cache"


def test_a_fallback_directory_of_a_killed_daemon_is_removed_by_the_next_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    abandoned = tmp_path / "tmp" / f"wasm-shim-artifacts.{gone}.abcd1234"  # its daemon was SIGKILLed
    (abandoned / "blobs").mkdir(parents=True)
    alive = tmp_path / "tmp" / f"wasm-shim-artifacts.{os.getpid()}.efgh5678"  # another daemon, still running
    alive.mkdir()
    refused = tmp_path / "artifacts"
    refused.mkdir(mode=0o777)
    os.chmod(refused, 0o777)
    cache = ArtifactCache(str(refused), max_bytes=1000)
    assert cache.refused
    assert not abandoned.exists() and alive.exists()
    assert Path(cache.root).parent == tmp_path / "tmp"
