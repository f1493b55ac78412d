"""Provider: a wasm artifact the shim pulls itself (`wasm.shim.io/artifact: REF`), through the node's cache.

containerd 1.6 cannot pull wasm artifacts (it unpacks every layer as a tar); a pod there names the artifact in
this annotation and the shim fetches it. Owns `RegistryArtifacts.identify` (REF -> the manifest, checked to be a
runnable wasm artifact whose config binds its layer) and `.place` (that manifest's layer, from the node-local
artifact cache, oci/cache.py, fetched into it on a miss, copied to args[0] and checked again while copied), and
`registry_client` (a registry client with the policy's `[registry]` settings, which signature checks use too).

Invariants: a pinned reference (REF@sha256:...) whose manifest is cached asks no registry anything; the digest that
identifies the origin is the digest whose layer is placed; every byte placed is checked against the layer digest
on its way out of the cache.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import IO, Any

from wasm_shim.oci.digest import StreamVerifier

from ..daemon.tracing import NO_TRACING, Tracer
from ..engines.base import EntryPath
from ..engines.grant import ARTIFACT_ANNOTATION
from .origin import ImageOrigin, ImageOriginError
from .place import place_layer

MAX_CONFIG_SIZE = 1 << 20


@dataclass(frozen=True)
class NodeRegistryAccess:
    """How this node's shim reaches registries for its own lookups (shim options; docs/supply-chain.md): containerd's
    registry host configuration, credentials, extra CAs and proxies. The policy's `[registry]` settings win."""

    hosts: Any = None  # shim/image/hosts.py ContainerdHosts, or None
    docker_config: str = ""
    ca_bundle: str = ""
    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: str = ""

    @classmethod
    def from_config(cls, config: Any) -> NodeRegistryAccess:
        from .hosts import ContainerdHosts

        return cls(ContainerdHosts(config.registry_config_path), config.registry_docker_config,
                   config.registry_ca_bundle, config.https_proxy, config.http_proxy, config.no_proxy)


def registry_client(settings: Any, access: NodeRegistryAccess | None = None) -> Any:
    """A RegistryClient with the policy's `[registry]` settings (oci.policy.RegistrySettings, or None) over the
    node's registry access (containerd's hosts, credentials, CAs, proxies)."""
    from wasm_shim.oci.auth import DockerCredentials
    from wasm_shim.oci.proxy import ProxySettings
    from wasm_shim.oci.registry import RegistryClient

    access = access or NodeRegistryAccess()
    environ = dict(os.environ)
    docker_config = (settings.docker_config if settings is not None else None) or access.docker_config
    if docker_config:
        environ["DOCKER_CONFIG"] = docker_config
    ca_bundle = settings.ca_bundle if settings is not None else None
    return RegistryClient(
        DockerCredentials.from_environment(environ),
        ca_bundle=ca_bundle,
        extra_cas=(access.ca_bundle,) if access.ca_bundle and not ca_bundle else (),
        insecure=settings.insecure if settings else (),
        connect_timeout=min(settings.timeout, 10.0) if settings else 10.0,
        read_timeout=settings.timeout if settings else 30.0, attempts=2, backoff=0.2,
        hosts=access.hosts.registry_hosts() if access.hosts is not None else None,
        proxies=ProxySettings.from_environment(https_proxy=access.https_proxy, http_proxy=access.http_proxy,
                                               no_proxy=access.no_proxy),
    )


