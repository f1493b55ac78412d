"""ttrpc, containerd's lightweight RPC protocol: a sans-IO core with an asyncio server and client.

- ``wire``: the hand-written protobuf codec of the ttrpc envelope (and helpers to hand-encode tiny messages).
- ``status``: gRPC status codes and ``RpcError``.
- ``connection``: the protocol state machine, bytes in, events out; no I/O.
- ``server`` / ``client``: asyncio transports over unix sockets.

Every name loads lazily (PEP 562): the lean ``start``/``delete`` path imports ``wire`` and ``connection``
directly and must not pay for anything else, asyncio above all (tens of milliseconds).
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing typing costs the lean path ~5 ms; mypy honours this name as well.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .client import Client
    from .connection import (
        MAX_MESSAGE_SIZE,
        Connection,
        ConnectionClosed,
        Event,
        LocalProtocolError,
        ProtocolError,
        RequestReceived,
        RequestRejected,
        ResponseReceived,
        Role,
        StreamIgnored,
    )
    from .server import NAMESPACE_METADATA_KEY, CallContext, Handler, Server
    from .status import Code, RpcError
    from .wire import WireError

# Every name loads on first use: `start` imports only `wire` (through `launch`) and `delete` adds `connection`,
# so the package itself must import nothing (each import is paid by every container start).
_LAZY = {
    **dict.fromkeys(
        ("MAX_MESSAGE_SIZE", "Connection", "ConnectionClosed", "Event", "LocalProtocolError", "ProtocolError",
         "RequestReceived", "RequestRejected", "ResponseReceived", "Role", "StreamIgnored"),
        "connection",
    ),
    "Code": "status",
    "RpcError": "status",
    "WireError": "wire",
    "Client": "client",
    "Server": "server",
    "CallContext": "server",
    "Handler": "server",
    "NAMESPACE_METADATA_KEY": "server",
}

__all__ = [
    "MAX_MESSAGE_SIZE",
    "NAMESPACE_METADATA_KEY",
    "CallContext",
    "Client",
    "Code",
    "Connection",
    "ConnectionClosed",
    "Event",
    "Handler",
    "LocalProtocolError",
    "ProtocolError",
    "RequestReceived",
    "RequestRejected",
    "ResponseReceived",
    "Role",
    "RpcError",
    "Server",
    "StreamIgnored",
    "WireError",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
