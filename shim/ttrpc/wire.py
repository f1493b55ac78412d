"""Protobuf wire codec for the ttrpc envelope, written by hand.

This module owns the protobuf encoding (https://protobuf.dev/programming-guides/encoding/) of exactly the
messages ttrpc wraps every call in (containerd/ttrpc ``request.proto``):

    Request  {service=1 string, method=2 string, payload=3 bytes, timeout_nano=4 int64,
              metadata=5 repeated KeyValue}
    KeyValue {key=1 string, value=2 string}
    Response {status=1 google.rpc.Status, payload=2 bytes}
    Status   {code=1 int32, message=2 string, details=3 repeated Any (skipped)}

plus small generic helpers (``encode_varint``, ``field_varint``, ``field_bytes``, ``field_string``,
``iter_fields``, ``as_int64``/``as_int32``/``as_str``) that other modules reuse to hand-encode tiny messages.

Invariants:
- Decoding raises one exception type, ``WireError``, for every malformed input: a truncated or over-long
  varint, a length that runs past the end, field number 0, a group or reserved wire type, a known field with
  the wrong wire type, a string that is not UTF-8 (proto3 requires valid UTF-8).
- Decoding never reads past its input, always advances (so it cannot loop forever), and allocates at most
  the size of its input: every value is a slice of the input and every length is checked before slicing.
- Unknown fields are skipped, as proto3 parsers do, so a newer peer can add fields.
- Encoding omits proto3 default values (empty strings/bytes, zero integers), except that a Response always
  carries its status: Go's ttrpc server omits it for OK and current clients read that as OK, but early Go
  clients rejected a response without one ("no status provided on response"); it costs two bytes.
- Imports nothing beyond modules the interpreter has already loaded at start-up: the lean ``start``/``delete``
  path of the shim binary imports this module, and every import there is paid on each container start.
"""

from __future__ import annotations

# Only for annotations (strings under `from __future__ import annotations`): collections.abc pulls in
# `collections`, not loaded at start-up under `python -I -S` (the shim binary's launcher).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

# Wire types (encoding guide, "Message Structure").
WIRE_VARINT = 0
WIRE_I64 = 1
WIRE_LEN = 2
WIRE_SGROUP = 3
WIRE_EGROUP = 4
WIRE_I32 = 5

_MAX_FIELD_NUMBER = (1 << 29) - 1
_UINT64_LIMIT = 1 << 64
_INT64_MIN = -(1 << 63)

Buffer = bytes | bytearray | memoryview
FieldValue = int | bytes


class WireError(ValueError):
    """The bytes are not a valid encoding of the expected protobuf message."""


# --- encoding -------------------------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Base-128 varint of ``value``; negative values are sign-extended to 64 bits (int32/int64 fields)."""
    if value < 0:
        if value < _INT64_MIN:
            raise ValueError(f"varint value {value} is below the int64 range")
        value += _UINT64_LIMIT
    elif value >= _UINT64_LIMIT:
        raise ValueError(f"varint value {value} exceeds 64 bits")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_key(num: int, wire_type: int) -> bytes:
    """The tag that starts field ``num`` with ``wire_type``."""
    if not 1 <= num <= _MAX_FIELD_NUMBER:
        raise ValueError(f"field number {num} is outside 1..{_MAX_FIELD_NUMBER}")
    return encode_varint((num << 3) | wire_type)


def field_varint(num: int, value: int) -> bytes:
    """An int32/int64/uint32/uint64/bool/enum field, always emitted (callers skip proto3 defaults)."""
    return field_key(num, WIRE_VARINT) + encode_varint(value)


def field_bytes(num: int, data: Buffer) -> bytes:
    """A length-delimited field: bytes, or an already-encoded embedded message."""
    return field_key(num, WIRE_LEN) + encode_varint(len(data)) + bytes(data)


def field_string(num: int, text: str) -> bytes:
    """A string field (UTF-8)."""
    return field_bytes(num, text.encode("utf-8"))


# --- decoding -------------------------------------------------------------------------------------------


