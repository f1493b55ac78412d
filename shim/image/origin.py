"""Which manifest a container runs: `ImageOrigin`, the one answer a Create computes once and everything uses.

Owns the record of a container's image as the shim determined it: the name the user asked for, the digest it
resolved to, the manifest chosen from it, that manifest's config, and, for a wasm OCI artifact, the one layer whose
bytes become the guest's entrypoint. The provider that determined it (containerd's content store, or the registry
for `wasm.shim.io/artifact`) places exactly that layer, the signature policy checks exactly that digest, and every
log line and refusal names it: no second lookup could name another manifest.

Invariant: an `ImageOrigin` is made only when the manifest was determined without guessing; every case where it
could not be (a name containerd does not hold, an index with no manifest for this node, a manifest whose config is
not the container's image) is an `ImageOriginError` whose message says why.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasm_shim.oci.manifest import Descriptor

from ..engines.base import EngineError


class ImageOriginError(EngineError):
    """The container's manifest cannot be determined, or its artifact cannot run; the message says which and why.

    An EngineError: Create fails with FAILED_PRECONDITION and the message reaches `ctr` and `kubectl describe`.
    """


@dataclass(frozen=True)
class ImageOrigin:
    """The image a container runs, as determined at its Create."""

    name: str  # the reference the user asked for, normalised (registry/repository[:tag])
    digest: str  # what that name resolved to (an index or a manifest): what signatures name
    manifest: str  # the manifest chosen (the digest itself unless it is an index)
    config: str  # that manifest's config digest (containerd's CRI calls it the image ID)
    layer: Descriptor | None  # a wasm artifact's one layer, placed at args[0]; None for a regular image
    provider: str  # "containerd" (its image and content store) or "registry" (pulled by the shim itself)

    def __str__(self) -> str:
        parts = [f"image {self.name}@{self.digest}"]
        details = []
        if self.manifest != self.digest:
            details.append(f"manifest {self.manifest}")
        if self.layer is not None:
            details.append(f"layer {self.layer.digest}")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)
