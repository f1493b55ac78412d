"""containerd's metadata and content store over gRPC: from a container to the bytes of its wasm artifact layer.

Owns: `ContainerdClient`, a small synchronous client of four containerd services on containerd's own gRPC socket
(the `-address` / GRPC_ADDRESS a shim is started with) — Containers.Get, Images.Get, Content.Read, and the leases
service — and `fetch_wasm_layer`, the walk image name -> target (index -> manifest) -> wasm artifact check ->
layer bytes (PROTOCOL.md "Wasm in OCI registries"; runwasi reads artifacts the same way). `select_manifest` and
`parse_document` are pure.

Invariants:
- Every request carries gRPC metadata `containerd-namespace` (containerd's namespaces.GRPCHeader) and a
  deadline; nothing waits for containerd forever. A gRPC failure raises ContentStoreError naming the call, the
  object and containerd's message; NOT_FOUND raises its subclass NotFound.
- Blobs are read under a lease holding them (Leases.Create with a `containerd.io/gc.expire` label, so a lease a
  crashed reader leaves behind ends by itself; AddResource type "content"; Delete afterwards), so containerd's
  garbage collector cannot remove them mid-read even if the image is deleted meanwhile.
- Every blob read is checked against its descriptor: size (before and after reading, with a cap) and sha256
  digest (image-spec descriptor.md "Digests"). Bytes that do not match are never returned.
- `grpc` is imported when a client is made, never at module import of the shim's `start`/`delete` path
  (DESIGN.md "Measured here": `import grpc` costs about 100 ms); only the artifact path imports this module.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from google.protobuf import empty_pb2

from wasm_shim.oci.artifact import check_artifact_manifest, is_wasm_artifact
from wasm_shim.oci.layout import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST

from .protos import containers_pb2, content_pb2, images_pb2, leases_pb2

NAMESPACE_HEADER = "containerd-namespace"  # containerd pkg/namespaces/grpc.go
GC_EXPIRE_LABEL = "containerd.io/gc.expire"  # containerd core/metadata/gc: an expired lease is collected
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MEDIA_TYPE_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)
MAX_DOCUMENT_SIZE = 4 << 20  # manifests and indexes; containerd's own fetcher limits manifests to 4 MiB too
MAX_LAYER_SIZE = 1 << 30  # a wasm module or component held in memory while it is placed
WASM_PLATFORM_OS = ("wasip1", "wasip2", "wasi")

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


class ContentStoreError(Exception):
    """containerd could not give us what we asked for, or gave bytes that do not match; the message says which."""


class NotFound(ContentStoreError):
    """containerd has no such container, image or blob (gRPC NOT_FOUND)."""


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (image-spec descriptor.md): media type, digest, size."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def from_document(cls, value: Mapping[str, Any], where: str) -> Descriptor:
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str) or not isinstance(size, int):
            raise ContentStoreError(f"{where}: a descriptor needs mediaType, digest and size, got {dict(value)!r}")
        return cls(media_type, digest, size)


@dataclass(frozen=True)
class WasmLayer:
    """The one layer of a wasm OCI artifact, read from the content store and verified."""

    image: str
    manifest_digest: str
    descriptor: Descriptor
    data: bytes


def parse_document(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object (manifest, index); ContentStoreError naming `what` otherwise."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ContentStoreError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ContentStoreError(f"{what} is not a JSON object")
    return value


def select_manifest(index: Mapping[str, Any], where: str) -> Descriptor | None:
    """From an image index, the manifest of the wasm platform (`os` wasip1/wasip2/wasi or `architecture`
    wasm), else the only manifest; None when there are several and none is wasm (a multi-platform image)."""
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, Mapping)]
    candidates = [m for m in manifests if m.get("mediaType") in MANIFEST_TYPES]
    for entry in candidates:
        platform = entry.get("platform") or {}
        if platform.get("os") in WASM_PLATFORM_OS or platform.get("architecture") == "wasm":
            return Descriptor.from_document(entry, where)
    if len(candidates) == 1:
        return Descriptor.from_document(candidates[0], where)
    return None


def verify_blob(descriptor: Descriptor, data: bytes) -> None:
    """image-spec descriptor.md: the bytes must have the descriptor's size and digest."""
    if len(data) != descriptor.size:
        raise ContentStoreError(
            f"blob {descriptor.digest}: read {len(data)} bytes, the descriptor says {descriptor.size}"
        )
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor.digest:
        raise ContentStoreError(f"blob {descriptor.digest}: content has digest {actual}: the store is corrupt")


