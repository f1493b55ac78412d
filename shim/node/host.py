"""A node's file system as the installer sees it through its host-root mount, and the one way it replaces a file.

Paths: a *node path* is what the node's own processes see (`/etc/containerd/config.toml`); `Host.path` maps it
under the host-root mount the installer sees it through (`/host/etc/...`).

Invariants: every read of a node file goes through `Host.read`, which answers None for a missing file and an
InstallError naming the path for anything else it cannot read; `write_atomic` replaces a file all at once (a
reader sees the old bytes or the new, never a mix), keeping the old file's mode.
"""

from __future__ import annotations

import os
import shutil

from .distributions import InstallError, Probe

PARTIAL_SUFFIX = ".wasm-shim.partial"


def write_atomic(path: str, data: bytes, *, mode_from: str | None = None, mode: int = 0o644) -> None:
    """Replace `path` with `data` all at once (temp file in the same directory + rename; mode of `mode_from`)."""
    partial = path + PARTIAL_SUFFIX
    try:
        # Created 0600 and given its final mode only when complete: a file holding credentials is never readable by
        # others, not even while it is written.
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode_from is not None and os.path.exists(mode_from):
            shutil.copymode(mode_from, partial)
        else:
            os.chmod(partial, mode)
        os.replace(partial, path)
    except OSError:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise


class Host:
    """A node's file system through its host-root mount."""

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise InstallError(f"--host-root {root} is not a directory (mount the node's / there)")
        self.root = os.path.abspath(root)

    def path(self, node_path: str) -> str:
        return os.path.join(self.root, node_path.lstrip("/"))

    def exists(self, node_path: str) -> bool:
        return os.path.lexists(self.path(node_path))

    def is_link_to(self, node_path: str, target: str) -> bool:
        real = self.path(node_path)
        return os.path.islink(real) and os.readlink(real) == target

    def read(self, node_path: str) -> bytes | None:
        try:
            with open(self.path(node_path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise InstallError(f"{node_path} is a directory, not a file") from None
        except OSError as exc:
            raise InstallError(f"cannot read {node_path}: {exc.strerror}") from None

    def probe(self) -> Probe:
        return Probe(self.exists, self.read)
