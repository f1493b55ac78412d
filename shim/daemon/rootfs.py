"""A wasm task's root filesystem without a mount, when a directory shows the guest exactly what it reads.

containerd hands Create the rootfs as mounts (``CreateTaskRequest.rootfs``). Mounting them costs a mount(2) at
Create and, at Delete, a read of /proc/self/mountinfo and an umount(2): a few hundred microseconds on the start
path of every container, a millisecond on its teardown. For a wasm guest the rootfs is only ever a WASI preopen
(a directory given at "/"), and two shapes need no mount for it:

- a single bind mount of a directory (containerd's native snapshotter; a read-only view): the guest is given that
  directory, read-only when the mount is. What it sees is what the mount would show.
- a single overlay whose lower layers hold nothing but the entrypoint, one module at the top of the image (a wasm
  image built FROM scratch with one COPY), over an empty upper directory: the guest is given the upper directory,
  where the overlay would have put everything it writes, and the module is read from its layer. What the guest
  does not see that the mounted view would show: the module file itself, the one thing the image holds; it reads
  and writes everything else exactly as through the overlay.

Anything else (a layer with more files, a non-empty upper directory, an overlay option this module does not know,
an entrypoint that is not WebAssembly: runc needs a real rootfs) is mounted as before. Pure decisions over stat and
directory listings; the verdict on a set of lower layers is remembered (committed snapshots never change).

Invariants: a view is only ever returned for an entrypoint that starts with the wasm magic; the guest is never
given a lower layer writable (an image's files are shared by every container of that image).
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..mount import MountSpec

WASM_MAGIC = b"\0asm"
REMEMBERED = 1024  # sets of lower layers whose verdict is kept
# Overlay options that do not change what a reader sees (containerd's overlay snapshotter passes index=off and,
# rootless, userxattr; "volatile" skips syncs).
_HARMLESS_OVERLAY = frozenset({"index=off", "userxattr", "volatile", "ro", "rw"})
_HARMLESS_BIND = frozenset({"bind", "rbind", "ro", "rw", "rprivate", "private", "nosuid", "nodev", "noexec"})


@dataclass(frozen=True)
class RootView:
    """The guest's "/" without a mount: ``root`` (read-only when ``readonly``), and ``layer``, the directory the
    entrypoint is read from when it is not under ``root`` (None: it is)."""

    root: str
    readonly: bool
    layer: str | None = None


class RootViews:
    """Decides per Create whether a mount can be skipped (see the module docstring); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layers: OrderedDict[str, str | None] = OrderedDict()  # lowerdir option -> its one file, or None

    def view(self, mounts: Sequence[MountSpec], args0: str) -> RootView | None:
        """The view for a task with these rootfs ``mounts`` and entrypoint ``args0``, or None: mount them."""
        entry = args0.partition("#")[0]
        if len(mounts) != 1 or mounts[0].target or not entry.startswith("/") or "/" in entry[1:] or \
                entry in ("/", "/.", "/.."):
            return None
        mount = mounts[0]
        options = set(mount.options)
        if mount.type == "bind" or "bind" in options or "rbind" in options:
            if not options <= _HARMLESS_BIND or not os.path.isdir(mount.source):
                return None
            if not _is_wasm(os.path.join(mount.source, entry[1:])):
                return None
            return RootView(mount.source, readonly="ro" in options)
        if mount.type != "overlay":
            return None
        upper = lower = ""
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "upperdir":
                upper = value
            elif key == "lowerdir":
                lower = value
            elif key != "workdir" and option not in _HARMLESS_OVERLAY:
                return None
        if not upper or not lower or "\\" in lower or not _empty_dir(upper):
            return None
        only = self._only_file(lower)
        if only is None or only[0] != entry[1:] or not _is_wasm(only[1]):
            return None
        return RootView(upper, readonly="ro" in options, layer=os.path.dirname(only[1]))

    def _only_file(self, lower: str) -> tuple[str, str] | None:
        """(name, host path) of the one regular file at the top of the layers ``lower`` hold, if that is all."""
        with self._lock:
            if lower in self._layers:
                self._layers.move_to_end(lower)
                name = self._layers[lower]
                return None if name is None else (name, self._find(lower, name))
        name = _single_top_file(lower.split(":"))
        with self._lock:
            self._layers[lower] = name
            while len(self._layers) > REMEMBERED:
                self._layers.popitem(last=False)
        return None if name is None else (name, self._find(lower, name))

    @staticmethod
    def _find(lower: str, name: str) -> str:
        for layer in lower.split(":"):
            path = os.path.join(layer, name)
            if os.path.lexists(path):
                return path
        return os.path.join(lower.split(":")[0], name)


def _single_top_file(layers: list[str]) -> str | None:
    """The name of the only regular file in these layers (at the top level), None when there is anything else."""
    found: str | None = None
    for layer in layers:
        try:
            entries = list(os.scandir(layer))
        except OSError:
            return None
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                return None
            if not stat.S_ISREG(mode) or (found is not None and found != entry.name):
                return None  # a directory, a link, a whiteout, or a second file: the image is more than a module
            found = entry.name
    return found


def _empty_dir(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _is_wasm(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 4) == WASM_MAGIC
    finally:
        os.close(fd)
