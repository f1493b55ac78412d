"""Hostile input on the ttrpc socket of a live daemon.

The daemon is started as containerd starts it (`start`, then the task API over its real unix socket; the events go
to a ttrpc server of our own standing in for containerd's events service, as in test_daemon.py), with one real
guest running. Then, one connection each: oversized frames (above the 4 MiB docs/protocol.md names, and with the
reserved length byte set), truncated frames, bad protobuf, unknown services and methods, a flood of streams, a
client that never reads while the daemon has answers for it, a client that sends half a frame and stalls, and many
connections at once.

What must hold: every bad connection is answered with the protocol's status where it has one, or closed, alone; a
connection opened before the abuse keeps working throughout; the running task still answers State and exits with
its status when killed; the daemon's fds and threads come back to their baseline and its RSS stays near it
(lab/soak.py ``sample``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from lab.soak import record, sample, size, threads
from tests.integration.test_daemon import V2, _call, _connect, shim, sink  # noqa: F401 (fixtures)
from wasm_shim.shim.protos import task_pb2, task_types_pb2
from wasm_shim.shim.ttrpc import Code, RpcError
from wasm_shim.shim.ttrpc.connection import FRAME_REQUEST, FRAME_RESPONSE, MAX_MESSAGE_SIZE
from wasm_shim.shim.ttrpc.server import MAX_CALLS_PER_CONNECTION
from wasm_shim.shim.ttrpc.wire import decode_response, encode_request

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.asyncio, pytest.mark.timeout(600)]

HANG = 20.0  # seconds after which a wait is a hang
NS = [("containerd-namespace-ttrpc", "testns")]
RUNNING = task_types_pb2.Status.Value("RUNNING")


def frame(stream_id: int, body: bytes, frame_type: int = FRAME_REQUEST, flags: int = 0, length: int = -1) -> bytes:
    declared = len(body) if length < 0 else length
    return declared.to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes((frame_type, flags)) + body


def request(stream_id: int, method: str, payload: bytes = b"", service: str = V2) -> bytes:
    return frame(stream_id, encode_request(service, method, payload, 0, NS))


def state_payload(task_id: str) -> bytes:
    return task_pb2.StateRequest(id=task_id).SerializeToString()


class Raw:
    """One raw connection to the daemon: write bytes, read answers frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> Raw:
        return cls(*await asyncio.open_unix_connection(path))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, int, bytes]:
        """(stream id, status code, payload) of the next response frame."""
        async with asyncio.timeout(HANG):
            header = await self.reader.readexactly(10)
            assert header[8] == FRAME_RESPONSE
            response = decode_response(await self.reader.readexactly(int.from_bytes(header[:4], "big")))
        code = response.status.code if response.status is not None else 0
        return int.from_bytes(header[4:8], "big"), code, response.payload

    async def closed_by_daemon(self) -> bool:
        async with asyncio.timeout(HANG):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.transport.abort()


async def settled(pid: int, baseline: dict[str, int]) -> dict[str, int]:
    """The daemon's sample once its fds and threads are back to the baseline (bounded wait), else the last one."""
    deadline = time.monotonic() + HANG
    now = sample(pid)
    while time.monotonic() < deadline and (now["fds"] > baseline["fds"] or now["threads"] > baseline["threads"]):
        await asyncio.sleep(0.2)
        now = sample(pid)
    return now


