"""Files the shim trusts: writing them so a reader never sees half of one, and checking them before they are read.

Writing: every writer here (the artifact cache, key files, pulled artifacts, verification records, a layer placed
in a container's rootfs) writes a temporary sibling opened with O_EXCL, then renames it over the final name. The
rename is the writer's; `removed_on_failure` owns only the clean-up: whatever goes wrong before it, the temporary
does not outlive the attempt.

Checking (`check_private_dir`, `open_checked`): what a cache holds decides what runs, so a cache directory and its
files are trusted only when nobody but us (or root) could have put them there:
- a directory is a real directory (lstat: a symlink is refused, never followed), owned by root or by our effective
  uid, and not writable by group or others (`mode_mask` 0o022; a cache of machine code passes 0o077: not even
  readable by others);
- a file is opened with O_NOFOLLOW (a symlink is refused by the kernel, so the check and the read are of one
  inode), then fstat'ed: a regular file, owned by root or us, not writable by group or others.
Failures raise `UnsafeFile` naming the path and the check that failed, for the caller to log and fall back (no
disk cache, or the entry dropped and fetched again).
"""

from __future__ import annotations

import errno
import os
import stat

DIR_MASK = 0o022  # group/others may not write
FILE_MASK = 0o022


class UnsafeFile(Exception):
    """A cache directory or file fails an ownership, mode or type check; the message names it and the check."""


class removed_on_failure:  # noqa: N801  (used as a function: `with removed_on_failure(path):`)
    """Unlink ``temporary`` (if it exists) when the block raises anything, then re-raise it unchanged."""

    def __init__(self, temporary: str) -> None:
        self._temporary = temporary

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            try:
                os.unlink(self._temporary)
            except OSError:
                pass


def _trusted_owners() -> tuple[int, ...]:
    return (0, os.geteuid())


def _owner_and_mode_problem(info: os.stat_result, mask: int) -> str:
    if info.st_uid not in _trusted_owners():
        return f"is owned by uid {info.st_uid}, not by root or by us (uid {os.geteuid()})"
    if info.st_mode & mask:
        rule = "group and others must not write to it" if mask == 0o022 else f"it must not have mode bits {mask:04o}"
        return f"has mode {stat.S_IMODE(info.st_mode):04o} ({rule})"
    return ""


def check_private_dir(path: str, *, create: bool = False, mode_mask: int = DIR_MASK) -> None:
    """`path` is a directory only root or we control (see the module rules); with `create`, made 0700 first when
    missing (and its missing parents). UnsafeFile naming the path and the failed check otherwise."""
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UnsafeFile(f"{path}: cannot create it: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafeFile(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFile(f"{path} is a symbolic link (to {_link_target(path)}); a cache directory must be a real "
                         "directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFile(f"{path} is not a directory")
    problem = _owner_and_mode_problem(info, mode_mask)
    if problem:
        raise UnsafeFile(f"{path} {problem}")


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def open_checked(path: str, *, dir_fd: int | None = None, mode_mask: int = FILE_MASK) -> int:
    """An O_RDONLY descriptor of the regular file `path` (relative to `dir_fd` if given) after the module's file
    checks. FileNotFoundError when it does not exist; UnsafeFile when it exists and must not be trusted."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang the open
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # open(2): O_NOFOLLOW and the last component is a symbolic link
            raise UnsafeFile(f"{path} is a symbolic link") from None
        raise UnsafeFile(f"{path}: cannot open it: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        problem = _owner_and_mode_problem(info, mode_mask)
        if problem:
            raise UnsafeFile(f"{path} {problem}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
