"""WasmtimeEngine with real wasmtime and real guests built from lab/guests (no containerd).

Each test puts guests into a rootfs directory, prepares and starts them through the Engine interface, and
reads their stdout/stderr from real files or FIFOs. Waits are bounded (a hang fails the test, it never blocks
it) and nothing asserts on speed: the few timings printed are measurements for humans (run with -s).
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import shutil
import signal
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wasm_shim.shim.engines.base import EngineError, EntryKind, GuestMount, GuestSpec, GuestStdio, locate_entrypoint
from wasm_shim.shim.engines.grant import parse_grant
from wasm_shim.shim.engines.wasmtime import WasmtimeEngine, WasmtimeGuest

pytestmark = pytest.mark.integration

EXIT_TIMEOUT = 10.0  # seconds: a guest that has not exited by then is a hang, and fails the test
ISOLATION = "wasm.shim.io/component-isolation"

def prepare(engine: Any, spec: GuestSpec) -> Any:
    """What the task service does before an engine's prepare: find and read args[0] once."""
    return engine.prepare(spec, locate_entrypoint(spec))



class Exits:
    """An on_exit callback that records every call."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.event = threading.Event()

    def __call__(self, status: int) -> None:
        self.statuses.append(status)
        self.event.set()

    def wait(self, timeout: float = EXIT_TIMEOUT) -> bool:
        return self.event.wait(timeout)


@dataclass
class Run:
    """A started guest, its output files, and what on_exit reported."""

    guest: WasmtimeGuest
    stdout: Path
    stderr: Path
    exits: Exits

    @property
    def statuses(self) -> list[int]:
        return self.exits.statuses

    @property
    def exited(self) -> threading.Event:
        return self.exits.event

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        if not self.exits.wait(timeout):
            self.guest.kill(signal.SIGKILL)
            pytest.fail(f"guest did not exit within {timeout} s")
        assert self.guest.join(timeout), "the guest thread outlived on_exit"
        assert len(self.statuses) == 1, f"on_exit called {len(self.statuses)} times"
        return self.statuses[0]

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()


class Sandbox:
    """A rootfs holding every built guest, an engine with a private cache, and helpers to run guests."""

    def __init__(self, tmp: Path, guests: Path):
        self.tmp = tmp
        self.rootfs = tmp / "rootfs"
        self.rootfs.mkdir()
        for wasm in guests.glob("*.wasm"):
            shutil.copyfile(wasm, self.rootfs / wasm.name)
        self.cache_dir = tmp / "cache"
        self.engine = WasmtimeEngine(cache_dir=str(self.cache_dir))
        self._count = 0

    def spec(self, *args: str, env: tuple[str, ...] = (), **kwargs: Any) -> GuestSpec:
        fields: dict[str, Any] = dict(
            task_id=f"task-{self._count}", rootfs=str(self.rootfs), root_readonly=False, args=args, env=env,
            cwd="/", mounts=(),
        )
        if "annotations" in kwargs:  # what bundle.py does with a spec's annotations
            kwargs["grant"] = parse_grant(kwargs.pop("annotations"))
        fields.update(kwargs)
        return GuestSpec(**fields)

    def stage(self, *args: str, stdin: str | None = None, **kwargs: Any) -> tuple[Any, Run]:
        """Prepare and stage as the task service does at Create; the Run's guest is the staged one until
        launched."""
        self._count += 1
        prepared = prepare(self.engine, self.spec(*args, **kwargs))
        stdout = self.tmp / f"out-{self._count}"
        stderr = self.tmp / f"err-{self._count}"
        exits = Exits()
        staged = self.engine.stage(prepared, GuestStdio(stdin, str(stdout), str(stderr)), exits)
        return staged, Run(staged, stdout, stderr, exits)

    def start(self, *args: str, stdin: str | None = None, **kwargs: Any) -> Run:
        staged, run = self.stage(*args, stdin=stdin, **kwargs)
        run.guest = staged.launch()
        return run

    def run(self, *args: str, **kwargs: Any) -> tuple[int, str, str]:
        started = self.start(*args, **kwargs)
        status = started.wait()
        return status, started.out(), started.err()


@pytest.fixture
def sandbox(tmp_path: Path, guests: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, guests)
    yield box
    box.engine.close()
    assert box.engine.running == 0


def wait_until(predicate: object, timeout: float = EXIT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


# --- what guests print and how they exit --------------------------------------------------------------------


def test_hello(sandbox: Sandbox) -> None:
    assert sandbox.run("hello.wasm") == (0, "hello from wasm\n", "")


def test_stderr(sandbox: Sandbox) -> None:
    assert sandbox.run("/stderr.wasm") == (0, "", "written to stderr by wasm\n")


def test_args_and_env(sandbox: Sandbox) -> None:
    status, out, _ = sandbox.run("args_env.wasm", "one", "two words", env=("A=1", "EMPTY=", "X=a=b"))
    assert status == 0
    assert out.splitlines() == [
        "argv[0]=args_env.wasm",
        "argv[1]=one",
        "argv[2]=two words",
        "env=A=1",
        "env=EMPTY=",
        "env=X=a=b",
    ]


@pytest.mark.parametrize("code", [0, 3, 42, 125])
def test_exit_codes(sandbox: Sandbox, code: int) -> None:
    status, out, _ = sandbox.run("exit_code.wasm", str(code))
    assert (status, out) == (code, f"exiting with {code}\n")


def test_exit_code_wasmtime_refuses(sandbox: Sandbox) -> None:
    # wasmtime's WASI refuses proc_exit(n >= 126) (the shell's range for "cannot run" and signals): an error.
    status, _, err = sandbox.run("exit_code.wasm", "200")
    assert status == 1
    assert err.splitlines()[0] == "wasm error: exit with invalid exit status outside of [0..126)"


def test_trap_is_134_with_a_message(sandbox: Sandbox) -> None:
    status, out, err = sandbox.run("trap.wasm")
    assert status == 134
    assert out == "about to trap\n"
    assert err == "wasm trap: wasm `unreachable` instruction executed\n"  # one line, as the runner writes it


def test_trap_without_stderr_destination(sandbox: Sandbox) -> None:
    exits = Exits()
    sandbox.engine.start(prepare(sandbox.engine, sandbox.spec("trap.wasm")), GuestStdio(), exits)
    assert exits.wait() and exits.statuses == [134]


def test_export_entrypoint(sandbox: Sandbox) -> None:
    assert sandbox.run("multi.wasm") == (0, "start\n", "")
    assert sandbox.run("multi.wasm#greet") == (0, "hello from greet\n", "")
    assert sandbox.run("multi.wasm#_start") == (0, "start\n", "")


def test_reactor_is_initialized_before_the_export(sandbox: Sandbox) -> None:
    assert sandbox.run("reactor.wasm#greet") == (0, "initialized\nhello from greet\n", "")


def test_memory_limit(sandbox: Sandbox) -> None:
    status, out, _ = sandbox.run("alloc.wasm", memory_limit=16 * 1024 * 1024)
    assert status == 0
    last = out.splitlines()[-1]
    assert last.startswith("malloc failed at ")
    assert int(last.split()[-2]) < 16


# --- components ---------------------------------------------------------------------------------------------


def test_component_hello(sandbox: Sandbox) -> None:
    assert sandbox.run("hello.component.wasm") == (0, "hello from wasm\n", "")


def test_component_args_env(sandbox: Sandbox) -> None:
    status, out, _ = sandbox.run("args_env.component.wasm", "x", env=("K=V",))
    assert status == 0
    assert out.splitlines() == ["argv[0]=args_env.component.wasm", "argv[1]=x", "env=K=V"]


def test_component_exit_codes(sandbox: Sandbox) -> None:
    # The preview1 adapter turns exit(n != 0) into wasi:cli/exit.exit(err): the component model (0.2) has no
    # exit code beyond ok/err, so the status is 1 whatever n was.
    assert sandbox.run("exit_code.component.wasm", "0")[0] == 0
    assert sandbox.run("exit_code.component.wasm", "3")[0] == 1


def test_component_trap(sandbox: Sandbox) -> None:
    status, out, err = sandbox.run("trap.component.wasm")
    assert (status, out) == (134, "about to trap\n")
    assert err.splitlines()[0] == "wasm trap: wasm `unreachable` instruction executed"


def test_component_entry_by_interface_name(sandbox: Sandbox) -> None:
    assert sandbox.run("hello.component.wasm#wasi:cli/run")[0] == 0


def test_component_other_export_is_refused(sandbox: Sandbox) -> None:
    message = r"only be started through wasi:cli/run, not 'greet'.*wasi:cli/run@0\.2"
    with pytest.raises(EngineError, match=message):
        prepare(sandbox.engine, sandbox.spec("hello.component.wasm#greet"))


# --- what the user gets wrong -------------------------------------------------------------------------------


def test_missing_entrypoint(sandbox: Sandbox) -> None:
    with pytest.raises(EngineError, match="entrypoint /nope.wasm: no such file in the container's rootfs"):
        prepare(sandbox.engine, sandbox.spec("/nope.wasm"))


def test_not_wasm(sandbox: Sandbox) -> None:
    (sandbox.rootfs / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (sandbox.rootfs / "notes.txt").write_text("just text\n")
    with pytest.raises(EngineError, match=r"entrypoint /notes.txt is neither a WebAssembly module or component nor"):
        prepare(sandbox.engine, sandbox.spec("notes.txt"))
    # A script is another engine's: its kind decides which engine gets it.
    assert sandbox.engine.accepts == frozenset({EntryKind.MODULE, EntryKind.COMPONENT})


def test_invalid_wasm(sandbox: Sandbox) -> None:
    (sandbox.rootfs / "broken.wasm").write_bytes(b"\0asm\x01\x00\x00\x00\xff\xff")
    with pytest.raises(EngineError, match="entrypoint /broken.wasm is not valid WebAssembly: "):
        prepare(sandbox.engine, sandbox.spec("broken.wasm"))


def test_missing_export_lists_what_exists(sandbox: Sandbox) -> None:
    with pytest.raises(EngineError, match=r"no export named 'nope' \(function exports: _start, greet\)"):
        prepare(sandbox.engine, sandbox.spec("multi.wasm#nope"))


def test_export_that_cannot_be_an_entrypoint(sandbox: Sandbox) -> None:
    with pytest.raises(EngineError, match="export 'add' takes 2 parameter"):
        prepare(sandbox.engine, sandbox.spec("multi.wasm#add"))
    with pytest.raises(EngineError, match="export 'counter' is a global, not a function"):
        prepare(sandbox.engine, sandbox.spec("multi.wasm#counter"))


def test_module_without_start(sandbox: Sandbox, tmp_path: Path) -> None:
    # A module exporting only `greet`: derived from multi.wat by renaming _start's export.
    source = (sandbox.rootfs / "multi.wasm").read_bytes()
    (sandbox.rootfs / "nostart.wasm").write_bytes(source.replace(b"_start", b"_other"))
    with pytest.raises(EngineError, match=r"has no _start export .* /nostart.wasm#EXPORT"):
        prepare(sandbox.engine, sandbox.spec("nostart.wasm"))


def test_unresolved_import(sandbox: Sandbox) -> None:
    source = (sandbox.rootfs / "multi.wasm").read_bytes()
    (sandbox.rootfs / "badimport.wasm").write_bytes(source.replace(b"fd_write", b"fd_wrong"))
    with pytest.raises(EngineError, match="entrypoint /badimport.wasm cannot be linked: .*fd_wrong"):
        prepare(sandbox.engine, sandbox.spec("badimport.wasm"))


def test_symlinked_entrypoint_stays_in_rootfs(sandbox: Sandbox, tmp_path: Path) -> None:
    (sandbox.rootfs / "bin").mkdir()
    (sandbox.rootfs / "bin" / "app.wasm").symlink_to("../../../../hello.wasm")
    assert sandbox.run("/bin/app.wasm")[:2] == (0, "hello from wasm\n")
    shutil.copyfile(sandbox.rootfs / "hello.wasm", tmp_path / "host-only.wasm")
    (sandbox.rootfs / "bin" / "host.wasm").symlink_to(tmp_path / "host-only.wasm")
    with pytest.raises(EngineError, match="entrypoint /bin/host.wasm: no such file"):
        prepare(sandbox.engine, sandbox.spec("/bin/host.wasm"))


def test_missing_stdin_file(sandbox: Sandbox) -> None:
    prepared = prepare(sandbox.engine, sandbox.spec("hello.wasm"))
    with pytest.raises(EngineError, match="stdin /nonexistent/in: no such file"):
        sandbox.engine.start(prepared, GuestStdio(stdin="/nonexistent/in"), lambda status: None)
    assert sandbox.engine.running == 0


# --- grants: rootfs and mounts ------------------------------------------------------------------------------


def test_rootfs_is_readable_and_writable(sandbox: Sandbox) -> None:
    (sandbox.rootfs / "greeting.txt").write_text("hi from the rootfs\n")
    assert sandbox.run("cat_file.wasm", "/greeting.txt")[:2] == (0, "hi from the rootfs\n")
    assert sandbox.run("writer.wasm", "/new.txt", "written")[0] == 0
    assert (sandbox.rootfs / "new.txt").read_text() == "written\n"


def test_readonly_root_refuses_writes(sandbox: Sandbox) -> None:
    status, _, err = sandbox.run("writer.wasm", "/new.txt", "x", root_readonly=True)
    assert status == 1 and err.startswith("writer: /new.txt: ")
    assert not (sandbox.rootfs / "new.txt").exists()


def test_mounts_are_preopened_and_readonly_is_honoured(sandbox: Sandbox, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "config.txt").write_text("from a mount\n")
    mounts = (GuestMount("/config", str(ro), readonly=True), GuestMount("/data", str(rw), readonly=False))
    assert sandbox.run("cat_file.wasm", "/config/config.txt", mounts=mounts)[:2] == (0, "from a mount\n")
    status, _, err = sandbox.run("writer.wasm", "/config/x", "no", mounts=mounts)
    assert status == 1 and "writer: /config/x:" in err
    assert sandbox.run("writer.wasm", "/data/x", "yes", mounts=mounts)[0] == 0
    assert (rw / "x").read_text() == "yes\n"


def test_host_files_outside_the_grant_are_invisible(sandbox: Sandbox) -> None:
    status, _, err = sandbox.run("cat_file.wasm", "/../../etc/hostname")
    assert status == 1 and "cat_file: /../../etc/hostname:" in err


def test_file_mounts_are_skipped(sandbox: Sandbox, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    mount = GuestMount("/etc/hosts", str(hosts), readonly=True, directory=False)  # as bundle.py maps it
    assert sandbox.run("hello.wasm", mounts=(mount,))[0] == 0


# --- kill ---------------------------------------------------------------------------------------------------


def test_kill_spinning_guest(sandbox: Sandbox) -> None:
    run = sandbox.start("spin.wasm")
    assert wait_until(lambda: run.out() == "spinning\n"), "the guest never started spinning"
    started = time.monotonic()
    run.guest.kill(signal.SIGKILL)
    assert run.wait(2.0) == 137
    print(f"\nkill of a spinning module: on_exit after {(time.monotonic() - started) * 1000:.2f} ms")


def test_sigterm_status(sandbox: Sandbox) -> None:
    run = sandbox.start("spin.wasm")
    run.guest.kill(signal.SIGTERM)
    run.guest.kill(signal.SIGKILL)  # the first terminating signal decides the status
    assert run.wait(2.0) == 143


def test_kill_is_idempotent_and_harmless_after_exit(sandbox: Sandbox) -> None:
    run = sandbox.start("hello.wasm")
    assert run.wait() == 0
    run.guest.kill(signal.SIGKILL)
    run.guest.kill(signal.SIGTERM)
    assert run.statuses == [0]


def test_signals_that_do_not_stop_a_guest(sandbox: Sandbox) -> None:
    run = sandbox.start("spin.wasm")
    run.guest.kill(0)
    run.guest.kill(signal.SIGWINCH)
    with pytest.raises(EngineError, match="SIGSTOP"):
        run.guest.kill(signal.SIGSTOP)
    assert not run.exited.wait(0.2)
    run.guest.kill(signal.SIGKILL)
    assert run.wait(2.0) == 137


def test_killing_one_guest_leaves_the_other_running(sandbox: Sandbox) -> None:
    first, second = sandbox.start("spin.wasm"), sandbox.start("spin.wasm")
    assert wait_until(lambda: first.out() and second.out()), "the guests never started spinning"
    first.guest.kill(signal.SIGKILL)
    assert first.wait(2.0) == 137
    assert not second.exited.wait(0.3), "killing one guest stopped the other"
    second.guest.kill(signal.SIGKILL)
    assert second.wait(2.0) == 137


def test_kill_component(sandbox: Sandbox) -> None:
    run = sandbox.start("spin.component.wasm")
    assert wait_until(lambda: run.out() == "spinning\n")
    run.guest.kill(signal.SIGKILL)
    assert run.wait(2.0) == 137


def test_kill_right_after_start(sandbox: Sandbox) -> None:
    for _ in range(20):
        run = sandbox.start("spin.wasm")
        run.guest.kill(signal.SIGKILL)
        assert run.wait(2.0) == 137


def test_close_kills_everything(tmp_path: Path, guests: Path) -> None:
    box = Sandbox(tmp_path, guests)
    runs = [box.start("spin.wasm") for _ in range(3)]
    box.engine.close()
    assert [run.wait(2.0) for run in runs] == [137, 137, 137]
    with pytest.raises(EngineError, match="shut down"):
        box.start("hello.wasm")


# --- stdio: FIFOs -------------------------------------------------------------------------------------------


def test_stdout_fifo_sees_eof_when_on_exit_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    fifo = tmp_path / "stdout.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # like ctr: the reader is there before Start
    try:
        prepared = prepare(sandbox.engine, sandbox.spec("hello.wasm"))
        eof_at_exit: list[bytes] = []
        done = threading.Event()

        def on_exit(status: int) -> None:
            # Every writer must be closed before on_exit: the reader then sees EOF, not EAGAIN.
            data = b""
            while True:
                try:
                    chunk = os.read(reader, 4096)
                except BlockingIOError:
                    eof_at_exit.append(b"EAGAIN: a writer is still open")
                    break
                if not chunk:
                    eof_at_exit.append(data)
                    break
                data += chunk
            done.set()

        sandbox.engine.start(prepared, GuestStdio(stdout=str(fifo), stderr=str(fifo)), on_exit)
        assert done.wait(EXIT_TIMEOUT)
        assert eof_at_exit == [b"hello from wasm\n"]
    finally:
        os.close(reader)


def test_fifo_without_peer_does_not_block(sandbox: Sandbox, tmp_path: Path) -> None:
    stdin, stdout = tmp_path / "in.fifo", tmp_path / "out.fifo"
    os.mkfifo(stdin)
    os.mkfifo(stdout)
    prepared = prepare(sandbox.engine, sandbox.spec("hello.wasm"))
    exits = Exits()
    sandbox.engine.start(prepared, GuestStdio(stdin=str(stdin), stdout=str(stdout)), exits)
    assert exits.wait()  # nobody reads: puts() gets EPIPE, the guest still exits
    assert exits.statuses == [0]


def test_stdin_from_a_fifo(sandbox: Sandbox, tmp_path: Path) -> None:
    fifo = tmp_path / "stdin.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as writer:  # blocks until the engine's guard fd opens the read side
            writer.write(b"piped into the guest\n")

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert sandbox.run("cat_file.wasm", "-", stdin=str(fifo))[:2] == (0, "piped into the guest\n")
    finally:
        feeder.join(EXIT_TIMEOUT)


def test_stdio_from_pipes_via_proc_self_fd(sandbox: Sandbox) -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    try:
        prepared = prepare(sandbox.engine, sandbox.spec("cat_file.wasm", "-"))
        exits = Exits()
        stdio = GuestStdio(f"/proc/self/fd/{in_read}", f"/proc/self/fd/{out_write}", None)
        sandbox.engine.start(prepared, stdio, exits)
        # The engine has its own fds now: like the task service, close ours right after start().
        for fd in (in_read, out_write):
            os.close(fd)
        in_read = out_write = -1
        os.write(in_write, b"through pipes\n")
        os.close(in_write)
        in_write = -1
        assert exits.wait() and exits.statuses == [0]
        with os.fdopen(out_read, "rb") as reader:
            out_read = -1
            assert reader.read() == b"through pipes\n"  # EOF: no writer of ours or the engine's is left
    finally:
        for fd in (in_read, in_write, out_read, out_write):
            if fd >= 0:
                os.close(fd)


# --- compiled-artifact cache --------------------------------------------------------------------------------


def test_second_prepare_does_not_compile(sandbox: Sandbox) -> None:
    prepare(sandbox.engine, sandbox.spec("hello.wasm"))
    before = sandbox.engine.cache_stats()
    sandbox.run("hello.wasm")
    after = sandbox.engine.cache_stats()
    assert after.compiles == before.compiles
    assert after.memory_hits == before.memory_hits + 1


def test_concurrent_prepares_compile_once(sandbox: Sandbox) -> None:
    errors: list[BaseException] = []

    def prepare_once() -> None:
        try:
            prepare(sandbox.engine, sandbox.spec("args_env.wasm"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=prepare_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(EXIT_TIMEOUT)
    assert not errors
    assert sandbox.engine.cache_stats().compiles == 1


def test_new_engine_hits_the_disk_cache(sandbox: Sandbox) -> None:
    sandbox.run("hello.wasm")
    sandbox.run("hello.component.wasm")
    fresh = WasmtimeEngine(cache_dir=str(sandbox.cache_dir))
    try:
        for name in ("hello.wasm", "hello.component.wasm"):
            prepared = prepare(fresh, sandbox.spec(name))
            exits = Exits()
            fresh.start(prepared, GuestStdio(), exits)
            assert exits.wait() and exits.statuses == [0]
        # The module from the daemon's cache; the component is compiled by its runner alone (runner/), whose own
        # cache file the new engine's check found: the daemon compiles neither.
        assert (fresh.cache_stats().compiles, fresh.cache_stats().disk_hits) == (0, 1)
    finally:
        fresh.close()


def test_cache_dir_removed_under_a_running_daemon_is_made_again(sandbox: Sandbox) -> None:
    # `helm uninstall` removes the shim's data (/var/lib/wasm-shim) while the daemon lives on; a reinstall reuses
    # that daemon (found on the e2e cluster: every component then failed with "cache directory ...: No such file
    # or directory"). Modules and components, already checked and not, still run.
    assert sandbox.run("hello.component.wasm")[0] == 0
    shutil.rmtree(sandbox.cache_dir)
    for name in ("hello.component.wasm", "args_env.component.wasm", "hello.wasm"):
        status, out, err = sandbox.run(name)
        assert status == 0, err
    assert stat.S_IMODE(sandbox.cache_dir.stat().st_mode) == 0o700


def corrupt_cache_files(cache_dir: Path) -> list[Path]:
    files = sorted(cache_dir.rglob("*.cwasm"))
    for path in files:
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the machine code
        path.write_bytes(bytes(blob))
    return files


def test_corrupt_cache_file_is_recompiled(sandbox: Sandbox) -> None:
    sandbox.run("hello.wasm")
    assert len(corrupt_cache_files(sandbox.cache_dir)) == 1
    fresh = WasmtimeEngine(cache_dir=str(sandbox.cache_dir))
    try:
        prepare(fresh, sandbox.spec("hello.wasm"))
        stats = fresh.cache_stats()
        assert (stats.disk_hits, stats.disk_discarded, stats.compiles, stats.disk_writes) == (0, 1, 1, 1)
    finally:
        fresh.close()
    # The rewritten file is good again.
    again = WasmtimeEngine(cache_dir=str(sandbox.cache_dir))
    try:
        prepare(again, sandbox.spec("hello.wasm"))
        assert (again.cache_stats().disk_hits, again.cache_stats().compiles) == (1, 0)
    finally:
        again.close()


def test_truncated_and_foreign_cache_files_are_discarded(sandbox: Sandbox) -> None:
    sandbox.run("hello.wasm")
    (cache_file,) = sandbox.cache_dir.rglob("*.cwasm")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    fresh = WasmtimeEngine(cache_dir=str(sandbox.cache_dir))
    try:
        prepare(fresh, sandbox.spec("hello.wasm"))
        assert (fresh.cache_stats().disk_discarded, fresh.cache_stats().compiles) == (1, 1)
    finally:
        fresh.close()
    os.chmod(cache_file, 0o644)  # readable by others: not trusted
    fresh = WasmtimeEngine(cache_dir=str(sandbox.cache_dir))
    try:
        prepare(fresh, sandbox.spec("hello.wasm"))
        assert (fresh.cache_stats().disk_discarded, fresh.cache_stats().compiles) == (1, 1)
        assert stat.S_IMODE(cache_file.stat().st_mode) == 0o600
    finally:
        fresh.close()


def test_cache_dir_open_to_others_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)
    with pytest.raises(EngineError, match=r"has mode 0755 .*: it must be a 0700 directory of ours"):
        WasmtimeEngine(cache_dir=str(cache))


# --- resources ----------------------------------------------------------------------------------------------


def open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError as exc:  # the fd of the listdir itself, already closed
            assert exc.errno == errno.ENOENT
    return fds


def live_wasmtime_stores() -> int:
    """Wasmtime Store objects alive in Python, closed or not (no gc.collect(): release must not need it)."""
    return sum(
        1 for obj in gc.get_objects() if type(obj).__name__ == "Store" and "wasmtime" in type(obj).__module__
    )


def test_fifty_guests_leave_no_threads_fds_or_stores(sandbox: Sandbox, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    mounts = (GuestMount("/data", str(data), readonly=True),)
    kinds = ("hello.wasm", "trap.wasm", "hello.component.wasm", "spin.wasm")

    def one(name: str) -> None:
        run = sandbox.start(name, mounts=mounts)
        if name.startswith("spin"):
            run.guest.kill(signal.SIGKILL)
        run.wait()

    for name in kinds:  # warm up: compiles, wasmtime's runtime threads, the ticker
        one(name)
    gc.collect()  # earlier tests' engines (and their modules' memfds) must not vanish during the count
    threads, fds, stores = threading.active_count(), open_fds(), live_wasmtime_stores()
    tasks = len(os.listdir("/proc/self/task"))
    gc.disable()  # what a guest held must be freed by the engine itself, not by a collection
    try:
        for i in range(50):
            one(kinds[i % len(kinds)])
    finally:
        gc.enable()
    assert threading.active_count() == threads
    assert wait_until(lambda: len(os.listdir("/proc/self/task")) <= tasks), "native threads grew"
    assert open_fds() - fds == set(), "fds leaked"
    assert live_wasmtime_stores() == stores == 0


def test_closed_engine_is_freed_without_the_garbage_collector(tmp_path: Path, guests: Path) -> None:
    box = Sandbox(tmp_path, guests)
    gc.collect()
    gc.disable()
    try:
        run = box.start("spin.wasm")
        run.guest.kill(signal.SIGKILL)  # starts the ticker thread too
        assert run.wait() == 137
        box.engine.close()
        engine = weakref.ref(box.engine)
        del box, run
        assert engine() is None, "a closed engine stayed alive (reference cycle)"
    finally:
        gc.enable()


def test_tick_cost_with_idle_guests(sandbox: Sandbox) -> None:
    """Measures (prints) what the kill machinery costs with 200 idle guests; asserts only that all exit."""
    idle = [sandbox.start("sleep.wasm", "1") for _ in range(200)]
    assert wait_until(lambda: all(run.out() for run in idle)), "idle guests did not start"
    wasm_engine = sandbox.engine._wasm
    calls_before = sandbox.engine.deadline_callbacks
    ticks = 2000
    started = time.perf_counter()
    for _ in range(ticks):
        wasm_engine.increment_epoch()
    per_tick = (time.perf_counter() - started) / ticks
    idle_calls = sandbox.engine.deadline_callbacks - calls_before

    spinners = [sandbox.start("spin.wasm") for _ in range(2)]
    assert wait_until(lambda: all(run.out() for run in spinners))
    calls_before = sandbox.engine.deadline_callbacks
    cpu_before = time.process_time()
    for _ in range(200):
        wasm_engine.increment_epoch()
        time.sleep(0.001)
    spin_calls = sandbox.engine.deadline_callbacks - calls_before
    cpu = time.process_time() - cpu_before  # includes the two spinning guests: shown for scale only

    started = time.monotonic()
    spinners[0].guest.kill(signal.SIGKILL)
    assert spinners[0].wait(2.0) == 137
    latency = time.monotonic() - started
    print(
        f"\n200 idle guests: increment_epoch {per_tick * 1e6:.2f} us/tick, {idle_calls} deadline callbacks "
        f"in {ticks} ticks; 2 spinning guests: {spin_calls} callbacks in 200 ticks (process CPU {cpu:.2f} s "
        f"incl. spinning); kill of a spinner among 200 idle guests: {latency * 1000:.2f} ms"
    )
    spinners[1].guest.kill(signal.SIGKILL)
    for run in idle:
        run.guest.kill(signal.SIGTERM)
    # Sleeping guests see the kill when their 1 s sleep returns (their poll_oneoff is interrupted).
    assert [run.wait(5.0) for run in idle] == [143] * 200
    assert spinners[1].wait(2.0) == 137


# --- blocked guests, pause/resume, CPU slicing, OOM, precompile ----------------------

KILL_BOUND = 1.0  # seconds: the bound for Kill of any guest (a hang bound, not a speed claim)


def _kill_and_time(run: Run, sig: int = signal.SIGKILL) -> float:
    before = time.monotonic()
    run.guest.kill(sig)
    status = run.wait()
    assert status == 128 + sig
    return time.monotonic() - before


def test_sleep_returns_after_its_time(sandbox: Sandbox) -> None:
    """Our poll_oneoff keeps WASI's meaning: a 1 s sleep, twice, ends after at least 2 s, then the guest exits."""
    before = time.monotonic()
    assert sandbox.run("sleep.wasm", "1", "2")[:2] == (0, "sleeping 1 s\nslept\n")
    assert time.monotonic() - before >= 2.0