def decode_varint(data: Buffer, pos: int) -> tuple[int, int]:
    """Read a varint at ``pos``; return ``(value, next_pos)``. At most 10 bytes, at most 64 bits."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            # The 10th byte may only carry the 64th bit (encoding guide, "Base 128 Varints").
            raise WireError("varint overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def iter_fields(data: Buffer) -> Iterator[tuple[int, int, FieldValue]]:
    """Yield ``(field_number, wire_type, value)`` for each field of one message, in wire order.

    ``value`` is an ``int`` for VARINT/I64/I32 (raw unsigned; see ``as_int64``/``as_int32``) and ``bytes``
    for LEN. Groups (deprecated, unused by any message we read) and wire types 6/7 raise ``WireError``.
    """
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = decode_varint(data, pos)
        num = key >> 3
        wire_type = key & 0x7
        if num == 0:
            raise WireError("field number 0 is invalid")
        if num > _MAX_FIELD_NUMBER:
            raise WireError(f"field number {num} exceeds {_MAX_FIELD_NUMBER}")
        value: FieldValue
        if wire_type == WIRE_VARINT:
            value, pos = decode_varint(data, pos)
        elif wire_type == WIRE_LEN:
            length, pos = decode_varint(data, pos)
            if length > end - pos:
                raise WireError(f"field {num}: length {length} runs past the end ({end - pos} bytes left)")
            value = bytes(data[pos : pos + length])
            pos += length
        elif wire_type == WIRE_I64 or wire_type == WIRE_I32:
            size = 8 if wire_type == WIRE_I64 else 4
            if size > end - pos:
                raise WireError(f"field {num}: truncated fixed{size * 8} value")
            value = int.from_bytes(data[pos : pos + size], "little")
            pos += size
        elif wire_type in (WIRE_SGROUP, WIRE_EGROUP):
            raise WireError(f"field {num}: groups (wire type {wire_type}) are not supported")
        else:
            raise WireError(f"field {num}: invalid wire type {wire_type}")
        yield num, wire_type, value


def as_int64(value: int) -> int:
    """Interpret a raw varint as a two's-complement int64."""
    return value - _UINT64_LIMIT if value >= 1 << 63 else value


def as_int32(value: int) -> int:
    """Interpret a raw varint as an int32 (protobuf truncates to the low 32 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def as_str(value: bytes, name: str) -> str:
    """Decode a string field's bytes, rejecting invalid UTF-8 as proto3 parsers do."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"field {name!r} is not valid UTF-8: {exc.reason}") from None


def _expect(num: int, wire_type: int, value: FieldValue, expected: int, name: str) -> None:
    if wire_type != expected:
        raise WireError(f"field {num} ({name}) has wire type {wire_type}, expected {expected}")


def _len_value(num: int, wire_type: int, value: FieldValue, name: str) -> bytes:
    _expect(num, wire_type, value, WIRE_LEN, name)
    assert isinstance(value, bytes)
    return value


def _varint_value(num: int, wire_type: int, value: FieldValue, name: str) -> int:
    _expect(num, wire_type, value, WIRE_VARINT, name)
    assert isinstance(value, int)
    return value


# --- the envelope messages ------------------------------------------------------------------------------