async def test_hostile_clients_are_closed_alone_and_the_daemon_and_its_task_keep_going(shim, sink, guests):  # noqa: F811
    bundle = shim.bundle("victim", guests / "sleep.wasm", args=["/app.wasm", "1"])
    shim.start("victim", bundle)
    path = shim.address.removeprefix("unix://")
    good = await _connect(shim)
    pid = shim.daemon_pid
    tried: list[str] = []
    started = time.monotonic()
    try:
        await _call(good, "Create", task_pb2.CreateTaskRequest(id="victim", bundle=str(bundle)))
        await _call(good, "Start", task_pb2.StartRequest(id="victim"))
        waited = asyncio.ensure_future(_call(good, "Wait", task_pb2.WaitRequest(id="victim"), task_pb2.WaitResponse))

        async def still_serving() -> None:
            state = await _call(good, "State", task_pb2.StateRequest(id="victim"), task_pb2.StateResponse)
            assert state.status == RUNNING

        await still_serving()
        # Warm up what the daemon starts once and keeps (the epoch ticker on the first kill; wasmtime's tokio
        # threads on a guest's first sleep and kill): a guest run, killed and deleted before the baseline, so
        # the comparison afterwards counts only what the hostile clients left behind.
        warm = shim.bundle("warm", guests / "sleep.wasm", args=["/app.wasm", "1"])
        await _call(good, "Create", task_pb2.CreateTaskRequest(id="warm", bundle=str(warm)))
        await _call(good, "Start", task_pb2.StartRequest(id="warm"))
        warm_exit = asyncio.ensure_future(_call(good, "Wait", task_pb2.WaitRequest(id="warm"), task_pb2.WaitResponse))
        await asyncio.sleep(1.5)  # past its first one-second sleep
        await _call(good, "Kill", task_pb2.KillRequest(id="warm", signal=15))
        async with asyncio.timeout(HANG):
            await warm_exit
        await _call(good, "Delete", task_pb2.DeleteRequest(id="warm"))
        baseline = sample(pid)

        # 1. Oversized: a 5 MiB request is discarded and answered RESOURCE_EXHAUSTED; the connection stays.
        raw = await Raw.open(path)
        body = encode_request(V2, "State", b"x" * (5 << 20), 0, NS)
        await raw.send(frame(1, body))
        stream_id, code, _ = await raw.answer()
        assert (stream_id, code) == (1, Code.RESOURCE_EXHAUSTED)
        await raw.send(request(3, "State", state_payload("victim")))
        assert (await raw.answer())[:2] == (3, Code.OK)
        raw.close()
        # ... a length with the reserved first byte set (>= 16 MiB) is not ttrpc: closed without an answer.
        raw = await Raw.open(path)
        await raw.send(frame(1, b"", length=MAX_MESSAGE_SIZE * 8))
        assert await raw.closed_by_daemon()
        raw.close()
        tried.append("oversized 5 MiB and 32 MiB frames")
        await still_serving()

        # 2. Truncated: half a request, then EOF: the daemon closes the connection.
        raw = await Raw.open(path)
        whole = request(1, "State", state_payload("victim"))
        await raw.send(whole[: len(whole) // 2])
        raw.writer.write_eof()
        assert await raw.closed_by_daemon()
        raw.close()
        tried.append("truncated frame + EOF")

        # 3. Bad protobuf: an envelope that does not decode closes the connection; a payload that does not decode
        # is INVALID_ARGUMENT on a connection that stays.
        raw = await Raw.open(path)
        await raw.send(frame(1, b"\x0a\xff\xff\xff"))
        assert await raw.closed_by_daemon()
        raw.close()
        raw = await Raw.open(path)
        await raw.send(request(1, "State", b"\xff\xff\xff"))
        assert (await raw.answer())[:2] == (1, Code.INVALID_ARGUMENT)
        # 4. Unknown services and methods: UNIMPLEMENTED, same connection.
        await raw.send(request(3, "Frobnicate") + request(5, "State", b"", service="evil.v1.Service"))
        answers = sorted([(await raw.answer())[:2] for _ in range(2)])
        assert answers == [(3, Code.UNIMPLEMENTED), (5, Code.UNIMPLEMENTED)]
        await raw.send(request(7, "State", state_payload("victim")))
        assert (await raw.answer())[:2] == (7, Code.OK)
        raw.close()
        tried.append("bad envelope, bad payload, unknown service and method")
        await still_serving()

        # 5. A flood of streams on one connection: Waits that cannot finish while the task runs. The daemon runs
        # at most MAX_CALLS_PER_CONNECTION of them and answers the rest RESOURCE_EXHAUSTED, at once.
        flood = size(3_000, 30_000)
        raw = await Raw.open(path)
        wait_payload = task_pb2.WaitRequest(id="victim").SerializeToString()
        # Written while the answers are read: a client that only wrote would stall on the daemon's backpressure.
        sending = asyncio.ensure_future(raw.send(b"".join(request(2 * i + 1, "Wait", wait_payload)
                                                          for i in range(flood))))
        refused = 0
        for _ in range(flood - MAX_CALLS_PER_CONNECTION):
            _, code, _ = await raw.answer()
            assert code == Code.RESOURCE_EXHAUSTED
            refused += 1
        async with asyncio.timeout(HANG):
            await sending
        raw.close()
        tried.append(f"{flood} Wait streams on one connection ({refused} refused)")
        await still_serving()

        # 6. A client that never reads while the daemon has answers for it: the daemon stops reading from it
        # (backpressure) instead of buffering, and serves others meanwhile.
        raw = await Raw.open(path)
        raw.writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        states = size(20_000, 200_000)
        one = request(1, "State", state_payload("victim"))
        chunk = b"".join(one[:4] + (2 * i + 1).to_bytes(4, "big") + one[8:] for i in range(1000))
        for sent in range(0, states, 1000):
            raw.writer.write(chunk if sent == 0 else _renumber(chunk, sent))
            if raw.writer.transport.get_write_buffer_size() > 8 << 20:
                break  # the daemon stopped reading: it is not buffering our requests either
            await asyncio.sleep(0)
        await still_serving()
        during = sample(pid)
        assert during["rss_kib"] <= baseline["rss_kib"] + (64 << 10), (baseline, during)
        raw.close()
        tried.append("a client sending State requests and never reading the answers")

        # 7. Half a frame, then silence: nothing is held but that connection.
        stalled = await Raw.open(path)
        await stalled.send(whole[:5])
        await still_serving()
        tried.append("half a header, then a stall")

        # 8. Many connections at once, each a full call.
        many = size(300, 2_000)

        async def one_call(i: int) -> int:
            conn = await Raw.open(path)
            try:
                await conn.send(request(1, "State", state_payload("victim")))
                return (await conn.answer())[1]
            finally:
                conn.close()

        async with asyncio.timeout(HANG * 3):
            codes = await asyncio.gather(*(one_call(i) for i in range(many)))
        assert set(codes) == {Code.OK}
        tried.append(f"{many} connections at once")
        stalled.close()
        await still_serving()

        # The task still exits with its status: SIGTERM -> 128 + 15.
        await _call(good, "Kill", task_pb2.KillRequest(id="victim", signal=15))
        async with asyncio.timeout(HANG):
            assert (await waited).exit_status == 143
        await _call(good, "Delete", task_pb2.DeleteRequest(id="victim"))
        with pytest.raises(RpcError) as gone:
            await _call(good, "State", task_pb2.StateRequest(id="victim"))
        assert gone.value.code == Code.NOT_FOUND

        after = await settled(pid, baseline)
        assert after["fds"] <= baseline["fds"], (baseline, after)
        assert after["threads"] <= baseline["threads"], (baseline, after, threads(pid))
        assert after["rss_kib"] <= baseline["rss_kib"] + (64 << 10), (baseline, after)  # allocator slack only
        os.kill(pid, 0)  # the daemon is alive
    except BaseException:
        log = Path(path + ".log")
        print("--- daemon log (tail)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        raise
    finally:
        await good.close()
    record("daemon socket: hostile clients", tried="; ".join(tried),
           held="each bad connection answered (RESOURCE_EXHAUSTED / INVALID_ARGUMENT / UNIMPLEMENTED) or closed "
                "alone; an earlier connection and a running task kept going; task exited 143 on SIGTERM",
           before=baseline, after=after, seconds=time.monotonic() - started)


def _renumber(chunk: bytes, offset: int) -> bytes:
    """The 1000 State frames of ``chunk`` with stream ids moved up by ``2 * offset`` (ids must increase)."""
    out = bytearray(chunk)
    pos = 0
    while pos < len(out):
        length = int.from_bytes(out[pos : pos + 4], "big")
        stream_id = int.from_bytes(out[pos + 4 : pos + 8], "big") + 2 * offset
        out[pos + 4 : pos + 8] = stream_id.to_bytes(4, "big")
        pos += 10 + length
    return bytes(out)


async def test_calls_per_connection_are_capped_and_freed(tmp_path):
    """The cap on its own (a Server with a cap of 4): refusals are immediate, per connection, and lift as calls end."""
    from wasm_shim.shim.ttrpc import Client, Server

    release = asyncio.Event()

    async def hold(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
        await release.wait()
        return payload

    server = Server({("t.v1.S", "Hold"): hold}, max_calls_per_connection=4)
    path = str(tmp_path / "cap.sock")
    await server.start(path)
    try:
        async with await Client.connect(path) as busy, await Client.connect(path) as other:
            held = [asyncio.ensure_future(busy.call("t.v1.S", "Hold", str(i).encode())) for i in range(4)]
            await asyncio.sleep(0)
            with pytest.raises(RpcError) as info:
                await busy.call("t.v1.S", "Hold", b"fifth", timeout=HANG)
            assert info.value.code == Code.RESOURCE_EXHAUSTED and "at most 4" in info.value.message
            other_call = asyncio.ensure_future(other.call("t.v1.S", "Hold", b"other", timeout=HANG))
            release.set()
            async with asyncio.timeout(HANG):
                assert await asyncio.gather(*held) == [b"0", b"1", b"2", b"3"]
                assert await other_call == b"other"
                assert await busy.call("t.v1.S", "Hold", b"again") == b"again"
    finally:
        await server.close(grace=1.0)
    record("ttrpc server: calls per connection capped", tried="5 held calls on a connection capped at 4, "
           "one on another connection", held="the 5th RESOURCE_EXHAUSTED at once; the other connection served; "
           "calls accepted again once the held ones ended")
