"""Issue 4 (wasm OCI artifacts): the shim reads an artifact's wasm layer from containerd's content store over gRPC.

Against a real private containerd (1.6 and 2.x): artifacts are imported with `ctr images import --no-unpack` (an
artifact's layer is not a tar), then `shim.containerd_client.ContainerdClient` / `fetch_wasm_layer` read them back and
`shim.image_source.provide_entrypoint` places the layer in a rootfs. Pure rules (index selection, digest checks)
and the paths that never reach containerd are tested without it.
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
from wasm_shim.oci.artifact import Artifact, ArtifactError, build_artifact
from wasm_shim.oci.layout import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Blob
from wasm_shim.shim.containerd_client import (
    ContainerdClient,
    ContentStoreError,
    Descriptor,
    NotFound,
    fetch_wasm_layer,
    select_manifest,
    verify_blob,
)
from wasm_shim.shim.engines.base import GuestSpec
from wasm_shim.shim.image_source import ImageSourceError, provide_entrypoint

REPO = Path(__file__).resolve().parents[2]


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


def _leases(containerd: Containerd) -> list[str]:
    out = containerd.ctr("leases", "ls", "-q", timeout=30).stdout
    return [line for line in out.split() if line]


def _container_of(containerd: Containerd, busybox_image: str, container_id: str, image: str) -> None:
    """A container record whose image name is `image`: created from busybox (ctr refuses a non-image config,
    PROTOCOL.md), then the name re-pointed at `image`'s target, as a later pull of the same name would do."""
    containerd.ctr("containers", "create", busybox_image, container_id, timeout=30)
    containerd.ctr("images", "rm", busybox_image, timeout=30)
    containerd.ctr("images", "tag", "--force", image, busybox_image, timeout=30)


def _spec(task_id: str, rootfs: Path, entry: str = "/hello.wasm") -> GuestSpec:
    return GuestSpec(task_id=task_id, rootfs=str(rootfs), root_readonly=False, args=(entry,), env=(), cwd="/")


# -- against a real containerd ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_layer_is_read_from_the_content_store_and_verified(containerd: Containerd, guests: Path,
                                                           tmp_path: Path) -> None:
    wasm = (guests / "hello.wasm").read_bytes()
    artifact = build_artifact(wasm)
    ref = "localhost/wasm-shim-test/artifact:v1"
    _import_artifact(containerd, tmp_path, ref, artifact)
    leases_before = _leases(containerd)
    with _client(containerd) as client:
        target = client.image_target(ref)
        assert target == Descriptor(MEDIA_TYPE_MANIFEST, artifact.manifest.digest, artifact.manifest.size)
        layer = fetch_wasm_layer(client, ref)
    assert layer is not None
    assert layer.data == wasm
    assert layer.descriptor == Descriptor("application/wasm", artifact.layer.digest, len(wasm))
    assert layer.manifest_digest == artifact.manifest.digest
    assert _leases(containerd) == leases_before, "the read lease must be deleted afterwards"


