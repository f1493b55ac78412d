"""HTTP/1.1 without I/O: requests to bytes, and responses from bytes (RFC 9112), for oci/transport.py to move.

Owns `encode_request` (a request head as bytes), `Headers` (a response's fields, looked up case-insensitively) and
`ResponseParser`, a state machine fed the bytes a server sends (in any split) that gives back events: a
`Response` head, `Data` of the body, `EndOfMessage`. It never reads a socket, so tests drive it with bytes, and it
parses what a hostile registry sends: every bound below is checked as the bytes arrive, and nothing past a bound
is ever buffered.

Rules (RFC 9112 sections unless said otherwise):
1. A head is a status line `HTTP/1.0|1.1 SP 3DIGIT [SP reason]` and field lines, ended by an empty line. Lines end
   with CRLF or a bare LF (2.2); a CR anywhere else is an error. A head over MAX_HEAD bytes or MAX_FIELDS fields is
   an error naming the bound.
2. A field name is a token, with nothing between it and the colon (5.1); a value has no NUL (RFC 9110 5.5) and its
   surrounding whitespace is dropped; an obs-fold continuation line is joined with one SP (5.2). A field given
   several times reads as its values joined by ", " (RFC 9110 5.3).
3. Interim responses (1xx) before the final one are skipped (RFC 9110 15.2), at most MAX_INTERIM of them; 101
   (Switching Protocols) is an error: no request here asks for it.
4. The body's length (6.3): none after HEAD, for 1xx, 204 and 304, and for a 2xx answer to CONNECT (the tunnel
   starts there); chunked when Transfer-Encoding is `chunked`; any other transfer coding, and Transfer-Encoding
   beside Content-Length (6.1: "ought to be handled as an error"), are errors; else Content-Length (digits; a list
   of equal values is that value, different values are an error); else everything until the connection closes.
5. Chunked (7.1): a size line of at most MAX_SIZE_DIGITS hex digits, extensions ignored, the line at most
   MAX_CHUNK_LINE bytes; each chunk's data is followed by a line end; trailer fields after the last chunk are read
   under the head's bounds and dropped.
6. End of input (`receive_data(b"")`): before any byte of a response, `NoResponse` (a kept-alive connection the
   server had closed: the caller may retry an idempotent request on a new one); inside a head, a Content-Length
   body or a chunk, `ProtocolError` saying how far it got; a body read until the close ends there.
7. A connection is reusable after `EndOfMessage` when the response was HTTP/1.1, had no `Connection: close`, its
   body was framed (not read until the close) and not a byte came after it (we never pipeline, so a byte after
   the end means the stream and the messages no longer line up).
8. `encode_request` refuses (ValueError) a method or field name that is not a token, and a target or value with a
   control character: a value from a registry (a redirect's Location) can never inject a header or a request.
Standard library only, no module-level imports besides it: the CLI's start pays for every import.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

MAX_HEAD = 64 << 10  # a status line and fields (and, separately, a chunked body's trailers) together
MAX_FIELDS = 100  # as Python's http.client
MAX_INTERIM = 8
MAX_CHUNK_LINE = 4 << 10  # a chunk-size line with its extensions
MAX_SIZE_DIGITS = 16  # hex digits of a chunk size: 2**64 - 1

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NO_BODY_STATUSES = frozenset({204, 304})


class ProtocolError(ValueError):
    """The bytes are not an HTTP/1.1 response this parser accepts; the message says what and where."""


class NoResponse(ProtocolError):
    """The connection ended before any byte of a response arrived."""


def _is_token(text: str) -> bool:
    return bool(text) and text.isascii() and all(c in _TOKEN for c in text.encode())


def _has_ctl(text: str) -> bool:
    return any(c < " " or c == "\x7f" for c in text)


def encode_request(method: str, target: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """The request line and fields, ended by the empty line (the body, if any, follows as is)."""
    if not _is_token(method):
        raise ValueError(f"HTTP method {method!r} is not a token")
    if not target or " " in target or _has_ctl(target):
        raise ValueError(f"request target {target!r} is empty or has a space or a control character")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields:
        if not _is_token(name):
            raise ValueError(f"header name {name!r} is not a token")
        if _has_ctl(value.replace("\t", " ")):
            raise ValueError(f"header {name}: the value has a control character")
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"request {method} {target!r}: a character that HTTP/1.1 cannot carry") from None


class Headers:
    """A response's fields in order; `get` and `in` ignore the name's letter case (RFC 9110 5.1)."""

    __slots__ = ("_fields", "_joined")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        joined: dict[str, str] = {}
        for name, value in fields:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        self._joined = joined

    def get(self, name: str, default: str = "") -> str:
        return self._joined.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._joined

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class Response:
    """A final response's head."""

    __slots__ = ("version", "status", "reason", "headers")

    def __init__(self, version: str, status: int, reason: str, headers: Headers) -> None:
        self.version, self.status, self.reason, self.headers = version, status, reason, headers

    def __repr__(self) -> str:
        return f"Response({self.version} {self.status} {self.reason!r})"


