"""The asyncio ttrpc client over a unix socket: a thin transport around the sans-IO ``Connection``.

Owns one connection, the futures of the calls waiting on it, and their failure when it ends. The shim uses
it to forward events to containerd (``containerd.services.events.ttrpc.v1.Events/Forward``).

Invariants:
- Calls are multiplexed: any number may be in flight; each waits only for the response with its stream id.
- Stream ids go on the wire in increasing order (the server rejects a decreasing one): an id is taken and its
  frame written in one step, with no await in between.
- Every call ends: with its payload, with ``RpcError`` for a non-OK status (DEADLINE_EXCEEDED when its own
  timeout passes, RESOURCE_EXHAUSTED for a request too large to send), or with ``ConnectionError`` when the
  connection drops, breaks the protocol or is closed; then every pending call fails at once.
- A call that times out or is cancelled is abandoned in the core, so its late answer is dropped rather than
  treated as a protocol violation.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from .connection import (
    MAX_MESSAGE_SIZE,
    Connection,
    ConnectionClosed,
    ProtocolError,
    ResponseReceived,
    Role,
    StreamIgnored,
)
from .server import socket_path
from .status import Code, RpcError

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 1.0  # how long close() waits for the transport to flush before aborting it


class Client:
    """A ttrpc client; create it with ``await Client.connect(path)``."""

    def __init__(self, path: str, core: Connection) -> None:
        self._path = path
        self._core = core
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._failure: str | None = None  # why the connection is unusable, once it is

    @classmethod
    async def connect(
        cls,
        path: str,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> Client:
        """Connect to the ttrpc server at ``path`` (a path or ``unix:///path``).

        Raises ``ConnectionError`` when the socket is missing, refuses, or does not accept within ``timeout``.
        """
        fs_path = socket_path(path)
        client = cls(fs_path, Connection(Role.CLIENT, max_message_size))
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_unix_connection(lambda: _ClientProtocol(client), fs_path)
        except TimeoutError:
            raise ConnectionError(
                f"timed out after {timeout:g} s connecting to ttrpc socket {fs_path}"
            ) from None
        except OSError as exc:
            raise ConnectionError(f"cannot connect to ttrpc socket {fs_path}: {exc.strerror or exc}") from exc
        return client

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        """True once the connection can carry no more calls."""
        return self._failure is not None

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> bytes:
        """Call ``service/method`` and return the response payload.

        ``timeout`` (seconds) is sent to the server as the call's deadline and bounds the wait here; None
        waits as long as the connection lives. Raises ``RpcError`` for a non-OK status and ``ConnectionError``
        if the connection is or becomes unusable.
        """
        if timeout is not None and timeout <= 0:
            message = f"{service}/{method}: a timeout of {timeout:g} s leaves no time for the call"
            raise RpcError(Code.DEADLINE_EXCEEDED, message)
        stream_id: int | None = None
        try:
            async with asyncio.timeout(timeout):
                while not self._writable.is_set():
                    self._check_usable()
                    await self._writable.wait()
                self._check_usable()
                assert self._transport is not None
                stream_id, frame = self._core.send_request(
                    service,
                    method,
                    payload,
                    timeout_nano=int(timeout * 1e9) if timeout is not None else 0,
                    metadata=metadata,
                )
                future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                self._pending[stream_id] = future
                self._transport.write(frame)
                return await future
        except TimeoutError:
            raise RpcError(
                Code.DEADLINE_EXCEEDED, f"{service}/{method}: no response within {timeout:g} s"
            ) from None
        finally:
            if stream_id is not None and self._pending.pop(stream_id, None) is not None:
                # Still pending here means the caller gave up (timeout, cancellation).
                self._core.abandon(stream_id)

    async def close(self) -> None:
        """Close the connection; pending calls fail with ``ConnectionError``."""
        if self._failure is None:
            self._fail(f"ttrpc client for {self._path} was closed")
        if self._transport is not None:
            self._transport.close()
            if not self._lost.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self._lost), _CLOSE_TIMEOUT)
                except TimeoutError:
                    self._transport.abort()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- used by _ClientProtocol ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise ConnectionError(self._failure)

    def _fail(self, reason: str) -> None:
        """Make the connection unusable and fail every pending call with ``reason``."""
        if self._failure is None:
            self._failure = reason
        self._writable.set()  # wake calls waiting for room to write; they will see the failure
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionError(self._failure))

    def _on_events(self, data: bytes) -> None:
        for event in self._core.receive_data(data):
            if isinstance(event, ResponseReceived):
                future = self._pending.pop(event.stream_id, None)
                if future is None or future.done():
                    continue
                if event.status is Code.OK:
                    future.set_result(event.payload)
                else:
                    future.set_exception(RpcError(event.status, event.message))
            elif isinstance(event, StreamIgnored):
                log.debug("ttrpc client %s: stream %d: %s", self._path, event.stream_id, event.reason)
            elif isinstance(event, ProtocolError):
                log.error("ttrpc client %s: closing connection: %s", self._path, event.message)
                self._fail(f"ttrpc server at {self._path} broke the protocol: {event.message}")
                if self._transport is not None:
                    self._transport.close()
            elif isinstance(event, ConnectionClosed):
                self._fail(f"ttrpc server at {self._path} closed the connection")


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._client._transport = transport

    def data_received(self, data: bytes) -> None:
        self._client._on_events(data)

    def eof_received(self) -> bool | None:
        self._client._on_events(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        client = self._client
        reason = f"ttrpc connection to {client.path} was lost"
        client._fail(f"{reason}: {exc}" if exc is not None else reason)
        if not client._lost.done():
            client._lost.set_result(None)

    def pause_writing(self) -> None:
        self._client._writable.clear()

    def resume_writing(self) -> None:
        self._client._writable.set()