def test_kill_sleeping_module(sandbox: Sandbox) -> None:
    run = sandbox.start("sleep.wasm", "100")
    assert wait_until(lambda: "sleeping" in run.out())
    assert _kill_and_time(run) < KILL_BOUND
    assert _kill_and_time(sandbox.start("sleep.wasm", "100"), signal.SIGTERM) < KILL_BOUND


def test_kill_module_blocked_on_stdin(sandbox: Sandbox, tmp_path: Path) -> None:
    for name in ("cat_file.wasm", "cat_file.component.wasm"):
        fifo = tmp_path / f"stdin-{name}.fifo"
        os.mkfifo(fifo)
        writer = os.open(fifo, os.O_RDWR)  # a writer that never closes: the guest blocks reading
        try:
            run = sandbox.start(name, "-", stdin=str(fifo))
            os.write(writer, b"some input\n")
            time.sleep(0.2)
            assert not run.exited.is_set()
            assert _kill_and_time(run) < KILL_BOUND
        finally:
            os.close(writer)


def test_kill_sleeping_component(sandbox: Sandbox) -> None:
    """A component sleeps inside wasmtime's own WASI code, out of a Python thread's reach; it runs in a runner
    process by default (component_isolation="process"), so the kill ends it at once, with the kill's status."""
    run = sandbox.start("sleep.component.wasm", "1", "1")
    assert wait_until(lambda: "sleeping" in run.out())
    run.guest.kill(signal.SIGKILL)
    assert run.wait() == 137


