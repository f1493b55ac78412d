"""The ttrpc protocol state machine for one connection, without I/O (in the manner of h11's Connection).

Owns frame parsing, the stream-id bookkeeping of both roles and the decision of how to answer each frame.
Bytes go in through ``receive_data`` and come out as events; frames to send come back from ``send_*`` as
bytes. No asyncio, no sockets: the transport (``server.py``, ``client.py``, or a blocking socket on the lean
binary path) moves the bytes and acts on the events.

Rules (docs/protocol.md "ttrpc", from containerd/ttrpc's protocol description of frames, message types and
streaming; its channel.go and server.go for behaviour the description leaves open):

1. A frame is a 10-byte header (big-endian uint32 data length, big-endian uint32 stream id, uint8 type,
   uint8 flags) followed by the data. ``receive_data`` accepts any split: a header byte by byte, many frames
   in one chunk.
2. The first header byte is reserved and always zero ("Message Frame": the maximum length is below 16 MiB).
   A peer that sets it is not speaking ttrpc (an HTTP request, garbage): ``ProtocolError``. Go's ttrpc would
   instead try to discard up to 4 GiB; we refuse such a peer at once.
3. A frame longer than ``max_message_size`` (4 MiB, as ttrpc) is discarded as it streams in, never buffered
   whole (channel.go ``recv``). On a server the stream is answered RESOURCE_EXHAUSTED (``RequestRejected``)
   and the connection stays usable. On a client an oversized response completes its call with
   RESOURCE_EXHAUSTED (``ResponseReceived``).
4. Server: a request's stream id must be odd and greater than the last accepted one (server.go). Zero, even,
   reused or decreasing ids get ``RequestRejected(INVALID_ARGUMENT)`` on that same id, so the client learns
   which call failed; the connection stays usable.
5. Server: only unary requests (flags 0, "Request" section) are served. A request flagged remote-open (0x02)
   or remote-closed (0x01) is a streaming call: ``RequestRejected(UNIMPLEMENTED)``. Data frames (type 0x03)
   belong to such streams: discarded with a ``StreamIgnored`` event.
6. Frames a role never receives (a response sent to a server; a request sent to a client, since
   server-initiated streams are unsupported), unknown frame types, and an envelope that does not decode ->
   ``ProtocolError``. The connection is then dead; the transport logs and closes only this connection.
7. Client: stream ids are odd, start at 1 and go up by 2 (docs/protocol.md "ttrpc"). A response for an id with no
   outstanding call -> ``ProtocolError``; for an id whose caller gave up (``abandon``) it is dropped with a
   ``StreamIgnored`` event, so a late answer after a timeout does not kill the connection.
8. ``receive_data(b"")`` means EOF: it yields ``ConnectionClosed``. After ``ConnectionClosed`` or
   ``ProtocolError`` the connection is dead and ``receive_data`` yields nothing more.
9. ``send_*`` only encode. They raise ``RpcError(RESOURCE_EXHAUSTED)`` instead of producing a frame the peer
   would reject as oversized (errors.go ``OversizedMessageError``), and ``LocalProtocolError`` when called
   for the wrong role.

Imports only modules loaded at interpreter start-up (see ``wire``): the lean binary path may use this core.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from .status import Code, RpcError, code_from_wire
from .wire import Buffer, WireError, decode_request, decode_response, encode_request, encode_response

HEADER_LENGTH = 10
MAX_MESSAGE_SIZE = 4 << 20  # channel.go messageLengthMax

FRAME_REQUEST = 0x01
FRAME_RESPONSE = 0x02
FRAME_DATA = 0x03

FLAG_REMOTE_CLOSED = 0x01
FLAG_REMOTE_OPEN = 0x02
FLAG_NO_DATA = 0x04

_MAX_STREAM_ID = 0xFFFFFFFF
_RESERVED_LENGTH = 1 << 24  # lengths at or above this set the reserved first header byte
_MAX_STATUS_MESSAGE = 16 << 10  # keeps an error frame small whatever the message

_FRAME_NAMES = {FRAME_REQUEST: "request", FRAME_RESPONSE: "response", FRAME_DATA: "data"}


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class LocalProtocolError(Exception):
    """This side used the connection wrongly (a method of the other role, a stream id out of range)."""


# --- events ---------------------------------------------------------------------------------------------


class Event:
    """Base of everything ``receive_data`` returns; equality and repr come from ``__slots__``."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class RequestReceived(Event):
    """Server: a unary request to dispatch; answer it with ``send_response`` or ``send_error``."""

    __slots__ = ("stream_id", "service", "method", "payload", "timeout_nano", "metadata")

    def __init__(
        self,
        stream_id: int,
        service: str,
        method: str,
        payload: bytes,
        timeout_nano: int,
        metadata: dict[str, list[str]],
    ) -> None:
        self.stream_id = stream_id
        self.service = service
        self.method = method
        self.payload = payload
        self.timeout_nano = timeout_nano
        self.metadata = metadata


