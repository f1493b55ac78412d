"""Call status: the gRPC status codes ttrpc reuses, and the error that carries one.

Owns ``Code`` (numbering from grpc ``codes.proto``; ttrpc puts them in ``google.rpc.Status.code``) and
``RpcError``, the one exception a handler raises to answer with a status and a client call raises when the
answer is not OK. Imports only ``enum`` (already loaded at interpreter start-up), so the lean binary path may
use it.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_CODES_BY_VALUE = {int(code): code for code in Code}


def code_from_wire(value: int) -> Code | None:
    """The ``Code`` for a status code read off the wire, or None if it is not one gRPC defines."""
    return _CODES_BY_VALUE.get(value)


class RpcError(Exception):
    """A call ended with a non-OK status: raised by handlers to answer with it, and by clients on receipt."""

    def __init__(self, code: Code, message: str = "") -> None:
        super().__init__(code, message)
        self.code = Code(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"
