"""Coverage-guided fuzz targets for the ttrpc side of the daemon (atheris/libFuzzer).

Run as a program, one target per process (libFuzzer owns the process and exits it when done):

    python -m tests.fuzz.ttrpc_targets server|client|dispatch [libFuzzer flags: -runs=N -seed=S ...]

- ``server``: bytes, split into chunks where the input says, into ``Connection(Role.SERVER)``: the frame parser
  and stream-id bookkeeping. Checks the events' types and codes, odd increasing ids, that the same bytes give the
  same events however they are split, and the memory bound (one header plus one allowed body).
- ``client``: a client core with up to 7 calls outstanding (some abandoned) fed response bytes: one answer per
  call, none for abandoned or unknown ids.
- ``dispatch``: one request frame through the server core into the daemon's real handler table (shim/daemon/rpc.py, real
  protobuf decoding) over a real TaskService with the real wasmtime engine, whose bundle holds a real guest: every
  answer is bytes or a caller-error status, never INTERNAL/UNKNOWN (a crash inside the daemon).

Any other exception, a hang (-timeout) or memory beyond -rss_limit_mb is a finding: libFuzzer stops and writes the
input to -artifact_prefix. tests/unit/test_fuzz_atheris.py runs these at ``size(smoke, 1_000_000)``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["wasm_shim.shim.ttrpc", "wasm_shim.shim.daemon.rpc"]):
    from wasm_shim.shim.ttrpc.connection import (
        HEADER_LENGTH,
        Connection,
        ConnectionClosed,
        ProtocolError,
        RequestReceived,
        RequestRejected,
        ResponseReceived,
        Role,
        StreamIgnored,
    )
    from wasm_shim.shim.ttrpc.status import Code, RpcError
    from wasm_shim.shim.ttrpc.wire import encode_request

SERVER_CODES = {Code.RESOURCE_EXHAUSTED, Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED}
CALLER_CODES = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION,
                Code.UNIMPLEMENTED, Code.RESOURCE_EXHAUSTED, Code.PERMISSION_DENIED}


def _chunks(data: bytes, cuts: bytes) -> list[bytes]:
    points = sorted({c * len(data) // 256 for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


def _feed(conn: Connection, chunks: list[bytes]) -> list[Any]:
    events: list[Any] = []
    for chunk in chunks:
        events.extend(conn.receive_data(chunk))
        if conn.buffered_bytes > HEADER_LENGTH + conn.max_message_size:
            raise AssertionError(f"buffered {conn.buffered_bytes} bytes")
    return events


def server(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_size = 64 if fdp.ConsumeBool() else 4 << 20
    cuts = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    reference = _feed(Connection(Role.SERVER, max_size), [stream] if stream else [])
    conn = Connection(Role.SERVER, max_size)
    events = _feed(conn, _chunks(stream, cuts))
    if events != reference:
        raise AssertionError("events depend on the split")
    last = 0
    for i, event in enumerate(events):
        if isinstance(event, RequestReceived):
            if event.stream_id % 2 != 1 or event.stream_id <= last:
                raise AssertionError(f"stream id {event.stream_id} after {last}")
            last = event.stream_id
        elif isinstance(event, RequestRejected):
            if event.code not in SERVER_CODES:
                raise AssertionError(event)
            conn.send_error(event.stream_id, event.code, event.message)
        elif isinstance(event, ProtocolError):
            if i != len(events) - 1 or not conn.closed:
                raise AssertionError("events after a ProtocolError")
        elif not isinstance(event, StreamIgnored):
            raise AssertionError(event)
    if not conn.closed:
        end = conn.receive_data(b"")
        if len(end) != 1 or not isinstance(end[0], ConnectionClosed):
            raise AssertionError(end)


def client(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    conn = Connection(Role.CLIENT, 64 if fdp.ConsumeBool() else 4 << 20)
    sent = [conn.send_request("s", "m")[0] for _ in range(fdp.ConsumeIntInRange(0, 7))]
    abandoned = {s for s in sent if fdp.ConsumeBool()}
    for s in abandoned:
        conn.abandon(s)
    cuts = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
    events = _feed(conn, _chunks(fdp.ConsumeBytes(fdp.remaining_bytes()), cuts))
    answered: set[int] = set()
    for event in events:
        if isinstance(event, ResponseReceived):
            if event.stream_id not in sent or event.stream_id in abandoned or event.stream_id in answered:
                raise AssertionError(event)
            answered.add(event.stream_id)
        elif not isinstance(event, StreamIgnored | ProtocolError):
            raise AssertionError(event)


METHODS = ["Create", "Start", "Wait", "Kill", "Delete", "State", "Pids", "Connect", "CloseIO", "Shutdown", "Stats",
           "Pause", "Resume", "Exec", "Checkpoint", "ResizePty", "Update", "Nope"]


class Dispatch:
    """The daemon's handler table over a real TaskService and wasmtime engine, in a scratch directory."""

    def __init__(self, guest: Path) -> None:
        import os

        from wasm_shim.shim.engines.wasmtime import WasmtimeEngine
        from wasm_shim.shim.protos import task_pb2

        # Coverage feedback from the dispatch path itself (not from protobuf or wasmtime, which are not ours).
        with atheris.instrument_imports(include=["wasm_shim.shim.daemon.rpc", "wasm_shim.shim.daemon.task_service",
                                                 "wasm_shim.shim.daemon.lifecycle", "wasm_shim.shim.daemon.identifiers",
                                                 "wasm_shim.shim.daemon.bundle", "wasm_shim.shim.daemon.stdio",
                                                 "wasm_shim.shim.daemon.events", "wasm_shim.shim.ttrpc.server"]):
            from wasm_shim.shim.daemon.events import EventQueue
            from wasm_shim.shim.daemon.rpc import task_handlers
            from wasm_shim.shim.daemon.task_service import TaskService
            from wasm_shim.shim.ttrpc.server import CallContext, _namespace

        self.task_pb2, self.CallContext, self.namespace_of = task_pb2, CallContext, _namespace
        self.dir = Path(tempfile.mkdtemp(prefix="wsh-fuzz-"))
        os.chdir(self.dir)  # relative paths the fuzzer invents land here
        bundle = self.dir / "b"
        (bundle / "rootfs").mkdir(parents=True)
        (bundle / "rootfs" / "app.wasm").write_bytes(guest.read_bytes())
        (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "process": {"args": ["/app.wasm"], "cwd": "/"},'
                                            ' "root": {"path": "rootfs"}}')
        self.bundle = str(bundle)
        self.loop = asyncio.new_event_loop()

        async def sink(event: object) -> None:
            return None

        async def setup() -> Any:
            events = EventQueue(sink)
            events.start()
            self.service = TaskService([WasmtimeEngine(cache_dir=str(self.dir / "cache"))], events)
            return task_handlers(self.service, "fuzz")

        self.handlers = self.loop.run_until_complete(setup())

    def payload(self, fdp: Any, method: str) -> bytes:
        """Mostly a real task request whose fields come from the input; sometimes raw bytes."""
        if fdp.ConsumeIntInRange(0, 3) == 0:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        ids = ["t1", "t2", "", "../t1", "a/b", "t\x00", "..", fdp.ConsumeUnicodeNoSurrogates(8)]
        task_id = ids[fdp.ConsumeIntInRange(0, len(ids) - 1)]
        exec_id = ["", "", "e1", "../e"][fdp.ConsumeIntInRange(0, 3)]
        pb = self.task_pb2
        if method == "Create":
            bundle = [self.bundle, "", "/", fdp.ConsumeUnicodeNoSurrogates(8)][fdp.ConsumeIntInRange(0, 3)]
            out = ["", f"file://{self.dir}/out", "binary:///nonexistent"][fdp.ConsumeIntInRange(0, 2)]
            return pb.CreateTaskRequest(id=task_id, bundle=bundle, stdout=out, stderr=out,
                                        terminal=fdp.ConsumeBool()).SerializeToString()
        if method == "Kill":
            return pb.KillRequest(id=task_id, exec_id=exec_id, signal=fdp.ConsumeIntInRange(0, 70),
                                  all=fdp.ConsumeBool()).SerializeToString()
        if method in ("Start", "Wait", "Delete", "State", "CloseIO"):
            return pb.StateRequest(id=task_id, exec_id=exec_id).SerializeToString()  # same fields 1, 2
        return pb.StateRequest(id=task_id).SerializeToString()

    def __call__(self, data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        method = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
        payload = self.payload(fdp, method)
        ns = ["fuzz", "other", ""][fdp.ConsumeIntInRange(0, 2)]
        body = encode_request("containerd.task.v2.Task", method, payload, 0,
                              [("containerd-namespace-ttrpc", ns)] if ns else [])
        frame = len(body).to_bytes(4, "big") + b"\x00\x00\x00\x01\x01\x00" + body
        self.loop.run_until_complete(self._dispatch(frame))

    async def _dispatch(self, frame: bytes) -> None:
        for event in Connection(Role.SERVER).receive_data(frame):
            if not isinstance(event, RequestReceived):
                continue
            handler = self.handlers.get((event.service, event.method))
            if handler is None:
                continue
            ctx = self.CallContext(event.service, event.method, event.metadata, self.namespace_of(event.metadata),
                                   None, None, event.stream_id)
            try:
                answer = await asyncio.wait_for(handler(event.payload, ctx), 0.05 if event.method == "Wait" else 10)
                if not isinstance(answer, bytes):
                    raise AssertionError(answer)
            except RpcError as exc:
                if exc.code not in CALLER_CODES:
                    raise AssertionError(f"{event.method}: {exc}") from None
            except TimeoutError:
                if event.method != "Wait":
                    raise
        # Keep the table small: a task that ran is deleted, so the fuzzer keeps reaching Create.
        for task in list(self.service.tasks.values()):
            if task.exited.is_set():
                await self.service.delete(self.task_pb2.DeleteRequest(id=task.id))


def main() -> None:
    target = sys.argv.pop(1)
    if target == "dispatch":
        guest = Path(sys.argv.pop(1))
        one = Dispatch(guest)
    else:
        one = {"server": server, "client": client}[target]
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
