"""The asyncio ttrpc server and client over a real unix socket in tmp_path.

Handlers coordinate through events, never through sleeps, so the tests say nothing about speed; the
timeouts below only stop a hang from blocking the run.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from wasm_shim.shim.ttrpc import CallContext, Client, Code, Handler, RpcError, Server
from wasm_shim.shim.ttrpc.connection import FRAME_REQUEST, FRAME_RESPONSE
from wasm_shim.shim.ttrpc.wire import decode_response, encode_request

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.timeout(30)]

HANG = 5.0  # seconds after which a wait is a hang, not a slow machine

SERVICE = "test.v1.Echo"


class Gates:
    """Per-key events: a handler announces it has started, then waits to be released."""

    def __init__(self) -> None:
        self.entered: dict[bytes, asyncio.Event] = {}
        self.release: dict[bytes, asyncio.Event] = {}

    def key(self, key: bytes) -> None:
        self.entered[key] = asyncio.Event()
        self.release[key] = asyncio.Event()

    async def wait_entered(self, *keys: bytes) -> None:
        async with asyncio.timeout(HANG):
            for key in keys:
                await self.entered[key].wait()


class Fixture:
    def __init__(self, server: Server, path: str, gates: Gates, connection_counts: list[int]) -> None:
        self.server = server
        self.path = path
        self.gates = gates
        self.connection_counts = connection_counts


def make_handlers(gates: Gates) -> dict[tuple[str, str], Handler]:
    async def echo(payload: bytes, ctx: CallContext) -> bytes:
        return payload

    async def context(payload: bytes, ctx: CallContext) -> bytes:
        return json.dumps(
            {
                "service": ctx.service,
                "method": ctx.method,
                "metadata": dict(ctx.metadata),
                "namespace": ctx.namespace,
                "timeout": ctx.timeout,
                "has_deadline": ctx.deadline is not None,
                "remaining_positive": (ctx.remaining() or 0) > 0,
            }
        ).encode()

    async def boom(payload: bytes, ctx: CallContext) -> bytes:
        raise ValueError("kaboom: " + payload.decode())

    async def not_found(payload: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.NOT_FOUND, "task x not found")

    async def not_bytes(payload: bytes, ctx: CallContext) -> bytes:
        return "text"  # type: ignore[return-value]  # the server must catch a handler's mistake

    async def huge(payload: bytes, ctx: CallContext) -> bytes:
        return b"h" * (5 << 20)

    async def gate(payload: bytes, ctx: CallContext) -> bytes:
        gates.entered[payload].set()
        await gates.release[payload].wait()
        return b"released " + payload

    return {
        (SERVICE, "Echo"): echo,
        (SERVICE, "Context"): context,
        (SERVICE, "Boom"): boom,
        (SERVICE, "NotFound"): not_found,
        (SERVICE, "NotBytes"): not_bytes,
        (SERVICE, "Huge"): huge,
        (SERVICE, "Gate"): gate,
    }


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[Fixture]:
    gates = Gates()
    counts: list[int] = []
    server = Server(make_handlers(gates), on_connection_change=counts.append)
    path = str(tmp_path / "ttrpc.sock")
    await server.start(path)
    try:
        yield Fixture(server, path, gates, counts)
    finally:
        await server.close(grace=1.0)


async def raw_exchange(path: str, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(HANG):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def raw_request(stream_id: int, method: str, payload: bytes = b"") -> bytes:
    body = encode_request(SERVICE, method, payload)
    return len(body).to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes((FRAME_REQUEST, 0)) + body


# --- calls ----------------------------------------------------------------------------------------------


async def test_round_trip(served: Fixture) -> None:
    async with await Client.connect(served.path) as client:
        assert await client.call(SERVICE, "Echo", b"hello") == b"hello"
        assert await client.call(SERVICE, "Echo", b"") == b""
        assert await client.call(SERVICE, "Echo", bytes(range(256)) * 1000) == bytes(range(256)) * 1000


async def test_context_carries_metadata_namespace_and_deadline(served: Fixture) -> None:
    async with await Client.connect("unix://" + served.path) as client:
        raw = await client.call(
            SERVICE, "Context", b"", timeout=20.0, metadata={"containerd-namespace-ttrpc": "k8s.io", "x": "1"}
        )
        seen = json.loads(raw)
        assert seen == {
            "service": SERVICE,
            "method": "Context",
            "metadata": {"containerd-namespace-ttrpc": ["k8s.io"], "x": ["1"]},
            "namespace": "k8s.io",
            "timeout": 20.0,
            "has_deadline": True,
            "remaining_positive": True,
        }
        plain = json.loads(await client.call(SERVICE, "Context", b""))
        assert (plain["namespace"], plain["timeout"], plain["has_deadline"]) == (None, None, False)


async def test_concurrent_calls_finish_out_of_order(served: Fixture) -> None:
    gates = served.gates
    gates.key(b"first")
    gates.key(b"second")
    async with await Client.connect(served.path) as client:
        first = asyncio.create_task(client.call(SERVICE, "Gate", b"first"))
        second = asyncio.create_task(client.call(SERVICE, "Gate", b"second"))
        await gates.wait_entered(b"first", b"second")  # both handlers run at once on one connection
        gates.release[b"second"].set()
        async with asyncio.timeout(HANG):
            assert await second == b"released second"
        assert not first.done()
        gates.release[b"first"].set()
        async with asyncio.timeout(HANG):
            assert await first == b"released first"


async def test_many_concurrent_calls_are_multiplexed(served: Fixture) -> None:
    async with await Client.connect(served.path) as client:
        payloads = [str(i).encode() * (i + 1) for i in range(200)]
        async with asyncio.timeout(HANG):
            results = await asyncio.gather(*(client.call(SERVICE, "Echo", p) for p in payloads))
        assert results == payloads


async def test_unknown_method_and_service_are_unimplemented(served: Fixture) -> None:
    async with await Client.connect(served.path) as client:
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "Nope", b"")
        assert info.value.code is Code.UNIMPLEMENTED
        assert "'Nope'" in info.value.message and SERVICE in info.value.message
        with pytest.raises(RpcError) as info:
            await client.call("other.Service", "Echo", b"")
        assert info.value.code is Code.UNIMPLEMENTED
        assert "'other.Service'" in info.value.message and "'Echo'" in info.value.message
        assert await client.call(SERVICE, "Echo", b"still fine") == b"still fine"


async def test_handler_errors_become_statuses_and_the_server_keeps_serving(
    served: Fixture, caplog: pytest.LogCaptureFixture
) -> None:
    async with await Client.connect(served.path) as client:
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "Boom", b"bad input")
        assert info.value.code is Code.INTERNAL
        assert info.value.message == "kaboom: bad input"
        assert "Traceback" in caplog.text and "test.v1.Echo/Boom" in caplog.text

        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "NotFound", b"")
        assert (info.value.code, info.value.message) == (Code.NOT_FOUND, "task x not found")

        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "NotBytes", b"")
        assert info.value.code is Code.INTERNAL and "expected bytes" in info.value.message

        assert await client.call(SERVICE, "Echo", b"same connection") == b"same connection"
    async with await Client.connect(served.path) as other:
        assert await other.call(SERVICE, "Echo", b"new connection") == b"new connection"


# --- misbehaving peers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: shim\r\n\r\n",  # reserved length byte set: not ttrpc
        b"\x00\x00\x00\x03\x00\x00\x00\x01\x09\x00abc",  # frame type 0x09
        b"\x00\x00\x00\x02\x00\x00\x00\x01\x01\x00\x0a\x10",  # request whose envelope does not decode
    ],
)
async def test_garbage_disconnects_only_that_client(served: Fixture, garbage: bytes) -> None:
    async with await Client.connect(served.path) as good:
        assert await good.call(SERVICE, "Echo", b"before") == b"before"
        assert await raw_exchange(served.path, garbage) == b""  # the server hung up without answering
        assert await good.call(SERVICE, "Echo", b"after") == b"after"


async def test_bad_stream_ids_are_answered_and_the_connection_stays(served: Fixture) -> None:
    data = (
        raw_request(1, "Echo", b"one") + raw_request(1, "Echo", b"reused") + raw_request(2, "Echo", b"even")
    )
    data += raw_request(3, "Echo", b"three")
    reader, writer = await asyncio.open_unix_connection(served.path)
    try:
        writer.write(data)
        answers: list[tuple[int, int, bytes]] = []
        async with asyncio.timeout(HANG):
            while len(answers) < 4:
                header = await reader.readexactly(10)
                assert header[8] == FRAME_RESPONSE
                response = decode_response(await reader.readexactly(int.from_bytes(header[:4], "big")))
                assert response.status is not None
                answers.append((int.from_bytes(header[4:8], "big"), response.status.code, response.payload))
    finally:
        writer.close()
        await writer.wait_closed()
    # Rejections go out as the frames are read, answers as handlers finish: compare without order.
    assert sorted(answers) == [
        (1, Code.OK, b"one"),
        (1, Code.INVALID_ARGUMENT, b""),  # reused id, answered on that id
        (2, Code.INVALID_ARGUMENT, b""),  # even id
        (3, Code.OK, b"three"),  # the connection kept serving
    ]


async def test_a_client_that_never_reads_does_not_stall_others(tmp_path: Path) -> None:
    # 32 MiB of echo requests whose answers are never read: the server must stop reading from that client
    # (backpressure) instead of buffering without bound, and keep serving everyone else.
    served_sizes: list[int] = []

    async def echo(payload: bytes, ctx: CallContext) -> bytes:
        served_sizes.append(len(payload))
        return payload

    server = Server({(SERVICE, "Echo"): echo})
    path = str(tmp_path / "backpressure.sock")
    await server.start(path)
    payload = b"m" * (1 << 20)
    _, writer = await asyncio.open_unix_connection(path)
    try:
        for stream_id in range(1, 64, 2):
            writer.write(raw_request(stream_id, "Echo", payload))  # no drain: we never read either
        async with await Client.connect(path) as other:
            for i in range(20):
                assert await other.call(SERVICE, "Echo", str(i).encode()) == str(i).encode()
        big = [size for size in served_sizes if size == len(payload)]
        assert len(big) < 32, "the server kept reading requests whose answers could not be written"
    finally:
        writer.transport.abort()  # close() would wait to flush requests the server no longer reads
        await writer.wait_closed()
        await server.close(grace=1.0)


async def test_oversized_request_is_rejected_and_the_connection_survives(served: Fixture) -> None:
    five_mib = b"x" * (5 << 20)
    # A client allowed to send it: the server discards the frame and answers RESOURCE_EXHAUSTED.
    async with await Client.connect(served.path, max_message_size=8 << 20) as big:
        with pytest.raises(RpcError) as info:
            await big.call(SERVICE, "Echo", five_mib)
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        assert "exceeds maximum message size of 4194304" in info.value.message
        assert await big.call(SERVICE, "Echo", b"after") == b"after"
    # A default client refuses to send it at all, as Go's ttrpc does.
    async with await Client.connect(served.path) as client:
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "Echo", five_mib)
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        assert await client.call(SERVICE, "Echo", b"fine") == b"fine"


async def test_oversized_answer_becomes_resource_exhausted(served: Fixture) -> None:
    async with await Client.connect(served.path) as client:
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "Huge", b"")
        assert info.value.code is Code.RESOURCE_EXHAUSTED
        assert await client.call(SERVICE, "Echo", b"fine") == b"fine"


# --- deadlines, disconnects, shutdown -------------------------------------------------------------------


async def test_client_timeout_abandons_the_call_and_keeps_the_connection(served: Fixture) -> None:
    gates = served.gates
    gates.key(b"slow")
    async with await Client.connect(served.path) as client:
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "Gate", b"slow", timeout=0.05)
        assert info.value.code is Code.DEADLINE_EXCEEDED
        await gates.wait_entered(b"slow")
        gates.release[b"slow"].set()  # its late answer arrives and is dropped
        assert await client.call(SERVICE, "Echo", b"next") == b"next"
        assert not client.closed


async def test_dropped_connection_fails_pending_calls(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    got_request = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(10)
        got_request.set()
        writer.close()

    mute = await asyncio.start_unix_server(hang_up, path)
    try:
        client = await Client.connect(path)
        calls = [asyncio.create_task(client.call(SERVICE, "Echo", b"x")) for _ in range(3)]
        async with asyncio.timeout(HANG):
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert got_request.is_set()
        assert all(isinstance(r, ConnectionError) for r in results), results
        assert client.closed
        with pytest.raises(ConnectionError, match="closed the connection|was lost"):
            await client.call(SERVICE, "Echo", b"x")
        await client.close()
    finally:
        mute.close()
        await mute.wait_closed()


async def test_connect_failures_are_connection_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(ConnectionError, match="missing.sock"):
        await Client.connect(missing)


async def test_closed_client_refuses_calls(served: Fixture) -> None:
    client = await Client.connect(served.path)
    await client.close()
    with pytest.raises(ConnectionError, match="was closed"):
        await client.call(SERVICE, "Echo", b"x")


async def test_close_waits_for_calls_in_flight(tmp_path: Path) -> None:
    gates = Gates()
    gates.key(b"inflight")
    server = Server(make_handlers(gates))
    path = str(tmp_path / "close.sock")
    await server.start(path)
    client = await Client.connect(path)
    idle = await Client.connect(path)
    call = asyncio.create_task(client.call(SERVICE, "Gate", b"inflight"))
    await gates.wait_entered(b"inflight")

    closing = asyncio.create_task(server.close(grace=HANG))
    async with asyncio.timeout(HANG):
        # An idle connection is closed at once; new connections are refused.
        with pytest.raises(ConnectionError):
            await idle.call(SERVICE, "Echo", b"x")
        with pytest.raises(ConnectionError):
            await Client.connect(path)
        # The busy connection stays for its call, but new requests on it are turned away.
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "Echo", b"late")
        assert info.value.code is Code.UNAVAILABLE
    assert not closing.done()

    gates.release[b"inflight"].set()
    async with asyncio.timeout(HANG):
        assert await call == b"released inflight"
        await closing
    assert server.connection_count == 0
    assert not Path(path).exists()
    await client.close()
    await idle.close()


async def test_close_cancels_calls_that_outlive_the_grace(tmp_path: Path) -> None:
    gates = Gates()
    gates.key(b"stuck")
    server = Server(make_handlers(gates))
    path = str(tmp_path / "grace.sock")
    await server.start(path)
    client = await Client.connect(path)
    call = asyncio.create_task(client.call(SERVICE, "Gate", b"stuck"))
    await gates.wait_entered(b"stuck")
    async with asyncio.timeout(HANG):
        await server.close(grace=0.05)
        with pytest.raises(RpcError) as info:
            await call
    assert info.value.code is Code.UNAVAILABLE and "shut down" in info.value.message
    assert server.connection_count == 0
    await client.close()


async def test_start_on_an_inherited_socket_and_connection_count(tmp_path: Path) -> None:
    path = str(tmp_path / "inherited.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    counts: list[int] = []
    server = Server(make_handlers(Gates()), on_connection_change=counts.append)
    await server.start(sock=listener)
    try:
        first = await Client.connect(path)
        second = await Client.connect(path)
        assert await first.call(SERVICE, "Echo", b"1") == b"1"
        assert await second.call(SERVICE, "Echo", b"2") == b"2"
        assert server.connection_count == 2
        await first.close()
        await second.close()
        async with asyncio.timeout(HANG):
            while server.connection_count:
                await asyncio.sleep(0.01)
        assert counts == [1, 2, 1, 0]
    finally:
        await server.close(grace=1.0)


async def test_start_arguments_are_checked(tmp_path: Path) -> None:
    server = Server({})
    with pytest.raises(ValueError):
        await server.start()
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError, match="unix stream socket"):
            await server.start(sock=datagram)
    finally:
        datagram.close()
    with pytest.raises(OSError, match="cannot listen for ttrpc"):
        await server.start(str(tmp_path / "no" / "such" / "dir.sock"))


async def test_a_live_socket_is_not_stolen_but_a_stale_one_is_replaced(
    served: Fixture, tmp_path: Path
) -> None:
    intruder = Server({})
    with pytest.raises(OSError, match="already listening"):
        await intruder.start(served.path)
    async with await Client.connect(served.path) as client:
        assert await client.call(SERVICE, "Echo", b"still mine") == b"still mine"

    stale = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(stale)  # bound but never listening: what a crashed daemon leaves behind
    leftover.close()
    successor = Server(make_handlers(Gates()))
    await successor.start(stale)
    try:
        async with await Client.connect(stale) as client:
            assert await client.call(SERVICE, "Echo", b"new owner") == b"new owner"
    finally:
        await successor.close(grace=1.0)


async def test_concurrent_close_calls_both_wait(tmp_path: Path) -> None:
    gates = Gates()
    gates.key(b"busy")
    server = Server(make_handlers(gates))
    path = str(tmp_path / "twice.sock")
    await server.start(path)
    client = await Client.connect(path)
    call = asyncio.create_task(client.call(SERVICE, "Gate", b"busy"))
    await gates.wait_entered(b"busy")
    first = asyncio.create_task(server.close(grace=HANG))
    second = asyncio.create_task(server.close(grace=HANG))
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    gates.release[b"busy"].set()
    async with asyncio.timeout(HANG):
        await asyncio.gather(first, second)
        assert await call == b"released busy"
    await client.close()
