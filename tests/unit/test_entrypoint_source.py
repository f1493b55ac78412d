"""The entrypoint source and admission at Create, without containerd or a registry (shim/image/source.py).

The content store is a stand-in here that answers with a fixed origin; the real one (containerd over gRPC) is
tests/integration/test_artifact_source.py and test_image_identity.py, and verification against a registry is
test_policy_containerd.py and test_policy_cri.py. What is checked here is the order the source keeps: find, then
identify (only when needed), then the policy's decision on exactly that origin, then placement, then one read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from wasm_shim.oci.manifest import Descriptor
from wasm_shim.oci.policy import PolicyFile
from wasm_shim.shim.engines.base import EngineError, EntryKind, EntryPath, GuestSpec
from wasm_shim.shim.engines.grant import parse_grant
from wasm_shim.shim.image.admission import Admission, AdmissionError
from wasm_shim.shim.image.origin import ImageOrigin, ImageOriginError
from wasm_shim.shim.image.place import place_layer
from wasm_shim.shim.image.registry import RegistryArtifacts
from wasm_shim.shim.image.source import EntrypointSource

MODULE = b"\0asm\x01\x00\x00\x00"
DIGEST = "sha256:" + "ab" * 32
CONFIG = "sha256:" + "cd" * 32
SANDBOX = {"io.kubernetes.cri.container-type": "sandbox"}


def _spec(rootfs: Path, **annotations: str) -> GuestSpec:
    return GuestSpec(task_id="t1", rootfs=str(rootfs), root_readonly=False, args=("/app.wasm",), env=(), cwd="/",
                     grant=parse_grant(annotations))


def _origin(layer: bytes | None = None) -> ImageOrigin:
    described = None
    if layer is not None:
        described = Descriptor("application/wasm", "sha256:" + hashlib.sha256(layer).hexdigest(), len(layer))
    return ImageOrigin("ghcr.io/team/app:v1", DIGEST, DIGEST, CONFIG, described, "containerd")


class Store:
    """Stands in for containerd's content store: a fixed answer, and a record of what it was asked."""

    def __init__(self, origin: ImageOrigin | None = None, layer: bytes = b"", address: str = "/run/c.sock") -> None:
        self.origin, self.layer, self.address = origin, layer, address
        self.asked: list[str] = []

    def identify(self, spec: GuestSpec, namespace: str) -> ImageOrigin | None:
        self.asked.append("identify")
        return self.origin

    def place(self, origin: ImageOrigin, entry: EntryPath, namespace: str) -> None:
        self.asked.append("place")

        def write(sink: IO[bytes]) -> None:
            sink.write(self.layer)

        place_layer(entry, origin, write)

    def close(self) -> None:
        pass


def _source(policy_text: str | None, store: Store, tmp_path: Path) -> EntrypointSource:
    policy = None
    if policy_text is not None:
        (tmp_path / "policy.toml").write_text(policy_text)
        policy = PolicyFile(str(tmp_path / "policy.toml"))
    return EntrypointSource(Admission(policy), store, RegistryArtifacts(""))  # type: ignore[arg-type]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def test_regular_image_without_a_policy_asks_containerd_nothing(rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "app.wasm").write_bytes(MODULE)
    store = Store(_origin())
    provided = _source(None, store, tmp_path).provide(_spec(rootfs), "default")
    assert provided.entry.kind is EntryKind.MODULE and provided.origin is None
    assert store.asked == []


def test_default_deny_refuses_naming_the_image_and_places_nothing(rootfs: Path, tmp_path: Path) -> None:
    store = Store(_origin(MODULE), MODULE)
    with pytest.raises(AdmissionError, match=f"image ghcr.io/team/app@{DIGEST} refused by the signature policy: "
                                             "the policy's default: no rule matches ghcr.io/team/app"):
        _source('default = "deny"\n', store, tmp_path).provide(_spec(rootfs), "default")
    assert store.asked == ["identify"]  # decided before anything was placed
    assert list(rootfs.iterdir()) == []


def test_allowed_artifact_layer_is_placed_then_read_once(rootfs: Path, tmp_path: Path) -> None:
    store = Store(_origin(MODULE), MODULE)
    provided = _source(None, store, tmp_path).provide(_spec(rootfs), "default")
    assert store.asked == ["identify", "place"]  # identified only because args[0] was missing
    assert provided.origin == _origin(MODULE)
    assert (rootfs / "app.wasm").read_bytes() == MODULE and provided.entry.kind is EntryKind.MODULE


def test_a_layer_that_does_not_match_is_never_visible(rootfs: Path, tmp_path: Path) -> None:
    origin = _origin(MODULE)

    def lying(sink: IO[bytes]) -> None:
        sink.write(b"\0asm\x01\x00\x00\x00 and more")
        raise ImageOriginError("digest mismatch")

    path = EntryPath("/app.wasm", "/app.wasm", str(rootfs / "app.wasm"), None, in_rootfs=True)
    with pytest.raises(ImageOriginError):
        place_layer(path, origin, lying)
    assert list(rootfs.iterdir()) == []