class RegistryArtifacts:
    """The shim's own artifact path; `artifact_dir` is the node-local cache (empty: the annotation is refused)."""

    def __init__(self, artifact_dir: str, cache_bytes: int = 1 << 30, *, allowed: tuple[str, ...] = (),
                 access: NodeRegistryAccess | None = None, tracer: Tracer = NO_TRACING) -> None:
        self._artifact_dir = artifact_dir
        self._tracer = tracer  # spans of the registry lookups (shim/daemon/tracing.py)
        self._access = access  # how the node reaches registries (NodeRegistryAccess), or None: the defaults
        self._allowed = allowed  # the registries a pod may name (shim option artifact_registries; oci/allowlist.py)
        self._cache_bytes = cache_bytes
        self._cache: Any = None
        self._lock = threading.Lock()

    def _artifacts(self) -> Any:
        from wasm_shim.oci.cache import ArtifactCache

        with self._lock:
            if self._cache is None:
                self._cache = ArtifactCache(self._artifact_dir, self._cache_bytes)
            return self._cache

    def identify(self, reference: str, settings: Any) -> ImageOrigin:
        """The artifact REF names; ImageOriginError naming the annotation and the reason otherwise."""
        with self._tracer.span("wasm_shim.registry.resolve", {"oci.reference": reference}) as span:
            origin = self._identify(reference, settings)
            span.set("oci.digest", origin.digest)
            return origin

    def _identify(self, reference: str, settings: Any) -> ImageOrigin:
        from wasm_shim.oci.allowlist import source_refusal
        from wasm_shim.oci.artifact import ArtifactError, check_artifact_manifest, check_layer_binding
        from wasm_shim.oci.cache import CacheError
        from wasm_shim.oci.digest import DigestMismatch
        from wasm_shim.oci.manifest import (
            MAX_MANIFEST_SIZE,
            Descriptor,
            ManifestError,
            descriptors_of,
            parse_json_object,
        )
        from wasm_shim.oci.reference import ReferenceError, parse_reference
        from wasm_shim.oci.registry import RegistryError
        from wasm_shim.oci.transfer import resolve_wasm_manifest

        if not self._artifact_dir:
            raise ImageOriginError(f"annotation {ARTIFACT_ANNOTATION} needs the shim option artifact_dir")
        try:
            ref = parse_reference(reference)
            if refusal := source_refusal(ref, self._allowed):  # before anything is contacted or cached
                raise ImageOriginError(f"annotation {ARTIFACT_ANNOTATION}={reference}: {refusal}")
            cache = self._artifacts()
            doc = None
            digest = ref.digest
            with registry_client(settings, self._access) as client:
                if digest:  # pinned: a cached manifest needs no registry at all
                    cached = cache.read_bytes(digest, MAX_MANIFEST_SIZE)
                    doc = parse_json_object(cached, f"cached manifest {digest}") if cached else None
                if doc is None:
                    manifest, doc = resolve_wasm_manifest(client, ref)
                    digest = manifest.digest
                    cache.put_bytes(digest, manifest.data)
                where = f"manifest {digest} of {reference}"
                check_artifact_manifest(doc)
                layer = Descriptor.parse(check_artifact_manifest(doc), f"{where}: layer")
                config = Descriptor.parse(doc.get("config"), f"{where}: config")
                config_bytes = cache.read_bytes(config.digest, MAX_CONFIG_SIZE)
                if config_bytes is None:
                    config_bytes = client.fetch_blob_bytes(ref, config, MAX_CONFIG_SIZE)
                    cache.put_bytes(config.digest, config_bytes)
                check_layer_binding(parse_json_object(config_bytes, f"config {config.digest} of {reference}"),
                                    [d.digest for d in descriptors_of(doc, "layers", where)])
        except (ArtifactError, CacheError, DigestMismatch, ManifestError, ReferenceError, RegistryError) as exc:
            raise ImageOriginError(f"annotation {ARTIFACT_ANNOTATION}={reference}: {exc}") from None
        assert digest is not None
        name = str(ref.with_tag(ref.tag)) if ref.tag else ref.name  # as the pod wrote it, without its digest
        return ImageOrigin(name=name, digest=digest, manifest=digest, config=config.digest, layer=layer,
                           provider="registry")

    def place(self, origin: ImageOrigin, entry: EntryPath, settings: Any, reference: str) -> None:
        """The origin's layer from the node's cache (fetched on a miss) to args[0], checked again on the way."""
        from wasm_shim.oci.cache import CacheError
        from wasm_shim.oci.digest import DigestMismatch
        from wasm_shim.oci.reference import ReferenceError, parse_reference
        from wasm_shim.oci.registry import RegistryError

        layer = origin.layer
        assert layer is not None
        fetched = []

        def fetch(client: Any, ref: Any, sink: IO[bytes]) -> None:
            fetched.append(True)
            client.fetch_blob(ref, layer, sink)

        try:
            with self._tracer.span("wasm_shim.registry.pull", {"oci.reference": reference, "oci.digest": layer.digest,
                                                              "oci.size": layer.size}) as span:
                ref = parse_reference(origin.name, default_tag=False).with_digest(origin.digest)
                with registry_client(settings, self._access) as client:
                    cached = self._artifacts().ensure(layer.digest, layer.size, lambda sink: fetch(client, ref, sink))
                span.set("wasm_shim.cache_hit", not fetched)
        except (CacheError, DigestMismatch, ReferenceError, RegistryError) as exc:
            raise ImageOriginError(f"annotation {ARTIFACT_ANNOTATION}={reference}: {exc}") from None

        def copy(sink: IO[bytes]) -> None:
            verifier = StreamVerifier(layer.digest, layer.size, f"cached layer {layer.digest}")
            try:
                with open(cached, "rb") as source:
                    while chunk := source.read(1 << 20):
                        verifier.update(chunk)
                        sink.write(chunk)
                verifier.finish()
            except (OSError, DigestMismatch) as exc:
                raise ImageOriginError(f"the node's artifact cache holds a damaged copy of {origin}: {exc}") from None

        place_layer(entry, origin, copy)
