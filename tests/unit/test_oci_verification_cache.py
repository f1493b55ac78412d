"""Signature verifications remembered on disk are trusted only from a checked directory and with this node's HMAC
(oci/verification_cache.py): a forged record never stands in for a verification."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from wasm_shim.oci.policy import VerificationCache

KEY_FILE = "record.key"  # the node's record key, beside the records (oci/verification_cache.py)

DIGEST = "sha256:" + "cd" * 32
KEYS = "ecdsa-p256:0123456789abcdef"
NOBODY = 65534


def _record_name(digest: str = DIGEST, keys: str = KEYS) -> str:
    return hashlib.sha256(f"{digest}\n{keys}".encode()).hexdigest() + ".json"


def _forge(directory: Path, when: float = 1000.0, **extra: object) -> Path:
    """What a forger writes: the right name and the fields a record has, without this node's key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / _record_name()
    path.write_text(json.dumps({"digest": DIGEST, "keys": KEYS, "verified_at": when, **extra}))
    os.chmod(path, 0o600)
    return path


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_record_this_node_wrote_is_trusted_by_the_next_daemon(tmp_path: Path) -> None:
    directory = tmp_path / "cache" / "verified"
    VerificationCache(str(directory), 60, Clock()).store(DIGEST, KEYS)
    assert (directory / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert VerificationCache(str(directory), 60, Clock()).lookup(DIGEST, KEYS)
    assert not VerificationCache(str(directory), 60, Clock()).lookup(DIGEST, "other keys")


@pytest.mark.parametrize("forgery", ["no hmac", "a made-up hmac", "copied from another node"])
def test_a_forged_record_is_refused_and_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                forgery: str) -> None:
    directory = tmp_path / "cache" / "verified"
    if forgery == "copied from another node":
        other = tmp_path / "other-node" / "verified"
        VerificationCache(str(other), 60, Clock()).store(DIGEST, KEYS)
        VerificationCache(str(directory), 60, Clock()).store("sha256:" + "00" * 32, KEYS)  # this node's key exists
        (directory / _record_name()).write_bytes((other / _record_name()).read_bytes())
        forged = directory / _record_name()
    else:
        forged = _forge(directory, **({"hmac": "ab" * 32} if forgery == "a made-up hmac" else {}))
    with caplog.at_level(logging.WARNING):
        assert not VerificationCache(str(directory), 60, Clock()).lookup(DIGEST, KEYS)
    assert not forged.exists()
    assert f"signature verification record {directory}/{forged.name} refused and removed" in caplog.text


def test_a_symlinked_or_foreign_record_is_refused_and_removed(tmp_path: Path) -> None:
    directory = tmp_path / "cache" / "verified"
    cache = VerificationCache(str(directory), 60, Clock())
    cache.store(DIGEST, KEYS)
    real = tmp_path / "elsewhere.json"
    (directory / _record_name()).replace(real)
    (directory / _record_name()).symlink_to(real)
    assert not VerificationCache(str(directory), 60, Clock()).lookup(DIGEST, KEYS)
    assert not (directory / _record_name()).is_symlink() and real.exists()
    if os.geteuid() == 0:
        real.replace(directory / _record_name())
        os.chown(directory / _record_name(), NOBODY, NOBODY)
        assert not VerificationCache(str(directory), 60, Clock()).lookup(DIGEST, KEYS)
        assert not (directory / _record_name()).exists()


@pytest.mark.parametrize("problem", ["cache dir mode", "verified dir mode", "owner", "symlink"])
def test_a_directory_that_fails_its_checks_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       problem: str) -> None:
    cache_dir = tmp_path / "cache"
    directory = cache_dir / "verified"
    if problem == "symlink":
        elsewhere = tmp_path / "planted"
        forged = _forge(elsewhere)
        cache_dir.mkdir(mode=0o700)
        directory.symlink_to(elsewhere)
    else:
        forged = _forge(directory)
        if problem == "cache dir mode":
            os.chmod(cache_dir, 0o777)
        elif problem == "verified dir mode":
            os.chmod(directory, 0o733)
        elif os.geteuid() == 0:
            os.chown(directory, NOBODY, NOBODY)
        else:
            pytest.skip("chown needs root")
    with caplog.at_level(logging.WARNING):
        cache = VerificationCache(str(directory), 60, Clock())
    assert cache.directory is None and cache.refused
    assert f"signature verification cache {directory} is not used (" in caplog.text
    assert "verifications are kept in memory only" in caplog.text
    assert not cache.lookup(DIGEST, KEYS)  # the planted record is never read
    assert forged.exists(), "nothing is removed from a directory that is not ours to use"
    cache.store(DIGEST, KEYS)  # memory still works
    assert cache.lookup(DIGEST, KEYS)
    assert sorted(p.name for p in forged.parent.iterdir()) == [forged.name]  # and nothing was written there


def test_a_record_key_others_may_read_is_not_used(tmp_path: Path) -> None:
    directory = tmp_path / "verified"
    VerificationCache(str(directory), 60, Clock()).store(DIGEST, KEYS)
    os.chmod(directory / KEY_FILE, 0o644)
    assert not VerificationCache(str(directory), 60, Clock()).lookup(DIGEST, KEYS)
