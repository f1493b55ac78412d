"""Mounting a task's rootfs from containerd's Mount list, and unmounting it again.

Owns: translating containerd `Mount{type, source, target, options}` into mount(2) calls (flag options become
flags, the rest become the data string, `bind`/`rbind` become MS_BIND[|MS_REC], `ro` on a bind is applied with a
remount as the kernel requires), and the reverse on delete.

Invariants: a failed mount of a list leaves nothing mounted (what was mounted is undone); unmount is idempotent
(an unmounted path is fine) and removes every mount at or below the rootfs, deepest first.
Imported lazily (ctypes is not free) — only when there is something to mount or unmount.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# option -> (clear?, flag) as in mount(8) and containerd's mount_linux.go option table.
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}


class MountError(OSError):
    pass


@dataclass(frozen=True)
class MountSpec:
    type: str
    source: str
    target: str
    options: tuple[str, ...]


def parse_options(options: Sequence[str]) -> tuple[int, str]:
    flags = 0
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[option]
            flags = flags & ~flag if clear else flags | flag
        else:
            data.append(option)
    return flags, ",".join(data)


_libc = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    rc = _lib().mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount {fstype or 'bind'} {source} on {target} (data {data!r}): {os.strerror(err)}")


def _umount(target: str) -> None:
    if _lib().umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise MountError(err, f"umount {target}: {os.strerror(err)}")


def mount_all(mounts: Sequence[MountSpec], rootfs: str) -> None:
    """Mount each entry at rootfs/target, in order; undo everything on the first failure."""
    done: list[str] = []
    try:
        for m in mounts:
            target = os.path.join(rootfs, m.target.lstrip("/")) if m.target else rootfs
            flags, data = parse_options(m.options)
            if m.type == "bind" or flags & MS_BIND:
                _mount(m.source, target, "", flags & ~MS_RDONLY | MS_BIND, data)
                done.append(target)
                if flags & MS_RDONLY:
                    _mount("", target, "", flags | MS_REMOUNT | MS_BIND | MS_RDONLY, "")
            else:
                _mount(m.source, target, m.type, flags, data)
                done.append(target)
    except BaseException:
        for target in reversed(done):
            try:
                _umount(target)
            except OSError:
                pass
        raise


def mounted_under(path: str) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(rootfs: str) -> None:
    for point in mounted_under(rootfs):
        _umount(point)
