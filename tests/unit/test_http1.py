"""The HTTP/1.1 response parser and request encoder (oci/http1.py), driven with bytes: each rule of its docstring,
and what a hostile server can send. The randomized half is tests/unit/test_fuzz_http1.py.
"""

from __future__ import annotations

import pytest

from wasm_shim.oci.http1 import (
    MAX_CHUNK_LINE,
    MAX_FIELDS,
    MAX_HEAD,
    Data,
    EndOfMessage,
    Event,
    NoResponse,
    ProtocolError,
    Response,
    ResponseParser,
    encode_request,
)


def parse(data: bytes | list[bytes], method: str = "GET", eof: bool = False) -> tuple[list[Event], ResponseParser]:
    parser = ResponseParser(method)
    events: list[Event] = []
    for piece in [data] if isinstance(data, bytes) else data:
        if piece:  # b"" is the end of input
            events.extend(parser.receive_data(piece))
    if eof:
        events.extend(parser.receive_data(b""))
    return events, parser


def head(events: list[Event]) -> Response:
    responses = [e for e in events if isinstance(e, Response)]
    assert len(responses) == 1, events
    return responses[0]


def body(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def ended(events: list[Event]) -> bool:
    return isinstance(events[-1], EndOfMessage) and sum(isinstance(e, EndOfMessage) for e in events) == 1


def test_a_content_length_body_byte_by_byte_and_the_connection_stays_reusable() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDocker-Content-Digest: sha256:x\r\n\r\nhello"
    events, parser = parse([data[i:i + 1] for i in range(len(data))])
    response = head(events)
    assert (response.version, response.status, response.reason) == ("HTTP/1.1", 200, "OK")
    assert response.headers.get("docker-content-digest") == "sha256:x" and "CONTENT-LENGTH" in response.headers
    assert body(events) == b"hello" and ended(events) and parser.reusable


def test_line_ends_may_be_bare_lf_and_obs_fold_joins_with_one_space() -> None:
    events, parser = parse(b"HTTP/1.1 200 OK\nX-Long: one\n  two\n\tthree\nContent-Length: 0\n\n")
    assert head(events).headers.get("X-Long") == "one two three" and ended(events) and parser.reusable


def test_repeated_fields_read_as_one_list() -> None:
    events, _ = parse(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"a\"\r\n"
                      b"www-authenticate: Basic realm=\"b\"\r\nContent-Length: 0\r\n\r\n")
    assert head(events).headers.get("WWW-Authenticate") == 'Bearer realm="a", Basic realm="b"'


def test_a_chunked_body_with_extensions_and_trailers() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nDigest: x\r\nOther: y\r\n\r\n")
    for cut in range(len(data)):
        events, parser = parse([data[:cut], data[cut:]])
        assert body(events) == b"hello world!" and ended(events) and parser.reusable, cut


def test_a_body_without_length_runs_until_the_close_and_the_connection_is_spent() -> None:
    events, parser = parse(b"HTTP/1.1 200 OK\r\n\r\nsome bytes", eof=True)
    assert body(events) == b"some bytes" and ended(events) and not parser.reusable


@pytest.mark.parametrize("method, status", [("HEAD", 200), ("GET", 204), ("GET", 304), ("CONNECT", 200)])
def test_answers_that_have_no_body_whatever_they_declare(method: str, status: int) -> None:
    events, parser = parse(b"HTTP/1.1 %d X\r\nContent-Length: 1234\r\n\r\n" % status, method)
    assert head(events).status == status and body(events) == b"" and ended(events) and parser.reusable


def test_interim_responses_are_skipped_and_101_is_refused() -> None:
    events, _ = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                      b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert head(events).status == 201 and ended(events)
    with pytest.raises(ProtocolError, match="101 Switching Protocols"):
        parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    with pytest.raises(ProtocolError, match="more than 8 interim"):
        parse(b"HTTP/1.1 100 Continue\r\n\r\n" * 9)


def test_http_1_0_and_connection_close_spend_the_connection() -> None:
    for data in (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"):
        events, parser = parse(data)
        assert ended(events) and not parser.reusable


def test_a_byte_after_the_end_spends_the_connection() -> None:
    events, parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert body(events) == b"ok" and ended(events) and parser.done and not parser.reusable


def test_a_head_past_its_bound_is_refused_as_it_arrives() -> None:
    parser = ResponseParser("GET")
    parser.receive_data(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Padding: " + b"a" * 1000 + b"\r\n"
    with pytest.raises(ProtocolError, match=f"past the {MAX_HEAD} byte limit"):
        for _ in range(MAX_HEAD // len(line) + 2):
            parser.receive_data(line)
            assert parser.buffered <= MAX_HEAD
    with pytest.raises(ProtocolError, match="failed before"):
        parser.receive_data(b"\r\n")  # a failed parser stays failed


def test_a_head_without_any_line_end_is_refused_at_the_bound() -> None:
    parser = ResponseParser("GET")
    with pytest.raises(ProtocolError, match="byte limit"):
        for _ in range(MAX_HEAD // 4096 + 2):
            parser.receive_data(b"H" * 4096)


def test_too_many_fields() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
    with pytest.raises(ProtocolError, match=f"more than {MAX_FIELDS} fields"):
        parse(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n")


@pytest.mark.parametrize("data, message", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "3-digit status"),
    (b"HTTP/1.1 abc OK\r\n\r\n", "3-digit status"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed header field"),
    (b"HTTP/1.1 200 OK\r\nName : x\r\n\r\n", "malformed header field"),
    (b"HTTP/1.1 200 OK\r\nNo-Colon\r\n\r\n", "malformed header field"),
    (b"HTTP/1.1 200 OK\r\n continued\r\n\r\n", "starts with whitespace"),
    (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "bare CR"),
    (b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", "NUL"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "different Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number of bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", "not a number of bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "both Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\n", "1 to 16 hex digits"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "not followed by a line end"),
])
def test_malformed_responses_are_refused_naming_what(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse(data)


def test_a_chunk_size_line_past_its_bound() -> None:
    parser = ResponseParser("GET")
    parser.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;")
    with pytest.raises(ProtocolError, match=f"over the {MAX_CHUNK_LINE} byte limit"):
        for _ in range(MAX_CHUNK_LINE // 100 + 2):
            parser.receive_data(b"x" * 100)
            assert parser.buffered <= MAX_CHUNK_LINE


def test_end_of_input_says_how_far_the_response_got() -> None:
    with pytest.raises(NoResponse):
        parse(b"", eof=True)
    with pytest.raises(ProtocolError, match="middle of the response head") as failure:
        parse(b"HTTP/1.1 200 OK\r\n", eof=True)
    assert not isinstance(failure.value, NoResponse)
    with pytest.raises(ProtocolError, match="after 3 of the 10 bytes its Content-Length announced"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", eof=True)
    with pytest.raises(ProtocolError, match="middle of a chunked body"):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", eof=True)


def test_a_large_declared_length_is_only_a_number() -> None:
    events, parser = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\nabc")
    assert body(events) == b"abc" and not parser.done  # the reader's cap decides, not the parser


def test_encode_request_refuses_what_could_inject_a_header_or_a_request() -> None:
    assert encode_request("GET", "/v2/", [("Host", "r:5000"), ("Accept", "a, b")]) == \
        b"GET /v2/ HTTP/1.1\r\nHost: r:5000\r\nAccept: a, b\r\n\r\n"
    for method, target, fields in [
        ("GET", "/v2/\r\nX: y", []),
        ("GET", "/v2/ HTTP/1.1", []),
        ("GET", "", []),
        ("G ET", "/", []),
        ("GET", "/", [("Authorization", "Basic x\r\nX-Injected: 1")]),
        ("GET", "/", [("Bad Name", "x")]),
        ("GET", "/", [("X", "a\0b")]),
        ("GET", "/caf\u20ac", []),
    ]:
        with pytest.raises(ValueError):
            encode_request(method, target, fields)
