"""The hand-written protobuf codec of the ttrpc envelope: round trips, golden bytes, malformed input."""

from __future__ import annotations

import random

import pytest

from wasm_shim.shim.ttrpc.wire import (
    WIRE_I32,
    WIRE_I64,
    WIRE_LEN,
    WIRE_VARINT,
    Request,
    Response,
    Status,
    WireError,
    as_int32,
    as_int64,
    decode_request,
    decode_response,
    decode_status,
    decode_varint,
    encode_request,
    encode_response,
    encode_status,
    encode_varint,
    field_bytes,
    field_key,
    field_string,
    field_varint,
    iter_fields,
)

# --- varints --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),  # the encoding guide's example
        (1_000_000_000, b"\x80\x94\xeb\xdc\x03"),
        ((1 << 64) - 1, b"\xff" * 9 + b"\x01"),
        (-1, b"\xff" * 9 + b"\x01"),  # int64 -1 is sign-extended to 10 bytes
    ],
)
def test_varint_encoding(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded
    decoded, end = decode_varint(encoded, 0)
    assert end == len(encoded)
    assert decoded == value % (1 << 64)


@pytest.mark.parametrize("value", [0, 1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
def test_varint_round_trip(value: int) -> None:
    assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))


def test_varint_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_varint(1 << 64)
    with pytest.raises(ValueError):
        encode_varint(-(1 << 63) - 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\xff\xff\xff",
        b"\xff" * 9 + b"\x02",  # the 10th byte may carry only the 64th bit
        b"\xff" * 10 + b"\x01",  # 11 bytes
    ],
)
def test_malformed_varint(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_varint(data, 0)


def test_signed_views() -> None:
    assert as_int64(2**64 - 1) == -1
    assert as_int64(5) == 5
    assert as_int32(2**64 - 1) == -1
    assert as_int32(2**32 + 7) == 7
    assert as_int32(2**31) == -(2**31)


# --- fields ---------------------------------------------------------------------------------------------


def test_field_helpers_and_iter_fields() -> None:
    message = (
        field_varint(1, 150)
        + field_string(2, "héllo")
        + field_bytes(3, b"\x00\x01")
        + field_key(4, WIRE_I64)
        + (7).to_bytes(8, "little")
        + field_key(5, WIRE_I32)
        + (9).to_bytes(4, "little")
        + field_varint(6, -2)
    )
    assert message[:3] == b"\x08\x96\x01"  # the encoding guide's field 1 = 150
    assert list(iter_fields(message)) == [
        (1, WIRE_VARINT, 150),
        (2, WIRE_LEN, "héllo".encode()),
        (3, WIRE_LEN, b"\x00\x01"),
        (4, WIRE_I64, 7),
        (5, WIRE_I32, 9),
        (6, WIRE_VARINT, 2**64 - 2),
    ]


def test_field_number_range() -> None:
    with pytest.raises(ValueError):
        field_key(0, WIRE_VARINT)
    with pytest.raises(ValueError):
        field_key(1 << 29, WIRE_VARINT)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"\x0a\x05abc", "runs past the end"),  # length 5, 3 bytes left
        (b"\x0a", "truncated varint"),  # key without its length
        (b"\x08", "truncated varint"),  # key without its value
        (b"\x00\x01", "field number 0"),
        (b"\x0b", "groups"),  # field 1, wire type 3 (start group)
        (b"\x0c", "groups"),  # field 1, wire type 4 (end group)
        (b"\x0e", "invalid wire type"),
        (b"\x0f", "invalid wire type"),
        (b"\x09\x01\x02", "truncated fixed64"),
        (b"\x0d\x01", "truncated fixed32"),
    ],
)
def test_malformed_fields(data: bytes, complaint: str) -> None:
    with pytest.raises(WireError, match=complaint):
        list(iter_fields(data))


def test_huge_declared_length_allocates_nothing() -> None:
    # A length of 2**63 must be refused from the header alone, before any slicing.
    data = b"\x1a" + encode_varint(2**63)
    with pytest.raises(WireError, match="runs past the end"):
        decode_request(data)


# --- the envelope ---------------------------------------------------------------------------------------


