"""The shim daemon driven directly: `start` as containerd runs it, then the task API over the real unix socket,
with a ttrpc server of our own standing in for containerd's events service (it is the receiving end of a real
protocol, not a mock of our code). Covers event order, stdio URIs, lifecycle errors, and misbehaving clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from wasm_shim.shim.protos import events_pb2, task_pb2, ttrpc_events_pb2
from wasm_shim.shim.ttrpc import Client, Code, RpcError, Server
from wasm_shim.shim.ttrpc.server import CallContext

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.asyncio]

SHIM = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "containerd-shim-wasmtime-v1"
V2 = "containerd.task.v2.Task"


class EventSink:
    """containerd's `containerd.services.events.ttrpc.v1.Events/Forward`, recording what arrives."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # (namespace, topic, type_url)
        self.messages: list[ttrpc_events_pb2.ForwardRequest] = []
        self.changed = asyncio.Event()

    async def forward(self, payload: bytes, ctx: CallContext) -> bytes:
        request = ttrpc_events_pb2.ForwardRequest.FromString(payload)
        envelope = request.envelope
        self.events.append((envelope.namespace, envelope.topic, envelope.event.type_url))
        self.messages.append(request)
        self.changed.set()
        return b""

    async def wait_for(self, topic: str, count: int = 1) -> None:
        async def until() -> None:
            while sum(1 for e in self.events if e[1] == topic) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), 10)

    def topics(self) -> list[str]:
        return [topic for _, topic, _ in self.events]


