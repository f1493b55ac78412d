"""Media types, descriptors and the manifest/index documents a registry serves (pure: no I/O).

Owns: the media types the registry side speaks (image-spec media-types.md, the Docker v2 schema 2 equivalents
registries still serve, the CNCF wasm layout, cosign's and sigstore's), `Descriptor`, `parse_json_object`,
`descriptors_of` and `choose_manifest` (from an index, the wasm platform's manifest).

Invariant: a `Descriptor` built by `Descriptor.parse` has a string media type, a valid sha256 digest and a
non-negative integer size; anything else raises ManifestError naming the document it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .jsoncodec import dumps, loads
from .reference import ReferenceError, check_digest
from .values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"  # image-spec manifest.md "Guidance for an Empty Descriptor"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (MEDIA_TYPE_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (MEDIA_TYPE_MANIFEST, DOCKER_MANIFEST)
MANIFEST_ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
MAX_MANIFEST_SIZE = 4 << 20  # containerd and distribution limit manifests to 4 MiB as well

# CNCF TAG Runtime wasm artifact (docs/protocol.md "Wasm in OCI registries"), and the older layouts still read.
MEDIA_TYPE_WASM_CONFIG = "application/vnd.wasm.config.v0+json"
MEDIA_TYPE_WASM_LAYER = "application/wasm"
WASM_CONFIG_TYPES = (MEDIA_TYPE_WASM_CONFIG, "application/vnd.wasm.config.v1+json")
LEGACY_WASM_LAYER_TYPES = (
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
)
WASM_LAYER_TYPES = (MEDIA_TYPE_WASM_LAYER, *LEGACY_WASM_LAYER_TYPES)
WASM_PLATFORM_OS = ("wasip1", "wasip2", "wasi")
ANNOTATION_TITLE = "org.opencontainers.image.title"  # oras names pulled files after it
ANNOTATION_CREATED = "org.opencontainers.image.created"


class ManifestError(ValueError):
    """A manifest or index is malformed; the message names the document and the field."""


class Descriptor(Value):
    __slots__ = ("media_type", "digest", "size", "artifact_type", "annotations")
    media_type: str
    digest: str
    size: int
    artifact_type: str
    annotations: Mapping[str, str]

    def __init__(self, media_type: str, digest: str, size: int, artifact_type: str = "",
                 annotations: Mapping[str, str] | None = None) -> None:
        self._init(media_type, digest, size, artifact_type, {} if annotations is None else annotations)

    @classmethod
    def parse(cls, value: object, where: str) -> Descriptor:
        if not isinstance(value, Mapping):
            raise ManifestError(f"{where}: a descriptor must be a JSON object, got {value!r:.100}")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: a descriptor needs a mediaType string and a non-negative integer size, "
                                f"got {dict(value)!r:.200}")
        try:
            check_digest(digest if isinstance(digest, str) else repr(digest), f"{where}: descriptor digest")
        except ReferenceError as exc:
            raise ManifestError(str(exc)) from None
        artifact_type = value.get("artifactType", "")
        annotations = value.get("annotations") or {}
        if not isinstance(artifact_type, str) or not isinstance(annotations, Mapping):
            raise ManifestError(f"{where}: descriptor artifactType/annotations have the wrong type")
        return cls(media_type, str(digest), size, artifact_type, dict(annotations))

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc


def canonical_json(value: object) -> bytes:
    """Compact JSON with sorted keys: deterministic bytes, so digests are stable."""
    return dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = loads(data)
    except ValueError as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


def descriptors_of(document: Mapping[str, Any], key: str, where: str) -> list[Descriptor]:
    """The descriptors in `document[key]` (`layers` of a manifest, `manifests` of an index)."""
    entries = document.get(key) or []
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise ManifestError(f"{where}: `{key}` must be a list")
    return [Descriptor.parse(entry, f"{where} {key}[{i}]") for i, entry in enumerate(entries)]


def choose_manifest(index: Mapping[str, Any], where: str, platform: tuple[str, str] | None = None) -> Descriptor | None:
    """From an image index: the manifest of the wasm platform (os wasip1/wasip2/wasi or architecture wasm), else
    the one for `platform` (os, architecture) when given, else the only manifest; None when none of these picks
    exactly one (a multi-platform image without a manifest for this node: the caller must not guess)."""
    raw = [m for m in index.get("manifests") or [] if isinstance(m, Mapping) and m.get("mediaType") in MANIFEST_TYPES]

    def platform_of(entry: Mapping[str, Any]) -> Mapping[str, Any]:
        value = entry.get("platform") or {}
        return value if isinstance(value, Mapping) else {}

    wasm = [m for m in raw if platform_of(m).get("os") in WASM_PLATFORM_OS
            or platform_of(m).get("architecture") == "wasm"]
    if wasm:
        return Descriptor.parse(wasm[0], where)
    if platform is not None:
        native = [m for m in raw if (platform_of(m).get("os"), platform_of(m).get("architecture")) == platform]
        if native:
            return Descriptor.parse(native[0], where)
    return Descriptor.parse(raw[0], where) if len(raw) == 1 else None
