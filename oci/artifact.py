"""Wasm OCI artifacts in the CNCF TAG Runtime layout: building one and checking one.

Layout (docs/protocol.md "Wasm in OCI registries"): an image manifest (`application/vnd.oci.image.manifest.v1+json`)
whose config is `application/vnd.wasm.config.v0+json` ({created, author, architecture: "wasm", os: "wasip1" |
"wasip2", layerDigests, component?}) and whose single layer is the raw module or component, `application/wasm`.

Owns: `wasm_config` and `build_artifact` (pure, deterministic for fixed inputs) and `check_artifact_manifest` (the
rules the shim applies to an artifact it is asked to run: exactly one layer, a media type it knows). Pushing and
pulling is oci/transfer.py over the registry client (oci/registry.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from .jsoncodec import dumps
from .manifest import (  # noqa: F401  (re-exported: the media types used to live here)
    LEGACY_WASM_LAYER_TYPES,
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_WASM_CONFIG,
    MEDIA_TYPE_WASM_LAYER,
    WASM_CONFIG_TYPES,
)
from .values import Value

# `layout` (gzip, tarfile) is imported where used: `wasm-shim pull` imports this module for the
# artifact rules alone, and every import is paid on every run of the CLI.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .layout import Blob

COMPONENT_MAGIC = b"\0asm\x0d\x00\x01\x00"  # component-model binary: version 0xd, layer 1


class ArtifactError(Exception):
    """An artifact is malformed, or a registry refused it; the message says what and where."""


class Artifact(Value):
    __slots__ = ("config", "layer", "manifest")
    config: Blob
    layer: Blob
    manifest: Blob

    def __init__(self, config: Blob, layer: Blob, manifest: Blob) -> None:
        self._init(config, layer, manifest)


def _canonical(value: object) -> bytes:
    return dumps(value, sort_keys=True, separators=(",", ":")).encode()


def wasm_config(layer_digest: str, is_component: bool, *, created: str = "1970-01-01T00:00:00Z",
                author: str = "wasm-shim") -> dict[str, Any]:
    """The CNCF wasm config document: `os` is wasip2 for a component, wasip1 for a core module."""
    config_doc: dict[str, Any] = {
        "created": created, "author": author, "architecture": "wasm",
        "os": "wasip2" if is_component else "wasip1", "layerDigests": [layer_digest],
    }
    if is_component:
        # Required for wasip2 by the CNCF layout; exports/imports are left empty (we do not parse the WIT here).
        config_doc["component"] = {"exports": [], "imports": [], "target": None}
    return config_doc


def build_artifact(
    wasm: bytes, *, created: str = "1970-01-01T00:00:00Z", author: str = "wasm-shim",
    annotations: Mapping[str, str] | None = None,
) -> Artifact:
    """A one-layer wasm artifact; `os` is wasip2 for a component, wasip1 for a core module."""
    if not wasm.startswith(b"\0asm"):
        raise ArtifactError("not a WebAssembly binary (no \\0asm magic)")
    from .layout import Blob

    layer = Blob(MEDIA_TYPE_WASM_LAYER, wasm)
    config_doc = wasm_config(layer.digest, wasm[:8] == COMPONENT_MAGIC, created=created, author=author)
    config = Blob(MEDIA_TYPE_WASM_CONFIG, _canonical(config_doc))
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "artifactType": MEDIA_TYPE_WASM_CONFIG,
        "config": config.descriptor(), "layers": [layer.descriptor()],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    return Artifact(config=config, layer=layer, manifest=Blob(MEDIA_TYPE_MANIFEST, _canonical(manifest_doc)))


def is_wasm_artifact(manifest: Mapping[str, Any]) -> bool:
    config = manifest.get("config") or {}
    return config.get("mediaType") in WASM_CONFIG_TYPES


def check_artifact_manifest(manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """The wasm layer's descriptor; ArtifactError naming the problem for two layers or an unknown media type."""
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise ArtifactError(f"a wasm artifact must have exactly one layer, this one has {len(layers)}")
    layer = layers[0]
    media_type = layer.get("mediaType", "")
    if media_type not in (MEDIA_TYPE_WASM_LAYER, *LEGACY_WASM_LAYER_TYPES):
        known = ", ".join((MEDIA_TYPE_WASM_LAYER, *LEGACY_WASM_LAYER_TYPES))
        raise ArtifactError(f"wasm artifact layer has media type {media_type!r}; expected one of {known}")
    layer_desc: Mapping[str, Any] = layer
    return layer_desc


def check_layer_binding(config: Mapping[str, Any], layer_digests: list[str]) -> None:
    """A wasm config that lists `layerDigests` binds its manifest to exactly those layers; ArtifactError otherwise.

    Two artifacts can share a config blob byte for byte (one config file reused by `oras push --config`), and
    containerd's CRI keys images by their config digest: a config that names its layers makes sharing it mean
    sharing the content. A config without the field binds nothing and passes (older pushers omit it).
    """
    listed = config.get("layerDigests")
    if listed is None:
        return
    if not isinstance(listed, list) or not all(isinstance(d, str) for d in listed):
        raise ArtifactError(f"its config's layerDigests must be a list of digests, got {listed!r:.200}")
    if listed != layer_digests:
        raise ArtifactError(f"its config lists layerDigests {', '.join(listed) or '(none)'}, but its manifest's "
                            f"layers are {', '.join(layer_digests) or '(none)'}: a config must name the layers it "
                            "was made for")