@pytest.mark.integration
def test_artifact_behind_an_index_picks_the_wasm_platform(containerd: Containerd, guests: Path,
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
    with _client(containerd) as client:
        assert client.image_target(ref).media_type == MEDIA_TYPE_INDEX
        layer = fetch_wasm_layer(client, ref)
    assert layer is not None and layer.data == wasm and layer.manifest_digest == artifact.manifest.digest


@pytest.mark.integration
def test_regular_image_is_not_an_artifact(containerd: Containerd, busybox_image: str) -> None:
    with _client(containerd) as client:
        assert fetch_wasm_layer(client, busybox_image) is None


@pytest.mark.integration
@pytest.mark.parametrize("problem", ["two layers", "unknown media type"])
def test_artifact_the_shim_cannot_run_is_refused_with_the_reason(containerd: Containerd, guests: Path,
                                                                 tmp_path: Path, problem: str) -> None:
    artifact = build_artifact((guests / "hello.wasm").read_bytes())
    if problem == "two layers":
        extra = Blob("application/wasm", (guests / "exit_code.wasm").read_bytes())
        manifest = _manifest_with(artifact, [artifact.layer, extra])
        blobs = [artifact.layer, extra, artifact.config, manifest]
        expected = "exactly one layer, this one has 2"
    else:
        odd = Blob("application/vnd.example.not-wasm", artifact.layer.data)
        manifest = _manifest_with(artifact, [odd])
        blobs = [odd, artifact.config, manifest]
        expected = "media type 'application/vnd.example.not-wasm'"
    ref = "localhost/wasm-shim-test/bad:v1"
    _import(containerd, tmp_path, ref, blobs, manifest)
    with _client(containerd) as client, pytest.raises(ArtifactError, match=expected):
        fetch_wasm_layer(client, ref)


@pytest.mark.integration
def test_unknown_names_are_not_found(containerd: Containerd) -> None:
    with _client(containerd) as client:
        with pytest.raises(NotFound, match="image localhost/nope:v1: not found"):
            client.image_target("localhost/nope:v1")
        with pytest.raises(NotFound, match="container nope"):
            client.container_image("nope")
        missing = Descriptor("application/wasm", "sha256:" + "0" * 64, 4)
        with pytest.raises(NotFound, match="reading blob sha256:0000"):
            client.read(missing, limit=1 << 20)


@pytest.mark.integration
def test_provide_entrypoint_places_the_layer_at_args0(containerd: Containerd, busybox_image: str, guests: Path,
                                                      tmp_path: Path) -> None:
    wasm = (guests / "hello.wasm").read_bytes()
    artifact = build_artifact(wasm)
    ref = "localhost/wasm-shim-test/artifact:v1"
    _import_artifact(containerd, tmp_path, ref, artifact)
    _container_of(containerd, busybox_image, "wasm-art", ref)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    spec = _spec("wasm-art", rootfs, "/app/bin/hello.wasm")
    assert provide_entrypoint(spec, containerd.namespace, containerd.address) is True
    placed = rootfs / "app" / "bin" / "hello.wasm"
    assert placed.read_bytes() == wasm
    assert sorted(os.listdir(placed.parent)) == ["hello.wasm"], "no temporary file left behind"
    # Present now: a second create reads nothing from containerd.
    assert provide_entrypoint(spec, containerd.namespace, "/nonexistent/containerd.sock") is False


@pytest.mark.integration
def test_provide_entrypoint_leaves_regular_images_to_the_engine(containerd: Containerd, busybox_image: str,
                                                                tmp_path: Path) -> None:
    containerd.ctr("containers", "create", busybox_image, "plain", timeout=30)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    assert provide_entrypoint(_spec("plain", rootfs), containerd.namespace, containerd.address) is False
    assert os.listdir(rootfs) == []
    # A task containerd has no container for: nothing to fetch, the engine's "no such file" stands.
    assert provide_entrypoint(_spec("no-such-container", rootfs), containerd.namespace, containerd.address) is False


@pytest.mark.integration
def test_provide_entrypoint_names_the_problem_of_a_bad_artifact(containerd: Containerd, busybox_image: str,
                                                                guests: Path, tmp_path: Path) -> None:
    artifact = build_artifact((guests / "hello.wasm").read_bytes())
    extra = Blob("application/wasm", (guests / "exit_code.wasm").read_bytes())
    manifest = _manifest_with(artifact, [artifact.layer, extra])
    ref = "localhost/wasm-shim-test/two-layers:v1"
    _import(containerd, tmp_path, ref, [artifact.layer, extra, artifact.config, manifest], manifest)
    _container_of(containerd, busybox_image, "two", ref)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    # The container's image name (now pointing at the two-layer artifact) is what the message names.
    with pytest.raises(ImageSourceError, match=f"image {busybox_image} is a wasm OCI artifact the shim cannot run: "
                                               "a wasm artifact must have exactly one layer, this one has 2"):
        provide_entrypoint(_spec("two", rootfs), containerd.namespace, containerd.address)
    assert os.listdir(rootfs) == []


# -- without containerd --------------------------------------------------------------------------------------
def test_unreachable_containerd_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    address = str(tmp_path / "no-containerd.sock")
    with pytest.raises(ImageSourceError, match=r"entrypoint /hello.wasm: no such file in the container's rootfs, "
                                               r"and looking the container's image up in containerd's content store "
                                               r"\(for a wasm OCI artifact\) failed: container c1: cannot reach"):
        provide_entrypoint(_spec("c1", rootfs), "default", address)


def test_no_grpc_address_leaves_the_spec_alone(tmp_path: Path) -> None:
    assert provide_entrypoint(_spec("c1", tmp_path), "default", "") is False


def test_present_entrypoint_and_module_import_pull_in_no_grpc(tmp_path: Path) -> None:
    (tmp_path / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0")
    code = (
        "import sys\n"
        "from wasm_shim.shim import image_source, task_service\n"
        "from wasm_shim.shim.engines.base import GuestSpec\n"
        f"spec = GuestSpec('t', {str(tmp_path)!r}, False, ('/hello.wasm',), (), '/')\n"
        "assert image_source.provide_entrypoint(spec, 'default', '/run/containerd/containerd.sock') is False\n"
        "print(any(m == 'grpc' or m.startswith('grpc.') for m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_select_manifest_prefers_wasm_then_the_only_one() -> None:
    def entry(digest: str, **platform: str) -> dict[str, object]:
        value: dict[str, object] = {"mediaType": MEDIA_TYPE_MANIFEST, "digest": digest, "size": 1}
        if platform:
            value["platform"] = platform
        return value

    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    wasm = {"manifests": [entry(a, os="linux", architecture="amd64"), entry(b, os="wasip2", architecture="wasm")]}
    assert select_manifest(wasm, "idx") == Descriptor(MEDIA_TYPE_MANIFEST, b, 1)
    assert select_manifest({"manifests": [entry(a)]}, "idx") == Descriptor(MEDIA_TYPE_MANIFEST, a, 1)
    multi = {"manifests": [entry(a, os="linux", architecture="amd64"), entry(b, os="linux", architecture="arm64")]}
    assert select_manifest(multi, "idx") is None
    with pytest.raises(ContentStoreError, match="idx: a descriptor needs mediaType, digest and size"):
        select_manifest({"manifests": [{"mediaType": MEDIA_TYPE_MANIFEST, "digest": a}]}, "idx")


def test_blob_must_match_its_descriptor() -> None:
    data = b"\0asm\x01\0\0\0"
    good = Descriptor("application/wasm", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    verify_blob(good, data)
    with pytest.raises(ContentStoreError, match="read 7 bytes, the descriptor says 8"):
        verify_blob(good, data[:7])
    with pytest.raises(ContentStoreError, match="content has digest sha256:.*the store is corrupt"):
        verify_blob(good, b"\0asm\x01\0\0\1")
