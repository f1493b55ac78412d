"""Which directory the installer may own on a node: the checks on `--prefix` before anything is written there.

The prefix holds everything install copies and writes (versions/, current, the options file, the policy, the
backup, the record, the lock); uninstall removes from it exactly what the record names. Still, a prefix must be a
directory of the installer's own, or an operator's typo (`prefix: /opt`) puts our files among theirs:

- a plain absolute path (no `..`, no `//`), not `/`;
- not a system directory (`SYSTEM_DIRS`: /usr, /etc, /opt itself, /var, /bin, ...) and not under a volatile or
  world-writable tree (/proc, /sys, /dev, /run, /tmp, /var/tmp);
- every part of it that exists is a real directory (a symbolic link would be resolved in the installer's
  container, not on the node), owned by root (or by whoever runs the installer) and not writable by others (a
  local user could otherwise swap what install put there);
- at the first install, it is missing or empty: a directory that already holds files and no install record of
  ours is somebody else's.

Order: `plain` when a session starts; `refuse_system_dir` (install) and `check_parts` (install and uninstall)
before the lock file is created in the prefix; `check_own` under the lock, once the record has been looked for.
Uninstall skips the system-directory rule: it removes only what a record names, so a node installed into such a
directory by an older installer can still be uninstalled.

Invariants: checks over the host view that change nothing; each refusal names the prefix, the rule and what to do
instead.
"""

from __future__ import annotations

import os
import stat

from .distributions import InstallError
from .host import Host

#: Directories of the system or of other software: never a prefix, never removed by uninstall.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/opt",
    "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/var",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/local", "/usr/sbin",
    "/usr/share", "/usr/src", "/usr/local/bin", "/usr/local/etc", "/usr/local/lib", "/usr/local/sbin",
    "/usr/local/share", "/var/cache", "/var/lib", "/var/log", "/var/opt", "/var/run", "/var/snap", "/var/spool",
    "/var/tmp", "/etc/containerd", "/etc/systemd", "/etc/kubernetes", "/etc/k0s", "/var/lib/containerd",
    "/var/lib/kubelet", "/var/lib/rancher", "/opt/cni", "/opt/cni/bin", "/opt/containerd",
})
#: Trees whose contents vanish at reboot or that every user may write to.
VOLATILE_TREES = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp")
EXAMPLE = "/opt/wasm-shim"
LOCK_FILE = ".lock"  # taken before this check runs: the one entry a fresh prefix may hold


def plain(prefix: str) -> str:
    """`prefix` if it is a plain absolute path other than `/`; else InstallError."""
    if prefix.strip("/") == "" and prefix:
        raise InstallError(f"--prefix / refused: the installer needs a directory of its own, e.g. {EXAMPLE}")
    if not prefix.startswith("/") or os.path.normpath(prefix) != prefix.rstrip("/") or prefix.startswith("//"):
        raise InstallError(f"--prefix {prefix!r} must be a plain absolute path (no '..', '.' or '//'), e.g. {EXAMPLE}")
    return os.path.normpath(prefix)


def refuse_system_dir(path: str, what: str) -> None:
    path = os.path.normpath(path)
    if path in SYSTEM_DIRS:
        raise InstallError(f"{what} {path} refused: it is a system directory, not one of the installer's own; "
                           f"name a directory only the installer uses, e.g. {EXAMPLE}")
    for tree in VOLATILE_TREES:
        if path.startswith(tree + "/"):
            raise InstallError(f"{what} {path} refused: {tree} is emptied at reboot or writable by every user; "
                               f"name a directory only the installer uses, e.g. {EXAMPLE}")


def check_parts(host: Host, prefix: str) -> None:
    """The parts of `prefix` that exist are real directories, root's, not writable by others: checked before the
    lock file is created in it (install and uninstall alike)."""
    part = "/"
    for name in prefix.strip("/").split("/"):
        part = os.path.join(part, name)
        try:
            st = os.lstat(host.path(part))
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode):
            raise InstallError(f"--prefix {prefix} refused: {part} is a symbolic link (to "
                               f"{os.readlink(host.path(part))}); name the real directory")
        if not stat.S_ISDIR(st.st_mode):
            raise InstallError(f"--prefix {prefix} refused: {part} exists and is not a directory")
        if st.st_uid not in (0, os.geteuid()):
            raise InstallError(f"--prefix {prefix} refused: {part} is owned by uid {st.st_uid}, not root; that user "
                               "could change what the installer puts there")
        if st.st_mode & stat.S_IWOTH:
            raise InstallError(f"--prefix {prefix} refused: {part} is writable by every user "
                               f"(mode {stat.S_IMODE(st.st_mode):o}); a local user could change what the installer "
                               "puts there")


def check_own(host: Host, prefix: str, *, recorded: bool) -> None:
    """At the first install (`recorded`: an install record of ours is in the prefix) the prefix holds nothing but
    our lock. Under the lock, after `refuse_system_dir` and `check_parts`."""
    real = host.path(prefix)
    if not recorded and os.path.isdir(real):
        foreign = sorted(set(os.listdir(real)) - {LOCK_FILE})
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise InstallError(f"--prefix {prefix} refused: it already holds files that are not the installer's "
                               f"({shown}) and no install record; the installer needs a directory of its own "
                               f"(uninstall removes what it put there), e.g. {EXAMPLE}")
