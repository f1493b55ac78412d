"""Where a task's entrypoint comes from: the container's rootfs, or containerd's content store.

Owns: `provide_entrypoint`, called by TaskService.create before an engine is chosen. A regular image carries its
`.wasm` in the rootfs and needs nothing from here. A wasm OCI artifact (PROTOCOL.md "Wasm in OCI registries":
config `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) is pulled by containerd 2.x without
unpacking (its layer is not a tar), so its rootfs is empty: the module is only in containerd's content store. Then
this module looks the container up over containerd's gRPC API (Containers.Get -> Images.Get -> Content.Read under a
lease, containerd_client.py) and places the verified layer at args[0] inside the container's rootfs, where the engine
finds it like any other entrypoint — so the compiled-module cache (keyed by the sha256 of the bytes, the layer's
digest) makes a second start compile nothing, and the guest sees its module where the pod spec says it is.

Invariants:
- Nothing happens when args[0] exists in the rootfs (one lstat): regular images pay no gRPC import or call.
- When the image is not a wasm artifact (or there is no image, or no gRPC address), the spec is left as it is and
  the engine's own error ("no such file in the container's rootfs", "neither ... nor ...") is what the user sees.
- An artifact the shim cannot run (two layers, an unknown layer media type) or a failed lookup is an
  ImageSourceError (an EngineError: TaskService turns it into the Create error `kubectl describe` shows) whose
  message names the image and what is wrong.
- The file is written inside the rootfs only (the path resolved with `safe_join`, so no symlink in the image leads
  out of it), created exclusively under a temporary name and renamed into place: a half-written module is never
  visible at args[0].
- grpc is imported only on this path (lazily, through containerd_client), never when this module is imported.
"""

from __future__ import annotations

import logging
import os

from wasm_shim.oci.files import removed_on_failure

from .engines.base import EngineError, GuestSpec, resolve_entrypoint

log = logging.getLogger(__name__)

# The daemon's environment: containerd's gRPC socket, from `start`'s GRPC_ADDRESS or -address (shim/binary.py).
GRPC_ADDRESS_ENV = "WASM_SHIM_DAEMON_GRPC_ADDRESS"


class ImageSourceError(EngineError):
    """The entrypoint had to come from containerd's content store and could not; the message says why."""


def provide_entrypoint(spec: GuestSpec, namespace: str, address: str | None = None) -> bool:
    """Make args[0] exist in the rootfs if the container's image is a wasm OCI artifact; True if it placed it.

    `address` is containerd's gRPC socket (default: the daemon's WASM_SHIM_DAEMON_GRPC_ADDRESS). Blocking (gRPC,
    file I/O): call it off the event loop.
    """
    try:
        entry = resolve_entrypoint(spec)
    except EngineError:
        return False  # no args, a bad "#export": the engine reports it
    if os.path.lexists(entry.host_path):
        return False
    address = os.environ.get(GRPC_ADDRESS_ENV, "") if address is None else address
    if not address:
        return False

    from wasm_shim.oci.artifact import ArtifactError
    from wasm_shim.shim.containerd_client import ContainerdClient, ContentStoreError, NotFound, fetch_wasm_layer

    image = ""
    try:
        with ContainerdClient(address, namespace) as client:
            image = client.container_image(spec.task_id)
            if not image:
                return False
            layer = fetch_wasm_layer(client, image)
    except NotFound as exc:
        # A container containerd does not know (a task created without one) or an image removed since: nothing to
        # fetch; the engine's "no such file" stands, with this in the log for the operator.
        log.info("task %s: %s is not in the rootfs and not in containerd's store: %s", spec.task_id,
                 entry.guest_path, exc)
        return False
    except ArtifactError as exc:
        raise ImageSourceError(f"image {image} is a wasm OCI artifact the shim cannot run: {exc}") from None
    except ContentStoreError as exc:
        # The engine's own words first (what a user of a regular image expects), then why the artifact route failed.
        raise ImageSourceError(
            f"entrypoint {entry.guest_path}: no such file in the container's rootfs, and looking the container's "
            f"image up in containerd's content store (for a wasm OCI artifact) failed: {exc}"
        ) from None
    if layer is None:
        return False
    _place(entry.host_path, entry.guest_path, layer.data, image)
    log.info("task %s: placed wasm layer %s (%s, %d bytes) of image %s (manifest %s) from containerd's content "
             "store at %s", spec.task_id, layer.descriptor.digest, layer.descriptor.media_type, len(layer.data),
             image, layer.manifest_digest, entry.guest_path)
    return True


def _place(host_path: str, guest_path: str, data: bytes, image: str) -> None:
    directory = os.path.dirname(host_path)
    temporary = os.path.join(directory, f".{os.path.basename(host_path)}.wasm-shim-{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with removed_on_failure(temporary):
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(temporary, host_path)
    except OSError as exc:
        raise ImageSourceError(
            f"cannot place the wasm layer of image {image} at {guest_path} in the container's rootfs: "
            f"{exc.strerror}"
        ) from None
