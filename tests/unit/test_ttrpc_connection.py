"""The sans-IO ttrpc connection, driven with bytes only (no sockets, no event loop)."""

from __future__ import annotations

import pytest

from wasm_shim.shim.ttrpc import (
    MAX_MESSAGE_SIZE,
    Code,
    Connection,
    ConnectionClosed,
    LocalProtocolError,
    ProtocolError,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    Role,
    RpcError,
    StreamIgnored,
)
from wasm_shim.shim.ttrpc.connection import FRAME_DATA, FRAME_REQUEST, FRAME_RESPONSE
from wasm_shim.shim.ttrpc.wire import decode_response, encode_request, encode_response, field_bytes


def frame(stream_id: int, frame_type: int, data: bytes, flags: int = 0) -> bytes:
    return len(data).to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes((frame_type, flags)) + data


def request_frame(
    stream_id: int, service: str = "svc", method: str = "M", payload: bytes = b"", **kw: int
) -> bytes:
    return frame(stream_id, FRAME_REQUEST, encode_request(service, method, payload), **kw)


def error_of(reply: bytes) -> tuple[int, int, str]:
    """(stream id, status code, message) of a response frame."""
    assert reply[8] == FRAME_RESPONSE
    response = decode_response(reply[10:])
    assert response.status is not None
    return int.from_bytes(reply[4:8], "big"), response.status.code, response.status.message


def received(
    stream_id: int, payload: bytes = b"", service: str = "svc", method: str = "M"
) -> RequestReceived:
    return RequestReceived(stream_id, service, method, payload, 0, {})


# --- framing --------------------------------------------------------------------------------------------


def test_golden_request_frame() -> None:
    client = Connection(Role.CLIENT)
    stream_id, data = client.send_request(
        "svc",
        "M",
        b"\x01\x02",
        timeout_nano=1_000_000_000,
        metadata={"containerd-namespace-ttrpc": "default"},
    )
    assert stream_id == 1
    body = (
        b"\x0a\x03svc"  # field 1 service (LEN 3)
        b"\x12\x01M"  # field 2 method (LEN 1)
        b"\x1a\x02\x01\x02"  # field 3 payload (LEN 2)
        b"\x20\x80\x94\xeb\xdc\x03"  # field 4 timeout_nano (VARINT 1e9)
        b"\x2a\x25"  # field 5 metadata (LEN 37), a KeyValue:
        b"\x0a\x1acontainerd-namespace-ttrpc"  # field 1 key (LEN 26)
        b"\x12\x07default"  # field 2 value (LEN 7)
    )
    assert len(body) == 0x39
    # length 57 | stream id 1 | type 0x01 request | flags 0 (unary)
    header = b"\x00\x00\x00\x39\x00\x00\x00\x01\x01\x00"
    assert data == header + body


def test_request_split_byte_by_byte() -> None:
    server = Connection(Role.SERVER)
    data = request_frame(1, payload=b"hello")
    for byte in data[:-1]:
        assert server.receive_data(bytes([byte])) == []
    assert server.receive_data(data[-1:]) == [received(1, b"hello")]
    assert server.buffered_bytes == 0


def test_several_frames_in_one_chunk_and_every_split() -> None:
    stream = request_frame(1, payload=b"a") + request_frame(3, payload=b"b" * 40) + request_frame(5)
    expected = [received(1, b"a"), received(3, b"b" * 40), received(5)]
    assert Connection(Role.SERVER).receive_data(stream) == expected
    for cut in range(1, len(stream)):  # b"" would mean EOF
        server = Connection(Role.SERVER)
        assert server.receive_data(stream[:cut]) + server.receive_data(stream[cut:]) == expected


def test_stream_ids_are_odd_and_increase() -> None:
    client = Connection(Role.CLIENT)
    assert [client.send_request("s", "m")[0] for _ in range(4)] == [1, 3, 5, 7]
    assert client.outstanding == {1, 3, 5, 7}


