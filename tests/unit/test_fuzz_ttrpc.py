"""Hostile input on the ttrpc socket, without the socket: hypothesis over the sans-IO core and
the task dispatcher.

Three targets, each fed byte strings hypothesis builds from well-formed pieces (frames, envelopes, protobuf task
requests) mixed with raw bytes, lying lengths and arbitrary splits:

- the server core (`Connection(Role.SERVER)`): frame parser and stream-id bookkeeping;
- the client core (`Connection(Role.CLIENT)`): outstanding and abandoned calls against fuzzed responses;
- the dispatcher: bytes -> server core -> the daemon's real handler table (shim/daemon/rpc.py, real protobuf decoding)
  -> a real TaskService with the real wasmtime engine and a real bundle, so fuzzed Creates can create and start a
  real guest and fuzzed Kill/Delete/State/... reach it.

What must hold for every input: no exception but the documented ones (the core never raises from
`receive_data`; a handler answers bytes or `RpcError` with a code that names the caller's mistake, never
INTERNAL/UNKNOWN, which would mean a crash inside the daemon), no hang (pytest-timeout and bounded waits), and
bounded memory: the core never holds more than one header plus one allowed body, whatever the lengths claim.

Sizes: `size(300, 10_000)` examples per target (`make test` / `make soak`): hypothesis is the structure-aware half;
the million inputs run through the coverage-guided atheris targets (tests/fuzz/ttrpc_targets.py). Smoke runs are
derandomized and no hypothesis database is written (nothing lands in the repository).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.soak import FULL, record, sample, size
from wasm_shim.shim.protos import task_pb2
from wasm_shim.shim.ttrpc.connection import (
    FRAME_DATA,
    FRAME_REQUEST,
    FRAME_RESPONSE,
    HEADER_LENGTH,
    MAX_MESSAGE_SIZE,
    Connection,
    ConnectionClosed,
    Event,
    ProtocolError,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    Role,
    StreamIgnored,
)
from wasm_shim.shim.ttrpc.status import Code, RpcError
from wasm_shim.shim.ttrpc.wire import encode_request, encode_response

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600 if FULL else 300)]

# hypothesis builds structured inputs (whole frames, envelopes, task messages) but pays ~10 ms per example here;
# the volume (the million) comes from the coverage-guided atheris targets (tests/fuzz, test_fuzz_atheris.py).
EXAMPLES = size(300, 10_000)
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=not FULL,  # smoke: the same inputs every run; full: fresh ones
    database=None,  # no .hypothesis/ directory in the worktree
    deadline=None,  # tests never judge wall-clock speed; hangs are pytest-timeout's
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

# --- strategies -------------------------------------------------------------------------------------------

SERVICES = ("containerd.task.v2.Task", "containerd.task.v3.Task")
METHODS = ("Create", "Start", "Wait", "Kill", "Delete", "State", "Pids", "Connect", "CloseIO", "Shutdown", "Stats",
           "Pause", "Resume", "Exec", "Checkpoint", "ResizePty", "Update")

stream_ids = st.one_of(st.integers(0, 16), st.integers(0, 0xFFFFFFFF), st.sampled_from([1, 3, 0xFFFFFFFF]))
metadata = st.lists(st.tuples(st.sampled_from(["containerd-namespace-ttrpc", "x"]) | st.text(max_size=8),
                              st.text(max_size=8)), max_size=3)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A ttrpc Request envelope (well-formed), or bytes that look like one."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=64))
    return encode_request(
        draw(st.sampled_from(SERVICES) | st.text(max_size=12)),
        draw(st.sampled_from(METHODS) | st.text(max_size=12)),
        draw(st.binary(max_size=48)),
        draw(st.integers(-(1 << 63), (1 << 63) - 1) | st.just(0)),
        draw(metadata),
    )


@st.composite
def frames(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> bytes:
    """One frame: mostly honest headers, sometimes lying lengths, odd types and flags, or plain garbage."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=32))
    body = draw(bodies)
    length = len(body)
    if kind == 1:  # a length that lies (too short, too long, oversized, reserved byte set)
        length = draw(st.integers(0, 0xFFFFFFFF) | st.sampled_from([0, MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE + 1,
                                                                     (1 << 24) - 1, 1 << 24]))
    frame_type = draw(st.sampled_from([FRAME_REQUEST] * 6 + [FRAME_RESPONSE, FRAME_DATA]) | st.integers(0, 255))
    flags = draw(st.sampled_from([0] * 6 + [1, 2, 4]) | st.integers(0, 255))
    header = length.to_bytes(4, "big") + draw(stream_ids).to_bytes(4, "big") + bytes((frame_type, flags))
    return header + body


