"""`wasm-shim node uninstall`, the steps: take our block out of containerd's config as it is now, restart
containerd, then remove exactly the files, links and directories the install record names.

Invariants:
- Nothing but what the record names is removed: an operator's edit of containerd's config after install (even
  one a reinstall saw) stays byte for byte; a file someone put in the prefix, a link someone repointed, a table
  of ours someone changed, all stay, and the outcome lists each (`Outcome.left`) with the reason.
- The config comes first: when our block cannot be taken out safely (the file no longer parses, the line edit
  would change anything else), the uninstall stops with the reason before removing anything, so the node keeps
  a working runtime and can be uninstalled again once the file is fixed.
- containerd restarts on the bytes just written (the operator's current file minus our block), and only when
  they changed.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field

from .distributions import InstallError, plan_uninstall
from .host import PARTIAL_SUFFIX, write_atomic
from .prefix import LOCK_FILE
from .record import STATE_FILE, Record
from .restart import layout_for_restart, say
from .session import Session


@dataclass
class Outcome:
    problem: str = ""  # a step that failed (the restart): the uninstall exits 1
    left: list[str] = field(default_factory=list)  # what stays on the node and why (not ours, or changed since)


def uninstall(s: Session, record: Record | None) -> Outcome:
    out = Outcome()
    if record is None:
        # A lock and no record: a first install that stopped before writing one. Its lock is all we know of.
        _remove_file(s, s.p(LOCK_FILE))
        out.left += _leftovers(s, s.prefix, "it holds files of no install record")
        say(f"no install record under {s.prefix}: removed the lock only")
        return out
    _config(s, record, out)
    _links(s, record, out)
    for name in record.versions:
        _remove_tree(s, s.p("versions", name))
    versions = s.host.path(s.p("versions"))
    if os.path.isdir(versions) and not os.path.islink(versions):
        for name in os.listdir(versions):
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):  # a copy an install was killed during
                _remove_tree(s, s.p("versions", name))
    for name in record.files:
        _remove_file(s, s.p(name))
    _remove_file(s, s.p(STATE_FILE))
    _remove_file(s, s.p(LOCK_FILE))  # still held: nobody else starts on a half-removed install
    for directory in sorted(set(record.created_dirs), key=lambda d: d.count("/"), reverse=True):
        _remove_empty_dir(s, directory)
    for entry in record.daemon_dirs:
        _daemon_dir(s, entry["path"], entry["top"], out)
    out.left += _leftovers(s, s.prefix, "it holds files the installer did not put there")
    say("uninstalled" + (" (some things stay: see below)" if out.left else ""))
    return out


def _config(s: Session, record: Record, out: Outcome) -> None:
    path = record.config_path
    restore = plan_uninstall(path, s.host.read(path), record.config_edit)  # InstallError: nothing removed yet
    if restore.delete or restore.write is not None:
        s.before_restarting_changes()  # waits for a restart slot; nothing removed yet
    try:
        if restore.delete:
            os.unlink(s.host.path(path))
        elif restore.write is not None:
            write_atomic(s.host.path(path), restore.write, mode_from=s.host.path(path))
    except OSError as exc:
        raise InstallError(f"cannot write {path}: {exc.strerror}; nothing of ours was removed") from None
    for note in restore.notes:
        say(f"{path}: {note}")
    out.left += [f"{path}: {kept}" for kept in restore.kept]
    if s.o.restart and (restore.delete or restore.write is not None):
        try:
            s.restarter.restart(layout_for_restart(s.host.probe(), record.layout, path, record.config_version))
        except InstallError as exc:
            out.problem = str(exc)


def _links(s: Session, record: Record, out: Outcome) -> None:
    if record.bin_link:
        if s.host.is_link_to(record.bin_link, record.bin_link_target):
            os.unlink(s.host.path(record.bin_link))
        elif s.host.exists(record.bin_link):
            out.left.append(f"{record.bin_link}: not the link the install made (to {record.bin_link_target}): left")
    current = s.p("current")
    real = s.host.path(current)
    if os.path.islink(real):
        target = os.readlink(real)
        if os.path.dirname(target) == "versions" and os.path.basename(target) in record.versions:
            os.unlink(real)


def _remove_file(s: Session, node_path: str) -> None:
    real = s.host.path(node_path)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        os.unlink(real)


def _remove_tree(s: Session, node_path: str) -> None:
    real = s.host.path(node_path)
    if os.path.isdir(real) and not os.path.islink(real):
        shutil.rmtree(real)


def _remove_empty_dir(s: Session, node_path: str) -> bool:
    real = s.host.path(node_path)
    if not os.path.isdir(real) or os.path.islink(real):
        return False
    try:
        os.rmdir(real)
    except OSError:
        return False  # something else is in it now: it stays
    return True


def _daemon_dir(s: Session, path: str, top: str, out: Outcome) -> None:
    """The daemon's data directory (it made it after install): removed whole; then its parents up to `top`
    while they are empty."""
    _remove_tree(s, path)
    directory = os.path.dirname(path)
    while path != top and directory not in ("/", "") and (directory == top or directory.startswith(top + "/")):
        if not _remove_empty_dir(s, directory):
            if s.host.exists(directory):
                out.left += _leftovers(s, directory, "the daemon's data went, but other files are in it")
            break
        path, directory = directory, os.path.dirname(directory)


def _leftovers(s: Session, node_path: str, why: str) -> list[str]:
    real = s.host.path(node_path)
    if not os.path.isdir(real):
        return []
    names = sorted(os.listdir(real))
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [f"{node_path}: left, {why} ({shown})"]