class RequestRejected(Event):
    """Server: a frame the core refused; the transport answers ``send_error(stream_id, code, message)``."""

    __slots__ = ("stream_id", "code", "message")

    def __init__(self, stream_id: int, code: Code, message: str) -> None:
        self.stream_id = stream_id
        self.code = code
        self.message = message


class ResponseReceived(Event):
    """Client: the answer to an outstanding call. ``status`` is OK or the error code."""

    __slots__ = ("stream_id", "status", "message", "payload")

    def __init__(self, stream_id: int, status: Code, message: str, payload: bytes) -> None:
        self.stream_id = stream_id
        self.status = status
        self.message = message
        self.payload = payload


class StreamIgnored(Event):
    """A frame dropped on purpose (stream data, a late answer to an abandoned call); log it, no more."""

    __slots__ = ("stream_id", "reason")

    def __init__(self, stream_id: int, reason: str) -> None:
        self.stream_id = stream_id
        self.reason = reason


class ProtocolError(Event):
    """The peer broke the protocol; the connection is dead and the transport must close it."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class ConnectionClosed(Event):
    """The peer closed its side. ``partial_frame`` tells whether it stopped in the middle of a frame."""

    __slots__ = ("partial_frame",)

    def __init__(self, partial_frame: bool = False) -> None:
        self.partial_frame = partial_frame


# --- the connection -------------------------------------------------------------------------------------


class _Header:
    __slots__ = ("length", "stream_id", "frame_type", "flags")

    def __init__(self, length: int, stream_id: int, frame_type: int, flags: int) -> None:
        self.length = length
        self.stream_id = stream_id
        self.frame_type = frame_type
        self.flags = flags


def _frame(stream_id: int, frame_type: int, flags: int, data: bytes) -> bytes:
    if not 0 <= stream_id <= _MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {stream_id} is outside 0..{_MAX_STREAM_ID}")
    return len(data).to_bytes(4, "big") + stream_id.to_bytes(4, "big") + bytes((frame_type, flags)) + data


def _clip(message: str) -> str:
    if len(message) <= _MAX_STATUS_MESSAGE:
        return message
    return message[:_MAX_STATUS_MESSAGE] + "... (truncated)"


def metadata_dict(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Group repeated KeyValue pairs by key, keeping their order (ttrpc ``MD.fromRequest``)."""
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