class Request:
    """A decoded ttrpc ``Request``; ``metadata`` keeps the wire order of the KeyValue pairs."""

    __slots__ = ("service", "method", "payload", "timeout_nano", "metadata")

    def __init__(
        self,
        service: str,
        method: str,
        payload: bytes = b"",
        timeout_nano: int = 0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.service = service
        self.method = method
        self.payload = payload
        self.timeout_nano = timeout_nano
        self.metadata: list[tuple[str, str]] = list(metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable record

    def __repr__(self) -> str:
        return (
            f"Request(service={self.service!r}, method={self.method!r}, payload=<{len(self.payload)} bytes>, "
            f"timeout_nano={self.timeout_nano}, metadata={self.metadata!r})"
        )


class Status:
    """A decoded ``google.rpc.Status``; ``code`` is the raw int32 (may be outside the known codes)."""

    __slots__ = ("code", "message")

    def __init__(self, code: int = 0, message: str = "") -> None:
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Status):
            return NotImplemented
        return self.code == other.code and self.message == other.message

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Status(code={self.code}, message={self.message!r})"


class Response:
    """A decoded ttrpc ``Response``; ``status`` is None when the peer sent none (which means OK)."""

    __slots__ = ("status", "payload")

    def __init__(self, status: Status | None, payload: bytes = b"") -> None:
        self.status = status
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return self.status == other.status and self.payload == other.payload

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Response(status={self.status!r}, payload=<{len(self.payload)} bytes>)"


def encode_request(
    service: str,
    method: str,
    payload: Buffer = b"",
    timeout_nano: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Encode a ttrpc Request; fields holding proto3 defaults are omitted."""
    parts: list[bytes] = []
    if service:
        parts.append(field_string(1, service))
    if method:
        parts.append(field_string(2, method))
    if payload:
        parts.append(field_bytes(3, payload))
    if timeout_nano:
        parts.append(field_varint(4, timeout_nano))
    for key, value in metadata:
        entry = (field_string(1, key) if key else b"") + (field_string(2, value) if value else b"")
        parts.append(field_bytes(5, entry))
    return b"".join(parts)


def _decode_key_value(data: bytes) -> tuple[str, str]:
    key = value = ""
    for num, wire_type, raw in iter_fields(data):
        if num == 1:
            key = as_str(_len_value(num, wire_type, raw, "KeyValue.key"), "KeyValue.key")
        elif num == 2:
            value = as_str(_len_value(num, wire_type, raw, "KeyValue.value"), "KeyValue.value")
    return key, value


def decode_request(data: Buffer) -> Request:
    """Decode a ttrpc Request; raises ``WireError`` on malformed input."""
    request = Request("", "")
    for num, wire_type, raw in iter_fields(data):
        if num == 1:
            request.service = as_str(_len_value(num, wire_type, raw, "service"), "service")
        elif num == 2:
            request.method = as_str(_len_value(num, wire_type, raw, "method"), "method")
        elif num == 3:
            request.payload = _len_value(num, wire_type, raw, "payload")
        elif num == 4:
            request.timeout_nano = as_int64(_varint_value(num, wire_type, raw, "timeout_nano"))
        elif num == 5:
            request.metadata.append(_decode_key_value(_len_value(num, wire_type, raw, "metadata")))
    return request


def encode_status(code: int, message: str = "") -> bytes:
    """Encode a google.rpc.Status (details are never sent)."""
    return (field_varint(1, code) if code else b"") + (field_string(2, message) if message else b"")


def decode_status(data: Buffer) -> Status:
    """Decode a google.rpc.Status; ``details`` (field 3) is skipped."""
    status = Status()
    for num, wire_type, raw in iter_fields(data):
        if num == 1:
            status.code = as_int32(_varint_value(num, wire_type, raw, "Status.code"))
        elif num == 2:
            status.message = as_str(_len_value(num, wire_type, raw, "Status.message"), "Status.message")
    return status


def encode_response(code: int, message: str = "", payload: Buffer = b"") -> bytes:
    """Encode a ttrpc Response. The status field is always present, even for OK (see the module notes)."""
    out = field_bytes(1, encode_status(code, message))
    if payload:
        out += field_bytes(2, payload)
    return out


def decode_response(data: Buffer) -> Response:
    """Decode a ttrpc Response; raises ``WireError`` on malformed input."""
    status_parts: list[bytes] = []
    payload = b""
    for num, wire_type, raw in iter_fields(data):
        if num == 1:
            # A repeated embedded message field merges; concatenating the encodings is that merge.
            status_parts.append(_len_value(num, wire_type, raw, "status"))
        elif num == 2:
            payload = _len_value(num, wire_type, raw, "payload")
    status = decode_status(b"".join(status_parts)) if status_parts else None
    return Response(status, payload)
