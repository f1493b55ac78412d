"""A hostile registry on 127.0.0.1 for the bounded-read tests: it answers whatever the test tells it to, per path.

`HostileRegistry` is a small HTTP/1.1 server (one thread per connection, `Connection: close` after each answer,
plain or TLS with a test CA from registries.make_tls). Each request is matched against the routes the test added
(the longest path prefix wins; `GET /v2/` answers 200 `{}` unless a route says otherwise, so the client's
plain-HTTP probe finds a registry) and recorded (method, path, headers) in `requests`. The answers are the ways a
registry can hurt a client:
- `huge(status, size)`: a body of `size` bytes (streamed, never held; with or without a Content-Length),
- `trickle(status)`: headers, then a body one byte a second, forever; `trickle_headers()`: the status line, then
  one header byte a second,
- `redirect(location)`: 302 to anywhere (itself, another port, plain HTTP),
- `respond(status, body, headers)`: anything else, e.g. a Link header to another host;
- `chunked(status, body, pieces)`: the body in a chunked transfer coding (RFC 9112 section 7.1), with chunk
  extensions and a trailer field, as servers that stream without knowing the length send it;
- `basic_auth(answer)`: a 401 Basic challenge until the client sends credentials, then `answer`.
Every answer stops when the client goes away or the server is closed; `close()` ends every thread it started.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lab.registries import TestCA

CHUNK = 64 << 10


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


Answer = Callable[["Reply"], None]


class Reply:
    """The connection an answer writes to; writes after the client left or the server closed raise OSError."""

    def __init__(self, conn: socket.socket, stop: threading.Event, request: Request) -> None:
        self.conn = conn
        self.stop = stop
        self.request = request

    def send(self, data: bytes) -> None:
        if self.stop.is_set():
            raise OSError("the hostile registry is closing")
        self.conn.sendall(data)

    def head(self, status: int, headers: Mapping[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} Hostile"] + [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close"]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())


def respond(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Answer:
    def answer(reply: Reply) -> None:
        reply.head(status, {"Content-Length": str(len(body)), **(headers or {})})
        reply.send(body)

    return answer


def chunked(status: int, body: bytes, pieces: int = 3, headers: Mapping[str, str] | None = None) -> Answer:
    """`body` as `pieces` chunks (the first with a chunk extension), the last chunk, a trailer field."""

    def answer(reply: Reply) -> None:
        reply.head(status, {"Transfer-Encoding": "chunked", **(headers or {})})
        step = max(1, -(-len(body) // pieces))
        for i, start in enumerate(range(0, len(body), step)):
            piece = body[start:start + step]
            reply.send(b"%x%s\r\n%s\r\n" % (len(piece), b";n=1" if i == 0 else b"", piece))
        reply.send(b"0\r\nX-Trailer: done\r\n\r\n")

    return answer


def huge(status: int, size: int, *, content_type: str = "application/json", declare: bool = True,
         headers: Mapping[str, str] | None = None) -> Answer:
    """`size` bytes of body ('{"errors":[' then filler), with a Content-Length when `declare`, else until EOF."""

    def answer(reply: Reply) -> None:
        fields = {"Content-Type": content_type, **(headers or {})}
        if declare:
            fields["Content-Length"] = str(size)
        reply.head(status, fields)
        block = b"x" * CHUNK
        sent = 0
        while sent < size:
            piece = block[: min(CHUNK, size - sent)]
            reply.send(piece)
            sent += len(piece)

    return answer


def trickle(status: int, *, declared: int = 1 << 20, headers: Mapping[str, str] | None = None) -> Answer:
    """Headers at once, then the body a byte a second (never all of it)."""

    def answer(reply: Reply) -> None:
        reply.head(status, {"Content-Length": str(declared), **(headers or {})})
        while not reply.stop.wait(1.0):
            reply.send(b"{")

    return answer


def trickle_headers() -> Answer:
    """The status line, then one byte of a never-ending header a second."""

    def answer(reply: Reply) -> None:
        reply.send(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not reply.stop.wait(1.0):
            reply.send(b"a")

    return answer


def redirect(location: str, status: int = 302) -> Answer:
    return respond(status, headers={"Location": location})


def basic_auth(answer: Answer) -> Answer:
    """401 with a Basic challenge unless the request carries an Authorization header; then `answer`."""
    challenge = respond(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"log in"}]}',
                        {"WWW-Authenticate": 'Basic realm="hostile"'})

    def guarded(reply: Reply) -> None:
        (answer if "authorization" in reply.request.headers else challenge)(reply)

    return guarded


class HostileRegistry:
    def __init__(self, tls: TestCA | None = None) -> None:
        self.routes: dict[tuple[str, str], Answer] = {("GET", "/v2/"): respond(200, b"{}")}
        self.requests: list[Request] = []
        self.connections = 0
        self._stop = threading.Event()
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(str(tls.cert_pem), str(tls.key_pem))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def route(self, method: str, path_prefix: str, answer: Answer) -> HostileRegistry:
        self.routes[(method, path_prefix)] = answer
        return self

    def seen(self, path_prefix: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            if self._context is not None:
                try:
                    conn = self._context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                with self._lock:
                    self._open.append(conn)
            request = self._read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            answer = self._answer_for(request)
            conn.settimeout(None)
            try:
                answer(Reply(conn, self._stop, request))
            except OSError:
                pass  # the client went away (what a bounded client does) or the server is closing
        finally:
            try:
                conn.close()
            except OSError:
                pass

    @staticmethod
    def _read_request(conn: socket.socket) -> Request | None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return None
                data += piece
                if len(data) > 1 << 20:
                    return None
        except OSError:
            return None
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2:
            return None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Request(parts[0], parts[1], headers)

    def _answer_for(self, request: Request) -> Answer:
        path = request.path.split("?", 1)[0]
        method = "GET" if request.method == "HEAD" else request.method
        best: tuple[int, Answer] | None = None
        for (route_method, prefix), answer in self.routes.items():
            exact = prefix == "/v2/"
            if route_method == method and (path == prefix if exact else path.startswith(prefix)):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), answer)
        return best[1] if best else respond(404, b'{"errors":[{"code":"NOT_FOUND","message":"hostile: no route"}]}')

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HostileRegistry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
