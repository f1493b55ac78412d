"""The asyncio ttrpc server over unix sockets: a thin transport around the sans-IO ``Connection``.

Owns listening, one ``Connection`` per accepted socket, running handlers, and graceful shutdown.

Why ``loop.create_unix_server`` with a ``Protocol`` rather than ``start_unix_server`` streams: bytes arrive in
``data_received`` and go straight into ``Connection.receive_data`` with no reader task or extra copy per
connection, and ``transport.write`` is synchronous, so each finished call writes its whole frame at once and
frames never interleave: the event loop is the single writer, no lock is needed. Backpressure comes from the
protocol callbacks: while the kernel buffer is full (``pause_writing``) handlers wait before writing and the
connection stops reading new requests, so a peer that does not read its answers cannot make us buffer
without bound.

Invariants:
- Each request runs in its own task, so calls on one connection run concurrently and answers go out in the
  order they finish (as in ttrpc's server.go).
- Every request gets exactly one answer while its connection lives: the handler's bytes; the status of an
  ``RpcError`` it raised; INTERNAL (logged with its traceback) for any other exception; UNIMPLEMENTED for a
  (service, method) with no handler; UNAVAILABLE once the server is shutting down; RESOURCE_EXHAUSTED while
  the connection already has ``max_calls_per_connection`` calls running (a flood of streams, e.g. Waits that
  never end, cannot grow the daemon without bound; containerd runs a handful per connection at most).
- Nothing a client sends can stop the server: a ``ProtocolError`` closes only that connection, after a log.
- Deadlines are cooperative: ``CallContext`` carries the client's timeout, but a handler is not cancelled
  when it passes (cancelling a task-lifecycle call halfway could lose a task; Go's ttrpc likewise only puts
  the deadline in the context). Likewise a dropped connection does not cancel its running handlers; their
  answers are discarded.
- ``close(grace)`` stops accepting, closes idle connections, answers new requests UNAVAILABLE, waits up to
  ``grace`` seconds for running calls, then cancels the rest (answering UNAVAILABLE) and closes everything.
  Do not await it from inside a handler: it would wait for that handler; schedule it as a task instead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .connection import (
    MAX_MESSAGE_SIZE,
    Connection,
    ConnectionClosed,
    ProtocolError,
    RequestReceived,
    RequestRejected,
    Role,
    StreamIgnored,
)
from .status import Code, RpcError

log = logging.getLogger(__name__)

# containerd puts the namespace of every shim call in this metadata key (namespaces/ttrpc.go).
NAMESPACE_METADATA_KEY = "containerd-namespace-ttrpc"

# Pending connections the kernel queues before connect() fails with EAGAIN (clamped to net.core.somaxconn). asyncio
# re-listens an inherited socket with its own default (100), so it is passed explicitly: a burst of more than 100
# clients at once was otherwise refused before the daemon saw it.
LISTEN_BACKLOG = 4096

# Calls running at once on one connection before new ones are refused (a flood of streams).
MAX_CALLS_PER_CONNECTION = 1024

# After cancelling calls that outlived the grace period, and after closing transports, wait at most this long
# for them to finish; a handler that swallows cancellation or a peer that never reads cannot hold close().
_SETTLE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about its call besides the payload."""

    service: str
    method: str
    metadata: Mapping[str, list[str]]
    namespace: str | None  # from "containerd-namespace-ttrpc", None when absent
    timeout: float | None  # seconds the client allowed (timeout_nano), None for no deadline
    deadline: float | None  # the loop.time() at which the client gives up, None for no deadline
    stream_id: int = 0

    def remaining(self) -> float | None:
        """Seconds left before the client's deadline (negative once passed), None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()


Handler = Callable[[bytes, CallContext], Awaitable[bytes]]


def socket_path(address: str) -> str:
    """The filesystem path of a ttrpc address: a plain path or ``unix:///path`` (containerd's form)."""
    return address[len("unix://") :] if address.startswith("unix://") else address


def _namespace(metadata: Mapping[str, list[str]]) -> str | None:
    # Metadata keys are case-insensitive in ttrpc (metadata.go MD.Get lower-cases the key).
    for key, values in metadata.items():
        if key.lower() == NAMESPACE_METADATA_KEY and values:
            return values[0]
    return None


def _peer_description(sock: socket.socket | None) -> str:
    if sock is None:
        return "unknown peer"
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return f"pid {pid} (uid {uid})"
    except (OSError, AttributeError):
        return "unknown peer"


