"""Unit tests for wasm_shim.oci.layout: the tarball parses back as an OCI image layout whose digests hold."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from wasm_shim.oci.layout import (
    ANNOTATION_CONTAINERD_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    Symlink,
    build_image_tar,
    build_layer_tar,
    normalize_image_path,
)

REF = "localhost/wasm-shim-test/hello:v1"
ELF_STUB = b"\x7fELF" + b"\x00" * 60


def read_layout(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def blob(members: dict[str, bytes], digest: str) -> bytes:
    algorithm, hex_ = digest.split(":")
    assert algorithm == "sha256"
    data = members[f"blobs/sha256/{hex_}"]
    assert hashlib.sha256(data).hexdigest() == hex_, "blob content does not match its digest"
    return data


def parse(members: dict[str, bytes]) -> tuple[dict, dict, dict, bytes]:
    """Walk index -> manifest -> config/layer the way an importer does, checking every descriptor."""
    index = json.loads(members["index.json"])
    (entry,) = index["manifests"]
    manifest_bytes = blob(members, entry["digest"])
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    config_bytes = blob(members, manifest["config"]["digest"])
    assert manifest["config"]["size"] == len(config_bytes)
    (layer_desc,) = manifest["layers"]
    layer = blob(members, layer_desc["digest"])
    assert layer_desc["size"] == len(layer)
    return index, manifest, json.loads(config_bytes), layer


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    path = tmp_path / "tool"
    path.write_bytes(b"#!/bin/sh\necho hi\n")
    path.chmod(0o700)
    return path


def build(tmp_path: Path, host_file: Path, name: str = "image.tar") -> tuple[Path, str]:
    out = tmp_path / name
    digest = build_image_tar(
        out,
        REF,
        {
            "/bin/app": ELF_STUB,
            "/bin/sh": Symlink("app"),
            "/usr/local/bin/tool": host_file,
            "/etc/motd": b"hello\n",
        },
        entrypoint=["/bin/app"],
        cmd=["--flag"],
        env=["PATH=/bin"],
        workdir="/work",
        annotations={"org.example.note": "x"},
    )
    return out, digest


def test_layout_parses_back_and_digests_match(tmp_path: Path, host_file: Path) -> None:
    out, digest = build(tmp_path, host_file)
    members = read_layout(out)

    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index, manifest, config, layer = parse(members)

    assert index["schemaVersion"] == 2 and index["mediaType"] == MEDIA_TYPE_INDEX
    entry = index["manifests"][0]
    assert entry["digest"] == digest
    assert entry["mediaType"] == MEDIA_TYPE_MANIFEST
    assert entry["annotations"] == {ANNOTATION_REF_NAME: REF, ANNOTATION_CONTAINERD_IMAGE_NAME: REF}
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}

    assert manifest["mediaType"] == MEDIA_TYPE_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_CONFIG
    assert manifest["layers"][0]["mediaType"] == MEDIA_TYPE_LAYER_GZIP
    assert manifest["annotations"] == {"org.example.note": "x"}

    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"] == {
        "Entrypoint": ["/bin/app"],
        "Cmd": ["--flag"],
        "Env": ["PATH=/bin"],
        "WorkingDir": "/work",
    }
    # config.md: a DiffID is the digest of the layer's *uncompressed* tar.
    uncompressed = gzip.decompress(layer)
    diff_id = "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}

    # Every blob in the tarball is referenced, nothing else is stored.
    blobs = {name for name in members if name.startswith("blobs/")}
    assert len(blobs) == 3


def test_layer_holds_files_with_modes_and_parent_directories(tmp_path: Path, host_file: Path) -> None:
    out, _ = build(tmp_path, host_file)
    *_, layer = parse(read_layout(out))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
        assert tar.extractfile("etc/motd").read() == b"hello\n"  # type: ignore[union-attr]
        assert tar.extractfile("usr/local/bin/tool").read() == host_file.read_bytes()  # type: ignore[union-attr]

    assert names == ["bin", "bin/app", "bin/sh", "etc", "etc/motd", "usr", "usr/local", "usr/local/bin",
                     "usr/local/bin/tool"]
    for directory in ("bin", "etc", "usr", "usr/local", "usr/local/bin"):
        assert members[directory].isdir() and members[directory].mode == 0o755
    assert members["bin/app"].mode == 0o755  # ELF magic, and the entrypoint
    assert members["usr/local/bin/tool"].mode == 0o755  # host file had an x bit
    assert members["etc/motd"].mode == 0o644
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "app"
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members.values())


def test_output_is_deterministic(tmp_path: Path, host_file: Path) -> None:
    first, digest1 = build(tmp_path, host_file, "a.tar")
    second, digest2 = build(tmp_path, host_file, "b.tar")
    assert digest1 == digest2
    assert first.read_bytes() == second.read_bytes()
    assert not list(tmp_path.glob("*.partial"))


def test_entrypoint_is_executable_even_when_bytes_do_not_say_so() -> None:
    tar_bytes = build_layer_tar({"/app.wasm": b"\x00asm\x01\x00\x00\x00"}, executable="/app.wasm")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.getmember("app.wasm").mode == 0o755


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/": b""}, "root directory"),
        ({"/../etc/passwd": b""}, "'..'"),
        ({"/bin/sh": b"a", "bin//sh": b"b"}, "given twice"),
        ({"/bin": b"a", "/bin/sh": b"b"}, "both a file and a parent directory"),
    ],
)
def test_bad_paths_are_rejected_with_a_clear_message(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_layer_tar(files)


def test_bad_image_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entrypoint or a cmd"):
        build_image_tar(tmp_path / "x.tar", REF, {"/a": b""}, entrypoint=[])
    with pytest.raises(ValueError, match="NAME=value"):
        build_image_tar(tmp_path / "x.tar", REF, {"/a": b""}, entrypoint=["/a"], env=["PATH"])
    with pytest.raises(ValueError, match="whitespace"):
        build_image_tar(tmp_path / "x.tar", "bad ref", {"/a": b""}, entrypoint=["/a"])
    assert not (tmp_path / "x.tar").exists()


def test_normalize_image_path() -> None:
    assert normalize_image_path("/bin/sh") == "bin/sh"
    assert normalize_image_path("bin/./sh") == "bin/sh"
    assert normalize_image_path("//a//b/") == "a/b"
