"""The installer image: the node bundle at /bundle, a wasm module for `helm test` at /test/hello.wasm.

Owns the image's file list (`image_files`), shared by both ways to build it, so they give the same layout:
- `build_tar`: an OCI image-layout tarball written by oci/layout.py (no Docker), which `ctr images import` takes
  and any registry client (crane, oras, skopeo) pushes;
- `write_context`: a Docker build context (the same files + image/Dockerfile) for people who build with Docker.

Invariants: the bundle's launchers inside the image name /bundle (the DaemonSet runs /bundle/bin/wasm-shim); the
image holds nothing else but the C runtime the bundle leaves to its host and nsenter (no shell, no package
manager); the
tarball is deterministic (oci/layout.py), so the same bundle and module give the same digest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ...oci.layout import FileSource, Symlink, build_image_tar
from .build import GLIBC, elf_files, launcher_texts, needed_libraries, read_info

BUNDLE_PATH = "/bundle"
TEST_WASM_PATH = "/test/hello.wasm"
ENTRYPOINT = [f"{BUNDLE_PATH}/bin/wasm-shim"]
CMD = ["node", "run", "--host-root=/host"]
DOCKERFILE = Path(__file__).resolve().parents[2] / "image" / "Dockerfile"
#: The one host tool the installer runs inside its own container: the default restart enters PID 1's namespaces.
NSENTER = "/usr/bin/nsenter"


def host_runtime(bundle: Path) -> dict[str, FileSource]:
    """The C runtime the bundle expects from its host (bundle.GLIBC), and nsenter with its libraries, from this
    build machine: on a node the host provides them; in the image (no distribution base) we do."""
    files: dict[str, FileSource] = {}
    for elf in [*elf_files(bundle), Path(NSENTER)]:
        for name, where in needed_libraries(elf).items():
            inside = os.path.realpath(where).startswith(str(bundle.resolve()) + os.sep)
            if inside or (elf != Path(NSENTER) and name not in GLIBC):
                continue
            files[where] = Path(os.path.realpath(where))
    files[NSENTER] = Path(NSENTER)
    return files


def image_files(bundle: Path, test_wasm: Path) -> dict[str, FileSource]:
    """Image path -> content for every file of the installer image."""
    read_info(str(bundle))  # a bundle, or a clear error
    if test_wasm.read_bytes()[:4] != b"\0asm":
        raise ValueError(f"{test_wasm} is not a wasm module (no \\0asm magic)")
    files: dict[str, FileSource] = host_runtime(bundle)
    for dirpath, _dirnames, filenames in os.walk(bundle):
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(bundle).as_posix()
            target = f"{BUNDLE_PATH}/{rel}"
            files[target] = Symlink(os.readlink(path)) if path.is_symlink() else path
        for name in _dirnames:
            path = Path(dirpath, name)
            if path.is_symlink():
                files[f"{BUNDLE_PATH}/{path.relative_to(bundle).as_posix()}"] = Symlink(os.readlink(path))
    for rel, text in launcher_texts(BUNDLE_PATH).items():
        files[f"{BUNDLE_PATH}/{rel}"] = text.encode()  # bytes starting with #! are stored executable
    files[TEST_WASM_PATH] = test_wasm
    return files


def build_tar(bundle: Path, test_wasm: Path, out: Path, ref: str) -> str:
    """Write the installer image as an OCI layout tarball; returns the manifest digest."""
    info = read_info(str(bundle))
    return build_image_tar(
        out, ref, image_files(bundle, test_wasm), entrypoint=ENTRYPOINT, cmd=CMD,
        annotations={"org.opencontainers.image.version": info["version"],
                     "org.opencontainers.image.title": "wasm-shim installer",
                     "io.wasm-shim.bundle.id": info["id"]},
    )


def write_context(bundle: Path, test_wasm: Path, out: Path) -> None:
    """A Docker build context: the image's files under rootfs/ and image/Dockerfile copying them to /."""
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    partial = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for image_path, source in image_files(bundle, test_wasm).items():
            dest = partial / "rootfs" / image_path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Symlink):
                os.symlink(source.target, dest)
            elif isinstance(source, Path):
                shutil.copy2(source, dest)
            else:
                dest.write_bytes(source)
                dest.chmod(0o755)
        shutil.copyfile(DOCKERFILE, partial / "Dockerfile")
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
