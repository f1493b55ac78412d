"""One HTTP exchange with a registry, bounded: our HTTP/1.1 over the standard library's sockets, a cap on every
read, a total deadline.

Owns `Transport` (connections kept alive per origin, each carrying one exchange at a time: plain TCP, TLS with
oci/tls.py's trust, a CONNECT tunnel through an https proxy, or absolute-form requests to an http proxy) and
`Exchange` (a response whose body can only be read through a cap the error names, streamed under the deadline, or
discarded without being held). The bytes are parsed by oci/http1.py, which does no I/O; oci/registry.py builds
requests, redirects, authentication and retries on top, and turns `TransportError`s into its messages.

Rules:
- Bodies are read as sent: nothing asks for or undoes a content coding (registries do not content-encode, and the
  digest is of the bytes on the wire), and a transfer coding other than chunked is refused (oci/http1.py).
- `read(cap, what)` refuses at once a declared Content-Length over `cap`, else reads at most `cap` + 1 bytes and
  refuses with "over the N byte limit". `error_text()` keeps the first `ERROR_BODY_LIMIT` bytes for the message
  and never reads the rest. A connection goes back to the pool only after its response was read to its end and
  the parser says it may carry another (never a half-read one, whose rest would be read as the next response).
- Every exchange ends at its deadline (oci/deadline.py): from the moment the request is sent, headers and body
  together take at most the client's total timeout plus one second per `MIN_RATE` bytes received. Every wait on
  the socket is bounded by the read timeout or the time left, whichever is shorter, so no wait outlasts the
  deadline; then the deadline shuts the socket down, and the error names the deadline. Connecting has the connect
  timeout, sending a request the read timeout.
- A kept-alive connection the server closed while it sat idle is noticed before it is used (readable when
  nothing is due), or by the request getting no byte of a response (a server may close one at any time, RFC 9112
  section 9.6; tinyproxy does after every forwarded answer, without saying so); then the request is sent once more
  on a new connection, when its body can be sent again (none, bytes, a seekable file rewound): RFC 9112 section
  9.3.1 allows it for idempotent requests, and a request the server never answered on a connection it had
  already closed was not processed. Every other failure is the caller's to retry.
- Proxies (oci/proxy.py chooses them): an https URL goes through a CONNECT tunnel (RFC 9110 section 9.3.6), TLS
  end to end with the registry; an http URL is sent to the proxy in absolute form (RFC 9112 section 3.2.2). The
  proxy URL's user:password becomes Proxy-Authorization (Basic). An https:// proxy is itself reached over TLS
  (oci/tls.py `TunnelTLS` then carries the registry's TLS inside it).
- `ssl` is imported only when a connection uses TLS (oci/tls.py).
"""

from __future__ import annotations

import _socket
import _thread
import select
from collections import deque

from .deadline import Deadline
from .errors import RegistryError
from .http1 import Data, EndOfMessage, NoResponse, ProtocolError, Response, ResponseParser, encode_request
from .limits import DISCARD_LIMIT, ERROR_BODY_LIMIT
from .tls import Trust, TunnelTLS, client_context, is_tls_error
from .url import URL, URLError, split_url, unquote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from .http1 import Event, Headers

READ_CHUNK = 64 << 10  # small documents: the cap is checked between reads of at most this size
HEAD_READ = 64 << 10  # a response head is read in pieces of this size (the body's first bytes may come with it)
SEND_CHUNK = 1 << 20  # a file body is sent in pieces of this size
SMALL_BODY = 64 << 10  # a body up to this size is sent with the head, in one write
IDLE_PER_ORIGIN = 4  # kept-alive connections kept per origin (and proxy, and trust)
USER_AGENT = "wasm-shim"
_NO_TRUST = Trust()


class TransportError(Exception):
    """A request got no complete response head: the message says why (the caller names the request)."""


class ConnectFailed(TransportError):
    """No connection: refused, unreachable, no such host."""


class ProxyFailed(TransportError):
    """The proxy could not be reached, or would not open the tunnel."""


class TimedOut(TransportError):
    """The connect or the read timeout passed."""


