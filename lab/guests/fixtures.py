"""Builds the test guests (lab/guests/build.sh) once per change of their sources; the `guests` fixture.

Owns: the build cache under ``$WASM_SHIM_CACHE/guests/<digest>`` (default ``~/.cache/wasm-shim``), where
``<digest>`` hashes build.sh and everything in src/, so an edited guest gets a fresh directory and an
unchanged tree is never rebuilt. Invariants: a directory is used only once it holds the ``.complete`` stamp
written after a successful build; concurrent test processes serialise on a lock file, so they never build into
the same directory at once. Use it from a conftest with ``pytest_plugins = ["lab.guests.fixtures"]``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

GUESTS_SOURCE = Path(__file__).resolve().parent
BUILD_TIMEOUT = 900  # seconds: the first build installs jco from npm
LOCK_TIMEOUT = BUILD_TIMEOUT + 60


def sources_digest(source: Path = GUESTS_SOURCE) -> str:
    """sha256 over build.sh and every file under src/ (names and contents), as hex."""
    digest = hashlib.sha256()
    files = [source / "build.sh", *sorted(p for p in (source / "src").rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("WASM_SHIM_CACHE", "~/.cache/wasm-shim")).expanduser() / "guests"


def build_guests(root: Path | None = None) -> Path:
    """Build (if needed) and return the directory holding NAME.wasm and NAME.component.wasm."""
    root = root or cache_root()
    digest = sources_digest()
    out = root / digest[:16]
    stamp = out / ".complete"
    if stamp.exists():
        return out
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = root / ".lock"
                    raise RuntimeError(f"timed out waiting for the guest build holding {holder}") from None
                time.sleep(0.2)
        if stamp.exists():  # another process built it while we waited
            return out
        try:
            result = subprocess.run(
                ["bash", str(GUESTS_SOURCE / "build.sh"), str(out)],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"building the test guests took over {BUILD_TIMEOUT} s (into {out})") from None
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
            raise RuntimeError(f"building the test guests failed (exit {result.returncode}):\n{tail}")
        stamp.write_text(digest + "\n")
    return out


@pytest.fixture(scope="session")
def guests() -> Path:
    """The directory of built guests: ``guests / "hello.wasm"``, ``guests / "hello.component.wasm"``."""
    return build_guests()
