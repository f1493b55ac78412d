"""The spec is the whole grant (docs/design.md, rule 7): the guest gets exactly what the spec grants, through
`ctr`, module and component.

Grants: a bind mount is readable at its destination, `ro` is honoured (a write fails), `rw` is writable; the rootfs
is read-only with `--read-only`. Denials: no host path outside the preopens, neither through `..` nor through
symlinks inside the rootfs that point out; the environment is exactly the spec's. Bad input fails Create with a
message naming the problem while another task in the same daemon keeps running.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lab.shimtools import RUNTIME, wait_for
from lab.shimtools import task_status as _status
from wasm_shim.oci.layout import Symlink

pytestmark = pytest.mark.integration

KINDS = ["module", "component"]


def _wasm(guests: Path, name: str, kind: str) -> Path:
    return guests / (f"{name}.wasm" if kind == "module" else f"{name}.component.wasm")


def _run(containerd, image: str, task_id: str, *args: str, flags: tuple[str, ...] = ()):
    return containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, task_id, "/app.wasm", *args,
                          check=False)


@pytest.mark.parametrize("kind", KINDS)
def test_bind_mounts_ro_and_rw(containerd, wasm_image, guests, tmp_path, kind):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("from the host\n")
    cat = wasm_image(f"cat-{kind}", _wasm(guests, "cat_file", kind))
    writer = wasm_image(f"writer-{kind}", _wasm(guests, "writer", kind))
    ro = ("--mount", f"type=bind,src={shared},dst=/data,options=rbind:ro")
    rw = ("--mount", f"type=bind,src={shared},dst=/data,options=rbind:rw")

    read = _run(containerd, cat, f"ro-read-{kind}", "/data/hello.txt", flags=ro)
    assert read.returncode == 0 and read.stdout == "from the host\n", read.stderr

    denied = _run(containerd, writer, f"ro-write-{kind}", "/data/new.txt", "nope", flags=ro)
    assert denied.returncode == 1, denied.stdout
    assert "writer: /data/new.txt:" in denied.stderr
    assert not (shared / "new.txt").exists()

    wrote = _run(containerd, writer, f"rw-write-{kind}", "/data/new.txt", "written by wasm", flags=rw)
    assert wrote.returncode == 0, wrote.stderr
    assert (shared / "new.txt").read_text() == "written by wasm\n"


@pytest.mark.parametrize("kind", KINDS)
def test_rootfs_readonly_and_no_way_out(containerd, wasm_image, guests, tmp_path, kind):
    marker = Path("/tmp") / f"wasm-shim-grant-{uuid.uuid4().hex}"
    marker.write_text("host secret\n")
    try:
        extra = {
            "/inside.txt": b"inside the image\n",
            "/out-rel": Symlink("../../../../../../../.." + str(marker)),
            "/out-abs": Symlink(str(marker)),
            "/etc-link": Symlink("/etc"),
        }
        cat = wasm_image(f"cat-escape-{kind}", _wasm(guests, "cat_file", kind), extra=extra)
        inside = _run(containerd, cat, f"inside-{kind}", "/inside.txt")
        assert inside.stdout == "inside the image\n", inside.stderr
        for n, path in enumerate(["/out-rel", "/out-abs", "/../../../../.." + str(marker), str(marker),
                                  "/etc-link/hostname", "/etc/passwd"]):
            out = _run(containerd, cat, f"escape-{kind}-{n}", path)
            assert out.returncode == 1, f"{path} was readable: {out.stdout!r}"
            assert "host secret" not in out.stdout
            assert f"cat_file: {path}:" in out.stderr

        writer = wasm_image(f"writer-root-{kind}", _wasm(guests, "writer", kind))
        writable = _run(containerd, writer, f"root-rw-{kind}", "/made.txt", "x")
        assert writable.returncode == 0, writable.stderr  # the rootfs is writable by default (a snapshot)
        readonly = _run(containerd, writer, f"root-ro-{kind}", "/made.txt", "x", flags=("--read-only",))
        assert readonly.returncode == 1 and "writer: /made.txt:" in readonly.stderr, readonly.stdout
    finally:
        marker.unlink()


@pytest.mark.parametrize("kind", ["module", "component"])
def test_environment_is_exactly_the_spec(containerd, wasm_image, guests, kind):
    image = wasm_image(f"env-{kind}", _wasm(guests, "args_env", kind), env=["FROM_IMAGE=yes"])
    out = _run(containerd, image, f"env-{kind}", "one", flags=("--env", "GIVEN=1"))
    assert out.returncode == 0, out.stderr
    env = sorted(line.removeprefix("env=") for line in out.stdout.splitlines() if line.startswith("env="))
    names = [entry.split("=", 1)[0] for entry in env]
    assert names == ["FROM_IMAGE", "GIVEN"], env  # the image config and --env; nothing of the daemon
    args = [line for line in out.stdout.splitlines() if line.startswith("argv[")]
    assert args == ["argv[0]=/app.wasm", "argv[1]=one"]


def test_bad_input_fails_create_and_others_keep_running(containerd, wasm_image, guests, tmp_path):
    sleeper = wasm_image("survivor", guests / "sleep.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, sleeper, "survivor", "/app.wasm", "100")
    wait_for(lambda: _status(containerd, "survivor") == "RUNNING", 10, "survivor running")

    hello = (guests / "hello.wasm").read_bytes()
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(hello[:8] + b"\xff" * 64)
    truncated = tmp_path / "truncated.wasm"
    truncated.write_bytes(hello[: len(hello) // 2])
    imports = tmp_path / "imports.wasm"  # (module (import "env" "host_magic" (func)) (func (export "_start")))
    imports.write_bytes(bytes.fromhex(
        "0061736d0100000001040160000002120103656e760a686f73745f6d61676963000003020100"
        "070a01065f737461727400010a040102000b"))
    cases = {
        "corrupt": (corrupt, (), ["/app.wasm", "not valid WebAssembly"]),
        "truncated": (truncated, (), ["/app.wasm", "not valid WebAssembly"]),
        "imports": (imports, (), ["env", "host_magic"]),
        "export": (guests / "hello.wasm", ("/app.wasm#nope",), ["nope", "_start"]),
        "mountsrc": (guests / "hello.wasm",
                     ("--mount", f"type=bind,src={tmp_path / 'missing'},dst=/data,options=rbind:ro"),
                     [str(tmp_path / "missing")]),
    }
    for name, (wasm, extra, expected) in cases.items():
        image = wasm_image(f"bad-{name}", wasm)
        flags = tuple(a for a in extra if not a.startswith("/app.wasm"))
        args = tuple(a for a in extra if a.startswith("/app.wasm"))
        out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, f"bad-{name}", *args, check=False)
        assert out.returncode != 0, name
        for text in expected:
            assert text in out.stderr, (name, out.stderr)
        containerd.ctr("container", "rm", f"bad-{name}", check=False)
    assert _status(containerd, "survivor") == "RUNNING"
    containerd.ctr("task", "kill", "-s", "SIGKILL", "survivor")
    wait_for(lambda: _status(containerd, "survivor") == "STOPPED", 10, "survivor stopped")
    containerd.ctr("task", "rm", "survivor")
    containerd.ctr("container", "rm", "survivor")
