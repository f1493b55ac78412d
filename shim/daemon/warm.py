"""Compiling the images an operator names before their first container (the shim option `warm_images`).

Owns, for each named image: finding it in containerd's image store (namespace k8s.io, where the kubelet and the
installer's CRI pull put images), reading the wasm its container would run (a wasm OCI artifact's layer; else the
file args[0] of the image config's Entrypoint/Cmd, from the topmost layer that has it), and handing that file to
the engine's ``warm`` (compiled into the memory and disk caches; a component checked by its runner), so the first
pod of the image is as fast as the hundredth. Runs once, on a thread of its own, when the daemon starts; reports
each image's outcome in the log and in ``<cache_dir>/warm-status.json`` (0600), which `wasm-shim node install`
waits for.

Nothing here runs a guest, and nothing a pod says reaches it: the list comes from the node's shim config only.
Every failure (an image not pulled, a layer format it cannot read, a file that is not wasm) is that image's
outcome, never the daemon's.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

from wasm_shim.oci.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    Descriptor,
    choose_manifest,
    descriptors_of,
    parse_json_object,
)

from ..image.content_store import MAX_CONFIG_SIZE, MAX_LAYER_SIZE, node_platform, normalised

log = logging.getLogger(__name__)

NAMESPACE = "k8s.io"  # containerd's CRI namespace: where pods' images are
STATUS_FILE = "warm-status.json"
_WASM_ARTIFACT_CONFIG = "application/vnd.wasm.config.v0+json"
_TAR_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")
_GZIP_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")


class WarmError(Exception):
    """An image could not be warmed; the message says why (it is that image's outcome in the status file)."""


def entry_of(config: dict[str, Any]) -> str:
    """The path args[0] names in an image config (Entrypoint, else Cmd; ``path#export`` keeps only the path)."""
    body = config.get("config") or {}
    argv = list(body.get("Entrypoint") or []) + list(body.get("Cmd") or [])
    if not argv or not isinstance(argv[0], str) or not argv[0]:
        raise WarmError("its config has no Entrypoint or Cmd: nothing to compile")
    path = argv[0].partition("#")[0]
    if not path.startswith("/"):
        path = posixpath.join(str(body.get("WorkingDir") or "/"), path)
    return posixpath.normpath(path)


def file_from_layers(layers: list[tuple[str, Callable[[IO[bytes]], None]]], path: str, out: str) -> None:
    """Write the file ``path`` as the stacked layers show it into ``out``: the topmost layer holding it (or a
    whiteout of it) decides. ``layers`` lists (media type, write-the-blob-into) bottom first."""
    name = path.lstrip("/")
    whiteout = posixpath.join(posixpath.dirname(name), ".wh." + posixpath.basename(name))
    for media_type, read in reversed(layers):
        if media_type not in _TAR_TYPES + _GZIP_TYPES:
            raise WarmError(f"a layer is {media_type}, which the shim cannot read ahead of time")
        with tempfile.TemporaryFile(dir=os.path.dirname(out)) as blob:
            read(blob)
            blob.seek(0)
            stream: Any = gzip.GzipFile(fileobj=blob) if media_type in _GZIP_TYPES else blob
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    member_name = _member_path(member.name)
                    if member_name == whiteout:
                        raise WarmError(f"{path} is deleted by a layer of the image")
                    if member_name != name:
                        continue
                    if not member.isfile():
                        raise WarmError(f"{path} is not a regular file in the image")
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(out, "wb") as sink:
                        shutil.copyfileobj(source, sink)
                    return
    raise WarmError(f"{path} (its Entrypoint) is in none of the image's layers")


def _member_path(name: str) -> str:
    """A tar member's path relative to the layer's root ("./a/b" and "/a/b" are "a/b")."""
    while name.startswith("./"):
        name = name[2:]
    return posixpath.normpath(name.lstrip("/") or ".")


class Warmer:
    """Warms ``images`` through ``warm_file(path, name) -> str`` (the engine's), reading them with ``client``."""

    def __init__(self, images: tuple[str, ...], client: Any, warm_file: Callable[[str, str], str], cache_dir: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.images = images
        self._client = client  # a shim.image.containerd.ContainerdClient for namespace k8s.io
        self._warm_file = warm_file
        self._cache_dir = cache_dir
        self._clock = clock
        self.outcomes: dict[str, dict[str, str]] = {}

    def run(self) -> None:
        """Warm every image in turn, writing the status after each."""
        self._write_status(done=False)
        for image in self.images:
            began = self._clock()
            try:
                detail = self._warm(image)
                self.outcomes[image] = {"state": "compiled", "detail": detail,
                                        "seconds": f"{self._clock() - began:.3f}"}
                log.info("warmed image %s: %s", image, detail)
            except Exception as exc:  # one image's failure is its outcome; the daemon and the others go on
                reason = str(exc) if isinstance(exc, WarmError) else f"{type(exc).__name__}: {exc}"
                self.outcomes[image] = {"state": "failed", "detail": reason}
                log.warning("cannot warm image %s: %s", image, reason)
            self._write_status(done=False)
        self._write_status(done=True)

    def _warm(self, image: str) -> str:
        workdir = tempfile.mkdtemp(prefix="warm-", dir=self._cache_dir)
        try:
            path = os.path.join(workdir, "module.wasm")
            with self._client.lease() as lease:
                manifest = self._manifest(image, lease)
                config = Descriptor.parse(manifest.get("config"), f"image {image}: config")
                layers = descriptors_of(manifest, "layers", f"image {image}")
                if config.media_type == _WASM_ARTIFACT_CONFIG:
                    if len(layers) != 1:
                        raise WarmError(f"a wasm artifact with {len(layers)} layers")
                    self._read(layers[0], path, lease)
                else:
                    self._client.hold(lease, config.digest)
                    document = parse_json_object(self._client.read_bytes(config, limit=MAX_CONFIG_SIZE, lease=lease),
                                                 f"config {config.digest} of {image}")
                    entry = entry_of(document)
                    file_from_layers([(layer.media_type, self._reader(layer, lease)) for layer in layers], entry,
                                     path)
            return self._warm_file(path, image)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _manifest(self, image: str, lease: str) -> dict[str, Any]:
        from ..image.containerd import NotFound

        target = None
        for name in dict.fromkeys(n for n in (image, normalised(image)) if n):
            try:
                target = self._client.image_target(name)
                break
            except NotFound:
                continue
        if target is None:
            raise WarmError(f"not in containerd's image store (namespace {NAMESPACE}): pull it first")
        if target.media_type in INDEX_TYPES:
            self._client.hold(lease, target.digest)
            index = parse_json_object(self._client.read_bytes(target, limit=MAX_MANIFEST_SIZE, lease=lease),
                                      f"image index of {image}")
            chosen = choose_manifest(index, f"image index of {image}", node_platform())
            if chosen is None:
                raise WarmError("an index with no manifest for wasm or this node's platform")
            target = chosen
        if target.media_type not in MANIFEST_TYPES:
            raise WarmError(f"it points at {target.media_type}, not an image manifest")
        self._client.hold(lease, target.digest)
        return parse_json_object(self._client.read_bytes(target, limit=MAX_MANIFEST_SIZE, lease=lease),
                                 f"manifest of {image}")

    def _reader(self, layer: Descriptor, lease: str) -> Callable[[IO[bytes]], None]:
        def read(sink: IO[bytes]) -> None:
            self._client.hold(lease, layer.digest)
            self._client.read_into(layer, sink, limit=MAX_LAYER_SIZE, lease=lease)

        return read

    def _read(self, layer: Descriptor, path: str, lease: str) -> None:
        with open(path, "wb") as sink:
            self._reader(layer, lease)(sink)

    def _write_status(self, *, done: bool) -> None:
        status = {"pid": os.getpid(), "images": list(self.images), "done": done, "outcomes": self.outcomes}
        target = os.path.join(self._cache_dir, STATUS_FILE)
        partial = target + ".partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as file:
                json.dump(status, file, indent=2, sort_keys=True)
            os.rename(partial, target)
        except OSError as exc:
            log.warning("cannot write %s: %s", target, exc.strerror)
