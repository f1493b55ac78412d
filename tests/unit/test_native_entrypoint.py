"""Which entrypoints the native engine claims, and how it finds them inside a rootfs (shim/engines/native.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wasm_shim.shim.engines.base import EngineError, GuestMount, GuestSpec
from wasm_shim.shim.engines.native import (
    NativeEngine,
    find_executable,
    host_path,
    native_magic,
    spec_path,
    systemd_cgroup,
)

ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(56)
WASM = b"\0asm\x01\x00\x00\x00"


def spec(rootfs: Path, *args: str, env: tuple[str, ...] = ("PATH=/usr/bin:/bin",), cwd: str = "/",
         mounts: tuple[GuestMount, ...] = (), bundle: str = "") -> GuestSpec:
    return GuestSpec(task_id="t", rootfs=str(rootfs), root_readonly=False, args=args, env=env, cwd=cwd,
                     mounts=mounts, bundle=bundle)


def put(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    put(root / "bin" / "busybox", ELF)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")  # absolute: resolved inside the rootfs
    put(root / "app" / "run.sh", b"#!/bin/sh\necho hi\n")
    put(root / "app" / "app.wasm", WASM)
    put(root / "app" / "notes.txt", b"just text\n")
    put(root / "app" / "plain", ELF, mode=0o644)  # not executable
    put(root / "usr" / "bin" / "tool", b"#!/bin/sh\n", mode=0o644)  # on PATH, but not executable
    put(root / "bin" / "tool", ELF)
    return root


def test_bare_name_is_looked_up_on_the_spec_path(rootfs: Path) -> None:
    found = find_executable(spec(rootfs, "sh"))
    assert found.guest_path == "/bin/sh"
    assert found.host_path == str(rootfs / "bin" / "busybox")
    assert native_magic(found.host_path)


def test_path_lookup_skips_files_that_are_not_executable(rootfs: Path) -> None:
    # /usr/bin/tool comes first on PATH but has no x bit: like Go's exec.LookPath, take /bin/tool.
    assert find_executable(spec(rootfs, "tool")).guest_path == "/bin/tool"


def test_absolute_symlink_resolves_inside_the_rootfs(rootfs: Path) -> None:
    assert find_executable(spec(rootfs, "env")).host_path == str(rootfs / "bin" / "busybox")


def test_last_path_entry_in_env_wins() -> None:
    assert spec_path(("PATH=/a", "X=1", "PATH=/b")) == "/b"
    assert spec_path(("X=1",)) is None


def test_relative_name_with_slash_is_relative_to_cwd(rootfs: Path) -> None:
    assert find_executable(spec(rootfs, "./run.sh", cwd="/app")).guest_path == "/app/run.sh"


def test_entrypoint_under_a_bind_mount_is_found_in_its_source(rootfs: Path, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    put(scripts / "hello.sh", b"#!/bin/sh\n")
    put(tmp_path / "single", ELF)
    mounts = (GuestMount("/scripts", str(scripts), True), GuestMount("/opt/single", str(tmp_path / "single"), True))
    assert find_executable(spec(rootfs, "/scripts/hello.sh", mounts=mounts)).host_path == str(scripts / "hello.sh")
    assert host_path(spec(rootfs, "x", mounts=mounts), "/opt/single") == str(tmp_path / "single")
    assert find_executable(spec(rootfs, "hello.sh", env=("PATH=/bin:/scripts",), mounts=mounts)).guest_path == (
        "/scripts/hello.sh"
    )
    # `..` cannot climb out of a mount's source.
    assert host_path(spec(rootfs, "x", mounts=mounts), "/scripts/../../etc") == str(scripts / "etc")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("no-such-tool",), ("PATH=/bin",), "'no-such-tool' not found in the container's rootfs in $PATH (/bin)"),
        (("sh",), (), "no PATH"),
        (("/app/missing",), ("PATH=/bin",), "/app/missing: no such file"),
        (("/app/plain",), ("PATH=/bin",), "/app/plain: permission denied"),
        (("/app",), ("PATH=/bin",), "/app: not a regular file"),
        ((), ("PATH=/bin",), "process.args is empty"),
    ],
)
def test_lookup_errors_name_what_is_wrong(rootfs: Path, args: tuple[str, ...], env: tuple[str, ...],
                                          message: str) -> None:
    with pytest.raises(EngineError) as info:
        find_executable(spec(rootfs, *args, env=env))
    assert message in str(info.value)


def test_can_handle_claims_elf_and_scripts_only(rootfs: Path) -> None:
    engine = NativeEngine(root="/nonexistent/runc-root")
    assert engine.can_handle(spec(rootfs, "sh", "-c", "true"))
    assert engine.can_handle(spec(rootfs, "/app/run.sh"))
    assert not engine.can_handle(spec(rootfs, "/app/app.wasm"))
    assert not engine.can_handle(spec(rootfs, "/app/notes.txt"))
    assert not engine.can_handle(spec(rootfs, "/app/missing"))
    assert not engine.can_handle(spec(rootfs, "/app/app.wasm#start"))
    # A bare name found nowhere is claimed, so that prepare can say it is not on PATH.
    assert engine.can_handle(spec(rootfs, "no-such-tool"))
    with pytest.raises(EngineError, match=r"no-such-tool.*PATH"):
        engine.prepare(spec(rootfs, "no-such-tool"))


def _bundle(tmp_path: Path, cgroups_path: str = "/ns/t") -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"linux": {"cgroupsPath": cgroups_path}}))
    return bundle


def test_prepare_checks_magic_runc_and_bundle(rootfs: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    engine = NativeEngine(root="/nonexistent/runc-root")
    if engine.runc_binary:
        prepared = engine.prepare(spec(rootfs, "sh", bundle=str(bundle)))
        assert prepared.executable.guest_path == "/bin/sh" and not prepared.systemd_cgroup
    with pytest.raises(EngineError, match="notes.txt: neither an ELF binary nor a #! script"):
        engine.prepare(spec(rootfs, "/app/notes.txt", bundle=str(bundle)))
    missing = NativeEngine(root="/nonexistent/runc-root", runc="no-such-runc")
    with pytest.raises(EngineError, match=r"no-such-runc is not installed.*/bin/sh"):
        missing.prepare(spec(rootfs, "sh", bundle=str(bundle)))
    if engine.runc_binary:
        with pytest.raises(EngineError, match="has no config.json"):
            engine.prepare(spec(rootfs, "sh", bundle=str(tmp_path / "nowhere")))


def test_systemd_cgroup_paths_are_recognised() -> None:
    assert systemd_cgroup("kubepods-besteffort-pod1.slice:cri-containerd:abc")
    assert systemd_cgroup("system.slice:docker:abc")
    assert not systemd_cgroup("/default/abc")
    assert not systemd_cgroup("kubepods/besteffort/pod1/abc")
    assert not systemd_cgroup("")
