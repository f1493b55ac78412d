"""Finding args[0] in a container's filesystem and telling what it is: one rule for every engine (engines/base.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wasm_shim.shim.engines.base import (
    EngineError,
    EntryKind,
    GuestMount,
    GuestSpec,
    find_entrypoint,
    host_path,
    locate_entrypoint,
    spec_path,
)
from wasm_shim.shim.engines.native import NativeEngine
from wasm_shim.shim.engines.runc import systemd_cgroup

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
    found = locate_entrypoint(spec(rootfs, "sh"))
    assert found.guest_path == "/bin/sh"
    assert found.host_path == str(rootfs / "bin" / "busybox")
    assert found.kind is EntryKind.NATIVE


def test_path_lookup_skips_files_that_are_not_executable(rootfs: Path) -> None:
    # /usr/bin/tool comes first on PATH but has no x bit: like Go's exec.LookPath, take /bin/tool.
    assert find_entrypoint(spec(rootfs, "tool")).guest_path == "/bin/tool"


def test_absolute_symlink_resolves_inside_the_rootfs(rootfs: Path) -> None:
    assert find_entrypoint(spec(rootfs, "env")).host_path == str(rootfs / "bin" / "busybox")


def test_last_path_entry_in_env_wins() -> None:
    assert spec_path(("PATH=/a", "X=1", "PATH=/b")) == "/b"
    assert spec_path(("X=1",)) is None


def test_relative_name_with_slash_is_relative_to_cwd(rootfs: Path) -> None:
    assert find_entrypoint(spec(rootfs, "./run.sh", cwd="/app")).guest_path == "/app/run.sh"


def test_entrypoint_under_a_bind_mount_is_found_in_its_source(rootfs: Path, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    put(scripts / "hello.sh", b"#!/bin/sh\n")
    put(tmp_path / "single", ELF)
    mounts = (GuestMount("/scripts", str(scripts), True), GuestMount("/opt/single", str(tmp_path / "single"), True))
    assert find_entrypoint(spec(rootfs, "/scripts/hello.sh", mounts=mounts)).host_path == str(scripts / "hello.sh")
    assert host_path(spec(rootfs, "x", mounts=mounts), "/opt/single") == str(tmp_path / "single")
    assert find_entrypoint(spec(rootfs, "hello.sh", env=("PATH=/bin:/scripts",), mounts=mounts)).guest_path == (
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
        locate_entrypoint(spec(rootfs, *args, env=env))
    assert message in str(info.value)


def test_kinds_one_rule_for_every_engine(rootfs: Path) -> None:
    assert locate_entrypoint(spec(rootfs, "sh", "-c", "true")).kind is EntryKind.NATIVE
    assert locate_entrypoint(spec(rootfs, "/app/run.sh")).kind is EntryKind.NATIVE
    assert locate_entrypoint(spec(rootfs, "/app/app.wasm")).kind is EntryKind.MODULE
    entry = locate_entrypoint(spec(rootfs, "/app/app.wasm#start"))
    assert entry.kind is EntryKind.MODULE and entry.export == "start"
    # A bare name that is a wasm file in the working directory is that file, before any PATH lookup.
    assert locate_entrypoint(spec(rootfs, "app.wasm", cwd="/app")).kind is EntryKind.MODULE
    with pytest.raises(EngineError, match="notes.txt is neither a WebAssembly module or component nor a native"):
        locate_entrypoint(spec(rootfs, "/app/notes.txt"))
    with pytest.raises(EngineError, match="/app/missing: no such file in the container's rootfs"):
        locate_entrypoint(spec(rootfs, "/app/missing"))
    with pytest.raises(EngineError, match=r"'no-such-tool' not found in the container's rootfs in \$PATH"):
        locate_entrypoint(spec(rootfs, "no-such-tool"))
    with pytest.raises(EngineError, match="names an export of a WebAssembly module, and this is a native program"):
        locate_entrypoint(spec(rootfs, "/app/run.sh#main"))
    assert not find_entrypoint(spec(rootfs, "/app/missing")).searched  # a path is not looked up on PATH


def test_only_the_rootfs_takes_a_placed_layer(rootfs: Path, tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    mounts = (GuestMount("/data", str(volume), False),)
    assert find_entrypoint(spec(rootfs, "/app/app.wasm", mounts=mounts)).in_rootfs
    under = find_entrypoint(spec(rootfs, "/data/app.wasm", mounts=mounts))
    assert not under.in_rootfs and under.host_path == str(volume / "app.wasm")


def _bundle(tmp_path: Path, cgroups_path: str = "/ns/t") -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"linux": {"cgroupsPath": cgroups_path}}))
    return bundle


def test_prepare_checks_runc_and_bundle(rootfs: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    engine = NativeEngine(root="/nonexistent/runc-root")
    assert engine.accepts == frozenset({EntryKind.NATIVE})
    sh = spec(rootfs, "sh", bundle=str(bundle))
    if engine.runc_binary:
        prepared = engine.prepare(sh, locate_entrypoint(sh))
        assert prepared.executable.guest_path == "/bin/sh" and not prepared.systemd_cgroup
    missing = NativeEngine(root="/nonexistent/runc-root", runc="no-such-runc")
    with pytest.raises(EngineError, match=r"no-such-runc is not installed.*/bin/sh"):
        missing.prepare(sh, locate_entrypoint(sh))
    if engine.runc_binary:
        nowhere = spec(rootfs, "sh", bundle=str(tmp_path / "nowhere"))
        with pytest.raises(EngineError, match="has no config.json"):
            engine.prepare(nowhere, locate_entrypoint(nowhere))


def test_systemd_cgroup_paths_are_recognised() -> None:
    assert systemd_cgroup("kubepods-besteffort-pod1.slice:cri-containerd:abc")
    assert systemd_cgroup("system.slice:docker:abc")
    assert not systemd_cgroup("/default/abc")
    assert not systemd_cgroup("kubepods/besteffort/pod1/abc")
    assert not systemd_cgroup("")
