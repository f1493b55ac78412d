"""Wasm OCI artifacts from containerd's image and content store: which manifest, and its layer at args[0].

Against a real private containerd (1.6 and 2.x): artifacts are imported with `ctr images import --no-unpack` (an
artifact's layer is not a tar), container records are made with ctr, and then the shim's provider
(`shim.image.content_store.ContentStore`, over `shim.image.containerd.ContainerdClient`) determines the image a
container runs and places its layer in a rootfs. What crictl and CRI add (shared configs, the image-name
annotation) is tests/integration/test_image_identity.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lab.containerd import Containerd
from wasm_shim.oci.artifact import Artifact, build_artifact
from wasm_shim.oci.layout import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Blob
from wasm_shim.oci.manifest import Descriptor
from wasm_shim.shim.engines.base import GuestSpec, find_entrypoint
from wasm_shim.shim.engines.grant import parse_grant
from wasm_shim.shim.image.containerd import ContainerdClient, ContentStoreError, NotFound
from wasm_shim.shim.image.content_store import ContentStore
from wasm_shim.shim.image.origin import ImageOriginError
from wasm_shim.shim.image.source import EntrypointSource

REPO = Path(__file__).resolve().parents[2]
CRI_IMAGE_NAME = "io.kubernetes.cri.image-name"


# -- building artifacts as OCI layouts that `ctr images import` takes -----------------------------------------
def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _layout_tar(blobs: list[Blob], top: Blob, ref: str) -> bytes:
    """An image-layout tarball whose index.json names `top` (a manifest or an index) `ref`."""
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [top.descriptor(
        annotations={"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref})]}
    members = {"oci-layout": _canonical({"imageLayoutVersion": "1.0.0"}), "index.json": _canonical(index)}
    for blob in blobs:
        members["blobs/sha256/" + blob.digest.removeprefix("sha256:")] = blob.data
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(members[name]), 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    return buffer.getvalue()


def _import(containerd: Containerd, tmp_path: Path, ref: str, blobs: list[Blob], top: Blob) -> None:
    tar = tmp_path / (hashlib.sha256(ref.encode()).hexdigest()[:12] + ".tar")
    tar.write_bytes(_layout_tar(blobs, top, ref))
    containerd.ctr("images", "import", "--no-unpack", "--all-platforms", str(tar), timeout=60)


def _import_artifact(containerd: Containerd, tmp_path: Path, ref: str, artifact: Artifact) -> None:
    _import(containerd, tmp_path, ref, [artifact.layer, artifact.config, artifact.manifest], artifact.manifest)


def _manifest_with(artifact: Artifact, layers: list[Blob]) -> Blob:
    doc = json.loads(artifact.manifest.data)
    doc["layers"] = [layer.descriptor() for layer in layers]
    return Blob(MEDIA_TYPE_MANIFEST, _canonical(doc))


def _client(containerd: Containerd) -> ContainerdClient:
    return ContainerdClient(containerd.address, containerd.namespace, timeout=10)


def _store(containerd: Containerd) -> ContentStore:
    return ContentStore(containerd.address)


def _leases(containerd: Containerd) -> list[str]:
    out = containerd.ctr("leases", "ls", "-q", timeout=30).stdout
    return [line for line in out.split() if line]


def _container_of(containerd: Containerd, busybox_image: str, container_id: str, image: str) -> None:
    """A container record whose image name is `image`: created from busybox (ctr refuses a config that is not an
    image's, so a container cannot be made from an artifact directly), then the name re-pointed at `image`'s
    target, as a later pull of the same name would do."""
    containerd.ctr("containers", "create", busybox_image, container_id, timeout=30)
    containerd.ctr("images", "rm", busybox_image, timeout=30)
    containerd.ctr("images", "tag", "--force", image, busybox_image, timeout=30)


def _spec(task_id: str, rootfs: Path, entry: str = "/hello.wasm", **annotations: str) -> GuestSpec:
    return GuestSpec(task_id=task_id, rootfs=str(rootfs), root_readonly=False, args=(entry,), env=(), cwd="/",
                     grant=parse_grant(annotations))


def _rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    return rootfs


# -- against a real containerd ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_the_origin_names_the_manifest_and_its_layer_is_placed(containerd: Containerd, busybox_image: str,
                                                               guests: Path, tmp_path: Path) -> None:
    wasm = (guests / "hello.wasm").read_bytes()
    artifact = build_artifact(wasm)
    ref = "localhost/wasm-shim-test/artifact:v1"
    _import_artifact(containerd, tmp_path, ref, artifact)
    _container_of(containerd, busybox_image, "wasm-art", ref)
    rootfs = _rootfs(tmp_path)
    spec = _spec("wasm-art", rootfs, "/app/bin/hello.wasm")
    leases_before = _leases(containerd)
    store = _store(containerd)
    try:
        origin = store.identify(spec, containerd.namespace)
        assert origin is not None
        assert (origin.digest, origin.manifest, origin.config) == (
            artifact.manifest.digest, artifact.manifest.digest, artifact.config.digest)
        assert origin.layer == Descriptor("application/wasm", artifact.layer.digest, len(wasm))
        store.place(origin, find_entrypoint(spec), containerd.namespace)
    finally:
        store.close()
    placed = rootfs / "app" / "bin" / "hello.wasm"
    assert placed.read_bytes() == wasm
    assert sorted(os.listdir(placed.parent)) == ["hello.wasm"], "no temporary file left behind"
    assert _leases(containerd) == leases_before, "the read leases must be deleted afterwards"


@pytest.mark.integration
def test_artifact_behind_an_index_picks_the_wasm_platform(containerd: Containerd, busybox_image: str, guests: Path,
                                                          tmp_path: Path) -> None:
    wasm = (guests / "hello.wasm").read_bytes()
    artifact = build_artifact(wasm)
    other = build_artifact((guests / "exit_code.wasm").read_bytes())
    index = Blob(MEDIA_TYPE_INDEX, _canonical({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [
        other.manifest.descriptor(platform={"architecture": "amd64", "os": "linux"}),
        artifact.manifest.descriptor(platform={"architecture": "wasm", "os": "wasip1"}),
    ]}))
    ref = "localhost/wasm-shim-test/indexed:v1"
    blobs = [artifact.layer, artifact.config, artifact.manifest, other.layer, other.config, other.manifest, index]
    _import(containerd, tmp_path, ref, blobs, index)
    _container_of(containerd, busybox_image, "indexed", ref)
    with _client(containerd) as client:
        assert client.image_target(ref).media_type == MEDIA_TYPE_INDEX
    origin = _store(containerd).identify(_spec("indexed", _rootfs(tmp_path)), containerd.namespace)
    assert origin is not None and origin.layer is not None
    assert (origin.digest, origin.manifest) == (index.digest, artifact.manifest.digest)  # signatures name the index
    assert origin.layer.digest == artifact.layer.digest
    assert f"(manifest {artifact.manifest.digest}, layer {artifact.layer.digest})" in str(origin)


@pytest.mark.integration
def test_regular_image_has_no_layer_to_place(containerd: Containerd, busybox_image: str, tmp_path: Path) -> None:
    containerd.ctr("containers", "create", busybox_image, "plain", timeout=30)
    origin = _store(containerd).identify(_spec("plain", _rootfs(tmp_path)), containerd.namespace)
    assert origin is not None and origin.layer is None and origin.name.endswith(busybox_image.split("/")[-1])
    # A task containerd has no container record for has no image at all.
    assert _store(containerd).identify(_spec("no-such-container", tmp_path), containerd.namespace) is None


@pytest.mark.integration
@pytest.mark.parametrize("problem", ["two layers", "unknown media type", "config names other layers"])
def test_artifact_the_shim_cannot_run_is_refused_with_the_reason(containerd: Containerd, busybox_image: str,
                                                                 guests: Path, tmp_path: Path, problem: str) -> None:
    artifact = build_artifact((guests / "hello.wasm").read_bytes())
    if problem == "two layers":
        extra = Blob("application/wasm", (guests / "exit_code.wasm").read_bytes())
        manifest = _manifest_with(artifact, [artifact.layer, extra])
        blobs = [artifact.layer, extra, artifact.config, manifest]
        expected = "exactly one layer, this one has 2"
    elif problem == "unknown media type":
        odd = Blob("application/vnd.example.not-wasm", artifact.layer.data)
        manifest = _manifest_with(artifact, [odd])
        blobs = [odd, artifact.config, manifest]
        expected = "media type 'application/vnd.example.not-wasm'"
    else:  # the config of another module, reused: it binds another layer
        other = build_artifact((guests / "exit_code.wasm").read_bytes())
        doc = json.loads(artifact.manifest.data)
        doc["config"] = other.config.descriptor()
        manifest = Blob(MEDIA_TYPE_MANIFEST, _canonical(doc))
        blobs = [artifact.layer, other.config, manifest]
        expected = (f"config lists layerDigests {other.layer.digest}, but its manifest's layers are "
                    f"{artifact.layer.digest}")
    ref = "localhost/wasm-shim-test/bad:v1"
    _import(containerd, tmp_path, ref, blobs, manifest)
    _container_of(containerd, busybox_image, "bad", ref)
    rootfs = _rootfs(tmp_path)
    with pytest.raises(ImageOriginError, match=expected):
        EntrypointSource(content_store=_store(containerd)).provide(_spec("bad", rootfs), containerd.namespace)
    assert os.listdir(rootfs) == []


@pytest.mark.integration
def test_a_name_that_now_names_another_image_is_refused(containerd: Containerd, busybox_image: str, guests: Path,
                                                        tmp_path: Path) -> None:
    created = build_artifact((guests / "hello.wasm").read_bytes())
    other = build_artifact((guests / "exit_code.wasm").read_bytes())
    _import_artifact(containerd, tmp_path, "localhost/wasm-shim-test/created:v1", created)
    _import_artifact(containerd, tmp_path, "localhost/wasm-shim-test/moved:v1", other)
    _container_of(containerd, busybox_image, "moved", "localhost/wasm-shim-test/created:v1")
    # CRI's image-name says the pod asked for `moved`, whose config is not the one the container was created from.
    spec = _spec("moved", _rootfs(tmp_path), **{CRI_IMAGE_NAME: "localhost/wasm-shim-test/moved:v1"})
    with pytest.raises(ImageOriginError, match=f"has config {other.config.digest}, but the container was created "
                                               f"from image {busybox_image}, whose config is "
                                               f"{created.config.digest}.*will not guess"):
        _store(containerd).identify(spec, containerd.namespace)
    missing = _spec("moved", tmp_path, **{CRI_IMAGE_NAME: "localhost/wasm-shim-test/never-pulled:v1"})
    with pytest.raises(ImageOriginError, match="image localhost/wasm-shim-test/never-pulled:v1 is not in "
                                               "containerd's image store.*cannot be determined"):
        _store(containerd).identify(missing, containerd.namespace)


@pytest.mark.integration
def test_a_corrupt_content_store_never_reaches_the_rootfs(containerd: Containerd, busybox_image: str, guests: Path,
                                                          tmp_path: Path) -> None:
    wasm = (guests / "hello.wasm").read_bytes()
    artifact = build_artifact(wasm)
    ref = "localhost/wasm-shim-test/corrupt:v1"
    _import_artifact(containerd, tmp_path, ref, artifact)
    _container_of(containerd, busybox_image, "corrupt", ref)
    blob = Path(containerd.root) / "io.containerd.content.v1.content" / "blobs" / "sha256" / \
        artifact.layer.digest.removeprefix("sha256:")
    blob.write_bytes(wasm[:-1] + bytes([wasm[-1] ^ 1]))  # same size, one bit flipped
    rootfs = _rootfs(tmp_path)
    with pytest.raises(ImageOriginError, match=f"content has digest sha256:.*expected {artifact.layer.digest}.*"
                                               "content store is corrupt"):
        EntrypointSource(content_store=_store(containerd)).provide(_spec("corrupt", rootfs), containerd.namespace)
    assert os.listdir(rootfs) == []


@pytest.mark.integration
def test_unknown_names_are_not_found(containerd: Containerd) -> None:
    with _client(containerd) as client:
        with pytest.raises(NotFound, match="image localhost/nope:v1: not found"):
            client.image_target("localhost/nope:v1")
        with pytest.raises(NotFound, match="container nope"):
            client.container_image("nope")
        missing = Descriptor("application/wasm", "sha256:" + "0" * 64, 4)
        with pytest.raises(NotFound, match="reading blob sha256:0000"):
            client.read_bytes(missing, limit=1 << 20)
        with pytest.raises(ContentStoreError, match="has size 4; the limit is 3"):
            client.read_bytes(missing, limit=3)


# -- without containerd --------------------------------------------------------------------------------------
def test_unreachable_containerd_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    source = EntrypointSource(content_store=ContentStore(str(tmp_path / "no-containerd.sock")))
    with pytest.raises(ImageOriginError, match=r"entrypoint /hello.wasm: no such file in the container's rootfs, "
                                               r"and it is not a wasm OCI artifact's either: container c1: cannot "
                                               r"determine its image from containerd: container c1: cannot reach"):
        source.provide(_spec("c1", rootfs), "default")


def test_no_grpc_address_is_the_engines_words(tmp_path: Path) -> None:
    source = EntrypointSource(content_store=ContentStore(""))
    with pytest.raises(Exception, match="entrypoint /hello.wasm: no such file in the container's rootfs$"):
        source.provide(_spec("c1", _rootfs(tmp_path)), "default")


def test_present_entrypoint_and_module_import_pull_in_no_grpc(tmp_path: Path) -> None:
    (tmp_path / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0")
    code = (
        "import sys\n"
        "from wasm_shim.shim.daemon import task_service\n"
        "from wasm_shim.shim.engines.base import GuestSpec\n"
        "from wasm_shim.shim.image.content_store import ContentStore\n"
        "from wasm_shim.shim.image.source import EntrypointSource\n"
        f"spec = GuestSpec('t', {str(tmp_path)!r}, False, ('/hello.wasm',), (), '/')\n"
        "source = EntrypointSource(content_store=ContentStore('/run/containerd/containerd.sock'))\n"
        "assert source.provide(spec, 'default').origin is None\n"
        "print(any(m == 'grpc' or m.startswith('grpc.') for m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