def _grpc_target(address: str) -> str:
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        raise ContentStoreError(f"containerd's gRPC address must be a unix socket path, got {address!r}")
    return f"unix:{path}"


class ContainerdClient:
    """Synchronous calls to containerd's gRPC API in one namespace. Use as a context manager (closes the channel)."""

    def __init__(self, address: str, namespace: str, *, timeout: float = 10.0, read_timeout: float = 120.0) -> None:
        import grpc  # here, not at module level: see the module docstring

        self._grpc = grpc
        self.address = address
        self.namespace = namespace or "default"
        self.timeout = timeout
        self.read_timeout = read_timeout
        self._channel = grpc.insecure_channel(
            _grpc_target(address),
            options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.enable_http_proxy", 0)],
        )

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _metadata(self, lease: str = "") -> list[tuple[str, str]]:
        metadata = [(NAMESPACE_HEADER, self.namespace)]
        if lease:
            metadata.append(("containerd-lease", lease))
        return metadata

    def _error(self, exc: Exception, what: str) -> ContentStoreError:
        code = exc.code() if isinstance(exc, self._grpc.Call) else None
        details = exc.details() if isinstance(exc, self._grpc.Call) else str(exc)
        if code == self._grpc.StatusCode.NOT_FOUND:
            return NotFound(f"{what}: not found in containerd (namespace {self.namespace}): {details}")
        if code == self._grpc.StatusCode.UNAVAILABLE:
            return ContentStoreError(f"{what}: cannot reach containerd's gRPC API at {self.address}: {details}")
        if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
            return ContentStoreError(f"{what}: containerd at {self.address} did not answer in time")
        name = code.name if code is not None else type(exc).__name__
        return ContentStoreError(f"{what}: containerd answered {name}: {details}")

    def _unary(self, method: str, request: Any, response_type: Any, what: str, lease: str = "") -> Any:
        call = self._channel.unary_unary(
            method, request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return call(request, timeout=self.timeout, metadata=self._metadata(lease))
        except self._grpc.RpcError as exc:
            raise self._error(exc, what) from None

    # -- services ------------------------------------------------------------------------------------------------
    def container_image(self, container_id: str) -> str:
        """Containers.Get: the image name the container was made from ("" for a container without one)."""
        response = self._unary(
            "/containerd.services.containers.v1.Containers/Get",
            containers_pb2.GetContainerRequest(id=container_id), containers_pb2.GetContainerResponse,
            f"container {container_id}",
        )
        return str(response.container.image)

    def image_target(self, name: str) -> Descriptor:
        """Images.Get: the descriptor (manifest or index) the image name points at."""
        response = self._unary(
            "/containerd.services.images.v1.Images/Get", images_pb2.GetImageRequest(name=name),
            images_pb2.GetImageResponse, f"image {name}",
        )
        target = response.image.target
        return Descriptor(target.media_type, target.digest, target.size)

    @contextmanager
    def lease(self, expire_after: float = 300.0) -> Iterator[str]:
        """Leases.Create ... Leases.Delete around the block; the id is what `read(lease=...)` and `hold` take."""
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expire_after)
        request = leases_pb2.CreateRequest(labels={GC_EXPIRE_LABEL: expires.isoformat().replace("+00:00", "Z")})
        response = self._unary("/containerd.services.leases.v1.Leases/Create", request, leases_pb2.CreateResponse,
                               "creating a lease")
        lease_id = str(response.lease.id)
        try:
            yield lease_id
        finally:
            try:
                self._unary("/containerd.services.leases.v1.Leases/Delete", leases_pb2.DeleteRequest(id=lease_id),
                            empty_pb2.Empty, f"deleting lease {lease_id}")
            except ContentStoreError:
                pass  # it expires by itself (gc.expire); the content was read already

    def hold(self, lease: str, digest: str) -> None:
        """Leases.AddResource: the blob stays in the store while the lease lives."""
        request = leases_pb2.AddResourceRequest(id=lease, resource=leases_pb2.Resource(id=digest, type="content"))
        self._unary("/containerd.services.leases.v1.Leases/AddResource", request, empty_pb2.Empty,
                    f"adding blob {digest} to lease {lease}")

    def read(self, descriptor: Descriptor, *, limit: int, lease: str = "") -> bytes:
        """Content.Read (a server stream) of the whole blob, verified against `descriptor`."""
        if not _SHA256.fullmatch(descriptor.digest):
            raise ContentStoreError(f"blob {descriptor.digest!r}: only sha256 digests are supported")
        if not 0 <= descriptor.size <= limit:
            raise ContentStoreError(f"blob {descriptor.digest} has size {descriptor.size}; the limit is {limit}")
        call = self._channel.unary_stream(
            "/containerd.services.content.v1.Content/Read",
            request_serializer=content_pb2.ReadContentRequest.SerializeToString,
            response_deserializer=content_pb2.ReadContentResponse.FromString,
        )
        chunks: list[bytes] = []
        received = 0
        try:
            for chunk in call(content_pb2.ReadContentRequest(digest=descriptor.digest), timeout=self.read_timeout,
                              metadata=self._metadata(lease)):
                if chunk.offset != received:
                    raise ContentStoreError(f"blob {descriptor.digest}: chunk at offset {chunk.offset}, "
                                            f"expected {received}")
                received += len(chunk.data)
                if received > descriptor.size:
                    raise ContentStoreError(f"blob {descriptor.digest}: more than the {descriptor.size} bytes "
                                            "its descriptor says")
                chunks.append(chunk.data)
        except self._grpc.RpcError as exc:
            raise self._error(exc, f"reading blob {descriptor.digest}") from None
        data = b"".join(chunks)
        verify_blob(descriptor, data)
        return data


