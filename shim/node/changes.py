"""The changes one installer run makes to a node, each recorded in an undo log before it counts as made.

Owns the primitive edits (create directories, write a file, point a link, remove a file) and `UndoLog`, their
inverses in order. The install replays the log backwards when anything fails, so the node is as it was found.

Invariants: an edit adds its inverse to the log only once it has happened (a failed edit needs no undo); an inverse
puts back exactly the bytes, link target or absence there was before; `replay` runs every inverse even when one
fails, and returns what could not be undone.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from .distributions import InstallError
from .host import PARTIAL_SUFFIX, Host, write_atomic


class UndoLog:
    """Inverse actions of what this run changed, replayed newest first when the run fails."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, action: Callable[[], None]) -> None:
        self._undo.append((what, action))

    def replay(self) -> list[str]:
        errors = []
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
            except OSError as exc:
                errors.append(f"undo {what}: {exc}")
        return errors


class Changes:
    """Edits of node paths through `host`, each undoable through `undo`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.undo = UndoLog()

    def mkdirs(self, node_path: str, created: list[str]) -> None:
        """Create `node_path` and its missing parents (0755); each one created is appended to `created`."""
        missing = []
        path = node_path
        while path not in ("/", "") and not self.host.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            try:
                os.mkdir(self.host.path(directory), 0o755)
            except OSError as exc:
                raise InstallError(f"cannot create {directory}: {exc.strerror}") from None
            created.append(directory)
            self.undo.add(f"mkdir {directory}", functools.partial(os.rmdir, self.host.path(directory)))

    def write(self, node_path: str, data: bytes, mode: int = 0o644, keep_mode: bool = True) -> None:
        before = self.host.read(node_path)
        try:
            write_atomic(self.host.path(node_path), data, mode_from=self.host.path(node_path) if keep_mode else None,
                         mode=mode)
        except OSError as exc:
            raise InstallError(f"cannot write {node_path}: {exc.strerror}") from None
        self.undo.add(f"write {node_path}", functools.partial(self.put_back, node_path, before))

    def put_back(self, node_path: str, data: bytes | None) -> None:
        """Make `node_path` hold `data` again (None: not exist)."""
        if data is None:
            os.unlink(self.host.path(node_path))
        else:
            write_atomic(self.host.path(node_path), data, mode_from=self.host.path(node_path))

    def remove(self, node_path: str) -> None:
        """Remove the regular file `node_path` (nothing if it is not one)."""
        before = self.host.read(node_path)
        if before is None:
            return
        try:
            os.unlink(self.host.path(node_path))
        except OSError as exc:
            raise InstallError(f"cannot remove {node_path}: {exc.strerror}") from None
        self.undo.add(f"remove {node_path}", functools.partial(self.put_back, node_path, before))

    def symlink(self, node_path: str, target: str) -> None:
        real = self.host.path(node_path)
        before = os.readlink(real) if os.path.islink(real) else None
        if before == target:
            return
        tmp = real + PARTIAL_SUFFIX
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, real)
        except OSError as exc:
            raise InstallError(f"cannot link {node_path}: {exc.strerror}") from None

        def back() -> None:
            os.unlink(real)
            if before is not None:
                os.symlink(before, real)

        self.undo.add(f"link {node_path}", back)
