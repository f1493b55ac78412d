"""What a registry sends, at random, through the HTTP/1.1 response parser (oci/http1.py): hypothesis builds
responses from well-formed pieces (status lines, fields, obs-folds, bare-LF line ends, interim responses, every body
framing, chunk extensions, trailers) and mixes in lies and garbage, split at arbitrary points.

What must hold for every input:
- well-formed: the head, the body and the end come out as built, for any split, and the connection is reusable
  exactly when the framing and the fields allow it;
- any bytes at all: `receive_data` raises nothing but ProtocolError, never gives out more body bytes than it was
  fed, never holds more than its bounds between calls, and reaches the same outcome (the same body, or an error)
  whatever the split.

Sizes: `size(300, 10_000)` examples per property (smoke in `make test`, full in `make soak`), derandomized in the
smoke run, no hypothesis database written.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.soak import FULL, size
from wasm_shim.oci.http1 import (
    MAX_CHUNK_LINE,
    MAX_HEAD,
    Data,
    EndOfMessage,
    Event,
    ProtocolError,
    Response,
    ResponseParser,
)

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600 if FULL else 300)]

SETTINGS = settings(max_examples=size(300, 10_000), derandomize=not FULL, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~", min_size=1,
                max_size=12)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                max_size=24).map(str.strip)
FRAMINGS = ("length", "chunked", "close", "none")


def splits(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[last:cut]
        last = cut
    yield data[last:]


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, str, int, bytes, bool]:
    """(bytes, request method, status, body, reusable) of one well-formed response."""
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    framing = draw(st.sampled_from(FRAMINGS))
    method = "HEAD" if framing == "none" and draw(st.booleans()) else "GET"
    status = draw(st.sampled_from([204, 304])) if framing == "none" and method == "GET" else \
        draw(st.sampled_from([200, 201, 202, 307, 400, 401, 404, 429, 500]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 4 + ["HTTP/1.0"]))
    close = draw(st.integers(0, 5)) == 0
    content = draw(st.binary(max_size=300))
    fields = draw(st.lists(st.tuples(TOKEN.filter(lambda n: n.lower() not in (
        "content-length", "transfer-encoding", "connection")), VALUE), max_size=6))
    lines = [f"{version} {status} {draw(VALUE)}".rstrip().encode("latin-1")]
    for name, value in fields:
        lines.append(f"{name}: {value}".encode("latin-1"))
        if draw(st.integers(0, 6)) == 0:
            lines.append(b" " + draw(VALUE).encode("latin-1") + b"x")  # obs-fold
    if close:
        lines.append(b"Connection: close")
    wire = b""
    if framing == "length" or (framing == "none" and draw(st.booleans())):
        lines.append(b"Content-Length: %d" % len(content))
    if framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        pieces = []
        rest = content
        while rest:
            n = draw(st.integers(1, max(1, len(rest))))
            extension = b";x=%d" % n if draw(st.booleans()) else b""
            pieces.append(b"%x%s" % (n, extension) + newline + rest[:n] + newline)
            rest = rest[n:]
        trailers = b"".join(b"T-%d: v" % i + newline for i in range(draw(st.integers(0, 2))))
        wire = b"".join(pieces) + b"0" + newline + trailers + newline
    elif framing in ("length", "close"):
        wire = content
    interim = b"".join(b"HTTP/1.1 100 Continue" + newline + newline for _ in range(draw(st.integers(0, 2))))
    data = interim + newline.join(lines) + newline + newline + wire
    expected = b"" if framing == "none" else content
    reusable = framing != "close" and version == "HTTP/1.1" and not close
    return data, method, status, expected, reusable


def run(data: bytes, cuts: list[int], method: str = "GET", eof: bool = True) -> tuple[list[Event], ResponseParser]:
    parser = ResponseParser(method)
    events: list[Event] = []
    fed = 0
    for piece in splits(data, cuts):
        if not piece:
            continue
        fed += len(piece)
        events.extend(parser.receive_data(piece))
        assert parser.buffered <= max(MAX_HEAD, MAX_CHUNK_LINE)  # nothing held past a bound
        assert sum(len(e.data) for e in events if isinstance(e, Data)) <= fed
    if eof:
        events.extend(parser.receive_data(b""))
    return events, parser


@SETTINGS
@given(responses(), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_well_formed_responses_parse_as_built_for_any_split(response: tuple[bytes, str, int, bytes, bool],
                                                            cuts: list[int]) -> None:
    data, method, status, expected, reusable = response
    events, parser = run(data, cuts, method)
    heads = [e for e in events if isinstance(e, Response)]
    assert [h.status for h in heads] == [status]
    assert events[0] is heads[0] and isinstance(events[-1], EndOfMessage)
    assert b"".join(e.data for e in events if isinstance(e, Data)) == expected
    assert parser.reusable is reusable


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Well-formed responses cut, spliced and salted with garbage and lies."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            parts.append(draw(st.binary(max_size=64)))
        elif kind == 1:
            parts.append(draw(st.sampled_from([
                b"Content-Length: 99999999999\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n", b"\n", b"\r",
                b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Up\r\n\r\n", b"ffffffffffffffffff\r\n",
                b"0\r\n\r\n", b"Content-Length: 1, 2\r\n", b" folded\r\n", b"\0", b": empty name\r\n"])))
        else:
            data = draw(responses())[0]
            cut = draw(st.integers(0, len(data)))
            parts.append(data[:cut] if draw(st.booleans()) else data)
    return b"".join(parts)


@SETTINGS
@given(hostile(), st.sampled_from(["GET", "HEAD", "CONNECT"]), st.lists(st.integers(0, 1 << 16), max_size=8),
       st.lists(st.integers(0, 1 << 16), max_size=8))
def test_any_bytes_end_in_a_protocol_error_or_the_same_result_for_every_split(
        data: bytes, method: str, cuts: list[int], other_cuts: list[int]) -> None:
    outcomes = []
    for each in (cuts, other_cuts, []):
        try:
            events, parser = run(data, each, method)
        except ProtocolError as exc:
            outcomes.append(("error", type(exc).__name__))
        else:
            outcomes.append(("parsed", b"".join(e.data for e in events if isinstance(e, Data)),
                             [e.status for e in events if isinstance(e, Response)], parser.reusable))
    assert outcomes[0] == outcomes[1] == outcomes[2]


@SETTINGS
@given(st.binary(min_size=1, max_size=256), st.integers(0, MAX_HEAD))
def test_a_head_that_never_ends_is_refused_holding_at_most_the_bound(filler: bytes, start: int) -> None:
    parser = ResponseParser("GET")
    line = filler.replace(b"\n", b"") or b"x"
    with pytest.raises(ProtocolError):
        parser.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"a" * start)
        while True:
            parser.receive_data(line)
            assert parser.buffered <= MAX_HEAD