def splits(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` in pieces at the given cut points (any split must parse the same: rule 1)."""
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[last:cut]
        last = cut
    yield data[last:]


def feed(conn: Connection, chunks: Iterator[bytes] | list[bytes]) -> list[Event]:
    """Feed non-empty chunks and check the memory bound after each one."""
    events: list[Event] = []
    for chunk in chunks:
        if chunk:
            events.extend(conn.receive_data(chunk))
            # Memory bound: never more than one header plus one allowed body, whatever the lengths claimed.
            assert conn.buffered_bytes <= HEADER_LENGTH + conn.max_message_size
    return events


class Rate:
    """Counts inputs and time for the record line."""

    def __init__(self) -> None:
        self.count = 0
        self.started = time.monotonic()

    def tick(self) -> None:
        self.count += 1

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def tried(self, what: str) -> str:
        return f"{self.count} {what} ({self.count / max(self.seconds, 1e-9):.0f} inputs/s)"


# --- the server core ----------------------------------------------------------------------------------------


def test_fuzz_server_core() -> None:
    rate = Rate()
    before = sample(os.getpid())

    @SETTINGS
    @given(
        stream=st.lists(frames(envelopes()), max_size=6).map(b"".join),
        cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
        max_size=st.sampled_from([64, MAX_MESSAGE_SIZE]),
        eof=st.booleans(),
    )
    def check(stream: bytes, cuts: list[int], max_size: int, eof: bool) -> None:
        rate.tick()
        whole = Connection(Role.SERVER, max_size)
        reference = feed(whole, [stream])
        pieces = Connection(Role.SERVER, max_size)
        events = feed(pieces, splits(stream, cuts))
        assert events == reference, "the events depend on how the bytes were split"

        last_accepted = 0
        for i, event in enumerate(events):
            assert isinstance(event, RequestReceived | RequestRejected | StreamIgnored | ProtocolError), event
            if isinstance(event, RequestReceived):
                assert event.stream_id % 2 == 1 and event.stream_id > last_accepted
                last_accepted = event.stream_id
                assert len(event.payload) <= max_size
            elif isinstance(event, RequestRejected):
                assert event.code in (Code.RESOURCE_EXHAUSTED, Code.INVALID_ARGUMENT, Code.UNIMPLEMENTED)
                # The answer the transport writes for it is a well-formed, small frame.
                assert len(pieces.send_error(event.stream_id, event.code, event.message)) < 20 << 10
            elif isinstance(event, ProtocolError):
                assert i == len(events) - 1, "events after a ProtocolError"
                assert pieces.closed and pieces.buffered_bytes == 0
                assert pieces.receive_data(b"\x00" * 20) == []
        if eof and not pieces.closed:
            closed = pieces.receive_data(b"")
            assert len(closed) == 1 and isinstance(closed[0], ConnectionClosed)
            assert pieces.closed

    check()
    after = sample(os.getpid())
    record("fuzz: ttrpc server core (frames, stream ids)", tried=rate.tried("byte streams, any split"),
           held="no exception, split-independent events, odd increasing ids, buffer <= header + max body",
           before={"rss_kib": before["rss_kib"]}, after={"rss_kib": after["rss_kib"]}, seconds=rate.seconds)


# --- the client core ----------------------------------------------------------------------------------------


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=48))
    return encode_response(draw(st.sampled_from(list(Code)) | st.integers(0, 40)), draw(st.text(max_size=8)),
                           draw(st.binary(max_size=32)))


@st.composite
def response_frames(draw: st.DrawFn, ids: list[int]) -> bytes:
    body = draw(responses())
    length = len(body) if draw(st.integers(0, 7)) else draw(st.integers(0, (1 << 24) + 1))
    stream_id = draw(st.sampled_from(ids) | stream_ids) if ids else draw(stream_ids)
    frame_type = draw(st.sampled_from([FRAME_RESPONSE] * 6 + [FRAME_REQUEST, FRAME_DATA]) | st.integers(0, 255))
    flags = draw(st.integers(0, 7))
    return length.to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes((frame_type, flags)) + body


def test_fuzz_client_core() -> None:
    rate = Rate()

    @SETTINGS
    @given(data=st.data(), calls=st.integers(0, 6), max_size=st.sampled_from([64, MAX_MESSAGE_SIZE]))
    def check(data: st.DataObject, calls: int, max_size: int) -> None:
        rate.tick()
        conn = Connection(Role.CLIENT, max_size)
        sent = [conn.send_request("s", "m", b"")[0] for _ in range(calls)]
        abandoned = set(data.draw(st.lists(st.sampled_from(sent), unique=True))) if sent else set()
        for stream_id in abandoned:
            conn.abandon(stream_id)
        stream = b"".join(data.draw(st.lists(response_frames(sent), max_size=6)))
        events = feed(conn, splits(stream, data.draw(st.lists(st.integers(0, 1 << 12), max_size=4))))
        answered: set[int] = set()
        for i, event in enumerate(events):
            assert isinstance(event, ResponseReceived | StreamIgnored | ProtocolError), event
            if isinstance(event, ResponseReceived):
                assert event.stream_id in sent and event.stream_id not in abandoned
                assert event.stream_id not in answered, "two answers for one call"
                answered.add(event.stream_id)
            elif isinstance(event, ProtocolError):
                assert i == len(events) - 1 and conn.closed
        assert conn.outstanding == frozenset(set(sent) - abandoned - answered) or conn.closed

    check()
    record("fuzz: ttrpc client core (outstanding/abandoned calls)", tried=rate.tried("response streams"),
           held="no exception, one answer per call, none for abandoned or unknown ids, buffer bounded",
           seconds=rate.seconds)


# --- the dispatcher with real protobuf decoding ----------------------------------------------------------


def _scalar(field: FieldDescriptor, strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.sampled_from([0, 9, 15, 19, -1]) | st.integers(-(1 << 31), (1 << 31) - 1)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from([0, 9, 15]) | st.integers(0, (1 << 32) - 1)
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, (1 << 64) - 1)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=32)
    raise AssertionError(f"no strategy for {field.full_name}")


@st.composite
def filled(draw: st.DrawFn, desc: Descriptor, strings: dict[str, st.SearchStrategy[str]], depth: int = 0) -> dict:
    """Field values for a message of type ``desc`` (nested messages to depth 2), as a dict for ``Message(**d)``."""
    values: dict[str, Any] = {}
    for field in desc.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or field.message_type.GetOptions().map_entry:
                continue  # maps: no task request we serve reads one
            one = filled(field.message_type, strings, depth + 1)
            values[field.name] = draw(st.lists(one, max_size=2)) if _repeated(field) else draw(one)
        else:
            one = _scalar(field, strings.get(field.name, st.text(max_size=12)))
            values[field.name] = draw(st.lists(one, max_size=2)) if _repeated(field) else draw(one)
    return values


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


REQUEST_TYPES: dict[str, type[Message]] = {
    "Create": task_pb2.CreateTaskRequest, "Start": task_pb2.StartRequest, "Wait": task_pb2.WaitRequest,
    "Kill": task_pb2.KillRequest, "Delete": task_pb2.DeleteRequest, "State": task_pb2.StateRequest,
    "Pids": task_pb2.PidsRequest, "Connect": task_pb2.ConnectRequest, "CloseIO": task_pb2.CloseIORequest,
    "Shutdown": task_pb2.ShutdownRequest, "Stats": task_pb2.StatsRequest, "Pause": task_pb2.PauseRequest,
    "Resume": task_pb2.ResumeRequest, "Exec": task_pb2.ExecProcessRequest,
    "Checkpoint": task_pb2.CheckpointTaskRequest, "ResizePty": task_pb2.ResizePtyRequest,
    "Update": task_pb2.UpdateTaskRequest,
}
# Codes that name the caller's mistake or the task's state. INTERNAL and UNKNOWN would mean the daemon crashed on
# the input.
CALLER_CODES = {Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION,
                Code.UNIMPLEMENTED, Code.RESOURCE_EXHAUSTED, Code.PERMISSION_DENIED}
TASK_IDS = ["t1", "t2", "", "../t1", "a/b", "t\x00", ".", "..", "x" * 200]


def test_fuzz_task_dispatcher(guests: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wasm_shim.shim.daemon.events import Envelope as TaskEvent
    from wasm_shim.shim.daemon.events import EventQueue
    from wasm_shim.shim.daemon.rpc import task_handlers
    from wasm_shim.shim.daemon.task_service import TaskService
    from wasm_shim.shim.engines.wasmtime import WasmtimeEngine

    monkeypatch.chdir(tmp_path)  # a relative bundle or FIFO path the fuzzer invents lands here
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "rootfs" / "app.wasm").write_bytes((guests / "hello.wasm").read_bytes())
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2", "process": {"args": ["/app.wasm"], "cwd": "/"},'
                                        ' "root": {"path": "rootfs"}}')
    out = tmp_path / "out.log"
    # Paths the fuzzer may name, all inside tmp_path: it must not append to host files or run host programs.
    strings = {
        "id": st.sampled_from(TASK_IDS) | st.text(max_size=8),
        "exec_id": st.sampled_from(["", "", "", "e1", "../e", "e/1", "e\x00"]),
        "bundle": st.sampled_from([str(bundle), str(bundle), "", "/", str(tmp_path / "none")]) | st.text(max_size=8),
        "stdin": st.sampled_from(["", str(tmp_path / "in-fifo")]),
        "stdout": st.sampled_from(["", f"file://{out}", "binary:///nonexistent/logger"]),
        "stderr": st.sampled_from(["", f"file://{out}"]),
        "type_url": st.sampled_from(["", "runtimeoptions.v1.Options", "x"]) | st.text(max_size=8),
    }
    rate = Rate()
    delivered: list[TaskEvent] = []

    async def sink(event: TaskEvent) -> None:  # the receiving end of the event stream, recording it
        delivered.append(event)

    loop = asyncio.new_event_loop()
    engine = WasmtimeEngine(cache_dir=str(tmp_path / "cache"))
    events = EventQueue(sink)
    service: TaskService | None = None

    async def setup() -> dict[tuple[str, str], Any]:
        nonlocal service
        events.start()
        service = TaskService([engine], events)
        return task_handlers(service, "fuzz")

    handlers = loop.run_until_complete(setup())
    before = sample(os.getpid())

    async def dispatch(frame: bytes) -> list[tuple[str, Code | None]]:
        server = Connection(Role.SERVER)
        outcomes: list[tuple[str, Code | None]] = []
        for event in server.receive_data(frame):
            if not isinstance(event, RequestReceived):
                continue
            handler = handlers.get((event.service, event.method))  # the lookup Server._dispatch does
            if handler is None:
                outcomes.append((event.method, Code.UNIMPLEMENTED))
                continue
            from wasm_shim.shim.ttrpc.server import CallContext, _namespace

            ctx = CallContext(event.service, event.method, event.metadata, _namespace(event.metadata), None, None,
                              event.stream_id)
            try:
                # Wait blocks until the task exits by contract: a bounded wait, then the call is abandoned.
                answer = await asyncio.wait_for(handler(event.payload, ctx), 0.2 if event.method == "Wait" else 10)
                assert isinstance(answer, bytes)
                outcomes.append((event.method, None))
            except RpcError as exc:
                assert exc.code in CALLER_CODES, f"{event.method}: {exc}"
                assert exc.message
                outcomes.append((event.method, exc.code))
            except TimeoutError:
                assert event.method == "Wait", f"{event.method} did not answer within 10 s"
        return outcomes

    @SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        rate.tick()
        method = data.draw(st.sampled_from(METHODS) | st.text(max_size=8))
        request_type = REQUEST_TYPES.get(method)
        if request_type is not None and data.draw(st.integers(0, 4)):
            message = request_type(**data.draw(filled(request_type.DESCRIPTOR, strings)))
            if isinstance(message, task_pb2.CreateTaskRequest):
                # Never mount what the fuzzer names on this host: mounts have their own tests (test_grants.py).
                del message.rootfs[:]
            payload = message.SerializeToString()
        else:
            payload = data.draw(st.binary(max_size=64))
        meta = data.draw(st.sampled_from([[], [("containerd-namespace-ttrpc", "fuzz")],
                                          [("containerd-namespace-ttrpc", "other")]]))
        body = encode_request(data.draw(st.sampled_from(SERVICES)), method, payload, 0, meta)
        frame = len(body).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes((FRAME_REQUEST, 0)) + body
        loop.run_until_complete(dispatch(frame))

    try:
        check()
        # The daemon still serves: a real task created, run and deleted after the fuzzing.
        assert service is not None
        loop.run_until_complete(_one_clean_task(service, str(bundle)))
    finally:
        if service is not None:
            loop.run_until_complete(service.kill_all())
        loop.run_until_complete(events.close(timeout=5))
        engine.close()
        loop.close()
    after = sample(os.getpid())
    record("fuzz: task dispatcher (rpc.py + TaskService, real protobuf, real wasmtime)",
           tried=rate.tried("requests (fuzzed task messages and raw payloads)"),
           held="every answer is bytes or a caller-error status (never INTERNAL); a clean task runs afterwards",
           before={"rss_kib": before["rss_kib"], "threads": before["threads"], "fds": before["fds"]},
           after={"rss_kib": after["rss_kib"], "threads": after["threads"], "fds": after["fds"]},
           seconds=rate.seconds)


async def _one_clean_task(service: Any, bundle: str) -> None:
    for task_id in list(service.tasks):
        try:
            await service.kill(task_pb2.KillRequest(id=task_id, signal=9))
        except RpcError:
            pass
        await asyncio.wait_for(service.tasks[task_id].exited.wait(), 10) if service.tasks[task_id].lifecycle.live \
            else None
        await service.delete(task_pb2.DeleteRequest(id=task_id))
    await service.create(task_pb2.CreateTaskRequest(id="after", bundle=bundle), "fuzz")
    await service.start(task_pb2.StartRequest(id="after"))
    waited = await asyncio.wait_for(service.wait(task_pb2.WaitRequest(id="after")), 10)
    assert waited.exit_status == 0
    await service.delete(task_pb2.DeleteRequest(id="after"))