def test_a_layer_is_never_written_under_a_mounted_volume(tmp_path: Path) -> None:
    volume = tmp_path / "host-dir"
    volume.mkdir()
    path = EntryPath("/data/app.wasm", "/data/app.wasm", str(volume / "app.wasm"), None, in_rootfs=False)
    write: Callable[[IO[bytes]], None] = lambda sink: sink.write(MODULE)  # noqa: E731
    with pytest.raises(ImageOriginError, match="only be placed in the container's rootfs.*under a mounted volume"):
        place_layer(path, _origin(MODULE), write)
    assert list(volume.iterdir()) == []


def test_container_without_image(rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "app.wasm").write_bytes(MODULE)
    with pytest.raises(AdmissionError, match="container t1 has no image.*default deny"):
        _source('default = "deny"\n', Store(None), tmp_path).provide(_spec(rootfs), "default")
    _source('default = "allow"\n', Store(None), tmp_path).provide(_spec(rootfs), "default")


def test_cri_sandbox_is_exempt_and_never_gets_the_pods_artifact(rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "app.wasm").write_bytes(MODULE)
    store = Store(_origin(MODULE), MODULE)
    spec = _spec(rootfs, **SANDBOX, **{"wasm.shim.io/artifact": "ghcr.io/team/app:v1"})
    _source('default = "deny"\n', store, tmp_path).provide(spec, "k8s.io")
    assert store.asked == []
    refusing = EntrypointSource(Admission.refusing("broken policy"), store, RegistryArtifacts(""))  # type: ignore
    refusing.provide(_spec(rootfs, **SANDBOX), "k8s.io")  # the node's pause image runs, so pods can be deleted
    with pytest.raises(AdmissionError, match="broken policy"):
        refusing.provide(_spec(rootfs), "k8s.io")


def test_artifact_annotation_needs_an_artifact_dir_and_a_valid_reference(rootfs: Path, tmp_path: Path) -> None:
    spec = _spec(rootfs, **{"wasm.shim.io/artifact": "127.0.0.1:1/team/app:v1"})
    with pytest.raises(EngineError, match="needs the shim option artifact_dir"):
        _source(None, Store(), tmp_path).provide(spec, "default")
    bad = _spec(rootfs, **{"wasm.shim.io/artifact": "Not A Ref"})
    source = EntrypointSource(Admission(), Store(), RegistryArtifacts(str(tmp_path / "cache")))  # type: ignore
    with pytest.raises(EngineError, match="wasm.shim.io/artifact=Not A Ref: image reference"):
        source.provide(bad, "default")
    assert not (rootfs / "app.wasm").exists()


def test_a_changed_policy_file_applies_from_the_next_create(rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "app.wasm").write_bytes(MODULE)
    path = tmp_path / "policy.toml"
    path.write_text('default = "allow"\n')
    store = Store(_origin())
    source = EntrypointSource(Admission(PolicyFile(str(path))), store,  # type: ignore[arg-type]
                              RegistryArtifacts(""))
    source.provide(_spec(rootfs), "k8s.io")
    assert store.asked == []  # no rule and default allow: containerd is not even asked
    path.with_suffix(".new").write_text('default = "deny"\n')
    path.with_suffix(".new").replace(path)
    with pytest.raises(AdmissionError, match="refused by the signature policy"):
        source.provide(_spec(rootfs), "k8s.io")
    path.write_text("default = ")
    with pytest.raises(AdmissionError, match="signature policy cannot be used, so nothing runs.*not valid TOML"):
        source.provide(_spec(rootfs), "k8s.io")
    source.provide(_spec(rootfs, **SANDBOX), "k8s.io")


def test_missing_entrypoint_of_a_regular_image_is_the_engines_words(rootfs: Path, tmp_path: Path) -> None:
    store = Store(_origin(None))
    with pytest.raises(EngineError, match="entrypoint /app.wasm: no such file in the container's rootfs"):
        _source(None, store, tmp_path).provide(_spec(rootfs), "default")
    assert store.asked == ["identify"]


@pytest.mark.parametrize("case", ["policy checks", "args[0] missing", "artifact annotation"])
def test_local_only_refuses_before_asking_anyone_or_placing_anything(rootfs: Path, tmp_path: Path, case: str) -> None:
    """What the event loop asks first: a Create that needs containerd, a registry or the policy is WouldBlock."""
    from wasm_shim.shim.engines.base import WouldBlock

    store = Store(_origin(MODULE), MODULE)
    annotations = {}
    if case != "args[0] missing":
        (rootfs / "app.wasm").write_bytes(MODULE)
    if case == "artifact annotation":
        annotations["wasm.shim.io/artifact"] = "registry.example/team/app:v1"
    policy = 'default = "deny"\n' if case == "policy checks" else None
    with pytest.raises(WouldBlock):
        _source(policy, store, tmp_path).provide(_spec(rootfs, **annotations), "default", local_only=True)
    assert store.asked == []
    assert [p.name for p in rootfs.iterdir()] == ([] if case == "args[0] missing" else ["app.wasm"])


def test_local_only_answers_a_regular_image_under_no_policy_as_a_blocking_call_would(rootfs: Path,
                                                                                  tmp_path: Path) -> None:
    (rootfs / "app.wasm").write_bytes(MODULE)
    store = Store(_origin())
    source = _source(None, store, tmp_path)
    assert source.provide(_spec(rootfs), "default", local_only=True) == source.provide(_spec(rootfs), "default")
    assert store.asked == []