def _refuse_live_socket(path: str) -> None:
    """Raise EADDRINUSE if a server already answers at ``path``.

    asyncio's ``create_unix_server`` silently removes an existing socket file, which would steal the address
    of a live server (another shim daemon); a stale file (nobody accepting) may be replaced.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # absent is fine; a non-socket makes bind fail with its own clear error
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale
    except BlockingIOError:
        pass  # alive, its backlog is just full
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is already listening on this socket")


def _remove_socket_file(path: str, inode: int) -> None:
    """Unlink the socket file we bound, unless something else has replaced it since."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("ttrpc server: cannot remove socket %s: %s", path, exc)


class Server:
    """Serves unary ttrpc methods from ``handlers``, keyed by (service, method)."""

    def __init__(
        self,
        handlers: Mapping[tuple[str, str], Handler],
        *,
        on_connection_change: Callable[[int], None] | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        max_calls_per_connection: int = MAX_CALLS_PER_CONNECTION,
    ) -> None:
        self._handlers = dict(handlers)
        self._max_calls = max_calls_per_connection
        self._services = {service for service, _ in self._handlers}
        self._on_connection_change = on_connection_change
        self._max_message_size = max_message_size
        self._server: asyncio.AbstractServer | None = None
        self._created_socket: tuple[str, int] | None = None  # (path, inode) of a socket file we bound
        self._connections: set[_ServerConnection] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = asyncio.Event()

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    @property
    def closing(self) -> bool:
        return self._closing

    async def start(self, path: str | None = None, sock: socket.socket | None = None) -> None:
        """Listen on a new socket at ``path``, or on ``sock``: a bound unix socket handed over (by fd)."""
        if (path is None) == (sock is None):
            raise ValueError("Server.start needs exactly one of path or sock")
        if self._server is not None or self._closing:
            raise RuntimeError("Server.start may be called once")
        loop = asyncio.get_running_loop()
        if path is not None:
            fs_path = socket_path(path)
            try:
                _refuse_live_socket(fs_path)
                self._server = await loop.create_unix_server(self._new_connection, path=fs_path,
                                                             backlog=LISTEN_BACKLOG)
                self._created_socket = (fs_path, os.lstat(fs_path).st_ino)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"cannot listen for ttrpc on {fs_path}: {reason}") from exc
        else:
            assert sock is not None
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"ttrpc needs a unix stream socket, got {sock!r}")
            self._server = await loop.create_unix_server(self._new_connection, sock=sock, backlog=LISTEN_BACKLOG)
        log.debug("ttrpc server listening on %s", path if path is not None else sock)

    async def close(self, grace: float) -> None:
        """Stop serving; let running calls finish for up to ``grace`` seconds, then cancel them and close."""
        if self._closing:
            await self._closed.wait()  # a second caller returns when the first close has finished
            return
        self._closing = True
        try:
            await self._shut_down(grace)
        finally:
            self._closed.set()

    async def _shut_down(self, grace: float) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            if conn.idle:
                conn.close()

        running = set(self._calls)
        if running:
            _, running = await asyncio.wait(running, timeout=max(grace, 0.0))
        if running:
            log.warning(
                "ttrpc server: %d call(s) still running after the %.3g s grace period; cancelling them",
                len(running),
                grace,
            )
            for task in running:
                task.cancel()
            _, stuck = await asyncio.wait(running, timeout=_SETTLE_TIMEOUT)
            if stuck:
                log.error("ttrpc server: %d call(s) ignored cancellation; abandoning them", len(stuck))

        conns = list(self._connections)
        for conn in conns:
            conn.close()
        lost = [conn.lost for conn in conns if not conn.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=_SETTLE_TIMEOUT)
            for conn in conns:
                if not conn.lost.done():
                    conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self._created_socket is not None:
            _remove_socket_file(*self._created_socket)

    # -- used by _ServerConnection -------------------------------------------------------------------------

    def _new_connection(self) -> _ServerConnection:
        return _ServerConnection(self, Connection(Role.SERVER, self._max_message_size))

    def _connection_made(self, conn: _ServerConnection) -> None:
        self._connections.add(conn)
        self._notify()

    def _connection_lost(self, conn: _ServerConnection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            self._notify()

    def _notify(self) -> None:
        if self._on_connection_change is None:
            return
        try:
            self._on_connection_change(len(self._connections))
        except Exception:
            log.exception("ttrpc server: on_connection_change callback failed")

    def _dispatch(self, conn: _ServerConnection, event: RequestReceived) -> None:
        if self._closing:
            conn.write_now(
                conn.core.send_error(event.stream_id, Code.UNAVAILABLE, "ttrpc server is shutting down")
            )
            return
        handler = self._handlers.get((event.service, event.method))
        if handler is None:
            if event.service in self._services:
                message = f"method {event.method!r} of service {event.service!r} is not implemented"
            else:
                message = f"service {event.service!r} is not served here (method {event.method!r})"
            conn.write_now(conn.core.send_error(event.stream_id, Code.UNIMPLEMENTED, message))
            return
        if conn.calls >= self._max_calls:
            message = (f"{event.service}/{event.method} refused: this connection already has {conn.calls} calls "
                       f"running (at most {self._max_calls})")
            if not conn.flooded:  # one line per connection, not one per refused call
                conn.flooded = True
                log.warning("ttrpc: %s from %s (further refusals on this connection are not logged)", message,
                            conn.peer)
            conn.write_now(conn.core.send_error(event.stream_id, Code.RESOURCE_EXHAUSTED, message))
            return
        task = asyncio.get_running_loop().create_task(self._run_call(conn, handler, event))
        conn.calls += 1
        self._calls.add(task)
        task.add_done_callback(lambda t: self._call_done(conn, t))

    def _call_done(self, conn: _ServerConnection, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        conn.calls -= 1
        if self._closing and conn.idle:
            conn.close()

    async def _run_call(self, conn: _ServerConnection, handler: Handler, event: RequestReceived) -> None:
        loop = asyncio.get_running_loop()
        timeout = event.timeout_nano / 1e9 if event.timeout_nano > 0 else None
        ctx = CallContext(
            service=event.service,
            method=event.method,
            metadata=event.metadata,
            namespace=_namespace(event.metadata),
            timeout=timeout,
            deadline=loop.time() + timeout if timeout is not None else None,
            stream_id=event.stream_id,
        )
        core = conn.core
        try:
            result = await handler(event.payload, ctx)
            if not isinstance(result, bytes | bytearray | memoryview):
                raise TypeError(f"handler returned {type(result).__name__}, expected bytes")
            try:
                frame = core.send_response(event.stream_id, result)
            except RpcError as exc:
                log.error("ttrpc %s/%s: %s", event.service, event.method, exc)
                frame = core.send_error(event.stream_id, exc.code, exc.message)
        except RpcError as exc:
            frame = core.send_error(event.stream_id, exc.code, exc.message)
        except asyncio.CancelledError:
            conn.write_now(
                core.send_error(
                    event.stream_id,
                    Code.UNAVAILABLE,
                    f"{event.service}/{event.method} was cancelled: "
                    "the ttrpc server shut down before it finished",
                )
            )
            raise
        except Exception as exc:
            log.exception("ttrpc handler %s/%s failed", event.service, event.method)
            frame = core.send_error(event.stream_id, Code.INTERNAL, str(exc) or type(exc).__name__)
        await conn.write(frame)


class _ServerConnection(asyncio.Protocol):
    """One accepted socket: feeds bytes to the core and acts on its events."""

    def __init__(self, server: Server, core: Connection) -> None:
        self.server = server
        self.core = core
        self.calls = 0  # handler tasks running for this connection
        self.flooded = False  # a call was refused for too many running calls (logged once)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._peer = "unknown peer"

    @property
    def idle(self) -> bool:
        return self.calls == 0

    @property
    def peer(self) -> str:
        return self._peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._peer = _peer_description(transport.get_extra_info("socket"))
        self.server._connection_made(self)
        if self.server.closing:
            transport.close()

    def data_received(self, data: bytes) -> None:
        for event in self.core.receive_data(data):
            if isinstance(event, RequestReceived):
                self.server._dispatch(self, event)
            elif isinstance(event, RequestRejected):
                log.info("ttrpc: rejected stream %d from %s: %s", event.stream_id, self._peer, event.message)
                self.write_now(self.core.send_error(event.stream_id, event.code, event.message))
            elif isinstance(event, StreamIgnored):
                log.debug("ttrpc: stream %d from %s: %s", event.stream_id, self._peer, event.reason)
            elif isinstance(event, ProtocolError):
                log.warning("ttrpc: closing connection from %s: %s", self._peer, event.message)
                self.close()

    def eof_received(self) -> bool | None:
        for event in self.core.receive_data(b""):
            if isinstance(event, ConnectionClosed) and event.partial_frame:
                log.warning("ttrpc: %s closed the connection in the middle of a frame", self._peer)
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("ttrpc: connection from %s lost: %s", self._peer, exc)
        self._writable.set()  # wake writers; they see the transport closing and drop their frames
        if not self.lost.done():
            self.lost.set_result(None)
        self.server._connection_lost(self)

    def pause_writing(self) -> None:
        self._writable.clear()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def write_now(self, frame: bytes) -> None:
        """Write a frame at once (small answers decided while reading)."""
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(frame)

    async def write(self, frame: bytes) -> None:
        """Write a frame once the peer has room for it; dropped if the connection is gone."""
        await self._writable.wait()
        if self._transport is None or self._transport.is_closing():
            log.debug("ttrpc: %s went away; dropping an answer", self._peer)
            return
        self._transport.write(frame)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
