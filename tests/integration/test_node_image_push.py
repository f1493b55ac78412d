"""The installer image reaches an operator's registry the way README.md's operator section says: the tarball
`wasm-shim image build` writes, unpacked, pushed with the real `crane push` and `oras cp --from-oci-layout` to a
registry on loopback (Debian's docker-registry); the registry then serves the manifest digest the build printed."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from lab.registries import DockerRegistry
from tests.unit.test_node_installer import make_bundle

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
HELLO = bytes.fromhex("0061736d01000000")  # the smallest wasm module: magic and version


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}"
    return done.stdout


def test_the_image_tarball_pushes_with_crane_and_oras(tmp_path: Path) -> None:
    for tool in ("crane", "oras"):
        if not (TOOLS / tool).exists():
            pytest.skip(f"{tool} is missing (scripts/setup.sh builds it)")
    hello = tmp_path / "hello.wasm"
    hello.write_bytes(HELLO)
    tar = tmp_path / "installer.tar"
    out = run(str(REPO / ".venv" / "bin" / "wasm-shim"), "image", "build", str(tar), "--bundle",
              str(make_bundle(tmp_path)), "--test-wasm", str(hello), "--ref", "ghcr.io/wasm-shim/installer:0.1.0")
    digest = out.split()[-1]
    assert digest.startswith("sha256:")
    layout = tmp_path / "installer"
    with tarfile.open(tar) as archive:
        archive.extractall(layout, filter="data")
    registry = DockerRegistry(tmp_path / "registry").start()
    try:
        crane_ref = f"{registry.address}/wasm-shim/installer:0.1.0"
        run(str(TOOLS / "crane"), "push", "--insecure", str(layout), crane_ref)
        assert run(str(TOOLS / "crane"), "digest", "--insecure", crane_ref).strip() == digest
        oras_ref = f"{registry.address}/mirror/installer:0.1.0"
        run(str(TOOLS / "oras"), "cp", "--from-oci-layout", f"{layout}@{digest}", "--to-plain-http", oras_ref)
        assert run(str(TOOLS / "crane"), "digest", "--insecure", oras_ref).strip() == digest
    finally:
        registry.stop()
