"""RootViews: which rootfs mounts a wasm task can do without (shim/daemon/rootfs.py), over real directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasm_shim.shim.daemon.rootfs import RootView, RootViews
from wasm_shim.shim.mount import MountSpec

WASM = b"\0asm\x01\0\0\0"


def _overlay(tmp_path: Path, layers: dict[str, dict[str, bytes]], *, upper_files: dict[str, bytes] | None = None,
             extra: tuple[str, ...] = ()) -> tuple[MountSpec, Path]:
    lowers = []
    for name, files in layers.items():
        layer = tmp_path / name
        layer.mkdir()
        for path, data in files.items():
            (layer / path).parent.mkdir(parents=True, exist_ok=True)
            (layer / path).write_bytes(data)
        lowers.append(str(layer))
    upper = tmp_path / "upper"
    upper.mkdir()
    for path, data in (upper_files or {}).items():
        (upper / path).write_bytes(data)
    (tmp_path / "work").mkdir()
    options = (*extra, f"workdir={tmp_path / 'work'}", f"upperdir={upper}", f"lowerdir={':'.join(lowers)}")
    return MountSpec("overlay", "overlay", "", options), upper


def test_a_module_only_image_is_its_upper_dir_with_the_module_read_from_its_layer(tmp_path: Path) -> None:
    mount, upper = _overlay(tmp_path, {"l1": {"app.wasm": WASM}}, extra=("index=off",))
    assert RootViews().view([mount], "/app.wasm") == RootView(str(upper), readonly=False, layer=str(tmp_path / "l1"))
    assert RootViews().view([mount], "/app.wasm#run") is not None  # path#export names the same file


@pytest.mark.parametrize(("layers", "upper_files", "args0", "extra"), [
    ({"l1": {"app.wasm": WASM, "data.txt": b"x"}}, None, "/app.wasm", ()),       # the image holds more
    ({"l1": {"app.wasm": WASM}, "l2": {"other.wasm": WASM}}, None, "/app.wasm", ()),
    ({"l1": {"app.wasm": WASM}}, {"left.txt": b"x"}, "/app.wasm", ()),          # the upper dir is not empty
    ({"l1": {"app.wasm": b"\x7fELF...."}}, None, "/app.wasm", ()),              # not wasm: runc needs a rootfs
    ({"l1": {"app.wasm": WASM}}, None, "/other.wasm", ()),                       # args[0] is not that file
    ({"l1": {"bin/app.wasm": WASM}}, None, "/bin/app.wasm", ()),                 # not at the top: a directory too
    ({"l1": {"app.wasm": WASM}}, None, "app.wasm", ()),                          # relative: resolved by cwd/PATH
    ({"l1": {"app.wasm": WASM}}, None, "/app.wasm", ("metacopy=on",)),           # an option we do not know
])
def test_anything_more_is_mounted(tmp_path: Path, layers: dict, upper_files: dict | None,  # type: ignore[type-arg]
                                  args0: str, extra: tuple[str, ...]) -> None:
    mount, _ = _overlay(tmp_path, layers, upper_files=upper_files, extra=extra)
    assert RootViews().view([mount], args0) is None


def test_the_same_module_in_a_layer_stack_is_found_once(tmp_path: Path) -> None:
    mount, upper = _overlay(tmp_path, {"top": {}, "base": {"app.wasm": WASM}})
    view = RootViews().view([mount], "/app.wasm")
    assert view is not None and view.root == str(upper) and view.layer == str(tmp_path / "base")


def test_a_read_only_overlay_or_bind_is_read_only(tmp_path: Path) -> None:
    mount, _ = _overlay(tmp_path, {"l1": {"app.wasm": WASM}}, extra=("ro",))
    view = RootViews().view([mount], "/app.wasm")
    assert view is not None and view.readonly
    rootfs = tmp_path / "snapshot"
    rootfs.mkdir()
    (rootfs / "app.wasm").write_bytes(WASM)
    (rootfs / "more.txt").write_text("a bind shows everything")
    bind = MountSpec("bind", str(rootfs), "", ("rbind", "ro"))
    assert RootViews().view([bind], "/app.wasm") == RootView(str(rootfs), readonly=True)
    assert RootViews().view([MountSpec("bind", str(rootfs), "", ("rbind", "rw"))], "/more.txt") is None  # not wasm


def test_several_mounts_or_another_type_are_mounted(tmp_path: Path) -> None:
    mount, _ = _overlay(tmp_path, {"l1": {"app.wasm": WASM}})
    assert RootViews().view([mount, mount], "/app.wasm") is None
    assert RootViews().view([MountSpec("tmpfs", "tmpfs", "", ())], "/app.wasm") is None