class TLSFailed(TransportError):
    """The TLS handshake failed (a certificate that does not verify, ...): never worth a retry."""


class ConnectionBroken(TransportError):
    """The connection failed or the server sent something that is not an HTTP/1.1 response."""


class _Stale(ConnectionBroken):
    """The request got no byte of a response: the connection may have closed while idle (see the module rules)."""


def _target(url: str) -> URL:
    try:
        return split_url(url)
    except URLError as exc:
        raise ConnectionBroken(str(exc)) from None


class _Proxy:
    """A proxy URL, taken apart once: where it listens and what Proxy-Authorization it wants."""

    __slots__ = ("scheme", "host", "port", "authorization", "display")

    def __init__(self, url: str) -> None:
        try:
            parts = split_url(url if "://" in url else f"http://{url}", userinfo=True)
        except URLError as exc:
            raise ProxyFailed(f"the proxy {_redacted(url)!r} cannot be used: {_redacted(str(exc))}") from None
        self.scheme, self.host, self.port = parts.scheme, parts.host, parts.port
        self.authorization = ""
        if parts.userinfo:
            import binascii

            user, _, password = parts.userinfo.partition(":")
            pair = f"{unquote(user)}:{unquote(password)}".encode()
            self.authorization = "Basic " + binascii.b2a_base64(pair, newline=False).decode()
        self.display = f"{parts.scheme}://{parts.hostport}"


def _auth_hint(response: Response, proxy: _Proxy) -> str:
    """What a proxy's 407 (RFC 9110 section 15.5.8), or the 401 some proxies send instead, asks for."""
    if response.status not in (401, 407):
        return ""
    if proxy.authorization:
        return " (proxy authentication required: it refused the user and password of the proxy URL)"
    return " (proxy authentication required: give user:password in the proxy URL)"


def _is_proxy_refusal(response: Response) -> bool:
    """A forwarded request's answer that is the proxy's, not the registry's: 407, or a 401 challenging for the
    proxy (Proxy-Authenticate) rather than for the registry (WWW-Authenticate)."""
    return response.status == 407 or (response.status == 401 and "proxy-authenticate" in response.headers
                                      and "www-authenticate" not in response.headers)


