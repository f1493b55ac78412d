"""Pushing and pulling wasm OCI artifacts (CNCF TAG Runtime layout) with the registry client, streaming from and to
files.

Owns `push_wasm` (a `.wasm` file -> layer, config, manifest; the manifest is the one `build_artifact` describes,
with the layer titled like oras does so `oras pull` names the file) and `pull_wasm` (a reference -> the verified
module or component in a file). Pull reads the current layout and the older ones (oci/manifest.py
WASM_LAYER_TYPES), through an index when the reference names one.

Invariants: the output file appears only complete and verified (written to a temporary file in the same directory,
digest-checked while streaming, then renamed); on any failure nothing is left behind. The pulled manifest digest is
returned, so a caller can check it against a signature policy before using the bytes.
"""

from __future__ import annotations

import os

from .artifact import COMPONENT_MAGIC, ArtifactError, check_artifact_manifest, is_wasm_artifact, wasm_config
from .digest import new_sha256, sha256_digest
from .files import removed_on_failure
from .manifest import (
    ANNOTATION_TITLE,
    INDEX_TYPES,
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_WASM_CONFIG,
    MEDIA_TYPE_WASM_LAYER,
    Descriptor,
    canonical_json,
    choose_manifest,
)
from .reference import Reference
from .registry import Manifest, RegistryClient
from .values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Pulled(Value):
    __slots__ = ("manifest_digest", "layer", "path")
    manifest_digest: str
    layer: Descriptor
    path: str

    def __init__(self, manifest_digest: str, layer: Descriptor, path: str) -> None:
        self._init(manifest_digest, layer, path)


def push_wasm(client: RegistryClient, path: str, ref: Reference, *, created: str = "1970-01-01T00:00:00Z",
              annotations: dict[str, str] | None = None) -> str:
    """Push the module or component at `path` as `ref` (a tag); returns the manifest digest."""
    return push_wasm_manifest(client, path, ref, created=created, annotations=annotations).digest


def push_wasm_manifest(client: RegistryClient, path: str, ref: Reference, *, created: str = "1970-01-01T00:00:00Z",
                       annotations: dict[str, str] | None = None) -> Descriptor:
    """`push_wasm`, returning the pushed manifest's descriptor (media type, digest, size, artifact type,
    annotations)."""
    digest, size, head = _hash_file(path)
    if not head.startswith(b"\0asm"):
        raise ArtifactError(f"{path} is not a WebAssembly binary (no \\0asm magic)")
    layer = Descriptor(MEDIA_TYPE_WASM_LAYER, digest, size,
                       annotations={ANNOTATION_TITLE: os.path.basename(path)})
    config_data = canonical_json(wasm_config(digest, head[:8] == COMPONENT_MAGIC, created=created))
    config = Descriptor(MEDIA_TYPE_WASM_CONFIG, sha256_digest(config_data), len(config_data))
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "artifactType": MEDIA_TYPE_WASM_CONFIG,
        "config": config.to_json(), "layers": [layer.to_json()],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    manifest = canonical_json(manifest_doc)
    client.push_blob(ref, layer, lambda: open(path, "rb"), label=os.path.basename(path))
    client.push_blob(ref, config, lambda: config_data, label="config")
    pushed, _ = client.put_manifest(ref, ref.identifier, manifest, MEDIA_TYPE_MANIFEST)
    return Descriptor(MEDIA_TYPE_MANIFEST, pushed, len(manifest), MEDIA_TYPE_WASM_CONFIG, dict(annotations or {}))


def _hash_file(path: str) -> tuple[str, int, bytes]:
    digest = new_sha256()
    size = 0
    head = b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                if not head:
                    head = chunk[:8]
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror}") from None
    return "sha256:" + digest.hexdigest(), size, head


def resolve_wasm_manifest(client: RegistryClient, ref: Reference) -> tuple[Manifest, dict[str, Any]]:
    """The artifact manifest `ref` names (through an index), checked to be a runnable wasm artifact."""
    manifest = client.get_manifest(ref)
    doc = manifest.json(f"manifest of {ref}")
    if doc.get("mediaType", manifest.media_type) in INDEX_TYPES:
        chosen = choose_manifest(doc, f"index {manifest.digest} of {ref}")
        if chosen is None:
            raise ArtifactError(f"{ref} is an index with no wasm platform and several manifests")
        manifest = client.get_manifest(ref.with_digest(chosen.digest))
        doc = manifest.json(f"manifest {chosen.digest} of {ref}")
    if not is_wasm_artifact(doc):
        config = (doc.get("config") or {}).get("mediaType")
        raise ArtifactError(f"{ref} is not a wasm OCI artifact (config media type {config!r})")
    check_artifact_manifest(doc)
    return manifest, doc


def pull_wasm(client: RegistryClient, ref: Reference, out: str) -> Pulled:
    manifest, doc = resolve_wasm_manifest(client, ref)
    layer = Descriptor.parse(check_artifact_manifest(doc), f"manifest {manifest.digest} of {ref}")
    fetch_to_file(client, ref, layer, out)
    return Pulled(manifest.digest, layer, out)


def fetch_to_file(client: RegistryClient, ref: Reference, layer: Descriptor, out: str, *, mode: int = 0o644) -> None:
    """Fetch a blob into `out` atomically: a temporary sibling, verified while streaming, then renamed."""
    directory = os.path.dirname(os.path.abspath(out))
    temporary = os.path.join(directory, f".{os.path.basename(out)}.{os.getpid()}.partial")
    try:
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise ArtifactError(f"cannot write {out}: {exc.strerror}") from None
    with removed_on_failure(temporary):
        with os.fdopen(fd, "w+b") as sink:
            client.fetch_blob(ref, layer, sink, label=os.path.basename(out))
        os.replace(temporary, out)
