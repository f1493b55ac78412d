"""Fixtures for driving our shim through containerd: wasm guests packed as OCI images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from lab.containerd import Containerd
from lab.netns import network_namespace
from wasm_shim.oci.layout import FileSource, build_image_tar

WasmImage = Callable[..., str]


def _image_maker(containerd: Containerd, workdir: Path) -> WasmImage:
    def make(name: str, wasm: Path, *, env: Sequence[str] = (), args: Sequence[str] = (),
             extra: Mapping[str, FileSource] | None = None) -> str:
        """Pack `wasm` at /app.wasm (entrypoint) into an image, import it, return its ref.

        ``extra`` adds more image paths (bytes, a host Path, or a ``Symlink``), e.g. for the grant tests.
        """
        ref = f"localhost/wasm-shim-test/{name}:latest"
        tar = workdir / f"{name}.tar"
        files: dict[str, FileSource] = {"/app.wasm": Path(wasm), **(extra or {})}
        build_image_tar(tar, ref, files, entrypoint=["/app.wasm"], cmd=list(args),
                        env=list(env), architecture="amd64", os="linux")
        containerd.import_image(tar)
        return ref

    return make


@pytest.fixture
def wasm_image(containerd: Containerd, tmp_path: Path) -> WasmImage:
    return _image_maker(containerd, tmp_path)


@pytest.fixture
def wasm_image_factory(tmp_path: Path) -> Callable[[Containerd], WasmImage]:
    return lambda containerd: _image_maker(containerd, tmp_path)


@pytest.fixture
def pod_netns() -> Iterator[Path]:
    """A network namespace of the test's own with loopback up (what CRI's CNI gives a pod), deleted afterwards."""
    with network_namespace("wasmshim") as path:
        yield path