def test_request_golden_bytes() -> None:
    # Request{service="svc", method="M", payload=01 02, timeout_nano=1e9, metadata=[{"k", "v"}, {"k", "w"}]}
    expected = bytes.fromhex(
        "0a03737663"  # field 1 service (LEN 3): "svc"
        "12014d"  # field 2 method (LEN 1): "M"
        "1a020102"  # field 3 payload (LEN 2): 01 02
        "208094ebdc03"  # field 4 timeout_nano (VARINT): 1_000_000_000
        "2a060a016b120176"  # field 5 metadata (LEN 6): KeyValue{key=1 (LEN 1) "k", value=2 (LEN 1) "v"}
        "2a060a016b120177"  # field 5 again: {"k", "w"}
    )
    encoded = encode_request("svc", "M", b"\x01\x02", 1_000_000_000, [("k", "v"), ("k", "w")])
    assert encoded == expected
    assert decode_request(encoded) == Request(
        "svc", "M", b"\x01\x02", 1_000_000_000, [("k", "v"), ("k", "w")]
    )


def test_request_defaults_are_omitted() -> None:
    assert encode_request("", "") == b""
    assert decode_request(b"") == Request("", "")
    # An empty metadata value still sends its key.
    assert encode_request("", "", metadata=[("k", "")]) == bytes.fromhex("2a03" + "0a016b")


def test_response_golden_bytes() -> None:
    # OK keeps an empty status (field 1, length 0) for old clients; payload is field 2.
    assert encode_response(0, "", b"ok") == bytes.fromhex("0a00" + "12026f6b")
    # Status{code=12, message="nope"} inside field 1.
    assert encode_response(12, "nope") == bytes.fromhex("0a08" + "080c" + "12046e6f7065")
    assert decode_response(bytes.fromhex("0a00" + "12026f6b")) == Response(Status(0, ""), b"ok")


def test_response_without_status() -> None:
    assert decode_response(bytes.fromhex("12026f6b")) == Response(None, b"ok")


def test_status_negative_code_and_merge() -> None:
    assert decode_status(encode_status(-5, "x")) == Status(-5, "x")
    # Two status fields merge: later scalars win.
    data = field_bytes(1, encode_status(3, "first")) + field_bytes(1, encode_status(5, ""))
    assert decode_response(data) == Response(Status(5, "first"), b"")


def test_status_details_are_skipped() -> None:
    any_detail = field_string(1, "type.googleapis.com/x") + field_bytes(2, b"\x01")
    status = encode_status(9, "m") + field_bytes(3, any_detail) + field_bytes(3, any_detail)
    assert decode_status(status) == Status(9, "m")


def test_unknown_fields_are_skipped() -> None:
    extra = (
        field_varint(99, 1)
        + field_bytes(100, b"zz")
        + field_key(101, WIRE_I64)
        + bytes(8)
        + field_key(102, WIRE_I32)
        + bytes(4)
    )
    data = extra + encode_request("svc", "M", b"p") + extra
    assert decode_request(data) == Request("svc", "M", b"p")
    assert decode_response(extra + encode_response(0, "", b"p")) == Response(Status(0, ""), b"p")


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (field_varint(1, 5), r"field 1 \(service\) has wire type 0"),
        (field_bytes(4, b"1"), r"field 4 \(timeout_nano\) has wire type 2"),
        (field_bytes(5, field_varint(1, 1)), r"KeyValue.key"),
        (field_bytes(1, b"\xff\xfe"), "not valid UTF-8"),
        (field_bytes(5, field_bytes(2, b"\xc3")), "not valid UTF-8"),
    ],
)
def test_malformed_request(data: bytes, complaint: str) -> None:
    with pytest.raises(WireError, match=complaint):
        decode_request(data)


def test_malformed_response() -> None:
    with pytest.raises(WireError, match="Status.code"):
        decode_response(field_bytes(1, field_bytes(1, b"x")))
    with pytest.raises(WireError):
        decode_response(field_bytes(1, b"\x08"))


