"""Absolute http(s) URLs as the registry client uses them: taken apart strictly, compared by origin (pure).

Owns `split_url` (scheme, host, port, authority, the origin-form target), `split_authority`, `origin`, and `join`
and `encode_query` (RFC 3986 section 5 reference resolution and form encoding, by urllib.parse, which is imported
only on the paths that need them: a redirect, a pagination link, an upload location, a token request).

Rules:
- Only `http://` and `https://` (any letter case, given back in lower case) with a host. The host comes back in
  lower case, an IPv6 literal without its brackets (and it must be one); the port is 1-65535 in digits, or the
  scheme's default (80, 443) when absent or empty (RFC 3986 section 3.2.3).
- Refused (URLError): user:password in the authority (unless the caller takes it: proxy URLs), a space, a control
  character or a backslash anywhere, more than one colon outside brackets. These are URLs that two parsers could
  read differently (urllib.parse drops tabs and newlines, WHATWG parsers read a backslash as a slash), and every
  decision the client makes about a URL (where to connect, whether an origin is the registry's, whether
  credentials go along) reads it through this module, so nothing acts on a reading another part did not make.
- The target is the path (`/` when empty) and the query; a fragment is dropped (RFC 9110 section 4.2.1: it is
  never sent).
"""

from __future__ import annotations

import _socket

from .values import Value

_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN = frozenset(" \\\x7f") | frozenset(chr(c) for c in range(32))
_HOST_FORBIDDEN = frozenset("@/?#[]:")


class URLError(ValueError):
    """A URL this client does not use; the message says why."""


class URL(Value):
    __slots__ = ("scheme", "host", "port", "authority", "target", "userinfo")
    scheme: str  # "http" or "https"
    host: str  # lower case; an IPv6 literal without brackets
    port: int  # explicit or the scheme's default
    authority: str  # host[:port] as written (lower case), without userinfo
    target: str  # path and query: what goes in the request line
    userinfo: str  # "user:password" as written (percent-encoded), only when the caller allowed it

    def __init__(self, scheme: str, host: str, port: int, authority: str, target: str, userinfo: str = "") -> None:
        self._init(scheme, host, port, authority, target, userinfo)

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def hostport(self) -> str:
        """What the Host header says: the host (bracketed if IPv6), and the port unless it is the default."""
        literal = f"[{self.host}]" if ":" in self.host else self.host
        return literal if self.port == _DEFAULT_PORTS[self.scheme] else f"{literal}:{self.port}"


def split_authority(authority: str) -> tuple[str, int | None]:
    """(host in lower case, port or None) of `host`, `host:port` or `[v6]:port`; URLError otherwise."""
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[1:end], authority[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise URLError(f"a malformed IPv6 literal in {authority[:100]!r}")
        try:
            _socket.inet_pton(_socket.AF_INET6, host)
        except (OSError, ValueError):
            raise URLError(f"{host[:100]!r} in brackets is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, _, port_text = authority.partition(":")
        if not host or any(c in _HOST_FORBIDDEN for c in host):
            raise URLError(f"{authority[:100]!r} is not host[:port]")
    if not port_text:
        return host.lower(), None
    if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise URLError(f"the port of {authority[:100]!r} is not a number from 1 to 65535")
    return host.lower(), int(port_text)


def split_url(url: str, *, userinfo: bool = False) -> URL:
    """The parts of an absolute http(s) URL (see the module rules); URLError naming what is wrong."""
    if any(c in _FORBIDDEN for c in url):
        raise URLError(f"{url[:200]!r} has a space, a control character or a backslash")
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _DEFAULT_PORTS:
        raise URLError(f"{url[:200]!r} is not an http:// or https:// URL")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, target = rest[:end], rest[end:].partition("#")[0]
    credentials, at, authority = authority.rpartition("@")
    if at and not userinfo:
        raise URLError(f"{url[:200]!r} has user:password in it (a registry's credentials go in headers)")
    host, port = split_authority(authority)
    if not target.startswith("/"):
        target = "/" + target
    return URL(scheme, host, port or _DEFAULT_PORTS[scheme], authority.lower(), target, credentials)


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) (RFC 6454), the scheme's default port filled in; a URL this client refuses has an
    origin equal to no other."""
    try:
        return split_url(url).origin
    except URLError:
        return "", url, -1


def join(base: str, reference: str) -> str:
    """`reference` (a Location, a Link) resolved against `base` (RFC 3986 section 5.2)."""
    from urllib.parse import urljoin

    return urljoin(base, reference)


def encode_query(fields: dict[str, str]) -> str:
    """`application/x-www-form-urlencoded` fields, for a query or a form body."""
    from urllib.parse import urlencode

    return urlencode(fields)


def unquote(text: str) -> str:
    """Percent-decoding (a proxy URL's user and password)."""
    if "%" not in text:
        return text
    from urllib.parse import unquote as decode

    return decode(text)