def test_interleaved_streams_round_trip() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    wire = b""
    for payload in (b"one", b"two", b"three"):
        wire += client.send_request("svc", "M", payload)[1]
    requests = server.receive_data(wire)
    assert [e.stream_id for e in requests if isinstance(e, RequestReceived)] == [1, 3, 5]
    # The server answers in the order calls finish, not the order they came.
    answers = (
        server.send_response(5, b"THREE")
        + server.send_error(1, Code.NOT_FOUND, "no one")
        + server.send_response(3)
    )
    assert client.receive_data(answers) == [
        ResponseReceived(5, Code.OK, "", b"THREE"),
        ResponseReceived(1, Code.NOT_FOUND, "no one", b""),
        ResponseReceived(3, Code.OK, "", b""),
    ]
    assert client.outstanding == frozenset()


def test_metadata_is_grouped_by_key_in_order() -> None:
    server = Connection(Role.SERVER)
    body = encode_request(
        "svc", "M", b"", 42, [("a", "1"), ("containerd-namespace-ttrpc", "k8s.io"), ("a", "2")]
    )
    [event] = server.receive_data(frame(1, FRAME_REQUEST, body))
    assert event == RequestReceived(
        1, "svc", "M", b"", 42, {"a": ["1", "2"], "containerd-namespace-ttrpc": ["k8s.io"]}
    )


# --- oversized frames -----------------------------------------------------------------------------------


