"""Access: what is root's stays root's, a namespace sees only its own tasks, ids are not paths.

- The daemon's socket, lock, log and compile cache are root-only (modes and owner checked), and an unprivileged
  user (uid/gid 65534 through `setpriv`, all groups cleared) cannot connect to the socket, read the daemon's log or
  a task's output file, or plant a file in the cache, even where every parent directory lets them through.
- One containerd namespace cannot see or touch another's tasks through the shared daemon: through a real
  containerd (`ctr -n other ...`) and directly on the daemon's socket, naming the other namespace in the ttrpc
  metadata.
- A task or exec id with `/`, `..`, NUL (or anything else containerd's identifier rule refuses) is refused with
  INVALID_ARGUMENT naming it, before anything is created.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from lab.shimtools import RUNTIME, remove_task, task_status, wait_for
from lab.soak import record, sample
from tests.integration.test_daemon import V2, EventSink, ShimUnderTest, _call, _connect, sink  # noqa: F401
from wasm_shim.shim.protos import task_pb2, task_types_pb2
from wasm_shim.shim.ttrpc import Client, Code, RpcError

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(180)]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
RUNNING = task_types_pb2.Status.Value("RUNNING")


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def nobody_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as uid 65534 under the system Python (the venv may sit under a root-only directory)."""
    return as_nobody("/usr/bin/python3", "-I", "-c", code, *args)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_dir() -> Path:
    """A fresh directory every user may traverse (0711), as /run/containerd/s and /var/lib are on a node."""
    path = Path(tempfile.mkdtemp(prefix="wsh-acc-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.asyncio
async def test_root_only_files_and_an_unprivileged_user(sink, guests, tmp_path, open_dir):  # noqa: F811
    events, events_path = sink
    shim = ShimUnderTest(tmp_path, events_path)
    sockets = open_dir / "s"
    sockets.mkdir(mode=0o711)
    shim.sockets.rmdir()  # the private dir ShimUnderTest made: this test needs one others may traverse
    shim.sockets = sockets
    cache = open_dir / "cache"
    outputs = open_dir / "out"
    outputs.mkdir(mode=0o755)
    out = outputs / "task.log"
    env = shim.env()
    env["WASM_SHIM_CACHE_DIR"] = str(cache)
    shim.env = lambda: env  # type: ignore[method-assign]
    bundle = shim.bundle("private", guests / "hello.wasm")
    try:
        shim.start("private", bundle)
        client = await _connect(shim)
        try:
            await _call(client, "Create", task_pb2.CreateTaskRequest(
                id="private", bundle=str(bundle), stdout=f"file://{out}", stderr=f"file://{out}"))
            await _call(client, "Start", task_pb2.StartRequest(id="private"))
            assert (await _call(client, "Wait", task_pb2.WaitRequest(id="private"),
                                task_pb2.WaitResponse)).exit_status == 0
            await _call(client, "Delete", task_pb2.DeleteRequest(id="private"))
        finally:
            await client.close()
        socket_path = Path(shim.address.removeprefix("unix://"))
        log = Path(str(socket_path) + ".log")
        lock = Path(str(socket_path) + ".lock")
        assert log.read_text()  # the daemon wrote its log
        cache_files = [p for p in cache.rglob("*") if p.is_file()]
        assert cache_files, "the compiled module was not cached"

        # Modes: root-owned, nothing for group or others.
        checked = {socket_path: 0o600, log: 0o600, lock: 0o600, cache: 0o700}
        checked.update({p: 0o600 for p in cache_files})
        checked.update({p: 0o700 for p in cache.rglob("*") if p.is_dir()})
        for path, expected in checked.items():
            info = os.lstat(path)
            assert info.st_uid == 0, path
            assert mode(path) & 0o077 == 0, f"{path} has mode {mode(path):04o}, expected {expected:04o}"
        assert mode(out) & 0o007 == 0, f"task output {out} is readable by others ({mode(out):04o})"

        # An unprivileged user, with every parent directory open to it.
        connect = nobody_python(
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\nelse:\n    print('in')",
            str(socket_path))
        assert connect.stdout.strip() == "refused", connect
        for secret in (log, out):
            read = as_nobody("cat", str(secret))
            assert read.returncode != 0 and "Permission denied" in read.stderr, (secret, read)
        plant = nobody_python("import sys; open(sys.argv[1], 'wb').write(b'planted')", str(cache / "evil.cwasm"))
        assert plant.returncode != 0 and "PermissionError" in plant.stderr, plant
        fingerprint_dir = next(p for p in cache.iterdir() if p.is_dir())
        plant = nobody_python("import sys; open(sys.argv[1], 'wb').write(b'planted')",
                              str(fingerprint_dir / "evil.cwasm"))
        assert plant.returncode != 0, plant
        assert not (cache / "evil.cwasm").exists() and not (fingerprint_dir / "evil.cwasm").exists()
    finally:
        shim.stop_daemon()
    record("access: root-only files, an unprivileged user", tried="uid 65534: connect, read log and task output, "
           "write into the cache (2 levels)", held="socket, log, lock 0600; cache 0700/0600; every attempt refused")


@pytest.mark.asyncio
async def test_another_namespace_on_the_socket_finds_nothing(sink, guests, tmp_path):  # noqa: F811
    events, events_path = sink
    shim = ShimUnderTest(tmp_path, events_path)
    bundle = shim.bundle("mine", guests / "sleep.wasm", args=["/app.wasm", "1"])
    try:
        shim.start("mine", bundle)
        client = await _connect(shim)
        other = {"containerd-namespace-ttrpc": "other"}
        try:
            await _call(client, "Create", task_pb2.CreateTaskRequest(id="mine", bundle=str(bundle)))
            await _call(client, "Start", task_pb2.StartRequest(id="mine"))
            attempts = [
                ("State", task_pb2.StateRequest(id="mine")), ("Kill", task_pb2.KillRequest(id="mine", signal=9)),
                ("Delete", task_pb2.DeleteRequest(id="mine")), ("Wait", task_pb2.WaitRequest(id="mine")),
                ("Pids", task_pb2.PidsRequest(id="mine")), ("Stats", task_pb2.StatsRequest(id="mine")),
                ("Pause", task_pb2.PauseRequest(id="mine")), ("CloseIO", task_pb2.CloseIORequest(id="mine")),
                ("Start", task_pb2.StartRequest(id="mine")),
            ]
            for method, request in attempts:
                with pytest.raises(RpcError) as info:
                    await client.call(V2, method, request.SerializeToString(), timeout=10, metadata=other)
                assert info.value.code == Code.NOT_FOUND, (method, info.value)
                assert "'mine' not found in namespace 'other'" in info.value.message
            connected = task_pb2.ConnectResponse.FromString(await client.call(
                V2, "Connect", task_pb2.ConnectRequest(id="mine").SerializeToString(), timeout=10, metadata=other))
            assert connected.task_pid == 0
            # Its own namespace still has it, untouched and running.
            state = await _call(client, "State", task_pb2.StateRequest(id="mine"), task_pb2.StateResponse)
            assert state.status == RUNNING
            await _call(client, "Kill", task_pb2.KillRequest(id="mine", signal=9))
            waited = await _call(client, "Wait", task_pb2.WaitRequest(id="mine"), task_pb2.WaitResponse)
            assert waited.exit_status == 137
            await _call(client, "Delete", task_pb2.DeleteRequest(id="mine"))
        finally:
            await client.close()
    finally:
        shim.stop_daemon()
    record("access: another namespace on the daemon socket", tried=f"{len(attempts)} task methods + Connect with "
           "namespace 'other' on a running task", held="NOT_FOUND for each; Connect shows no task; the task ran on")


BAD_IDS = ["../escape", "a/b", "/abs", "..", ".", "nul\x00byte", "", "x" * 77, "new\nline", "-lead", "dot..dot"]


@pytest.mark.asyncio
async def test_ids_with_slashes_dots_or_nul_are_refused(sink, guests, tmp_path):  # noqa: F811
    events, events_path = sink
    shim = ShimUnderTest(tmp_path, events_path)
    bundle = shim.bundle("good-id", guests / "hello.wasm")
    try:
        shim.start("good-id", bundle)
        client = await _connect(shim)
        daemon = shim.daemon_pid
        before = sample(daemon)
        try:
            for bad in BAD_IDS:
                with pytest.raises(RpcError) as info:
                    await _call(client, "Create", task_pb2.CreateTaskRequest(id=bad, bundle=str(bundle)))
                assert info.value.code == Code.INVALID_ARGUMENT, (bad, info.value)
                assert f"task id {bad!r} is not valid" in info.value.message
                for method, request in (("State", task_pb2.StateRequest(id=bad)),
                                        ("Kill", task_pb2.KillRequest(id=bad, signal=9)),
                                        ("Delete", task_pb2.DeleteRequest(id=bad))):
                    with pytest.raises(RpcError) as info:
                        await _call(client, method, request)
                    assert info.value.code == Code.INVALID_ARGUMENT, (method, bad, info.value)
            await _call(client, "Create", task_pb2.CreateTaskRequest(id="good-id", bundle=str(bundle)))
            for bad in ("../e", "e/1", "e\x00"):
                with pytest.raises(RpcError) as info:
                    await _call(client, "State", task_pb2.StateRequest(id="good-id", exec_id=bad))
                assert info.value.code == Code.INVALID_ARGUMENT
                assert f"exec id {bad!r} of task 'good-id' is not valid" in info.value.message
            await _call(client, "Delete", task_pb2.DeleteRequest(id="good-id"))
            assert not list(tmp_path.rglob("escape")) and not (tmp_path / "bundles" / "a").exists()
        finally:
            await client.close()
        after = sample(daemon)
    finally:
        shim.stop_daemon()
    record("access: ids with '/', '..', NUL", tried=f"{len(BAD_IDS)} bad task ids x 4 methods, 3 bad exec ids",
           held="INVALID_ARGUMENT naming the id, nothing created", before=before, after=after)


# --- through a real containerd ----------------------------------------------------------------------------


def ctr_in(containerd, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    argv = containerd.ctr_argv(*args)
    argv[argv.index("--namespace") + 1] = namespace
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=containerd.ctr_env(),
                          stdin=subprocess.DEVNULL)


def test_namespaces_through_containerd_and_the_shared_daemon(containerd, wasm_image, guests):
    image = wasm_image("sleep", guests / "sleep.wasm")
    containerd.ctr("run", "-d", "--runtime", RUNTIME, image, "ns-a", "/app.wasm", "1")
    try:
        wait_for(lambda: task_status(containerd, "ns-a") == "RUNNING", 20, "ns-a running")
        for args in (("task", "ls"), ("task", "kill", "-s", "SIGKILL", "ns-a"), ("task", "rm", "-f", "ns-a"),
                     ("container", "rm", "ns-a")):
            done = ctr_in(containerd, "intruder", *args)
            if args == ("task", "ls"):
                assert "ns-a" not in done.stdout
            else:
                assert done.returncode != 0 and "not found" in done.stderr.lower(), (args, done)
        assert task_status(containerd, "ns-a") == "RUNNING"

        # Directly on the daemon's socket, as a client claiming the intruder namespace.
        bundle = Path(containerd.state) / "io.containerd.runtime.v2.task" / containerd.namespace / "ns-a"
        address = (bundle / "address").read_text().strip().removeprefix("unix://")

        async def probe() -> tuple[list[int], int]:
            client = await Client.connect(address)
            try:
                codes = []
                for method, request in (("State", task_pb2.StateRequest(id="ns-a")),
                                        ("Kill", task_pb2.KillRequest(id="ns-a", signal=9)),
                                        ("Delete", task_pb2.DeleteRequest(id="ns-a"))):
                    try:
                        await client.call(V2, method, request.SerializeToString(), timeout=10,
                                          metadata={"containerd-namespace-ttrpc": "intruder"})
                        codes.append(0)
                    except RpcError as exc:
                        codes.append(int(exc.code))
                own = task_pb2.StateResponse.FromString(await client.call(
                    V2, "State", task_pb2.StateRequest(id="ns-a").SerializeToString(), timeout=10,
                    metadata={"containerd-namespace-ttrpc": containerd.namespace}))
                return codes, own.status
            finally:
                await client.close()

        codes, status = asyncio.run(probe())
        assert codes == [Code.NOT_FOUND] * 3
        assert status == RUNNING
        assert task_status(containerd, "ns-a") == "RUNNING"
    finally:
        remove_task(containerd, "ns-a")
    record(f"access: namespaces through containerd {containerd.kind}", tried="ctr -n intruder task ls/kill/rm, "
           "container rm; State/Kill/Delete on the daemon socket as 'intruder'",
           held="not found each time; the task kept running in its own namespace")