def test_every_truncation_fails_cleanly() -> None:
    """A cut inside a field is a WireError; a cut between fields is a shorter valid message (protobuf has no end
    marker: the frame header's length is what catches those) and decodes to exactly the fields before it."""
    encoded = encode_request("containerd.task.v2.Task", "Create", b"x" * 200, 5, [("a", "b")])
    failed, boundaries = 0, []
    for cut in range(len(encoded)):
        try:
            request = decode_request(encoded[:cut])
        except WireError:
            failed += 1
            continue
        again = encode_request(request.service, request.method, request.payload, request.timeout_nano,
                               request.metadata)
        assert again == encoded[:cut], f"cut at {cut} decoded to something else than the fields before it"
        boundaries.append(cut)
    assert boundaries == [0, 25, 33, 236, 238]  # before service, method, payload, timeout, metadata
    assert failed == len(encoded) - len(boundaries)


def test_random_bytes_raise_only_wire_error() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 64))
        for decode in (decode_request, decode_response):
            try:
                decode(data)
            except WireError:
                pass


def test_memoryview_and_bytearray_input() -> None:
    encoded = encode_request("s", "m", b"p")
    assert decode_request(memoryview(encoded)) == Request("s", "m", b"p")
    assert decode_request(bytearray(encoded)) == Request("s", "m", b"p")


# --- cross-check with the protobuf runtime (tests only; the shim does not depend on it here) -------------


def _protobuf_classes() -> tuple[type, type]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(
        name="ttrpc_crosscheck.proto", package="crosscheck", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    kv = fdp.message_type.add(name="KeyValue")
    kv.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    kv.field.add(name="value", number=2, type=F.TYPE_STRING, label=opt)
    req = fdp.message_type.add(name="Request")
    req.field.add(name="service", number=1, type=F.TYPE_STRING, label=opt)
    req.field.add(name="method", number=2, type=F.TYPE_STRING, label=opt)
    req.field.add(name="payload", number=3, type=F.TYPE_BYTES, label=opt)
    req.field.add(name="timeout_nano", number=4, type=F.TYPE_INT64, label=opt)
    req.field.add(name="metadata", number=5, type=F.TYPE_MESSAGE, label=rep, type_name=".crosscheck.KeyValue")
    st = fdp.message_type.add(name="Status")
    st.field.add(name="code", number=1, type=F.TYPE_INT32, label=opt)
    st.field.add(name="message", number=2, type=F.TYPE_STRING, label=opt)
    resp = fdp.message_type.add(name="Response")
    resp.field.add(name="status", number=1, type=F.TYPE_MESSAGE, label=opt, type_name=".crosscheck.Status")
    resp.field.add(name="payload", number=2, type=F.TYPE_BYTES, label=opt)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("crosscheck.Request")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("crosscheck.Response")),
    )


@pytest.mark.parametrize(
    ("service", "method", "payload", "timeout_nano", "metadata"),
    [
        ("containerd.task.v2.Task", "Create", b"\x0a\x03abc", 0, [("containerd-namespace-ttrpc", "k8s.io")]),
        ("s", "m", b"", -7, []),
        ("ünï", "cödé", bytes(range(256)) * 3, 2**62, [("a", "1"), ("a", "2"), ("b", "")]),
    ],
)
def test_request_matches_protobuf(
    service: str, method: str, payload: bytes, timeout_nano: int, metadata: list[tuple[str, str]]
) -> None:
    request_cls, _ = _protobuf_classes()
    reference = request_cls(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
    for key, value in metadata:
        reference.metadata.add(key=key, value=value)
    ours = encode_request(service, method, payload, timeout_nano, metadata)
    assert ours == reference.SerializeToString(deterministic=True)
    parsed = request_cls()
    parsed.ParseFromString(ours)
    assert parsed == reference
    assert decode_request(reference.SerializeToString()) == Request(
        service, method, payload, timeout_nano, metadata
    )


@pytest.mark.parametrize(
    ("code", "message", "payload"), [(0, "", b""), (0, "", b"ok"), (13, "boom", b""), (-3, "n", b"")]
)
def test_response_matches_protobuf(code: int, message: str, payload: bytes) -> None:
    _, response_cls = _protobuf_classes()
    reference = response_cls(payload=payload)
    reference.status.code = code  # touching the field makes the status present, as ttrpc's server does
    reference.status.message = message
    ours = encode_response(code, message, payload)
    assert ours == reference.SerializeToString(deterministic=True)
    assert decode_response(reference.SerializeToString()) == Response(Status(code, message), payload)
