"""The engine-neutral rules of shim/engines/base.py: paths inside a rootfs, entrypoints, wasm headers, signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from wasm_shim.shim.engines.base import (
    EngineError,
    EntryKind,
    GuestSpec,
    classify_header,
    find_entrypoint,
    killed_status,
    locate_entrypoint,
    safe_join,
    signal_terminates,
    split_env,
)

MODULE_HEADER = b"\0asm\x01\x00\x00\x00"
COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"


def spec(rootfs: Path, *args: str, cwd: str = "/") -> GuestSpec:
    return GuestSpec(
        task_id="t", rootfs=str(rootfs), root_readonly=False, args=args, env=(), cwd=cwd, mounts=()
    )


# --- safe_join ----------------------------------------------------------------------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "app" / "bin").mkdir(parents=True)
    (root / "app" / "bin" / "main.wasm").write_bytes(MODULE_HEADER)
    (tmp_path / "outside.wasm").write_bytes(MODULE_HEADER)
    return root


def test_plain_absolute_and_relative_paths(rootfs: Path) -> None:
    assert safe_join(str(rootfs), "/app/bin/main.wasm") == str(rootfs / "app/bin/main.wasm")
    assert safe_join(str(rootfs), "bin/main.wasm", "/app") == str(rootfs / "app/bin/main.wasm")
    assert safe_join(str(rootfs), "./main.wasm", "/app/bin/") == str(rootfs / "app/bin/main.wasm")


def test_dotdot_stops_at_the_root(rootfs: Path) -> None:
    assert safe_join(str(rootfs), "/../../../outside.wasm") == str(rootfs / "outside.wasm")
    assert safe_join(str(rootfs), "../../outside.wasm", "/app") == str(rootfs / "outside.wasm")
    assert safe_join(str(rootfs), "/app/../app/bin/../bin/main.wasm") == str(rootfs / "app/bin/main.wasm")


def test_absolute_symlink_is_rerooted(rootfs: Path) -> None:
    (rootfs / "entry.wasm").symlink_to("/app/bin/main.wasm")
    assert safe_join(str(rootfs), "/entry.wasm") == str(rootfs / "app/bin/main.wasm")
    (rootfs / "escape.wasm").symlink_to(str(rootfs.parent / "outside.wasm"))  # a host path: stays inside
    assert safe_join(str(rootfs), "/escape.wasm").startswith(str(rootfs) + os.sep)


def test_relative_symlink_cannot_climb_out(rootfs: Path) -> None:
    (rootfs / "app" / "up.wasm").symlink_to("../../../../outside.wasm")
    assert safe_join(str(rootfs), "/app/up.wasm") == str(rootfs / "outside.wasm")
    (rootfs / "app" / "lib").symlink_to("bin")
    assert safe_join(str(rootfs), "/app/lib/main.wasm") == str(rootfs / "app/bin/main.wasm")


def test_symlinked_directory_to_host_root_stays_inside(rootfs: Path) -> None:
    (rootfs / "host").symlink_to("/")
    assert safe_join(str(rootfs), "/host/etc/passwd") == str(rootfs / "etc/passwd")


def test_missing_components_join_lexically(rootfs: Path) -> None:
    assert safe_join(str(rootfs), "/nope/x/../y.wasm") == str(rootfs / "nope/y.wasm")


def test_symlink_loop_is_an_error(rootfs: Path) -> None:
    (rootfs / "a").symlink_to("b")
    (rootfs / "b").symlink_to("a")
    with pytest.raises(EngineError, match="too many levels of symbolic links"):
        safe_join(str(rootfs), "/a")


# --- entrypoint ---------------------------------------------------------------------------------------------


def test_entrypoint_with_export(rootfs: Path) -> None:
    entry = locate_entrypoint(spec(rootfs, "/app/bin/main.wasm#greet", "arg"))
    assert (entry.guest_path, entry.export) == ("/app/bin/main.wasm", "greet")
    assert entry.host_path == str(rootfs / "app/bin/main.wasm")


def test_entrypoint_relative_to_cwd(rootfs: Path) -> None:
    entry = locate_entrypoint(spec(rootfs, "main.wasm", cwd="/app/bin"))
    assert entry.host_path == str(rootfs / "app/bin/main.wasm") and entry.export is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "process.args is empty"),
        (("",), "process.args is empty"),
        (("main.wasm#",), "nothing after '#'"),
        (("#run",), "no path before '#'"),
    ],
)
def test_bad_entrypoints(rootfs: Path, args: tuple[str, ...], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        find_entrypoint(spec(rootfs, *args))


def test_reading_names_the_missing_path(rootfs: Path) -> None:
    message = r"entrypoint /app/missing.wasm: no such file in the container's rootfs"
    with pytest.raises(EngineError, match=message):
        locate_entrypoint(spec(rootfs, "/app/missing.wasm"))


def test_reading_refuses_a_directory(rootfs: Path) -> None:
    with pytest.raises(EngineError, match="entrypoint /app: not a regular file"):
        locate_entrypoint(spec(rootfs, "/app"))


def test_reading_tells_the_kind(rootfs: Path) -> None:
    assert locate_entrypoint(spec(rootfs, "/app/bin/main.wasm")).kind is EntryKind.MODULE


# --- headers ------------------------------------------------------------------------------------------------


def test_classify_module_and_component() -> None:
    assert classify_header(MODULE_HEADER, "x") is EntryKind.MODULE
    assert classify_header(COMPONENT_HEADER, "x") is EntryKind.COMPONENT


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"#!/bin/sh\necho", r"x is not a WebAssembly module or component \(magic 23 21 2f 62\)"),
        (b"", r"x is not a WebAssembly module or component \(magic empty file\)"),
        (b"\0asm", "x is not a WebAssembly module or component"),
        (b"\0asm\x0a\x00\x01\x00", "unsupported pre-release encoding"),
        (b"\0asm\x02\x00\x00\x00", r"unknown version/layer \(02 00 00 00\)"),
    ],
)
def test_classify_rejects(header: bytes, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        classify_header(header, "x")


# --- signals and env ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
)
def test_terminating_signals(sig: int) -> None:
    assert signal_terminates(sig)
    assert killed_status(sig) == 128 + sig


@pytest.mark.parametrize("sig", [0, signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG])
def test_signals_that_do_nothing(sig: int) -> None:
    assert not signal_terminates(sig)


@pytest.mark.parametrize(("sig", "message"), [(signal.SIGSTOP, "SIGSTOP"), (-1, "invalid"), (999, "invalid")])
def test_signals_that_cannot_be_delivered(sig: int, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        signal_terminates(sig)


def test_split_env() -> None:
    assert split_env(("A=1", "B=", "C=x=y")) == [("A", "1"), ("B", ""), ("C", "x=y")]
    with pytest.raises(EngineError, match="'NOVALUE' is not of the form KEY=value"):
        split_env(("NOVALUE",))
