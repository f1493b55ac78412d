"""OCI image-layout tarballs, built in memory with the standard library only.

This module owns turning a set of files into a runnable OCI image: one gzip'ed tar layer, an image config,
an image manifest, and an image-layout tarball (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``) that
``ctr images import`` and registries accept. It does no network I/O; the only I/O is reading ``Path`` sources
and writing the output tarball.

Invariants:
- Deterministic: the same inputs give byte-identical output (tar entries sorted by path, mtime 0, uid/gid 0,
  no user or group names, gzip header with mtime 0 and no file name). Digests are therefore stable across runs
  and machines that share a zlib.
- Every blob is stored under the sha256 of its exact bytes, and every descriptor's size is the blob's length
  (image-spec descriptor.md).
- ``rootfs.diff_ids`` holds the sha256 of the *uncompressed* layer tar (image-spec config.md, "Layer DiffID"),
  while the manifest's layer descriptor names the *compressed* blob.
- Paths inside the image are normalised (no leading ``/``, no ``.``/``..`` parts); every parent directory gets
  its own 0755 entry before its children, so unpacking never has to invent directories.

Spec references: opencontainers/image-spec image-layout.md, manifest.md, config.md, layer.md, annotations.md.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# image-spec media-types.md
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# image-spec annotations.md (pre-defined annotation keys) and containerd's archive importer, which names the
# image after this annotation when it is present (containerd core/images/archive, "io.containerd.image.name").
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

OCI_LAYOUT_VERSION = "1.0.0"  # image-layout.md: the `oci-layout` file's imageLayoutVersion

_ELF_MAGIC = b"\x7fELF"
_SHEBANG = b"#!"
_GZIP_LEVEL = 6  # fixed so output does not depend on a library default


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in the layer; ``target`` is stored verbatim (relative targets resolve in the image)."""

    target: str


FileSource = bytes | Path | Symlink


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob and the descriptor that names it."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        """An image-spec descriptor (descriptor.md) for this blob, with optional extra fields."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """All blobs of a single-platform image; ``manifest.digest`` is the image's identity."""

    layer: Blob
    diff_id: str
    config: Blob
    manifest: Blob


def normalize_image_path(path: str) -> str:
    """Return ``path`` relative to the image root (``/bin/sh`` -> ``bin/sh``); reject escapes and empties."""
    pure = PurePosixPath("/" + path.lstrip("/"))
    parts = [p for p in pure.parts[1:] if p not in ("", ".")]
    if not parts:
        raise ValueError(f"image path {path!r} names the root directory, not a file")
    if ".." in parts:
        raise ValueError(f"image path {path!r} contains '..'; paths must stay inside the image root")
    return "/".join(parts)


