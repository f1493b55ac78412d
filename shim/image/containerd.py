"""containerd's metadata and content store over gRPC: containers, images, and verified blob reads.

Owns `ContainerdClient`, a small synchronous client of four containerd services on containerd's own gRPC socket
(the `-address` / GRPC_ADDRESS a shim is started with): Containers.Get, Images.Get, Content.Read and Leases. It
knows containerd's wire (services, namespaces header, leases); what the documents it reads mean (descriptors,
manifests, indexes, wasm artifacts) is oci/'s, whose pure parsers it uses.

Invariants:
- Every request carries gRPC metadata `containerd-namespace` (containerd's namespaces.GRPCHeader) and a
  deadline; nothing waits for containerd forever. A gRPC failure raises ContentStoreError naming the call, the
  object and containerd's message; NOT_FOUND raises its subclass NotFound.
- Blobs are read under a lease holding them (Leases.Create with a `containerd.io/gc.expire` label, so a lease a
  crashed reader leaves behind ends by itself; AddResource type "content"; Delete afterwards), so containerd's
  garbage collector cannot remove them mid-read even if the image is deleted meanwhile.
- Every blob read is checked against its descriptor while it streams (oci.digest.StreamVerifier): size before
  reading (against a cap the caller names) and while reading, sha256 at the end. A document is returned only once
  verified; a layer streams into the caller's sink, which must discard what it got when the read raises.
- `grpc` is imported when a client is made, never at module import: `import grpc` costs about 100 ms, and the
  shim's start/delete path and a Create that needs no image lookup must not pay it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from google.protobuf import empty_pb2

from wasm_shim.oci.digest import DigestMismatch, StreamVerifier
from wasm_shim.oci.manifest import Descriptor, ManifestError

from ..protos import containers_pb2, content_pb2, images_pb2, leases_pb2

NAMESPACE_HEADER = "containerd-namespace"  # containerd pkg/namespaces/grpc.go
LEASE_HEADER = "containerd-lease"  # containerd pkg/leases/grpc.go
GC_EXPIRE_LABEL = "containerd.io/gc.expire"  # containerd core/metadata/gc: an expired lease is collected


class ContentStoreError(Exception):
    """containerd could not give us what we asked for, or gave bytes that do not match; the message says which."""


class NotFound(ContentStoreError):
    """containerd has no such container, image or blob (gRPC NOT_FOUND)."""


def _grpc_target(address: str) -> str:
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        raise ContentStoreError(f"containerd's gRPC address must be a unix socket path, got {address!r}")
    return f"unix:{path}"


class ContainerdClient:
    """Synchronous calls to containerd's gRPC API in one namespace; safe to share between threads (grpc channels
    are). Use as a context manager, or `close()` it: that closes the channel."""

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
            metadata.append((LEASE_HEADER, lease))
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
        """Containers.Get: the image name the container record names ("" for a container without one)."""
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
        try:
            return Descriptor.parse({"mediaType": target.media_type, "digest": target.digest, "size": target.size},
                                    f"image {name}'s target")
        except ManifestError as exc:
            raise ContentStoreError(str(exc)) from None

    @contextmanager
    def lease(self, expire_after: float = 300.0) -> Iterator[str]:
        """Leases.Create ... Leases.Delete around the block; the id is what `read_*(lease=...)` and `hold` take."""
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

    def read_into(self, descriptor: Descriptor, sink: IO[bytes], *, limit: int, lease: str = "") -> None:
        """Content.Read (a server stream) of the whole blob into `sink`, verified against `descriptor` while it
        streams. On any error the sink holds part of the blob: the caller discards it."""
        if not 0 <= descriptor.size <= limit:
            raise ContentStoreError(f"blob {descriptor.digest} has size {descriptor.size}; the limit is {limit}")
        verifier = StreamVerifier(descriptor.digest, descriptor.size, f"blob {descriptor.digest}")  # parsed: valid
        call = self._channel.unary_stream(
            "/containerd.services.content.v1.Content/Read",
            request_serializer=content_pb2.ReadContentRequest.SerializeToString,
            response_deserializer=content_pb2.ReadContentResponse.FromString,
        )
        try:
            for chunk in call(content_pb2.ReadContentRequest(digest=descriptor.digest), timeout=self.read_timeout,
                              metadata=self._metadata(lease)):
                if chunk.offset != verifier.received:
                    raise ContentStoreError(f"blob {descriptor.digest}: chunk at offset {chunk.offset}, "
                                            f"expected {verifier.received}")
                verifier.update(chunk.data)
                sink.write(chunk.data)
            verifier.finish()
        except self._grpc.RpcError as exc:
            raise self._error(exc, f"reading blob {descriptor.digest}") from None
        except DigestMismatch as exc:
            raise ContentStoreError(f"{exc}: containerd's content store is corrupt") from None

    def read_bytes(self, descriptor: Descriptor, *, limit: int, lease: str = "") -> bytes:
        """A small blob (a manifest, an index, a config) read whole and verified; `limit` caps its size."""
        import io

        sink = io.BytesIO()
        self.read_into(descriptor, sink, limit=limit, lease=lease)
        return sink.getvalue()
