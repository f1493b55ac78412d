"""HTTP proxies for registry requests, chosen as Go's net/http (oras, cosign, containerd) chooses them (pure).

Owns `ProxySettings`: `HTTPS_PROXY` for https:// URLs, `HTTP_PROXY` for http:// URLs (upper case first, then lower
case, as Go's `httpproxy.FromEnvironment` reads them; an explicit setting, the shim options `https_proxy`,
`http_proxy`, `no_proxy`, wins over the environment), and `NO_PROXY`'s grammar (golang.org/x/net/http/httpproxy):
- comma-separated entries; `*` alone means no proxy for anything;
- an IP address, or a CIDR (`10.0.0.0/8`), matches hosts given as addresses in it;
- a domain name matches itself and its subdomains (`example.com`: `example.com`, `r.example.com`); with a leading
  dot only its subdomains (`.example.com`: `r.example.com`, not `example.com`); `*.example.com` is `.example.com`;
- any entry may name a port (`registry.internal:5000`, `10.1.2.3:443`): then only that port is excluded.
- `localhost` and loopback addresses are never proxied (Go's rule), whatever the variables say.
A proxy URL without a scheme is `http://`; a proxy's user:password becomes its Proxy-Authorization (Basic). An https
URL goes through the proxy in a CONNECT tunnel (TLS end to end with the registry); an http URL is forwarded.
"""

from __future__ import annotations

import _socket
import os
from collections.abc import Mapping

from .url import URLError, split_url
from .values import Value


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name.upper()) or environ.get(name.lower()) or ""


class ProxySettings(Value):
    __slots__ = ("https_proxy", "http_proxy", "no_proxy")
    https_proxy: str
    http_proxy: str
    no_proxy: str

    def __init__(self, https_proxy: str = "", http_proxy: str = "", no_proxy: str = "") -> None:
        self._init(https_proxy, http_proxy, no_proxy)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, https_proxy: str = "",
                         http_proxy: str = "", no_proxy: str = "") -> ProxySettings:
        """The environment's proxies, each overridden by the explicit value given (when not empty)."""
        env = os.environ if environ is None else environ
        return cls(https_proxy or _env(env, "https_proxy"), http_proxy or _env(env, "http_proxy"),
                   no_proxy or _env(env, "no_proxy"))

    def proxy_for(self, url: str) -> str:
        """The proxy URL `url` goes through ("" = directly)."""
        scheme = url.partition("://")[0].lower()
        proxy = self.https_proxy if scheme == "https" else self.http_proxy if scheme == "http" else ""
        if not proxy:
            return ""
        try:
            parts = split_url(url)
        except URLError:
            return ""  # the request refuses the URL itself
        if _is_loopback(parts.host) or excluded(self.no_proxy, parts.host, parts.port):
            return ""
        return proxy if "://" in proxy else f"http://{proxy}"


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost") or loopback_address(host.strip("[]"))


def loopback_address(text: str) -> bool:
    """Whether `text` is an IPv4 address in 127.0.0.0/8 or the IPv6 address ::1 (`ipaddress`'s is_loopback, without
    importing `ipaddress` on every registry request)."""
    try:
        return _socket.inet_pton(_socket.AF_INET, text)[0] == 127
    except (OSError, ValueError):
        pass
    try:
        return _socket.inet_pton(_socket.AF_INET6, text) == bytes(15) + b"\1"
    except (OSError, ValueError):
        return False


def excluded(no_proxy: str, host: str, port: int) -> bool:
    """Whether NO_PROXY `no_proxy` excludes `host` (lower case, no brackets) on `port`."""
    import ipaddress  # only with a proxy set

    host = host.strip("[]").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
        except ValueError:
            network = None
        if network is not None:
            if address is not None and address in network:
                return True
            continue
        name, entry_port = _split_port(entry)
        if entry_port and entry_port != port:
            continue
        try:
            entry_address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            entry_address = None
        if entry_address is not None:
            if entry_address == address:
                return True
            continue
        if name.startswith("*."):
            name = name[1:]
        if name.startswith("."):
            if host.endswith(name):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int]:
    """(name, port) of `host`, `host:port`, `[v6]:port`, or a bare IPv6 address (port 0 = any)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else 0
    return entry, 0
