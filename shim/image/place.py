"""Putting an artifact's layer at a container's entrypoint: the one way a file is written into a rootfs.

Owns `place_layer`: the layer streams (from containerd's content store or the node's artifact cache) into a new
file beside args[0] inside the container's rootfs, and is renamed over args[0] only once its writer has checked
every byte against the layer's digest.

Invariants:
- The file is written inside the rootfs only: the path was resolved with `safe_join` (no symlink in the image leads
  out of it), and an entrypoint under a bind mount (a host directory the pod was granted) is refused, never
  written: the daemon runs as root and must not write where the container itself may not.
- The temporary is created exclusively (O_EXCL, O_NOFOLLOW) and removed on any failure, so a half-written or
  unverified module is never visible at args[0], and one that was there is replaced whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

from wasm_shim.oci.files import removed_on_failure

from ..engines.base import EntryPath
from .origin import ImageOrigin, ImageOriginError


def place_layer(entry: EntryPath, origin: ImageOrigin, write: Callable[[IO[bytes]], None]) -> None:
    """Write the layer through `write(sink)` (which verifies while it writes and raises on a mismatch) to args[0].

    ImageOriginError naming the image and the path when the entrypoint is not in the rootfs or the write fails.
    """
    if not entry.in_rootfs:
        raise ImageOriginError(f"{origin}: its layer can only be placed in the container's rootfs, and "
                               f"{entry.guest_path} is under a mounted volume")
    directory = os.path.dirname(entry.host_path)
    temporary = os.path.join(directory, f".{os.path.basename(entry.host_path)}.wasm-shim-{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with removed_on_failure(temporary):
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as sink:
                write(sink)
            os.rename(temporary, entry.host_path)
    except OSError as exc:
        raise ImageOriginError(f"cannot place the layer of {origin} at {entry.guest_path} in the container's "
                               f"rootfs: {exc.strerror}") from None
