"""One HTTP exchange with a registry, bounded: urllib3 underneath, a cap on every read, a total deadline.

Owns `make_pool` (urllib3's PoolManager with verified TLS, no redirects or retries of its own, and connections
that attach their socket to the current exchange's deadline when they await a response) and `Exchange` (a
response whose body can only be read through a cap the error names, streamed under the deadline, or discarded
without being held). oci/registry.py builds requests, redirects, auth and retries on top.

Rules:
- Bodies are read raw (`decode_content=False`): registries do not content-encode, the digest is of the bytes on
  the wire, and a body a server compressed anyway cannot inflate past a cap.
- `read(cap, what)` refuses at once a declared Content-Length over `cap`, else reads at most `cap` + 1 bytes and
  refuses with "over the N byte limit". `error_text()` keeps the first `ERROR_BODY_LIMIT` bytes for the message
  and never reads the rest. A body that is not read to its end closes its connection instead of going back to the
  pool (a half-read response must never be read as the next one's).
- Every exchange ends at its deadline (oci/deadline.py): headers and body together take at most the client's
  total timeout plus one second per `MIN_RATE` bytes received. Expiry is an error naming the deadline.
Everything here imports urllib3 at module level: import this module only where a client is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .deadline import Deadline, Watchdog, attach_socket, current
from .errors import RegistryError
from .limits import DISCARD_LIMIT, ERROR_BODY_LIMIT

READ_CHUNK = 64 << 10  # small documents: the cap is checked between reads of at most this size


class _Connection(HTTPConnection):
    def getresponse(self) -> Any:  # the request is sent; from here the deadline bounds the headers too
        attach_socket(self.sock)
        return super().getresponse()


class _TLSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        attach_socket(self.sock)
        return super().getresponse()


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


def tls_context(ca_files: tuple[str, ...], client_pairs: tuple[tuple[str, str], ...], skip_verify: bool) -> Any:
    """The TLS context of one registry endpoint containerd's hosts.toml configures (oci/hosts.py): the system's
    CAs plus its own, its client certificates, or no verification at all when it says skip_verify."""
    import ssl

    context = ssl.create_default_context()
    try:
        for path in ca_files:
            context.load_verify_locations(cafile=path)
        for certificate, key in client_pairs:
            context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise RegistryError(f"cannot load the TLS files of a registry host ({exc})") from None
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_pool(ca_bundle: str | None, timeout: urllib3.Timeout, context: Any = None,
              verify: bool = True, proxy: str = "") -> urllib3.PoolManager:
    """A pool for requests to registries: verified TLS (with `ca_bundle`, or `context` for an endpoint of
    containerd's hosts.toml), through `proxy` when given (oci/proxy.py: CONNECT for https, forwarding for http)."""
    tls: dict[str, Any] = {"ssl_context": context} if context is not None else {"ca_certs": ca_bundle}
    if not verify:
        tls["assert_hostname"] = False
    if proxy:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(proxy)
        headers = urllib3.make_headers(proxy_basic_auth=f"{unquote(parts.username)}:{unquote(parts.password or '')}") \
            if parts.username else None
        address = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        tls.update(proxy_url=address, proxy_headers=headers)
    factory: Any = urllib3.ProxyManager if proxy else urllib3.PoolManager
    pool = factory(
        num_pools=8, maxsize=4, cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE", **tls,
        # Connection errors come back as they are (oci/registry.py retries, and re-hashes a blob from its start);
        # redirects come back as responses (oci/registry.py follows them, checking scheme and credentials).
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=0,
                              raise_on_redirect=False, raise_on_status=False),
        timeout=timeout,
    )
    pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return pool


def send(pool: urllib3.PoolManager, watchdog: Watchdog, deadline: Deadline, method: str, url: str, *,
         headers: Mapping[str, str], body: Any, timeout: urllib3.Timeout) -> Exchange:
    """Send one request (no redirects followed) and await its response headers under `deadline`."""
    watchdog.arm(deadline)
    try:
        with current(deadline):
            response = pool.request(method, url, body=body, headers=dict(headers), preload_content=False,
                                    decode_content=False, redirect=False, timeout=timeout)
    except BaseException:
        watchdog.disarm(deadline)
        if deadline.expired:
            raise RegistryError(f"{method} {url}: no complete answer within the deadline of {deadline.describe()}") \
                from None
        raise
    return Exchange(response, deadline, watchdog, method, url)


class Exchange:
    """A response and the deadline that bounds it. Close it (or use it as a context manager) when done."""

    def __init__(self, response: Any, deadline: Deadline, watchdog: Watchdog, method: str, url: str) -> None:
        self.response = response
        self.deadline = deadline
        self.method, self.url = method, url
        self._watchdog = watchdog
        self._complete = False  # the body was read to its end (http.client then lets the connection be reused)
        self._closed = False

    @property
    def status(self) -> int:
        return int(self.response.status)

    @property
    def headers(self) -> Any:
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

    def chunks(self, size: int, what: str) -> Iterator[bytes]:
        """The body in pieces of at most `size` bytes, to its end, under the deadline (no cap: the caller's)."""
        try:
            while True:
                data = self.response.read(size, decode_content=False)
                if not data:
                    break
                self.deadline.progress(len(data))
                yield data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self.deadline.expired:
                raise self._expired(what) from None
            raise RegistryError(f"{self.method} {self.url}: {what}: the stream broke after "
                                f"{self.deadline.received} bytes: {exc}") from None
        if self.deadline.expired:  # shut down mid-body without a Content-Length: an early end-of-file
            raise self._expired(what)
        self._complete = True

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
                data = self.response.read(ERROR_BODY_LIMIT + 1 - total, decode_content=False)
                if not data:
                    self._complete = True
                    break
                parts.append(data)
                total += len(data)
        except (urllib3.exceptions.HTTPError, OSError):
            pass  # what arrived is the message; the connection is closed below
        body = b"".join(parts)
        return body[:ERROR_BODY_LIMIT], total > ERROR_BODY_LIMIT

    def discard(self) -> None:
        """Read a body nobody needs, up to DISCARD_LIMIT (to keep the connection), then close."""
        if not self._complete:
            try:
                total = 0
                while total <= DISCARD_LIMIT:
                    data = self.response.read(READ_CHUNK, decode_content=False)
                    if not data:
                        self._complete = True
                        break
                    total += len(data)
            except (urllib3.exceptions.HTTPError, OSError):
                pass
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watchdog.disarm(self.deadline)
        if not self._complete and not self.deadline.expired and self.response.length_remaining == 0:
            try:  # HEAD, 204, 304, Content-Length 0: reading the empty body releases the connection cleanly
                self.response.read(decode_content=False)
                self._complete = True
            except (urllib3.exceptions.HTTPError, OSError):
                pass
        if not self._complete or self.deadline.expired:
            self.response.close()  # drops the connection: what is left of the body is never read
        self.response.release_conn()