def _redacted(url: str) -> str:
    """`url` without a password, for messages."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{userinfo.split(':')[0]}:***@{host}" if at else url


class _Connection:
    """One connection: `stream` carries the bytes (a socket, an SSLSocket or a TunnelTLS), `raw` is its TCP socket
    (what the deadline shuts down and the idle check looks at); `forward`: requests go in absolute form."""

    __slots__ = ("stream", "raw", "forward", "proxy_authorization")

    def __init__(self, stream: Any, raw: Any, forward: bool = False, proxy_authorization: str = "") -> None:
        self.stream, self.raw = stream, raw
        self.forward = forward
        self.proxy_authorization = proxy_authorization

    def idle_and_open(self) -> bool:
        """Nothing to read on a connection nobody is waiting on: open (a close or stray bytes make it readable)."""
        try:
            pending = self.stream.pending() if hasattr(self.stream, "pending") else 0
            poller = select.poll()  # not select(): a daemon's descriptors may lie past FD_SETSIZE
            poller.register(self.raw.fileno(), select.POLLIN | select.POLLPRI)
            ready = poller.poll(0)
        except (OSError, ValueError):
            return False
        return not ready and not pending

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError:
            pass
        if self.raw is not self.stream:
            try:
                self.raw.close()
            except OSError:
                pass


class Transport:
    """Kept-alive connections per (origin, proxy, trust); thread-safe (each exchange has its connection alone)."""

    def __init__(self, connect_timeout: float, read_timeout: float, trust: Trust = _NO_TRUST) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.trust = trust  # the default for https origins no other trust is given for
        self._idle: dict[tuple[object, ...], list[_Connection]] = {}
        self._contexts: dict[Trust, Any] = {}
        self._proxies: dict[str, _Proxy] = {}
        self._lock = _thread.allocate_lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # -- connections -------------------------------------------------------------------------------------------
    def _context(self, trust: Trust) -> Any:
        with self._lock:
            context = self._contexts.get(trust)
        if context is None:
            context = client_context(trust)
            with self._lock:
                self._contexts.setdefault(trust, context)
        return context

    def _proxy(self, url: str) -> _Proxy:
        proxy = self._proxies.get(url)
        if proxy is None:
            proxy = self._proxies[url] = _Proxy(url)
        return proxy

    def _timed_out(self) -> TimedOut:
        return TimedOut(f"no answer within {self.read_timeout}s (connect timeout {self.connect_timeout}s)")

    def _connect(self, host: str, port: int, proxy: _Proxy | None, tls: bool) -> Any:
        try:
            sock = _dial(host, port, self.connect_timeout, tls)
        except TimeoutError:
            if proxy is not None:
                raise ProxyFailed(f"cannot connect through the proxy: {proxy.display}: no answer within "
                                  f"{self.connect_timeout}s") from None
            raise self._timed_out() from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if proxy is not None:
                raise ProxyFailed(f"cannot connect through the proxy: {proxy.display}: {reason}") from None
            raise ConnectFailed(f"cannot connect: {reason}") from None
        # The head and then the body go out in separate writes: without NODELAY, Nagle's algorithm and the peer's
        # delayed ACK would hold the second one back (RFC 1122 section 4.2.3.4).
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        return sock

    def _tls(self, stream: Any, trust: Trust, hostname: str, *, inside_tls: bool = False) -> Any:
        """`stream` with TLS to `hostname` on it (a handshake under the connect timeout): an SSLSocket that takes
        over a TCP socket, or TLS carried inside the TLS of an https proxy."""
        context = self._context(trust)
        try:
            stream.settimeout(self.connect_timeout)
            if inside_tls:
                return TunnelTLS(stream, context, hostname)
            return context.wrap_socket(stream, server_hostname=hostname)
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as exc:
            if is_tls_error(exc):
                raise TLSFailed(f"TLS failed: {str(exc)[:300]}") from None
            raise ConnectionBroken(f"the TLS handshake broke: {type(exc).__name__}: {exc}") from None

    def _tunnel(self, stream: Any, target: URL, proxy: _Proxy) -> None:
        """CONNECT `target` through the proxy on `stream`; ProxyFailed unless it answers 2xx."""
        authority = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
        fields = [("Host", authority), ("User-Agent", USER_AGENT)]
        if proxy.authorization:
            fields.append(("Proxy-Authorization", proxy.authorization))
        parser = ResponseParser("CONNECT")
        try:
            stream.sendall(encode_request("CONNECT", authority, fields))
            response: Response | None = None
            while response is None or not parser.done:
                for event in parser.receive_data(stream.recv(4096)):
                    if isinstance(event, Response):
                        response = event
                if response is not None and response.status >= 300:
                    break
        except TimeoutError:
            raise ProxyFailed(f"cannot connect through the proxy: {proxy.display} did not answer CONNECT "
                              f"{authority} within {self.read_timeout}s") from None
        except (OSError, ProtocolError) as exc:
            raise ProxyFailed(f"cannot connect through the proxy: {proxy.display}: CONNECT {authority}: {exc}") \
                from None
        if not 200 <= response.status < 300:
            raise ProxyFailed(f"cannot connect through the proxy: {proxy.display} answered CONNECT {authority} with "
                              f"HTTP {response.status} {response.reason}{_auth_hint(response, proxy)}")
        if parser.trailing:
            raise ProxyFailed(f"cannot connect through the proxy: {proxy.display} sent bytes after its answer to "
                              f"CONNECT {authority}")

    def _open(self, target: URL, proxy: _Proxy | None, trust: Trust) -> _Connection:
        tls = target.scheme == "https" or (proxy is not None and proxy.scheme == "https")
        if proxy is None:
            raw = self._connect(target.host, target.port, None, tls)
        else:
            raw = self._connect(proxy.host, proxy.port, proxy, tls)
        stream: Any = raw
        try:
            if proxy is not None and proxy.scheme == "https":
                stream = raw = self._tls(raw, self.trust, proxy.host)  # the SSLSocket owns the descriptor now
            stream.settimeout(self.read_timeout)
            if proxy is not None and target.scheme == "https":
                self._tunnel(stream, target, proxy)
            if target.scheme == "https":
                inside_tls = proxy is not None and proxy.scheme == "https"
                stream = self._tls(stream, trust, target.host, inside_tls=inside_tls)
                if not inside_tls:
                    raw = stream  # the SSLSocket owns the descriptor now
            stream.settimeout(self.read_timeout)
        except BaseException:
            _close_quietly(stream, raw)
            raise
        if proxy is not None and target.scheme == "http":
            return _Connection(stream, raw, forward=True, proxy_authorization=proxy.authorization)
        return _Connection(stream, raw)

    def _checkout(self, key: tuple[object, ...]) -> _Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                connection = idle.pop() if idle else None
            if connection is None:
                return None
            if connection.idle_and_open():
                return connection
            connection.close()

    def _checkin(self, key: tuple[object, ...], connection: _Connection) -> None:
        with self._lock:
            if not self._closed:
                idle = self._idle.setdefault(key, [])
                if len(idle) < IDLE_PER_ORIGIN:
                    idle.append(connection)
                    return
        connection.close()

    # -- exchanges ---------------------------------------------------------------------------------------------
    def send(self, deadline: Deadline, method: str, url: str, *, headers: Mapping[str, str], body: Any,
             trust: Trust | None = None, proxy: str = "") -> Exchange:
        """Send one request (redirects are the caller's) and await its response head under `deadline`.
        TransportError when no head arrives; RegistryError when the deadline passed first."""
        target = _target(url)
        via = self._proxy(proxy) if proxy else None
        trust = (trust or self.trust) if target.scheme == "https" else _NO_TRUST
        key = (target.scheme, target.host, target.port, proxy, trust)
        try:
            connection, parser, events = self._exchange(key, target, via, trust, method, headers, body, deadline)
        except BaseException:
            if deadline.expired:
                raise RegistryError(f"{method} {url}: no complete answer within the deadline of "
                                    f"{deadline.describe()}") from None
            raise
        return Exchange(self, key, connection, parser, events, deadline, method, url)

    def _exchange(self, key: tuple[object, ...], target: URL, via: _Proxy | None, trust: Trust, method: str,
                  headers: Mapping[str, str], body: Any,
                  deadline: Deadline) -> tuple[_Connection, ResponseParser, deque[Event]]:
        """The request on a kept-alive connection, or a new one; once more on a new one when a kept-alive one
        turns out to have been closed (see the module rules). ProxyFailed when a proxy answers for itself."""
        connection = self._checkout(key)
        result: tuple[ResponseParser, deque[Event]] | None = None
        if connection is not None:
            start = _position(body)
            try:
                result = self._request(connection, method, target, headers, body, deadline)
            except _Stale:
                connection.close()
                if start is None or deadline.expired:
                    raise
                if start >= 0:
                    body.seek(start)  # a file body is sent again from where it began
            except BaseException:
                connection.close()
                raise
        if result is None:
            connection = self._open(target, via, trust)
            try:
                result = self._request(connection, method, target, headers, body, deadline)
            except BaseException:
                connection.close()
                raise
        assert connection is not None
        parser, events = result
        head = events[0]
        if via is not None and connection.forward and isinstance(head, Response) and _is_proxy_refusal(head):
            connection.close()
            raise ProxyFailed(f"cannot connect through the proxy: {via.display} answered {method} with HTTP "
                              f"{head.status} {head.reason}{_auth_hint(head, via)}")
        return connection, parser, events

    def _request(self, connection: _Connection, method: str, target: URL, headers: Mapping[str, str],
                 body: Any, deadline: Deadline) -> tuple[ResponseParser, deque[Event]]:
        given = {name.lower() for name in headers}
        fields = [("Host", target.hostport)] if "host" not in given else []
        fields += [(name, value) for name, value in headers.items()]
        if "user-agent" not in given:
            fields.append(("User-Agent", USER_AGENT))
        if "accept-encoding" not in given:
            fields.append(("Accept-Encoding", "identity"))
        if connection.proxy_authorization:
            fields.append(("Proxy-Authorization", connection.proxy_authorization))
        declared = next((value for name, value in headers.items() if name.lower() == "content-length"), None)
        if declared is None:
            if isinstance(body, bytes):
                fields.append(("Content-Length", str(len(body))))
            elif body is None and method in ("POST", "PUT", "PATCH"):
                fields.append(("Content-Length", "0"))
            elif body is not None:
                raise ConnectionBroken(f"{method}: a streamed body needs a Content-Length")
        request_target = f"{target.scheme}://{target.hostport}{target.target}" if connection.forward else target.target
        try:
            head = encode_request(method, request_target, fields)
        except ValueError as exc:
            raise ConnectionBroken(str(exc)) from None
        stream = connection.stream
        try:
            stream.settimeout(self.read_timeout)
            if body is None:
                stream.sendall(head)
            elif isinstance(body, bytes):
                if len(body) <= SMALL_BODY:
                    stream.sendall(head + body)
                else:
                    stream.sendall(head)
                    stream.sendall(body)
            else:
                stream.sendall(head)
                sent = 0
                while chunk := body.read(SEND_CHUNK):
                    stream.sendall(chunk)
                    sent += len(chunk)
                if declared is not None and sent != int(declared):
                    raise ConnectionBroken(f"{method}: the body was {sent} bytes, its Content-Length {declared}")
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as exc:
            if is_tls_error(exc):
                raise TLSFailed(f"TLS failed: {str(exc)[:300]}") from None
            raise _Stale(f"sending the request failed: {type(exc).__name__}: {exc}") from None
        deadline.attach(connection.raw)  # from here the deadline bounds the head and the body
        parser = ResponseParser(method)
        events: deque[Event] = deque()
        try:
            while True:
                stream.settimeout(deadline.wait_for(self.read_timeout))
                events.extend(parser.receive_data(stream.recv(HEAD_READ)))
                if events and isinstance(events[0], Response):
                    return parser, events
        except TimeoutError:
            deadline.check()  # the deadline's doing: Expired, which send() reports as such
            raise self._timed_out() from None
        except NoResponse as exc:
            raise _Stale(str(exc)) from None
        except ProtocolError as exc:
            raise ConnectionBroken(f"not an HTTP/1.1 response: {exc}") from None
        except OSError as exc:
            if is_tls_error(exc):
                raise TLSFailed(f"TLS failed: {str(exc)[:300]}") from None
            if not parser.started:
                raise _Stale(f"{type(exc).__name__}: {exc}") from None
            raise ConnectionBroken(f"{type(exc).__name__}: {exc}") from None


def _position(body: Any) -> int | None:
    """Where a request body can be sent again from: -1 for none or bytes (nothing to rewind), the position of a
    seekable file, None for a stream that cannot be rewound."""
    if body is None or isinstance(body, bytes):
        return -1
    try:
        return int(body.tell()) if body.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _dial(host: str, port: int, timeout: float, tls: bool) -> Any:
    """A TCP connection to the first of `host`'s addresses that accepts one (as socket.create_connection): a
    `socket.socket` when TLS is to go over it (ssl wraps those), else the C type under it, `_socket.socket`, which
    needs no `socket` module (its import, enums and selectors, costs a plain-HTTP pull about 2 ms)."""
    # An ASCII name goes to getaddrinfo as bytes: a str would be run through the idna codec first, whose import
    # (stringprep, unicodedata) costs more than the lookup of an address literal.
    name = host.encode() if host.isascii() else host
    if tls:
        import socket

        make: Any = socket.socket
    else:
        make = _socket.socket
    failure: OSError = OSError(f"no address for {host}")
    for family, kind, protocol, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = make(family, kind, protocol)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
    raise failure


def _close_quietly(stream: Any, raw: Any) -> None:
    for each in (stream, raw):
        try:
            each.close()
        except OSError:
            pass


class Exchange:
    """A response and the deadline that bounds it. Close it (or use it as a context manager) when done."""

    def __init__(self, transport: Transport, key: tuple[object, ...], connection: _Connection,
                 parser: ResponseParser, events: deque[Event], deadline: Deadline, method: str, url: str) -> None:
        head = events.popleft()
        assert isinstance(head, Response)
        self.response = head
        self.deadline = deadline
        self.method, self.url = method, url
        self._transport, self._key, self._connection = transport, key, connection
        self._parser = parser
        self._events = events
        self._complete = False  # the body was read to its end
        self._closed = False

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Headers:
        return self.response.headers

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _expired(self, what: str) -> RegistryError:
        return RegistryError(f"{self.method} {self.url}: {what} did not arrive within the deadline of "
                             f"{self.deadline.describe()} (received {self.deadline.received} bytes)")

    def declared_length(self) -> int | None:
        value = self.headers.get("Content-Length", "")
        return int(value) if value.isdigit() else None

    def _next(self, size: int) -> bytes:
        """The next piece of the body (at most `size` bytes read from the socket for it); b"" at its end."""
        events = self._events
        while True:
            while events:
                event = events.popleft()
                if isinstance(event, Data):
                    if event.data:
                        return event.data
                elif isinstance(event, EndOfMessage):
                    self._complete = True
            if self._complete:
                return b""
            stream = self._connection.stream
            try:
                stream.settimeout(self.deadline.wait_for(self._transport.read_timeout))
                data = stream.recv(size)
            except TimeoutError:
                self.deadline.check()  # Expired when the deadline passed, else the read timeout's TimeoutError
                raise
            events.extend(self._parser.receive_data(data))

    def chunks(self, size: int, what: str) -> Iterator[bytes]:
        """The body in pieces of at most `size` bytes, to its end, under the deadline (no cap: the caller's)."""
        try:
            while data := self._next(size):
                self.deadline.progress(len(data))
                yield data
        except (OSError, ProtocolError) as exc:
            if self.deadline.expired:
                raise self._expired(what) from None
            raise RegistryError(f"{self.method} {self.url}: {what}: the stream broke after "
                                f"{self.deadline.received} bytes: {exc}") from None
        if self.deadline.expired:  # shut down mid-body that was to end at the close: an early end-of-file
            raise self._expired(what)

    def read(self, cap: int, what: str) -> bytes:
        """The whole body, at most `cap` bytes; RegistryError naming `what` and the cap when it is larger."""
        declared = self.declared_length()
        if declared is not None and declared > cap:
            raise RegistryError(f"{what} is {declared} bytes, over the {cap} byte limit")
        parts: list[bytes] = []
        total = 0
        for data in self.chunks(min(READ_CHUNK, cap + 1), what):
            total += len(data)
            if total > cap:
                raise RegistryError(f"{what} is over the {cap} byte limit")
            parts.append(data)
        return b"".join(parts)

    def error_text(self) -> tuple[bytes, bool]:
        """The first ERROR_BODY_LIMIT bytes of the body and whether there was more (which is never read)."""
        parts: list[bytes] = []
        total = 0
        try:
            while total <= ERROR_BODY_LIMIT:
                data = self._next(ERROR_BODY_LIMIT + 1 - total)
                if not data:
                    break
                parts.append(data)
                total += len(data)
        except (OSError, ProtocolError):
            pass  # what arrived is the message; the connection is closed by close()
        body = b"".join(parts)
        return body[:ERROR_BODY_LIMIT], total > ERROR_BODY_LIMIT

    def discard(self) -> None:
        """Read a body nobody needs, up to DISCARD_LIMIT (to keep the connection), then close."""
        try:
            total = 0
            while total <= DISCARD_LIMIT:
                data = self._next(READ_CHUNK)
                if not data:
                    break
                total += len(data)
        except (OSError, ProtocolError):
            pass
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._complete and self._parser.done and \
                all(not isinstance(event, Data) or not event.data for event in self._events):
            self._complete = True  # HEAD, 204, 304, an empty body: its end came with the head
        self._events.clear()
        connection = self._connection
        if self._complete and self._parser.reusable and not self.deadline.expired:
            self._transport._checkin(self._key, connection)
        else:
            connection.close()  # what is left of the body is never read