class Connection:
    """One end of one ttrpc connection; see the module docstring for the rules it enforces."""

    def __init__(self, role: Role, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        if not 0 < max_message_size < _RESERVED_LENGTH:
            raise ValueError(f"max_message_size must be in 1..{_RESERVED_LENGTH - 1}, not {max_message_size}")
        self.role = role
        self.max_message_size = max_message_size
        self._buffer = bytearray()  # bytes of an incomplete header or body; empty while discarding
        self._header: _Header | None = None  # header whose body is still arriving
        self._discard = 0  # bytes of an ignored or oversized frame still to drop
        self._dead = False
        # server
        self._last_stream_id = 0
        # client
        self._next_stream_id = 1
        self._outstanding: set[int] = set()
        self._abandoned: set[int] = set()

    @property
    def closed(self) -> bool:
        """True once ``ConnectionClosed`` or ``ProtocolError`` has been returned."""
        return self._dead

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for an incomplete frame (never more than a header plus one allowed body)."""
        return len(self._buffer)

    @property
    def outstanding(self) -> frozenset[int]:
        """Client: stream ids of calls sent and not yet answered (abandoned ones excluded)."""
        return frozenset(self._outstanding)

    # -- input -------------------------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[Event]:
        """Feed bytes read from the peer (``b""`` = EOF) and return the events they complete, in order."""
        if self._dead:
            return []
        if not data:
            self._dead = True
            partial = bool(self._buffer) or self._header is not None or self._discard > 0
            return [ConnectionClosed(partial_frame=partial)]

        events: list[Event] = []
        work: Buffer
        if self._buffer:
            self._buffer += data
            work = self._buffer
        else:
            work = data  # the common case: parse the chunk in place, copy only what is left over
        end = len(work)
        pos = 0
        while not self._dead:
            if self._discard:
                dropped = min(self._discard, end - pos)
                self._discard -= dropped
                pos += dropped
                if self._discard:
                    break
            if self._header is None:
                if end - pos < HEADER_LENGTH:
                    break
                header = _Header(
                    int.from_bytes(work[pos : pos + 4], "big"),
                    int.from_bytes(work[pos + 4 : pos + 8], "big"),
                    work[pos + 8],
                    work[pos + 9],
                )
                pos += HEADER_LENGTH
                if self._on_header(header, events):
                    self._header = header
            else:
                header = self._header
                if end - pos < header.length:
                    break
                body = bytes(work[pos : pos + header.length])
                pos += header.length
                self._header = None
                self._on_frame(header, body, events)

        if self._dead:
            self._buffer = bytearray()
        elif work is self._buffer:
            del self._buffer[:pos]
        elif pos < end:
            self._buffer = bytearray(work[pos:])
        return events

    def _on_header(self, header: _Header, events: list[Event]) -> bool:
        """Judge a header; return True to read its body, else arrange for the body to be discarded."""
        length, stream_id, frame_type = header.length, header.stream_id, header.frame_type
        if length >= _RESERVED_LENGTH:
            self._fail(
                events,
                f"frame header on stream {stream_id} declares {length} bytes with the reserved first byte "
                f"set: the peer is not speaking ttrpc",
            )
            return False
        if frame_type == FRAME_DATA:
            # Rule 5 (server) and rule 7 (client): we run unary calls only, so stream data has no reader.
            events.append(
                StreamIgnored(
                    stream_id,
                    f"data frame ({length} bytes, flags 0x{header.flags:02x}) ignored: only unary calls "
                    f"are supported",
                )
            )
            self._discard = length
            return False
        if self.role is Role.SERVER:
            return self._on_server_header(header, events)
        return self._on_client_header(header, events)

    def _on_server_header(self, header: _Header, events: list[Event]) -> bool:
        length, stream_id = header.length, header.stream_id
        if header.frame_type != FRAME_REQUEST:
            reason = "a ttrpc server receives only requests and data"
            self._fail(events, self._unexpected_frame(header, reason))
            return False
        if length > self.max_message_size:
            # Rule 3; the id is not checked nor remembered, as in server.go.
            events.append(
                RequestRejected(
                    stream_id,
                    Code.RESOURCE_EXHAUSTED,
                    f"message length {length} exceeds maximum message size of {self.max_message_size}",
                )
            )
            self._discard = length
            return False
        if stream_id % 2 == 0:
            message = f"stream id {stream_id} is not odd: client-initiated streams use odd ids"
        elif stream_id <= self._last_stream_id:
            message = (
                f"stream id {stream_id} cannot be reused and must increase "
                f"(the last one was {self._last_stream_id})"
            )
        else:
            self._last_stream_id = stream_id
            return True
        events.append(RequestRejected(stream_id, Code.INVALID_ARGUMENT, message))
        self._discard = length
        return False

    def _on_client_header(self, header: _Header, events: list[Event]) -> bool:
        length, stream_id = header.length, header.stream_id
        if header.frame_type != FRAME_RESPONSE:
            reason = (
                "server-initiated streams are not supported"
                if header.frame_type == FRAME_REQUEST
                else "a ttrpc client receives only responses and data"
            )
            self._fail(events, self._unexpected_frame(header, reason))
            return False
        if stream_id in self._abandoned:
            if length > self.max_message_size:
                self._abandoned.discard(stream_id)
                events.append(StreamIgnored(stream_id, "oversized response to an abandoned call dropped"))
                self._discard = length
                return False
            return True
        if stream_id not in self._outstanding:
            self._fail(events, f"response on stream {stream_id}, which has no outstanding call")
            return False
        if length > self.max_message_size:
            self._outstanding.discard(stream_id)
            events.append(
                ResponseReceived(
                    stream_id,
                    Code.RESOURCE_EXHAUSTED,
                    f"response length {length} exceeds maximum message size of {self.max_message_size}",
                    b"",
                )
            )
            self._discard = length
            return False
        return True

    def _on_frame(self, header: _Header, body: bytes, events: list[Event]) -> None:
        stream_id = header.stream_id
        if self.role is Role.SERVER:
            try:
                request = decode_request(body)
            except WireError as exc:
                self._fail(events, f"undecodable request on stream {stream_id}: {exc}")
                return
            if header.flags & (FLAG_REMOTE_OPEN | FLAG_REMOTE_CLOSED):
                events.append(
                    RequestRejected(
                        stream_id,
                        Code.UNIMPLEMENTED,
                        f"streaming call {request.service}/{request.method} (flags 0x{header.flags:02x}) is "
                        f"not supported: this server serves unary methods only",
                    )
                )
                return
            events.append(
                RequestReceived(
                    stream_id,
                    request.service,
                    request.method,
                    request.payload,
                    request.timeout_nano,
                    metadata_dict(request.metadata),
                )
            )
            return

        try:
            response = decode_response(body)
        except WireError as exc:
            self._fail(events, f"undecodable response on stream {stream_id}: {exc}")
            return
        if stream_id in self._abandoned:
            self._abandoned.discard(stream_id)
            events.append(StreamIgnored(stream_id, "response to an abandoned call dropped"))
            return
        self._outstanding.discard(stream_id)
        status = response.status
        if status is None:
            # Go's ttrpc server leaves the status out of an OK answer (services.go: status.FromError(nil) is
            # nil) and its client reads a missing status as OK (client.go).
            events.append(ResponseReceived(stream_id, Code.OK, "", response.payload))
            return
        code = code_from_wire(status.code)
        message = status.message
        if code is None:
            code, message = Code.UNKNOWN, f"(unknown status code {status.code}) {message}"
        events.append(ResponseReceived(stream_id, code, message, response.payload))

    def _fail(self, events: list[Event], message: str) -> None:
        self._dead = True
        self._header = None
        self._discard = 0
        events.append(ProtocolError(message))

    @staticmethod
    def _unexpected_frame(header: _Header, reason: str) -> str:
        name = _FRAME_NAMES.get(header.frame_type)
        kind = f"{name} frame" if name else f"frame of unknown type 0x{header.frame_type:02x}"
        return f"unexpected {kind} on stream {header.stream_id}: {reason}"

    # -- output ------------------------------------------------------------------------------------------

    def send_request(
        self,
        service: str,
        method: str,
        payload: Buffer = b"",
        timeout_nano: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Client: start a unary call; returns its stream id and the frame to write (in id order)."""
        self._require(Role.CLIENT, "send_request")
        stream_id = self._next_stream_id
        if stream_id > _MAX_STREAM_ID:
            raise RpcError(Code.RESOURCE_EXHAUSTED, "stream ids of this connection are used up; reconnect")
        body = encode_request(
            service, method, payload, timeout_nano, list(metadata.items()) if metadata else ()
        )
        if len(body) > self.max_message_size:
            raise RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"request {service}/{method} of {len(body)} bytes exceeds maximum message size of "
                f"{self.max_message_size}",
            )
        self._next_stream_id += 2
        self._outstanding.add(stream_id)
        return stream_id, _frame(stream_id, FRAME_REQUEST, 0, body)

    def abandon(self, stream_id: int) -> None:
        """Client: the caller gave up on this call (timeout, cancel); its answer will be dropped."""
        self._require(Role.CLIENT, "abandon")
        if stream_id in self._outstanding:
            self._outstanding.discard(stream_id)
            self._abandoned.add(stream_id)

    def send_response(self, stream_id: int, payload: Buffer = b"") -> bytes:
        """Server: the OK answer to a request."""
        self._require(Role.SERVER, "send_response")
        body = encode_response(Code.OK, "", payload)
        if len(body) > self.max_message_size:
            raise RpcError(
                Code.RESOURCE_EXHAUSTED,
                f"response of {len(body)} bytes exceeds maximum message size of {self.max_message_size}",
            )
        return _frame(stream_id, FRAME_RESPONSE, 0, body)

    def send_error(self, stream_id: int, code: Code, message: str) -> bytes:
        """Server: answer a request (or a rejected frame) with a status; long messages are clipped."""
        self._require(Role.SERVER, "send_error")
        return _frame(stream_id, FRAME_RESPONSE, 0, encode_response(code, _clip(message)))

    def _require(self, role: Role, what: str) -> None:
        if self.role is not role:
            raise LocalProtocolError(f"{what} is for a {role.value} connection; this is a {self.role.value}")
