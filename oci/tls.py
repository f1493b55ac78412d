"""TLS for registry connections: whom a client trusts and shows, and TLS inside an https:// proxy's own TLS.

Owns `Trust` (the CA and client-certificate settings of one kind of connection), `client_context` (the
`ssl.SSLContext` for a `Trust`) and `TunnelTLS` (a TLS session to a registry carried inside the TLS session to an
https:// proxy, over memory buffers, since an `ssl.SSLSocket` cannot wrap another one).

Rules:
- Trust is the system's CA store, or `ca_bundle` instead of it (a bundle the user names says exactly whom to trust:
  the CLI's --ca-file, the policy's ca_bundle), plus `extra_cas` (containerd's hosts.toml `ca`, the shim option
  registry_ca_bundle), which are added to it as containerd adds a hosts.toml `ca` to its root pool.
- Verification is on (certificate chain and host name, TLS 1.2 at least) unless containerd's hosts.toml says
  `skip_verify` for that host; client certificates are the hosts.toml `client` pairs.
- ALPN offers `http/1.1` only: the transport speaks nothing else.
- `ssl` is imported in this module only, when a TLS connection is made: a plain-HTTP registry never loads it (nor
  the system's CA store, which alone takes milliseconds).
"""

from __future__ import annotations

import _socket

from .errors import RegistryError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl


class Trust:
    """Whom a TLS connection trusts and which client certificates it shows (see the module rules)."""

    __slots__ = ("ca_bundle", "extra_cas", "client_pairs", "skip_verify")

    def __init__(self, ca_bundle: str | None = None, extra_cas: tuple[str, ...] = (),
                 client_pairs: tuple[tuple[str, str], ...] = (), skip_verify: bool = False) -> None:
        self.ca_bundle = ca_bundle or None
        self.extra_cas = extra_cas
        self.client_pairs = client_pairs
        self.skip_verify = skip_verify

    def _key(self) -> tuple[object, ...]:
        return self.ca_bundle, self.extra_cas, self.client_pairs, self.skip_verify

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trust) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Trust(ca_bundle={self.ca_bundle!r}, extra_cas={self.extra_cas!r}, "
                f"client_pairs={self.client_pairs!r}, skip_verify={self.skip_verify})")


def client_context(trust: Trust) -> ssl.SSLContext:
    """A client context for `trust`; RegistryError naming the file when a CA or certificate cannot be loaded."""
    import ssl

    try:
        if trust.ca_bundle:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chains and host names by default
            context.load_verify_locations(cafile=trust.ca_bundle)
        else:
            context = ssl.create_default_context()
        for path in trust.extra_cas:
            context.load_verify_locations(cafile=path)
        for certificate, key in trust.client_pairs:
            context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise RegistryError(f"cannot load the TLS files of a registry host ({exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if trust.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def is_tls_error(exc: BaseException) -> bool:
    """Whether `exc` is a TLS failure (a certificate that does not verify, a handshake refused), as opposed to the
    network failing under it; without importing `ssl` when no TLS was used."""
    import sys

    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError | ssl.CertificateError) and \
        not isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError | ssl.SSLSyscallError)


class TunnelTLS:
    """TLS with a registry through a CONNECT tunnel that is itself TLS to an https:// proxy (`outer`): the records
    go through memory buffers and `outer`. The same calls as a socket, as far as oci/transport.py uses them."""

    READ = 64 << 10

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str) -> None:
        import ssl

        self._ssl = ssl
        self._outer = outer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._session = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._run(self._session.do_handshake)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._outer.sendall(data)

    def _run(self, operation, *args):  # type: ignore[no-untyped-def]
        """Run an SSLObject operation, moving records through `outer` until it completes."""
        while True:
            try:
                result = operation(*args)
            except self._ssl.SSLWantReadError:
                self._flush()
                data = self._outer.recv(self.READ)
                if not data:
                    self._incoming.write_eof()
                else:
                    self._incoming.write(data)
                continue
            self._flush()
            return result

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._run(self._session.write, view)
            view = view[written:]

    def recv(self, size: int) -> bytes:
        try:
            data: bytes = self._run(self._session.read, size)
        except self._ssl.SSLZeroReturnError:
            return b""
        return data

    def pending(self) -> int:
        return int(self._session.pending())

    def settimeout(self, value: float | None) -> None:
        self._outer.settimeout(value)

    def fileno(self) -> int:
        return self._outer.fileno()

    def shutdown(self, how: int = _socket.SHUT_RDWR) -> None:
        self._outer.shutdown(how)

    def close(self) -> None:
        self._outer.close()