class Data:
    """Bytes of the body, in order."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({len(self.data)} bytes)"


class EndOfMessage:
    """The body ended (whether the connection may carry the next request: `ResponseParser.reusable`, rule 7)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EndOfMessage()"


Event = Response | Data | EndOfMessage

# Parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE, _FAILED = range(9)


def _lines(block: bytes) -> Iterator[str]:
    """The lines of a head (without its final empty line), line ends removed (rule 1)."""
    for raw in block.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if b"\r" in line:
            raise ProtocolError("a bare CR in the response head")
        yield line.decode("latin-1")


def parse_head(block: bytes) -> tuple[str, int, str, list[tuple[str, str]]]:
    """(version, status, reason, fields) of one head: `block` is its bytes up to, not including, the empty line."""
    lines = _lines(block)
    status_line = next(lines)
    version, _, rest = status_line.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] == "0":
        raise ProtocolError(f"status line without a 3-digit status code: {status_line[:80]!r}")
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):  # obs-fold (rule 2)
            if not fields:
                raise ProtocolError("the first field line of the response head starts with whitespace")
            name, value = fields[-1]
            fields[-1] = (name, (value + " " + line.strip(" \t")).strip(" "))
            continue
        name, colon, value = line.partition(":")
        if not colon or not _is_token(name):
            raise ProtocolError(f"a malformed header field line: {line[:80]!r}")
        if "\0" in value:
            raise ProtocolError(f"header {name}: the value has a NUL byte")
        fields.append((name, value.strip(" \t")))
        if len(fields) > MAX_FIELDS:
            raise ProtocolError(f"the response head has more than {MAX_FIELDS} fields (the field limit)")
    return version, int(code), reason.strip(" \t"), fields