def test_pause_parks_a_spinning_guest_and_resume_continues(sandbox: Sandbox) -> None:
    run = sandbox.start("spin.wasm")
    assert wait_until(lambda: "spinning" in run.out())
    run.guest.pause()
    time.sleep(0.2)
    parked = run.guest.stats()[1]
    time.sleep(0.5)
    assert run.guest.stats()[1] - parked < 10_000_000  # under 10 ms of CPU in 0.5 s: it is parked
    run.guest.resume()
    assert wait_until(lambda: run.guest.stats()[1] - parked > 50_000_000)
    run.guest.pause()
    assert _kill_and_time(run) < KILL_BOUND  # a paused guest is killable


def test_pause_of_a_sleeping_guest_holds_it_after_the_sleep(sandbox: Sandbox) -> None:
    run = sandbox.start("sleep.wasm", "0", "1000000")  # sleeps 0 s in a loop: back and forth into the host
    assert wait_until(lambda: "sleeping" in run.out())
    run.guest.pause()
    time.sleep(0.2)
    parked = run.guest.stats()[1]
    time.sleep(0.3)
    assert run.guest.stats()[1] - parked < 10_000_000
    run.guest.resume()
    assert _kill_and_time(run) < KILL_BOUND


def test_cpu_limit_caps_a_spinning_guest(sandbox: Sandbox) -> None:
    run = sandbox.start("spin.wasm", cpu_limit=0.2)
    assert wait_until(lambda: "spinning" in run.out())
    first, began = run.guest.stats()[1], time.monotonic()
    time.sleep(2)
    rate = (run.guest.stats()[1] - first) / 1e9 / (time.monotonic() - began)
    assert rate < 0.2 * 1.3, rate  # the cap; other load can only lower it
    assert _kill_and_time(run) < KILL_BOUND  # a guest sleeping off its CPU debt is killable


