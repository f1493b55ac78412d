"""Provider: a container's image from containerd's image and content store, determined without guessing.

Owns `ContentStore.identify` (which manifest a container containerd created runs) and `ContentStore.place` (that
manifest's wasm layer, streamed from the content store to args[0]).

Which manifest (docs/cri.md has the why, with what containerd's CRI does):
1. The name the user asked for: CRI's `io.kubernetes.cri.image-name` annotation (the pod's image as the kubelet
   passed it), else the image the container record names (`ctr run IMAGE`: what the user typed).
2. That name's target in containerd's image store (as written, then in its normalised form, as CRI stores it); an
   index resolves to its wasm manifest, else the manifest for this node's platform, else its only manifest.
3. When the name differs from the container record's image, both must have the same config: CRI created the
   container from the image its record names (its image ID is that config digest). A different config means the
   name now names another image (re-tagged or re-pulled since): refused, never guessed.
4. A wasm artifact's config that lists `layerDigests` must list exactly the manifest's layers.

Invariants: one gRPC channel per (containerd address, namespace), kept across Creates and replaced after a
failure (containerd may have restarted); every document read is size-capped and digest-checked (containerd.py);
grpc is imported only when a Create needs this provider (a policy to check, or an entrypoint the rootfs lacks).
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from dataclasses import dataclass
from typing import IO, Any

from wasm_shim.oci.artifact import ArtifactError, check_artifact_manifest, check_layer_binding, is_wasm_artifact
from wasm_shim.oci.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ManifestError,
    choose_manifest,
    descriptors_of,
    parse_json_object,
)

from ..engines.base import EntryPath, GuestSpec
from .origin import ImageOrigin, ImageOriginError
from .place import place_layer

log = logging.getLogger(__name__)

GRPC_ADDRESS_ENV = "WASM_SHIM_DAEMON_GRPC_ADDRESS"  # the daemon's environment: containerd's gRPC socket
MAX_CONFIG_SIZE = 1 << 20  # a wasm config is a few hundred bytes
MAX_LAYER_SIZE = 1 << 30  # a module or component; it streams to disk, this bounds the disk it may take
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "s390x": "s390x", "ppc64le": "ppc64le",
                  "riscv64": "riscv64"}


def node_platform() -> tuple[str, str]:
    """(os, architecture) in OCI's words (image-spec image-index.md "platform"), for choosing from an index."""
    machine = platform.machine()
    return "linux", _ARCHITECTURES.get(machine, machine)


def without_digest(name: str) -> str:
    """`name` as REGISTRY/REPOSITORY[:TAG], the digest (shown beside it) dropped; `name` when it does not parse."""
    from wasm_shim.oci.reference import Reference, ReferenceError, parse_reference

    try:
        ref = parse_reference(name, default_tag=False)
    except ReferenceError:
        return name
    return str(Reference(ref.registry, ref.repository, ref.tag))


def normalised(name: str) -> str:
    """`name` in the form CRI stores image names (docker.io/library/x:latest for `x`); "" if it does not parse."""
    from wasm_shim.oci.reference import ReferenceError, parse_reference

    try:
        return str(parse_reference(name)) if name else ""
    except ReferenceError:
        return ""


@dataclass(frozen=True)
class _Resolved:
    name: str  # as found in containerd's image store
    target: Descriptor  # what the name points at (index or manifest)
    manifest: Descriptor
    document: dict[str, Any]

    @property
    def config(self) -> Descriptor:
        return Descriptor.parse(self.document.get("config"), f"manifest {self.manifest.digest} of {self.name}: config")