def fetch_wasm_layer(client: ContainerdClient, image: str) -> WasmLayer | None:
    """The verified wasm layer of `image` if it is a wasm OCI artifact; None if it is another kind of image.

    ArtifactError (from check_artifact_manifest) when it is an artifact the shim cannot run (two layers, an
    unknown layer media type); ContentStoreError when containerd fails or the content does not match.
    """
    target = client.image_target(image)
    with client.lease() as lease:
        if target.media_type in INDEX_TYPES:
            client.hold(lease, target.digest)
            index = parse_document(client.read(target, limit=MAX_DOCUMENT_SIZE, lease=lease),
                                   f"image index {target.digest} of {image}")
            chosen = select_manifest(index, f"image index {target.digest} of {image}")
            if chosen is None:
                return None
            target = chosen
        if target.media_type not in MANIFEST_TYPES:
            return None
        client.hold(lease, target.digest)
        manifest = parse_document(client.read(target, limit=MAX_DOCUMENT_SIZE, lease=lease),
                                  f"manifest {target.digest} of {image}")
        if not is_wasm_artifact(manifest):
            return None
        layer = Descriptor.from_document(check_artifact_manifest(manifest), f"manifest {target.digest} of {image}")
        client.hold(lease, layer.digest)
        data = client.read(layer, limit=MAX_LAYER_SIZE, lease=lease)
    return WasmLayer(image=image, manifest_digest=target.digest, descriptor=layer, data=data)