def test_oom_only_when_failing_at_the_limit(sandbox: Sandbox) -> None:
    trapped = sandbox.start("alloc.wasm", "0", "abort", memory_limit=16 << 20)
    assert trapped.wait() == 134 and trapped.guest.oom
    coped = sandbox.start("alloc.wasm", "0", memory_limit=16 << 20)
    assert coped.wait() == 0 and not coped.guest.oom  # it handled the failed malloc and exited 0
    assert "malloc failed at" in coped.out()
    unlimited = sandbox.start("trap.wasm")
    assert unlimited.wait() == 134 and not unlimited.guest.oom


def test_precompile_writes_what_the_daemon_reads(sandbox: Sandbox, guests: Path) -> None:
    from wasm_shim.shim.cli.main import main

    cache = sandbox.tmp / "precompiled"
    assert main(["precompile", "--cache-dir", str(cache), str(guests / "hello.wasm"),
                 str(guests / "hello.component.wasm")]) == 0
    daemon_engine = WasmtimeEngine(cache_dir=str(cache))
    try:
        for name in ("hello.wasm", "hello.component.wasm"):
            prepare(daemon_engine, sandbox.spec(name))
        prepare(daemon_engine, sandbox.spec("hello.component.wasm", annotations={ISOLATION: "thread"}))
        assert (daemon_engine.cache_stats().compiles, daemon_engine.cache_stats().disk_hits) == (0, 2)
    finally:
        daemon_engine.close()
    # ... and the component runner's own compilation, which is what runs a component (runner/).
    digest = hashlib.sha256((guests / "hello.component.wasm").read_bytes()).hexdigest()
    assert len(list(cache.glob(f"component-runner-*/{digest}.component.cwasm"))) == 1
    assert main(["precompile", "--cache-dir", str(cache), str(sandbox.tmp)]) == 1  # a directory: an error