class ContentStore:
    """containerd's image and content store, for containers containerd created (see the module docstring)."""

    def __init__(self, address: str | None = None, platform: tuple[str, str] | None = None) -> None:
        self._address = address  # None: the daemon's environment, read at each use
        self._platform = platform or node_platform()
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self._address if self._address is not None else os.environ.get(GRPC_ADDRESS_ENV, "")

    def _client(self, namespace: str) -> Any:
        from .containerd import ContainerdClient

        key = (self.address, namespace)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = ContainerdClient(*key)
            return client

    def _forget(self, namespace: str) -> None:
        with self._lock:
            stale = self._clients.pop((self.address, namespace), None)
        if stale is not None:
            stale.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- which manifest ----------------------------------------------------------------------------------------
    def identify(self, spec: GuestSpec, namespace: str) -> ImageOrigin | None:
        """The container's image, or None when it has none (no record, or a record without an image).

        ImageOriginError when containerd cannot be asked, or the manifest cannot be determined without guessing.
        """
        if not self.address:
            raise ImageOriginError(f"container {spec.task_id}: the shim was not given containerd's gRPC address, so "
                                   "it cannot tell which image the container runs")
        from .containerd import ContentStoreError, NotFound

        client = self._client(namespace)
        try:
            try:
                record = client.container_image(spec.task_id)
            except NotFound:
                return None  # a task created without a container record (a client of the task API alone)
            if not record:
                return None
            requested = spec.grant.image_name or record
            with client.lease() as lease:
                chosen = self._resolve(client, requested, lease)
                if chosen is None:
                    raise ImageOriginError(
                        f"container {spec.task_id}: image {requested} is not in containerd's image store (namespace "
                        f"{namespace}), so the manifest it runs cannot be determined")
                config = chosen.config
                if chosen.name not in (record, normalised(record)):
                    created_from = self._resolve(client, record, lease)
                    if created_from is None or created_from.config.digest != config.digest:
                        theirs = created_from.config.digest if created_from is not None else "unknown"
                        raise ImageOriginError(
                            f"container {spec.task_id}: image {requested} (manifest {chosen.manifest.digest}) has "
                            f"config {config.digest}, but the container was created from image {record}, whose "
                            f"config is {theirs}: the name names another image now (re-tagged or re-pulled), and "
                            "the shim will not guess which one this container runs")
                layer = self._wasm_layer(client, chosen, config, lease)
        except (ContentStoreError, ManifestError, ArtifactError) as exc:
            if isinstance(exc, ContentStoreError) and not isinstance(exc, NotFound):
                self._forget(namespace)  # a fresh channel next time: containerd may have restarted
            raise ImageOriginError(f"container {spec.task_id}: cannot determine its image from containerd: "
                                   f"{exc}") from None
        return ImageOrigin(name=without_digest(chosen.name), digest=chosen.target.digest,
                           manifest=chosen.manifest.digest, config=config.digest, layer=layer, provider="containerd")

    def _resolve(self, client: Any, name: str, lease: str) -> _Resolved | None:
        from .containerd import NotFound

        for candidate in dict.fromkeys(n for n in (name, normalised(name)) if n):
            try:
                target = client.image_target(candidate)
            except NotFound:
                continue
            break
        else:
            return None
        manifest = target
        if target.media_type in INDEX_TYPES:
            client.hold(lease, target.digest)
            index = parse_json_object(client.read_bytes(target, limit=MAX_MANIFEST_SIZE, lease=lease),
                                      f"image index {target.digest} of {candidate}")
            chosen = choose_manifest(index, f"image index {target.digest} of {candidate}", self._platform)
            if chosen is None:
                raise ManifestError(f"image {candidate} is an index ({target.digest}) with no manifest for wasm or "
                                    f"for {'/'.join(self._platform)}, and several others: which one runs cannot "
                                    "be determined")
            manifest = chosen
        if manifest.media_type not in MANIFEST_TYPES:
            raise ManifestError(f"image {candidate} points at {manifest.media_type}, not an image manifest")
        client.hold(lease, manifest.digest)
        document = parse_json_object(client.read_bytes(manifest, limit=MAX_MANIFEST_SIZE, lease=lease),
                                     f"manifest {manifest.digest} of {candidate}")
        return _Resolved(candidate, target, manifest, document)

    def _wasm_layer(self, client: Any, chosen: _Resolved, config: Descriptor, lease: str) -> Descriptor | None:
        """A wasm artifact's layer (checked against its config's `layerDigests`), or None for another image."""
        if not is_wasm_artifact(chosen.document):
            return None
        where = f"manifest {chosen.manifest.digest} of {chosen.name}"
        try:
            layer = Descriptor.parse(check_artifact_manifest(chosen.document), f"{where}: layer")
            layers = [d.digest for d in descriptors_of(chosen.document, "layers", where)]
            client.hold(lease, config.digest)
            config_doc = parse_json_object(client.read_bytes(config, limit=MAX_CONFIG_SIZE, lease=lease),
                                           f"config {config.digest} of {chosen.name}")
            check_layer_binding(config_doc, layers)
        except (ArtifactError, ManifestError) as exc:
            raise ImageOriginError(f"image {without_digest(chosen.name)}@{chosen.target.digest} is a wasm OCI "
                                   f"artifact the shim cannot run: {exc}") from None
        return layer

    # -- its layer at args[0] ----------------------------------------------------------------------------------
    def place(self, origin: ImageOrigin, entry: EntryPath, namespace: str) -> None:
        """Stream the origin's layer from the content store to args[0], verified; ImageOriginError on failure."""
        assert origin.layer is not None
        layer = origin.layer
        from .containerd import ContentStoreError

        client = self._client(namespace)

        def write(sink: IO[bytes]) -> None:
            try:
                with client.lease() as lease:
                    client.hold(lease, layer.digest)
                    client.read_into(layer, sink, limit=MAX_LAYER_SIZE, lease=lease)
            except ContentStoreError as exc:
                raise ImageOriginError(f"cannot read the layer of {origin} from containerd: {exc}") from None

        place_layer(entry, origin, write)