def _is_executable(image_path: str, source: bytes | Path, data: bytes, entrypoint_path: str | None) -> bool:
    if image_path == entrypoint_path:
        return True
    if isinstance(source, Path):
        return bool(source.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    return data.startswith(_ELF_MAGIC) or data.startswith(_SHEBANG)


def build_layer_tar(files: Mapping[str, FileSource], *, executable: str | None = None) -> bytes:
    """Return the uncompressed layer tar for ``files`` (keys are image paths).

    Regular files get mode 0755 when they look executable (a ``Path`` with any x bit, bytes starting with an
    ELF magic or ``#!``, or the path named by ``executable``), else 0644. Symlinks are 0777 links.
    Raises ``ValueError`` on duplicate paths after normalisation, or on a file also used as a directory.
    """
    entries: dict[str, FileSource] = {}
    for raw_path, source in files.items():
        path = normalize_image_path(raw_path)
        if path in entries:
            raise ValueError(f"image path {raw_path!r} is given twice (as {path!r})")
        entries[path] = source

    directories: set[str] = set()
    for path in entries:
        parent = PurePosixPath(path).parent
        while str(parent) != ".":
            directories.add(str(parent))
            parent = parent.parent
    clashes = sorted(directories & entries.keys())
    if clashes:
        raise ValueError(f"image path {clashes[0]!r} is both a file and a parent directory of other files")

    entry_path = normalize_image_path(executable) if executable else None
    buffer = io.BytesIO()
    # PAX keeps long names exact; with integer mtime 0 and ASCII names no pax headers are emitted at all.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Sorting the path tuples puts every directory before its children (layer.md: parents must exist).
        for path in sorted(directories | entries.keys(), key=lambda p: p.split("/")):
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path in directories:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            source = entries[path]
            if isinstance(source, Symlink):
                info.type = tarfile.SYMTYPE
                info.linkname = source.target
                info.mode = 0o777
                tar.addfile(info)
                continue
            data = source.read_bytes() if isinstance(source, Path) else bytes(source)
            info.mode = 0o755 if _is_executable(path, source, data, entry_path) else 0o644
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    """Gzip ``data`` with a header free of timestamps and file names (RFC 1952 MTIME = 0, no FNAME)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=_GZIP_LEVEL, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_image(
    files: Mapping[str, FileSource],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str = "/",
    architecture: str = "amd64",
    os: str = "linux",
    annotations: Mapping[str, str] | None = None,
) -> Image:
    """Build the layer, config and manifest blobs of a single-layer image, in memory."""
    if not entrypoint and not cmd:
        raise ValueError("an image needs an entrypoint or a cmd; both are empty")
    for item in env:
        if "=" not in item:
            raise ValueError(f"env entry {item!r} is not of the form NAME=value")
    layer_tar = build_layer_tar(files, executable=entrypoint[0] if entrypoint else None)
    layer = Blob(MEDIA_TYPE_LAYER_GZIP, gzip_deterministic(layer_tar))
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()

    # config.md: "config" holds the execution parameters; rootfs.diff_ids lists uncompressed layer digests.
    exec_config: dict[str, object] = {"Entrypoint": list(entrypoint), "WorkingDir": workdir}
    if cmd:
        exec_config["Cmd"] = list(cmd)
    if env:
        exec_config["Env"] = list(env)
    config = Blob(
        MEDIA_TYPE_CONFIG,
        _canonical_json(
            {
                "architecture": architecture,
                "os": os,
                "config": exec_config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": "wasm_shim.oci.layout", "created": "1970-01-01T00:00:00Z"}],
            }
        ),
    )
    manifest_doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    if annotations:
        manifest_doc["annotations"] = dict(annotations)
    manifest = Blob(MEDIA_TYPE_MANIFEST, _canonical_json(manifest_doc))
    return Image(layer=layer, diff_id=diff_id, config=config, manifest=manifest)


def layout_tar(image: Image, ref: str, *, architecture: str, os: str) -> bytes:
    """Return an image-layout tarball holding ``image`` with ``index.json`` naming it ``ref``."""
    if not ref or any(c.isspace() for c in ref):
        raise ValueError(f"image reference {ref!r} is empty or contains whitespace")
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            image.manifest.descriptor(
                platform={"architecture": architecture, "os": os},
                annotations={ANNOTATION_REF_NAME: ref, ANNOTATION_CONTAINERD_IMAGE_NAME: ref},
            )
        ],
    }
    members: dict[str, bytes] = {
        "oci-layout": _canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}),
        "index.json": _canonical_json(index),
    }
    for blob in (image.layer, image.config, image.manifest):
        members["blobs/sha256/" + blob.digest.removeprefix("sha256:")] = blob.data

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(members[name]))
    return buffer.getvalue()


def build_image_tar(
    out: Path,
    ref: str,
    files: Mapping[str, FileSource],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str = "/",
    architecture: str = "amd64",
    os: str = "linux",
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Write an OCI image-layout tarball for a one-layer image to ``out`` and return its manifest digest.

    ``files`` maps image paths (``/bin/busybox``) to bytes, a host ``Path`` to copy, or a ``Symlink``.
    ``ref`` becomes both the ``org.opencontainers.image.ref.name`` and the ``io.containerd.image.name``
    annotation of the index entry, so ``ctr images import`` registers the image under exactly that name.
    ``annotations`` go on the manifest. The tarball is written to a sibling temp file, then renamed.
    """
    image = build_image(
        files,
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        workdir=workdir,
        architecture=architecture,
        os=os,
        annotations=annotations,
    )
    data = layout_tar(image, ref, architecture=architecture, os=os)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(data)
    partial.replace(out)
    return image.manifest.digest