def test_concurrent_creates_of_one_component_compile_it_once(sandbox: Sandbox, tmp_path: Path) -> None:
    """A Deployment scaled up on a node that has not compiled its component yet: every Create arrives while the
    first compile runs. They wait for that compile; the real runner is asked to --check the digest once (the
    cluster benchmark saw one compile per pending pod, sharing two cores)."""
    real = WasmtimeEngine(cache_dir=str(tmp_path / "probe"))._runner.find()
    if real is None:
        pytest.fail("wasm-shim-component-runner is not built (scripts/setup.sh builds it)")
    calls = tmp_path / "runner-calls"
    wrapper = tmp_path / "runner-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    engine = WasmtimeEngine(cache_dir=str(tmp_path / "cache"), component_runner=str(wrapper))
    barrier = threading.Barrier(4)
    results: list[object] = []

    def create(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            results.append(prepare(engine, sandbox.spec("hello.component.wasm", task_id=f"pod-{n}")))
        except Exception as exc:  # noqa: BLE001 - reported below with the others
            results.append(exc)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    engine.close()
    assert len(results) == 4 and not [r for r in results if isinstance(r, Exception)], results
    assert calls.read_text().split() == ["--check"], calls.read_text()


# --- staged at Create, launched at Start (runc's create/start) ----------------------------------------------

# A command whose start function (run by instantiation) writes a line: no instantiation may happen before launch.
WRITES_AT_INSTANTIATION = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "start function ran\\n")
  (func $at_instantiation
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 19))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (start $at_instantiation)
  (func (export "_start")))"""

# The same trap at instantiation (a data segment beyond its memory), without and with a start function: the first
# is instantiated when staged, the second only at Start.
BAD_SEGMENT = """(module
  (memory (export "memory") 1)
  (data (i32.const 65530) "beyond the end of the memory")
  {start}
  (func $nothing)
  (func (export "_start")))"""


@pytest.mark.parametrize("name", ["hello.wasm", "writes.wasm"])
def test_a_staged_guest_runs_nothing_until_it_is_launched(sandbox: Sandbox, name: str) -> None:
    import wasmtime

    (sandbox.rootfs / "writes.wasm").write_bytes(wasmtime.wat2wasm(WRITES_AT_INSTANTIATION))
    staged, run = sandbox.stage(name)
    time.sleep(0.2)  # a thread that ran the guest early would have written by now
    assert run.out() == "" and run.statuses == []
    run.guest = staged.launch()
    assert run.wait() == 0
    assert run.out() == ("hello from wasm\n" if name == "hello.wasm" else "start function ran\n")


def test_discarded_guests_run_nothing_and_leave_no_threads_fds_or_stores(sandbox: Sandbox, tmp_path: Path) -> None:
    import wasmtime

    (sandbox.rootfs / "writes.wasm").write_bytes(wasmtime.wat2wasm(WRITES_AT_INSTANTIATION))
    data = tmp_path / "data"
    data.mkdir()
    mounts = (GuestMount("/data", str(data), readonly=True),)
    for name in ("hello.wasm", "writes.wasm"):  # warm up: compiles
        staged, run = sandbox.stage(name, mounts=mounts)
        run.guest = staged.launch()
        run.wait()
    gc.collect()
    threads, fds, stores = threading.active_count(), open_fds(), live_wasmtime_stores()
    runs = []
    gc.disable()
    try:
        for i in range(20):
            staged, run = sandbox.stage(("hello.wasm", "writes.wasm")[i % 2], mounts=mounts)
            runs.append(run)
            staged.discard()
    finally:
        gc.enable()
    assert threading.active_count() == threads, "a discarded guest's thread is still there"
    assert open_fds() - fds == set(), "a discarded guest left fds open"
    assert live_wasmtime_stores() == stores == 0
    assert all(run.out() == "" and run.statuses == [] for run in runs)  # nothing ran, on_exit never called


@pytest.mark.parametrize("start", ["", "(start $nothing)"])
def test_an_instantiation_that_fails_when_staged_fails_at_start_as_it_always_did(sandbox: Sandbox,
                                                                                 start: str) -> None:
    import wasmtime

    (sandbox.rootfs / "segment.wasm").write_bytes(wasmtime.wat2wasm(BAD_SEGMENT.format(start=start)))
    staged, run = sandbox.stage("segment.wasm")
    time.sleep(0.05)
    assert run.statuses == []  # not before Start
    run.guest = staged.launch()
    assert run.wait() == 134
    assert run.err() == "wasm trap: out of bounds memory access\n"


def test_prepare_cached_only_answers_from_memory_or_would_block(sandbox: Sandbox) -> None:
    from wasm_shim.shim.engines.base import WouldBlock

    spec = sandbox.spec("hello.wasm")
    with pytest.raises(WouldBlock):
        sandbox.engine.prepare(spec, locate_entrypoint(spec), cached_only=True)
    assert sandbox.engine.cache_stats().compiles == 0  # it gave up before compiling
    compiled = prepare(sandbox.engine, spec)
    again = sandbox.engine.prepare(spec, locate_entrypoint(spec), cached_only=True)
    assert again.compiled is compiled.compiled and sandbox.engine.cache_stats().compiles == 1
    exits = Exits()
    sandbox.engine.start(again, GuestStdio(None, str(sandbox.tmp / "cached-out"), None), exits)
    assert exits.wait() and exits.statuses == [0]
    assert (sandbox.tmp / "cached-out").read_text() == "hello from wasm\n"
