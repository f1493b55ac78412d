"""Where a task's entrypoint comes from and which image it is: `EntrypointSource.provide`, once per Create.

The steps, in this order, each once:
1. find args[0] in the container's filesystem (engines/base.py `find_entrypoint`);
2. determine the image the container runs (`ImageOrigin`), when the policy needs it or the rootfs lacks args[0]:
   from containerd's image and content store (content_store.py), or, for `wasm.shim.io/artifact: REF`, from the
   registry through the node's cache (registry.py);
3. let the signature policy decide on exactly that origin (admission.py);
4. place the origin's wasm layer at args[0] when it is a wasm OCI artifact (a containerd 2.x pull leaves the
   rootfs empty: the layer is not a tar);
5. read args[0] once and say what it is (`read_entrypoint`): the task service gives the resulting `Entrypoint` to
   the engine that accepts its kind.

Invariants:
- Nothing of an image is placed or read before the policy allowed that image; what is placed is the layer of the
  manifest that was checked, and the log line and every refusal name it.
- A regular image with its entrypoint in the rootfs under no policy (or an allow-all one) costs one stat and one
  8-byte read: no gRPC import, no call.
- CRI's sandbox (pause) container is the node's (containerd's `sandbox_image`), not the pod author's choice, and runs
  no wasm: no policy applies to it and nothing is placed over it, though containerd copies the pod's annotations
  (a `wasm.shim.io/artifact` among them) into its spec too.
- Blocking (gRPC, HTTP, file I/O): call it off the event loop.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..engines.base import EntryPath, Entrypoint, GuestSpec, WouldBlock, find_entrypoint, read_entrypoint
from .admission import Admission
from .content_store import ContentStore
from .origin import ImageOrigin, ImageOriginError
from .registry import RegistryArtifacts

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Provided:
    """A Create's entrypoint, ready for its engine, and the image it came from (None: not determined or none)."""

    entry: Entrypoint
    origin: ImageOrigin | None


class EntrypointSource:
    """The providers and the policy, in the order of the module docstring. Owned by the task service."""

    def __init__(self, admission: Admission | None = None, content_store: ContentStore | None = None,
                 registry: RegistryArtifacts | None = None) -> None:
        self.admission = admission or Admission()
        self.content_store = content_store or ContentStore()
        self.registry = registry or RegistryArtifacts("")

    def close(self) -> None:
        self.content_store.close()

    def provide(self, spec: GuestSpec, namespace: str, *, local_only: bool = False) -> Provided:
        """The entrypoint and origin of the task `spec` describes; EngineError (ImageOriginError, AdmissionError,
        or the entrypoint's own) with the reason when it cannot or may not run. ``local_only``: WouldBlock, before
        anything is placed, when the answer needs containerd, a registry or a signature check (the event loop asks
        so first: a regular image under no policy is answered from the rootfs alone)."""
        path = find_entrypoint(spec)
        if spec.grant.sandbox:
            return Provided(read_entrypoint(path), None)
        policy = self.admission.policy()
        reference = spec.grant.artifact
        if local_only and (reference or self.admission.checks(policy) or self._looked_up(path)):
            raise WouldBlock("the image must be determined (containerd, a registry) or checked (the policy)")
        if reference:
            settings = policy.registry if policy is not None else None
            origin: ImageOrigin | None = self.registry.identify(reference, settings)
            self.admission.decide(policy, origin, spec.task_id)
            assert origin is not None
            self.registry.place(origin, path, settings, reference)
            self._placed(spec, path, origin, "the node's artifact cache")
            return Provided(read_entrypoint(path), origin)
        origin = self._identify(spec, namespace, path, needed=self.admission.checks(policy))
        self.admission.decide(policy, origin, spec.task_id)
        if origin is not None and origin.layer is not None:
            self.content_store.place(origin, path, namespace)
            self._placed(spec, path, origin, "containerd's content store")
        return Provided(read_entrypoint(path), origin)

    def _looked_up(self, path: EntryPath) -> bool:
        """Whether args[0] is missing where containerd's content store may hold it (a wasm OCI artifact's rootfs)."""
        return bool(self.content_store.address) and path.searched is None and not os.path.lexists(path.host_path)

    def _identify(self, spec: GuestSpec, namespace: str, path: EntryPath, *, needed: bool) -> ImageOrigin | None:
        if not needed and not self._looked_up(path):
            return None
        try:
            return self.content_store.identify(spec, namespace)
        except ImageOriginError as exc:
            if needed:
                raise
            # Looked up only because args[0] is missing (a wasm artifact's rootfs is empty): the user's first
            # problem is the missing file, then why the artifact route did not help.
            raise ImageOriginError(f"entrypoint {path.guest_path}: no such file in the container's rootfs, and "
                                   f"it is not a wasm OCI artifact's either: {exc}") from None

    @staticmethod
    def _placed(spec: GuestSpec, path: EntryPath, origin: ImageOrigin, where: str) -> None:
        assert origin.layer is not None
        log.info("placed wasm layer %s (%s, %d bytes) of image %s@%s (manifest %s) from %s at %s",
                 origin.layer.digest, origin.layer.media_type, origin.layer.size, origin.name, origin.digest,
                 origin.manifest, where, path.guest_path, extra={"task": spec.task_id})