def test_oversized_request_is_discarded_and_answered() -> None:
    server = Connection(Role.SERVER, max_message_size=1024)
    length = 1 << 20
    header = length.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes((FRAME_REQUEST, 0))
    events = server.receive_data(header)
    assert len(events) == 1 and isinstance(events[0], RequestRejected)
    assert events[0].stream_id == 1 and events[0].code is Code.RESOURCE_EXHAUSTED
    assert "1048576" in events[0].message and "1024" in events[0].message
    stream_id, code, _ = error_of(server.send_error(events[0].stream_id, events[0].code, events[0].message))
    assert (stream_id, code) == (1, Code.RESOURCE_EXHAUSTED)
    # The body streams through without being kept.
    chunk = b"\xaa" * 4096
    for _ in range(length // len(chunk) - 1):
        assert server.receive_data(chunk) == []
        assert server.buffered_bytes == 0
    # The last piece of the oversized body arrives with the next, valid request: the connection is usable.
    assert server.receive_data(chunk + request_frame(3, payload=b"after")) == [received(3, b"after")]


def test_default_limit_is_four_mib() -> None:
    assert MAX_MESSAGE_SIZE == 4 * 1024 * 1024
    server = Connection(Role.SERVER)
    header = (MAX_MESSAGE_SIZE + 1).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes((FRAME_REQUEST, 0))
    [event] = server.receive_data(header)
    assert isinstance(event, RequestRejected) and event.code is Code.RESOURCE_EXHAUSTED


def test_reserved_length_byte_is_a_protocol_error() -> None:
    server = Connection(Role.SERVER)
    [event] = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(event, ProtocolError)
    assert "not speaking ttrpc" in event.message
    assert server.closed
    assert server.receive_data(request_frame(1)) == []


def test_send_request_refuses_oversized_and_keeps_the_id() -> None:
    client = Connection(Role.CLIENT, max_message_size=100)
    with pytest.raises(RpcError) as info:
        client.send_request("svc", "M", b"x" * 200)
    assert info.value.code is Code.RESOURCE_EXHAUSTED
    assert "exceeds maximum message size of 100" in info.value.message
    assert client.outstanding == frozenset()
    assert client.send_request("svc", "M", b"small")[0] == 1


def test_send_response_refuses_oversized() -> None:
    server = Connection(Role.SERVER, max_message_size=100)
    with pytest.raises(RpcError) as info:
        server.send_response(1, b"x" * 200)
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_send_error_clips_long_messages() -> None:
    server = Connection(Role.SERVER)
    _, code, message = error_of(server.send_error(1, Code.INTERNAL, "x" * 1_000_000))
    assert code == Code.INTERNAL
    assert len(message) < 20_000 and message.endswith("(truncated)")


def test_oversized_response_completes_the_call() -> None:
    client = Connection(Role.CLIENT, max_message_size=64)
    stream_id, _ = client.send_request("svc", "M")
    header = (1000).to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes((FRAME_RESPONSE, 0))
    [event] = client.receive_data(header + b"z" * 500)
    assert isinstance(event, ResponseReceived)
    assert event.status is Code.RESOURCE_EXHAUSTED and event.stream_id == stream_id
    assert client.outstanding == frozenset()
    assert client.receive_data(b"z" * 500) == []
    assert not client.closed


def test_max_message_size_must_fit_the_header() -> None:
    with pytest.raises(ValueError):
        Connection(Role.SERVER, max_message_size=1 << 24)
    with pytest.raises(ValueError):
        Connection(Role.SERVER, max_message_size=0)


# --- server-side rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [0, 2, 4])
def test_even_stream_id_is_rejected(bad_id: int) -> None:
    server = Connection(Role.SERVER)
    [event] = server.receive_data(request_frame(bad_id))
    assert isinstance(event, RequestRejected)
    assert (event.stream_id, event.code) == (bad_id, Code.INVALID_ARGUMENT)
    assert "odd" in event.message
    assert server.receive_data(request_frame(1)) == [received(1)]


def test_reused_or_decreasing_stream_id_is_rejected() -> None:
    server = Connection(Role.SERVER)
    assert server.receive_data(request_frame(5)) == [received(5)]
    for bad in (5, 3):
        [event] = server.receive_data(request_frame(bad, payload=b"ignored"))
        assert isinstance(event, RequestRejected)
        assert (event.stream_id, event.code) == (bad, Code.INVALID_ARGUMENT)
        assert "the last one was 5" in event.message
    assert server.receive_data(request_frame(7)) == [received(7)]


def test_streaming_request_is_unimplemented_and_its_data_ignored() -> None:
    server = Connection(Role.SERVER)
    data = (
        request_frame(1, service="svc", method="Subscribe", flags=0x02)  # remote open
        + frame(1, FRAME_DATA, b"\x01\x02", flags=0x00)
        + frame(1, FRAME_DATA, b"", flags=0x01 | 0x04)  # remote closed, no data
        + request_frame(3, service="svc", method="Tail", flags=0x01)  # remote closed
        + request_frame(5)
    )
    events = server.receive_data(data)
    assert [type(e) for e in events] == [
        RequestRejected,
        StreamIgnored,
        StreamIgnored,
        RequestRejected,
        RequestReceived,
    ]
    first, third = events[0], events[3]
    assert isinstance(first, RequestRejected) and isinstance(third, RequestRejected)
    assert first.code is Code.UNIMPLEMENTED and "svc/Subscribe" in first.message
    assert third.code is Code.UNIMPLEMENTED and third.stream_id == 3
    assert events[4] == received(5)


def test_oversized_data_frame_is_ignored_without_buffering() -> None:
    server = Connection(Role.SERVER, max_message_size=16)
    events = server.receive_data(frame(1, FRAME_DATA, b"d" * 1000) + request_frame(1))
    assert [type(e) for e in events] == [StreamIgnored, RequestReceived]


@pytest.mark.parametrize("frame_type", [0x00, 0x04, 0x7F, 0xFF])
def test_unknown_frame_type_is_a_protocol_error(frame_type: int) -> None:
    server = Connection(Role.SERVER)
    events = server.receive_data(request_frame(1) + frame(3, frame_type, b"xyz") + request_frame(5))
    assert events[0] == received(1)
    assert isinstance(events[1], ProtocolError) and f"0x{frame_type:02x}" in events[1].message
    assert len(events) == 2 and server.closed


def test_response_sent_to_a_server_is_a_protocol_error() -> None:
    [event] = Connection(Role.SERVER).receive_data(frame(1, FRAME_RESPONSE, encode_response(0)))
    assert isinstance(event, ProtocolError) and "response frame" in event.message


def test_undecodable_request_is_a_protocol_error() -> None:
    [event] = Connection(Role.SERVER).receive_data(frame(1, FRAME_REQUEST, b"\x0a\x10short"))
    assert isinstance(event, ProtocolError) and "undecodable request on stream 1" in event.message


def test_eof_between_and_inside_frames() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(request_frame(1))
    assert server.receive_data(b"") == [ConnectionClosed(partial_frame=False)]
    assert server.receive_data(b"") == []
    truncated = Connection(Role.SERVER)
    truncated.receive_data(request_frame(1)[:12])
    assert truncated.receive_data(b"") == [ConnectionClosed(partial_frame=True)]


# --- client-side rules ----------------------------------------------------------------------------------


def test_response_for_unknown_stream_is_a_protocol_error() -> None:
    client = Connection(Role.CLIENT)
    client.send_request("svc", "M")
    [event] = client.receive_data(frame(3, FRAME_RESPONSE, encode_response(0)))
    assert isinstance(event, ProtocolError) and "stream 3" in event.message


def test_second_response_for_a_stream_is_a_protocol_error() -> None:
    client = Connection(Role.CLIENT)
    stream_id, _ = client.send_request("svc", "M")
    answer = frame(stream_id, FRAME_RESPONSE, encode_response(0, "", b"x"))
    events = client.receive_data(answer + answer)
    assert events[0] == ResponseReceived(1, Code.OK, "", b"x")
    assert isinstance(events[1], ProtocolError)


def test_late_answer_to_an_abandoned_call_is_dropped() -> None:
    client = Connection(Role.CLIENT)
    first, _ = client.send_request("svc", "M")
    second, _ = client.send_request("svc", "M")
    client.abandon(first)
    assert client.outstanding == {second}
    events = client.receive_data(
        frame(first, FRAME_RESPONSE, encode_response(0, "", b"late"))
        + frame(second, FRAME_RESPONSE, encode_response(0, "", b"on time"))
    )
    assert isinstance(events[0], StreamIgnored) and events[0].stream_id == first
    assert events[1] == ResponseReceived(second, Code.OK, "", b"on time")
    assert not client.closed


def test_request_sent_to_a_client_is_a_protocol_error() -> None:
    [event] = Connection(Role.CLIENT).receive_data(request_frame(2))
    assert isinstance(event, ProtocolError) and "server-initiated" in event.message


def test_response_status_edge_cases() -> None:
    client = Connection(Role.CLIENT)
    a, _ = client.send_request("svc", "M")
    b, _ = client.send_request("svc", "M")
    c, _ = client.send_request("svc", "M")
    events = client.receive_data(
        frame(a, FRAME_RESPONSE, field_bytes(2, b"payload"))  # no status: OK, as Go's ttrpc server sends it
        + frame(b, FRAME_RESPONSE, encode_response(42, "odd"))  # a code gRPC does not define
        + frame(c, FRAME_RESPONSE, b"\xff")  # garbage
    )
    assert events[0] == ResponseReceived(a, Code.OK, "", b"payload")
    assert events[1] == ResponseReceived(b, Code.UNKNOWN, "(unknown status code 42) odd", b"")
    assert isinstance(events[2], ProtocolError) and "undecodable response" in events[2].message


def test_role_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER).send_request("s", "m")
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT).send_response(1)
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT).send_error(1, Code.INTERNAL, "x")
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER).send_response(1 << 32)


def test_rpc_error_text() -> None:
    error = RpcError(Code.NOT_FOUND, "task abc not found")
    assert str(error) == "NOT_FOUND: task abc not found"
    assert (error.code, error.message) == (Code.NOT_FOUND, "task abc not found")
    assert [int(c) for c in Code] == list(range(17))


def test_the_core_stays_lean_to_import() -> None:
    # The shim binary's start/delete path imports the core; asyncio alone costs tens of milliseconds there.
    import subprocess
    import sys

    code = (
        "import sys, wasm_shim.shim.ttrpc, wasm_shim.shim.ttrpc.connection, wasm_shim.shim.ttrpc.wire\n"
        "heavy = {'asyncio', 'typing', 'dataclasses', 'socket', 'logging'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
