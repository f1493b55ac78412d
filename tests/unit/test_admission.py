"""Admission at Create without containerd or a registry: the paths decided by the policy alone (shim/admission.py).

The resolver (image name and digest from containerd) is passed in; verification against a registry is covered by
tests/integration/test_policy_containerd.py and test_policy_cri.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wasm_shim.oci.policy import parse_policy
from wasm_shim.shim.admission import Admission, AdmissionError, ImageIdentity
from wasm_shim.shim.engines.base import GuestSpec

DIGEST = "sha256:" + "ab" * 32


def _spec(tmp_path: Path, **annotations: str) -> GuestSpec:
    return GuestSpec(task_id="t1", rootfs=str(tmp_path), root_readonly=False, args=("/app.wasm",), env=(), cwd="/",
                     annotations=annotations)


def _deny(tmp_path: Path) -> Admission:
    policy = parse_policy('default = "deny"\n', str(tmp_path / "policy.toml"))
    return Admission(policy, resolver=lambda spec, ns: ImageIdentity("ghcr.io/team/app:v1", DIGEST))


def test_default_deny_refuses_an_unmatched_image_naming_it(tmp_path: Path) -> None:
    with pytest.raises(AdmissionError, match=f"image ghcr.io/team/app@{DIGEST} refused by the signature policy: "
                                             "the policy's default: no rule matches ghcr.io/team/app"):
        _deny(tmp_path).admit(_spec(tmp_path), "default")


def test_cri_sandbox_is_exempt(tmp_path: Path) -> None:
    _deny(tmp_path).admit(_spec(tmp_path, **{"io.kubernetes.cri.container-type": "sandbox"}), "k8s.io")


def test_container_without_image(tmp_path: Path) -> None:
    policy = parse_policy('default = "deny"\n', str(tmp_path / "policy.toml"))
    with pytest.raises(AdmissionError, match="container t1 has no image.*default deny"):
        Admission(policy, resolver=lambda spec, ns: None).admit(_spec(tmp_path), "default")
    allow = parse_policy('default = "allow"\n', str(tmp_path / "policy.toml"))
    Admission(allow, resolver=lambda spec, ns: None).admit(_spec(tmp_path), "default")


def test_no_policy_checks_nothing(tmp_path: Path) -> None:
    def resolver(spec: GuestSpec, ns: str) -> ImageIdentity:
        raise AssertionError("no policy: containerd must not be asked")

    Admission(None, resolver=resolver).admit(_spec(tmp_path), "default")


def test_artifact_annotation_needs_an_artifact_dir_and_a_valid_reference(tmp_path: Path) -> None:
    spec = _spec(tmp_path, **{"wasm.shim.io/artifact": "127.0.0.1:1/team/app:v1"})
    with pytest.raises(AdmissionError, match="needs the shim option artifact_dir"):
        Admission(None).admit(spec, "default")
    bad = _spec(tmp_path, **{"wasm.shim.io/artifact": "Not A Ref"})
    with pytest.raises(AdmissionError, match="wasm.shim.io/artifact=Not A Ref: image reference"):
        Admission(None, artifact_dir=str(tmp_path / "cache")).admit(bad, "default")
    assert not (tmp_path / "app.wasm").exists()


def test_cri_sandbox_never_gets_the_pods_artifact(tmp_path: Path) -> None:
    # containerd copies pod annotations into the pause container's spec as well.
    spec = _spec(tmp_path, **{"io.kubernetes.cri.container-type": "sandbox", "wasm.shim.io/artifact": "x"})
    Admission(None, artifact_dir=str(tmp_path / "cache")).admit(spec, "k8s.io")
    assert not (tmp_path / "cache").exists()


def test_a_changed_policy_file_applies_from_the_next_create(tmp_path: Path) -> None:
    from wasm_shim.oci.policy import PolicyFile

    path = tmp_path / "policy.toml"
    path.write_text('default = "allow"\n')
    asked: list[str] = []

    def resolver(spec: GuestSpec, ns: str) -> ImageIdentity:
        asked.append(spec.task_id)
        return ImageIdentity("ghcr.io/team/app:v1", DIGEST)

    admission = Admission(policy_file=PolicyFile(str(path)), resolver=resolver)
    admission.admit(_spec(tmp_path), "k8s.io")
    assert asked == []  # no rule and default allow: containerd is not even asked
    path.with_suffix(".new").write_text('default = "deny"\n')
    path.with_suffix(".new").replace(path)
    with pytest.raises(AdmissionError, match="refused by the signature policy"):
        admission.admit(_spec(tmp_path), "k8s.io")
    path.write_text("default = ")
    with pytest.raises(AdmissionError, match="signature policy cannot be used, so nothing runs.*not valid TOML"):
        admission.admit(_spec(tmp_path), "k8s.io")
    admission.admit(_spec(tmp_path, **{"io.kubernetes.cri.container-type": "sandbox"}), "k8s.io")