class ShimUnderTest:
    def __init__(self, tmp: Path, events_path: str) -> None:
        self.tmp = tmp
        self.events_path = events_path
        # Unix socket paths must stay under 108 bytes: a short private dir, removed at teardown.
        self.sockets = Path(tempfile.mkdtemp(prefix="wsh-d-", dir="/tmp"))
        self.address = ""
        self.daemon_pid = 0

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            TTRPC_ADDRESS=self.events_path,
            GRPC_ADDRESS=str(self.tmp / "containerd.sock"),
            NAMESPACE="testns",
            WASM_SHIM_SOCKET_DIR=str(self.sockets),
            WASM_SHIM_CACHE_DIR=str(self.tmp / "cache"),
            WASM_SHIM_CONFIG="",
            WASM_SHIM_IDLE_TIMEOUT="300",
        )

    def bundle(self, task_id: str, wasm: Path, args: list[str] | None = None) -> Path:
        bundle = self.tmp / "bundles" / task_id
        (bundle / "rootfs").mkdir(parents=True)
        (bundle / "rootfs" / "app.wasm").write_bytes(wasm.read_bytes())
        spec = {"ociVersion": "1.0.2", "process": {"args": args or ["/app.wasm"], "env": ["A=1"], "cwd": "/"},
                "root": {"path": "rootfs"}}
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def start(self, task_id: str, bundle: Path) -> str:
        out = subprocess.run(
            [str(SHIM), "-namespace", "testns", "-address", str(self.tmp / "containerd.sock"),
             "-publish-binary", "/bin/true", "-id", task_id, "start"],
            cwd=bundle, env=self.env(), capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, out.stderr
        assert out.stderr == b""  # containerd reads stdout and stderr together: nothing but the address
        self.address = out.stdout.decode()
        return self.address

    def stop_daemon(self) -> None:
        if self.daemon_pid:
            try:
                os.kill(self.daemon_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.sockets, ignore_errors=True)


@pytest_asyncio.fixture
async def sink(tmp_path: Path) -> AsyncIterator[tuple[EventSink, str]]:
    events = EventSink()
    path = str(tmp_path / "events.sock")
    server = Server({("containerd.services.events.ttrpc.v1.Events", "Forward"): events.forward})
    await server.start(path)
    try:
        yield events, path
    finally:
        await server.close(grace=1)


@pytest_asyncio.fixture
async def shim(tmp_path: Path, sink: tuple[EventSink, str]) -> AsyncIterator[ShimUnderTest]:
    under_test = ShimUnderTest(tmp_path, sink[1])
    try:
        yield under_test
    finally:
        under_test.stop_daemon()


async def _connect(shim: ShimUnderTest) -> Client:
    client = await Client.connect(shim.address.removeprefix("unix://"))
    response = task_pb2.ConnectResponse.FromString(
        await client.call(V2, "Connect", task_pb2.ConnectRequest(id="x").SerializeToString(), timeout=10))
    shim.daemon_pid = response.shim_pid
    return client


async def _call(client: Client, method: str, request, response_type=None, service: str = V2):  # type: ignore[no-untyped-def]
    raw = await client.call(service, method, request.SerializeToString(), timeout=15,
                            metadata={"containerd-namespace-ttrpc": "testns"})
    return response_type.FromString(raw) if response_type else raw


async def test_run_to_completion_events_in_order_and_file_stdio(shim, sink, guests, tmp_path):
    events, _ = sink
    bundle = shim.bundle("t1", guests / "hello.wasm")
    shim.start("t1", bundle)
    client = await _connect(shim)
    log = tmp_path / "out.log"
    log.write_text("earlier line\n")
    try:
        created = await _call(client, "Create", task_pb2.CreateTaskRequest(
            id="t1", bundle=str(bundle), stdout=f"file://{log}", stderr=f"file://{log}"), task_pb2.CreateTaskResponse)
        assert created.pid == shim.daemon_pid
        wait = asyncio.ensure_future(_call(client, "Wait", task_pb2.WaitRequest(id="t1"), task_pb2.WaitResponse))
        await _call(client, "Start", task_pb2.StartRequest(id="t1"), task_pb2.StartResponse)
        waited = await asyncio.wait_for(wait, 15)
        assert waited.exit_status == 0
        # The exit is recorded only after the output is drained, and file:// appends.
        assert log.read_text() == "earlier line\nhello from wasm\n"
        state = await _call(client, "State", task_pb2.StateRequest(id="t1"), task_pb2.StateResponse)
        assert state.status == task_pb2.StateResponse.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_name[
            "STOPPED"].number
        deleted = await _call(client, "Delete", task_pb2.DeleteRequest(id="t1"), task_pb2.DeleteResponse)
        assert deleted.exit_status == 0
        await events.wait_for("/tasks/delete")
        assert events.topics() == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
        assert {ns for ns, _, _ in events.events} == {"testns"}
        assert events.events[2][2] == "containerd.events.TaskExit"
        exit_event = events_pb2.TaskExit.FromString(events.messages[2].envelope.event.value)
        assert (exit_event.container_id, exit_event.id, exit_event.exit_status) == ("t1", "t1", 0)
    finally:
        await client.close()


async def test_binary_logger_stdio(shim, sink, guests, tmp_path):
    logger = tmp_path / "logger.sh"
    logger.write_text('#!/bin/sh\n# args: dir DIR\nexec 5>&-\ncat <&3 > "$2/stdout" &\ncat <&4 > "$2/stderr"\nwait\n'
                      'echo "$CONTAINER_ID $CONTAINER_NAMESPACE" > "$2/env"\n')
    logger.chmod(0o755)
    outdir = tmp_path / "logs"
    outdir.mkdir()
    bundle = shim.bundle("t2", guests / "stderr.wasm")
    shim.start("t2", bundle)
    client = await _connect(shim)
    uri = f"binary://{logger}?dir={outdir}"
    try:
        await _call(client, "Create", task_pb2.CreateTaskRequest(id="t2", bundle=str(bundle), stdout=uri, stderr=uri))
        await _call(client, "Start", task_pb2.StartRequest(id="t2"))
        waited = await _call(client, "Wait", task_pb2.WaitRequest(id="t2"), task_pb2.WaitResponse)
        assert waited.exit_status == 0
        assert (outdir / "stderr").read_text() == "written to stderr by wasm\n"
        assert (outdir / "env").read_text() == "t2 testns\n"
        await _call(client, "Delete", task_pb2.DeleteRequest(id="t2"))
    finally:
        await client.close()


async def test_lifecycle_errors_name_states(shim, sink, guests):
    bundle = shim.bundle("t3", guests / "spin.wasm")
    shim.start("t3", bundle)
    client = await _connect(shim)
    try:
        await _call(client, "Create", task_pb2.CreateTaskRequest(id="t3", bundle=str(bundle)))
        with pytest.raises(RpcError) as dup:
            await _call(client, "Create", task_pb2.CreateTaskRequest(id="t3", bundle=str(bundle)))
        assert dup.value.code == Code.ALREADY_EXISTS
        await _call(client, "Start", task_pb2.StartRequest(id="t3"))
        with pytest.raises(RpcError) as again:
            await _call(client, "Start", task_pb2.StartRequest(id="t3"))
        assert again.value.code == Code.FAILED_PRECONDITION
        assert "it is running" in again.value.message and "start needs created" in again.value.message
        with pytest.raises(RpcError) as running:
            await _call(client, "Delete", task_pb2.DeleteRequest(id="t3"))
        assert running.value.code == Code.FAILED_PRECONDITION
        await _call(client, "Kill", task_pb2.KillRequest(id="t3", signal=9))
        waited = await _call(client, "Wait", task_pb2.WaitRequest(id="t3"), task_pb2.WaitResponse)
        assert waited.exit_status == 137
        with pytest.raises(RpcError) as finished:
            await _call(client, "Kill", task_pb2.KillRequest(id="t3", signal=9))
        assert finished.value.code == Code.NOT_FOUND
        with pytest.raises(RpcError) as missing:
            await _call(client, "State", task_pb2.StateRequest(id="nope"))
        assert missing.value.code == Code.NOT_FOUND
        with pytest.raises(RpcError) as exec_:
            await _call(client, "Exec", task_pb2.ExecProcessRequest(id="t3", exec_id="e1"))
        assert exec_.value.code == Code.UNIMPLEMENTED
        with pytest.raises(RpcError) as unknown:
            await client.call(V2, "Frobnicate", b"", timeout=5)
        assert unknown.value.code == Code.UNIMPLEMENTED and "Frobnicate" in unknown.value.message
        await _call(client, "Delete", task_pb2.DeleteRequest(id="t3"))
    finally:
        await client.close()


async def test_bad_bundle_fails_create_and_daemon_lives_on(shim, sink, guests, tmp_path):
    bundle = shim.bundle("t4", guests / "hello.wasm", args=["/missing.wasm"])
    shim.start("t4", bundle)
    client = await _connect(shim)
    try:
        with pytest.raises(RpcError) as missing:
            await _call(client, "Create", task_pb2.CreateTaskRequest(id="t4", bundle=str(bundle)))
        assert missing.value.code == Code.FAILED_PRECONDITION
        assert "/missing.wasm: no such file in the container's rootfs" in missing.value.message
        with pytest.raises(RpcError) as no_bundle:
            await _call(client, "Create", task_pb2.CreateTaskRequest(id="t5", bundle=str(tmp_path / "nowhere")))
        assert "config.json" in no_bundle.value.message
        good = shim.bundle("t6", guests / "hello.wasm")
        with pytest.raises(RpcError) as tty:
            await _call(client, "Create", task_pb2.CreateTaskRequest(id="t6", bundle=str(good), terminal=True))
        assert "terminal" in tty.value.message
        # Undecodable request payload: INVALID_ARGUMENT, connection kept.
        with pytest.raises(RpcError) as garbage:
            await client.call(V2, "Create", b"\xff\xff\xff", timeout=5)
        assert garbage.value.code == Code.INVALID_ARGUMENT
        await _call(client, "Connect", task_pb2.ConnectRequest(id="t4"))
    finally:
        await client.close()


async def test_garbage_frame_closes_only_that_connection(shim, sink, guests):
    bundle = shim.bundle("t7", guests / "hello.wasm")
    shim.start("t7", bundle)
    good = await _connect(shim)
    try:
        hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hostile.settimeout(10)
        hostile.connect(shim.address.removeprefix("unix://"))
        hostile.sendall(b"GET / HTTP/1.1\r\nHost: shim\r\n\r\n" * 4)
        assert hostile.recv(4096) == b""  # closed by the daemon
        hostile.close()
        # Declared length over 4 MiB: discarded and answered RESOURCE_EXHAUSTED on a connection that stays open.
        big = await Client.connect(shim.address.removeprefix("unix://"), max_message_size=8 << 20)
        try:
            with pytest.raises(RpcError) as too_big:
                await big.call(V2, "Connect", b"\0" * (5 << 20), timeout=10)
            assert too_big.value.code == Code.RESOURCE_EXHAUSTED
            await big.call(V2, "Connect", task_pb2.ConnectRequest(id="x").SerializeToString(), timeout=10)
        finally:
            await big.close()
        await _call(good, "Create", task_pb2.CreateTaskRequest(id="t7", bundle=str(bundle)))
        await _call(good, "Start", task_pb2.StartRequest(id="t7"))
        waited = await _call(good, "Wait", task_pb2.WaitRequest(id="t7"), task_pb2.WaitResponse)
        assert waited.exit_status == 0
        await _call(good, "Delete", task_pb2.DeleteRequest(id="t7"))
    finally:
        await good.close()


async def test_second_start_reuses_daemon_and_v3_service(shim, sink, guests):
    first = shim.bundle("t8", guests / "hello.wasm")
    second = shim.bundle("t9", guests / "hello.wasm")
    assert shim.start("t8", first) == shim.start("t9", second)
    assert (first / "address").read_text() == shim.address
    client = await _connect(shim)
    try:
        for task_id, bundle in (("t8", first), ("t9", second)):
            await _call(client, "Create", task_pb2.CreateTaskRequest(id=task_id, bundle=str(bundle)),
                        service="containerd.task.v3.Task")
            await _call(client, "Start", task_pb2.StartRequest(id=task_id), service="containerd.task.v3.Task")
        for task_id in ("t8", "t9"):
            await _call(client, "Wait", task_pb2.WaitRequest(id=task_id), service="containerd.task.v3.Task")
            await _call(client, "Delete", task_pb2.DeleteRequest(id=task_id), service="containerd.task.v3.Task")
        # Shutdown with no tasks left does not kill a daemon that is configured to linger.
        await _call(client, "Shutdown", task_pb2.ShutdownRequest(id="t9"))
        await _call(client, "Connect", task_pb2.ConnectRequest(id="t9"))
    finally:
        await client.close()


async def test_delete_binary_is_idempotent(shim, sink, guests):
    bundle = shim.bundle("t10", guests / "spin.wasm")
    shim.start("t10", bundle)
    client = await _connect(shim)
    try:
        await _call(client, "Create", task_pb2.CreateTaskRequest(id="t10", bundle=str(bundle)))
        await _call(client, "Start", task_pb2.StartRequest(id="t10"))

        def run_delete() -> task_pb2.DeleteResponse:
            out = subprocess.run(
                [str(SHIM), "-namespace", "testns", "-address", str(shim.tmp / "containerd.sock"),
                 "-publish-binary", "/bin/true", "-id", "t10", "-bundle", str(bundle), "delete"],
                cwd=bundle, env=shim.env(), capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
            )
            assert out.returncode == 0, out.stderr
            return task_pb2.DeleteResponse.FromString(out.stdout)

        # containerd runs `delete` when it lost the shim: the running task is killed and deleted in the daemon.
        first = await asyncio.get_running_loop().run_in_executor(None, run_delete)
        assert first.exit_status == 137
        with pytest.raises(RpcError) as gone:
            await _call(client, "State", task_pb2.StateRequest(id="t10"))
        assert gone.value.code == Code.NOT_FOUND
        second = await asyncio.get_running_loop().run_in_executor(None, run_delete)
        assert second.exit_status == 137 and second.exited_at.seconds > 0
    finally:
        await client.close()


async def test_kill_reaches_a_guest_blocked_writing_to_an_unread_fifo(shim, sink, guests, tmp_path):
    """The client went away: nobody reads the stdout FIFO, the guest blocks in write(2) inside wasmtime where no
    epoch reaches it; Kill must still stop it (the daemon discards what fills the pipe once it is killed)."""
    bundle = shim.bundle("t11", guests / "cat_file.wasm", args=["/app.wasm", "/big.txt"])
    (bundle / "rootfs" / "big.txt").write_bytes(b"x" * (4 << 20))
    fifo = tmp_path / "stdout.fifo"
    os.mkfifo(fifo)
    shim.start("t11", bundle)
    client = await _connect(shim)
    try:
        await _call(client, "Create", task_pb2.CreateTaskRequest(id="t11", bundle=str(bundle), stdout=str(fifo)))
        await _call(client, "Start", task_pb2.StartRequest(id="t11"))
        await asyncio.sleep(0.5)  # let it fill the pipe and block
        state = await _call(client, "State", task_pb2.StateRequest(id="t11"), task_pb2.StateResponse)
        assert state.status == 2  # RUNNING: blocked writing
        await _call(client, "Kill", task_pb2.KillRequest(id="t11", signal=9))
        waited = await asyncio.wait_for(
            _call(client, "Wait", task_pb2.WaitRequest(id="t11"), task_pb2.WaitResponse), 10)
        assert waited.exit_status == 137
        await _call(client, "Delete", task_pb2.DeleteRequest(id="t11"))
    finally:
        await client.close()