class ResponseParser:
    """One response to one request. Feed `receive_data` what the socket gives (b"" at its end) and act on the
    events it returns; `ProtocolError` means the connection must be closed."""

    def __init__(self, method: str) -> None:
        self._method = method
        self._state = _HEAD
        self._buffer = bytearray()  # the head, a chunk-size line or trailers, while incomplete
        self._line_start = 0  # where the head's line that is not yet complete starts in `_buffer`
        self._interim = 0
        self._remaining = 0  # of a Content-Length body or of the current chunk
        self._length = 0  # the Content-Length, for messages
        self._keep_alive = False
        self.started = False  # a byte of the response arrived
        self.trailing = False  # a byte arrived after the end (rule 7)

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def buffered(self) -> int:
        """Bytes held between calls (an unfinished head, chunk-size line or trailers): never past the bounds."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[Event]:
        if self._state == _FAILED:
            raise ProtocolError("the response could not be parsed (the parser failed before)")
        try:
            return self._receive(data)
        except ProtocolError:
            self._state = _FAILED
            raise

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if not data:
            self._end_of_input(events)
            return events
        self.started = True
        view = data
        while view:
            state = self._state
            if state == _LENGTH:
                if len(view) <= self._remaining:
                    self._remaining -= len(view)
                    events.append(Data(view))
                    view = b""
                else:
                    events.append(Data(view[: self._remaining]))
                    view = view[self._remaining:]
                    self._remaining = 0
                if self._remaining == 0:
                    self._finish(events)
            elif state == _UNTIL_CLOSE:
                events.append(Data(view))
                view = b""
            elif state == _CHUNK_DATA:
                take = min(len(view), self._remaining)
                events.append(Data(view[:take]))
                view = view[take:]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_END
            elif state == _DONE:
                self.trailing = True
                view = b""
            else:  # _HEAD, _CHUNK_SIZE, _CHUNK_END, _TRAILERS: line-oriented
                view = self._lines_state(view, events)
        return events

    # -- line-oriented states --------------------------------------------------------------------------------------
    def _lines_state(self, view: bytes, events: list[Event]) -> bytes:
        if self._state == _HEAD or self._state == _TRAILERS:
            return self._head_bytes(view, events)
        # _CHUNK_SIZE or _CHUNK_END: one line
        end = view.find(b"\n")
        self._buffer += view if end < 0 else view[:end]
        if len(self._buffer) > MAX_CHUNK_LINE:
            raise ProtocolError(f"a chunk-size line over the {MAX_CHUNK_LINE} byte limit")
        if end < 0:
            return b""
        line = bytes(self._buffer[:-1] if self._buffer.endswith(b"\r") else self._buffer)
        self._buffer.clear()
        if self._state == _CHUNK_END:
            if line:
                raise ProtocolError("a chunk's data is not followed by a line end (the chunk size was wrong)")
            self._state = _CHUNK_SIZE
        else:
            self._chunk_size(line)
        return view[end + 1:]

    def _chunk_size(self, line: bytes) -> None:
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or len(size) > MAX_SIZE_DIGITS or not all(c in _HEX for c in size):
            raise ProtocolError(f"a chunk size that is not 1 to {MAX_SIZE_DIGITS} hex digits: {line[:40]!r}")
        self._remaining = int(size, 16)
        self._state = _CHUNK_DATA if self._remaining else _TRAILERS

    def _head_bytes(self, view: bytes, events: list[Event]) -> bytes:
        """Collect a head (or the trailers) up to its empty line, within MAX_HEAD; the bytes after it."""
        what = "trailer fields" if self._state == _TRAILERS else "response head"
        buffer = self._buffer
        buffer += view
        line_start = self._line_start
        while True:
            newline = buffer.find(b"\n", line_start)
            if newline < 0 or newline > MAX_HEAD:
                if len(buffer) > MAX_HEAD:
                    raise ProtocolError(f"the {what} went on past the {MAX_HEAD} byte limit")
                self._line_start = line_start
                return b""
            if newline == line_start or (newline == line_start + 1 and buffer[line_start] == 13):  # empty line
                break
            line_start = newline + 1
        block = bytes(buffer[:line_start])
        rest = bytes(buffer[newline + 1:])
        buffer.clear()
        self._line_start = 0
        block = block[:-2] if block.endswith(b"\r\n") else block[:-1]
        if self._state == _TRAILERS:
            if block:
                if sum(1 for _ in _lines(block)) > MAX_FIELDS:  # checked for form, then dropped (rule 5)
                    raise ProtocolError(f"more than {MAX_FIELDS} trailer fields (the field limit)")
            self._finish(events)
        else:
            self._head(block, events)
        return rest

    def _head(self, block: bytes, events: list[Event]) -> None:
        version, status, reason, fields = parse_head(block)
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("101 Switching Protocols to a request that asked for no upgrade")
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) responses")
            return  # the final response follows (rule 3)
        headers = Headers(fields)
        connection = {t.strip().lower() for t in headers.get("Connection").split(",")}
        self._keep_alive = version == "HTTP/1.1" and "close" not in connection
        events.append(Response(version, status, reason, headers))
        if self._method == "HEAD" or status in _NO_BODY_STATUSES or \
                (self._method == "CONNECT" and 200 <= status < 300):
            self._finish(events)
            return
        transfer = headers.get("Transfer-Encoding")
        if transfer:
            codings = [t.strip().lower() for t in transfer.split(",") if t.strip()]
            if codings != ["chunked"]:
                raise ProtocolError(f"unsupported Transfer-Encoding {transfer[:80]!r} (only chunked is read)")
            if "content-length" in headers:
                raise ProtocolError("both Transfer-Encoding and Content-Length (RFC 9112 section 6.1: an error)")
            self._state = _CHUNK_SIZE
            return
        if "content-length" in headers:
            values = {v.strip(" \t") for v in headers["content-length"].split(",")}
            if len(values) != 1:
                raise ProtocolError(f"several different Content-Length values: {headers['content-length'][:80]!r}")
            value = values.pop()
            if not value or not value.isdigit() or not value.isascii() or len(value) > 19:
                raise ProtocolError(f"Content-Length {value[:40]!r} is not a number of bytes")
            self._length = self._remaining = int(value)
            self._state = _LENGTH
            if self._remaining == 0:
                self._finish(events)
            return
        self._keep_alive = False
        self._state = _UNTIL_CLOSE

    def _finish(self, events: list[Event]) -> None:
        self._state = _DONE
        events.append(EndOfMessage())

    def _end_of_input(self, events: list[Event]) -> None:
        state = self._state
        if state == _UNTIL_CLOSE:
            self._keep_alive = False
            self._finish(events)
        elif state == _DONE:
            pass
        elif state == _HEAD:
            if not self.started:
                raise NoResponse("the connection closed before a response")
            raise ProtocolError(f"the connection closed in the middle of the response head ({len(self._buffer)} "
                                "bytes of it received)")
        elif state == _LENGTH:
            raise ProtocolError(f"the connection closed after {self._length - self._remaining} of the "
                                f"{self._length} bytes its Content-Length announced")
        else:
            raise ProtocolError("the connection closed in the middle of a chunked body")

    @property
    def reusable(self) -> bool:
        return self._state == _DONE and self._keep_alive and not self.trailing
