"""build.py's floor toolchain (`wasm-shim bundle build --floor DIR`): what it reads from DIR, and a clear refusal
naming the missing or wrong entry, before anything is written (real files and processes; no bundle is built here:
tests/integration/test_node_bundle.py builds one from the real toolchain)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wasm_shim.shim.cli.main import main
from wasm_shim.shim.node.build import BuildError, floor_source, pins

PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def toolchain(tmp_path: Path, *, interpreter: str = "", glibc: str | None = "2.28", site: bool = True) -> Path:
    """A floor toolchain directory: python/bin/python3.x (`interpreter`, a script; default: this Python), the
    prefix's shared libraries, site-packages, GLIBC."""
    root = tmp_path / "floor"
    bindir = root / "python" / "bin"
    bindir.mkdir(parents=True)
    exe = bindir / PY
    exe.write_text(interpreter or f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    exe.chmod(0o755)
    lib = root / "python" / "lib"
    lib.mkdir()
    (lib / "libssl.so.3").write_bytes(b"\x7fELF")
    (lib / "libssl.so").symlink_to("libssl.so.3")  # the linker's link: not shipped
    (lib / "libssl.a").write_bytes(b"!<arch>\n")
    if site:
        (root / "site-packages").mkdir()
    if glibc is not None:
        (root / "GLIBC").write_text(glibc + "\n")
    return root


def test_a_toolchain_gives_its_interpreter_libraries_packages_and_target(tmp_path: Path) -> None:
    root = toolchain(tmp_path)
    (root / "wasm-shim-component-runner").write_text("")
    source = floor_source(str(root))
    assert source.prefix == root / "python"
    assert source.python_version == sys.version.split()[0]  # what the interpreter says, not the build's guess
    assert source.shared_libraries == (root / "python" / "lib" / "libssl.so.3",)
    assert source.site == (str(root / "site-packages"),)
    assert source.glibc_target == "2.28"
    assert source.runner == str(root / "wasm-shim-component-runner")


@pytest.mark.parametrize(("change", "message"), [
    ({"glibc": None}, "has no GLIBC file (the glibc it was built for); make it with scripts/setup.sh --with "
                      "bundle-floor"),
    ({"site": False}, "has no site-packages directory; make it with scripts/setup.sh --with bundle-floor"),
    ({"interpreter": "#!/bin/sh\necho 3.9.18\n"}, "is not a working Python 3.11 (the ABI of the venv's packages)"),
    ({"interpreter": "#!/bin/sh\necho 'version GLIBC_2.99 not found' >&2; exit 1\n"},
     "is not a working Python 3.11 (the ABI of the venv's packages): version GLIBC_2.99 not found"),
])
def test_a_toolchain_lacking_an_entry_is_refused_naming_it(tmp_path: Path, change: dict[str, object],
                                                            message: str) -> None:
    root = toolchain(tmp_path, **change)  # type: ignore[arg-type]
    with pytest.raises(BuildError) as caught:
        floor_source(str(root))
    assert str(root) in str(caught.value) and message in str(caught.value)


def test_bundle_build_floor_without_the_toolchain_says_how_to_make_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-toolchain"
    assert main(["bundle", "build", str(tmp_path / "out"), "--floor", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == (f"wasm-shim bundle build: the floor toolchain {missing} has no interpreter "
                   f"({missing}/python/bin/{PY} is missing); make it with scripts/setup.sh --with bundle-floor\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_pins_are_the_venvs_versions_of_what_the_bundle_ships() -> None:
    pinned = dict(line.split("==") for line in pins())
    # The nodes' packages and the installer's, each at the version this venv runs its tests with.
    for name in ("wasmtime", "grpcio", "cryptography", "urllib3", "kubernetes"):
        shown = subprocess.run([sys.executable, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert pinned[name] == shown, name
    assert not any(name.lower() in ("pytest", "ruff", "mypy", "pip", "setuptools") for name in pinned)
