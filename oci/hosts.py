"""containerd's registry host configuration (`config_path`: `HOST[:PORT]/hosts.toml` directories), read the way
containerd reads it, so the shim's own registry lookups go where containerd's pulls go.

Owns `RegistryHosts` (the directories of one containerd's `config_path`, `:`-separated, first match wins) and
`Endpoint` (one host to ask: scheme and address, and its TLS: extra CA files, client certificate pairs,
skip_verify). containerd's docs/hosts.md is the format:

    server = "http://registry.internal:5000"       # the upstream; its scheme says plain HTTP or TLS
    ca = "/etc/containerd/certs.d/registry.internal:5000/ca.crt"   # a path or a list; relative to this dir
    client = [["/path/client.cert", "/path/client.key"]]           # or one path (cert and key in one file)
    skip_verify = false
    [host."https://mirror.internal"]                # mirrors, asked first, in file order
      capabilities = ["pull", "resolve"]
      ca = "..."

Rules:
- A registry's directory is `<dir>/<HOST[:PORT]>` as the image reference spells it (docker.io for Docker Hub),
  else `<dir>/_default`; the first `config_path` entry holding it wins. Without a hosts.toml, a directory is read
  docker-style: `*.crt` files are CAs and `*.cert`/`*.key` pairs client certificates, for https://HOST.
- `endpoints(registry)` lists the hosts that can resolve and pull, in file order, then the server (default
  `https://HOST`, Docker Hub's `https://registry-1.docker.io`). Hosts that need `override_path` are skipped: the
  shim speaks the distribution API at `/v2/` only.
- Plain HTTP is used for an endpoint exactly when its URL says `http://`: the operator wrote it for containerd.
- A file that does not parse is a HostsError naming it; nothing is guessed.
- `root` prefixes every path read (containerd's root directory as this process sees it, `/proc/PID/root`), since
  the paths are containerd's.
Stdlib only; files are re-read when they change (size and modification time).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
MAX_HOSTS_FILE = 1 << 20


class HostsError(ValueError):
    """A hosts.toml (or a file it names) cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    netloc: str  # host[:port] as the URL gives it
    ca_files: tuple[str, ...] = ()  # added to the system's CAs (containerd appends them to its root pool)
    client_pairs: tuple[tuple[str, str], ...] = ()  # (certificate, key); the same file twice when it holds both
    skip_verify: bool = False
    capabilities: tuple[str, ...] = ("pull", "resolve", "push")
    source: str = ""  # the hosts.toml (or directory) it came from, for messages

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    @property
    def tls_key(self) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], bool]:
        return self.ca_files, self.client_pairs, self.skip_verify


@dataclass
class RegistryHosts:
    """containerd's `config_path` directories (as containerd names them) and the root they are read under."""

    directories: tuple[str, ...]
    root: str = ""
    _cache: dict[str, tuple[object, tuple[Endpoint, ...]]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config_path(cls, config_path: str, root: str = "") -> RegistryHosts:
        return cls(tuple(d for d in config_path.split(":") if d), root)

    def _path(self, path: str) -> str:
        return self.root.rstrip("/") + path if self.root and os.path.isabs(path) else path

    def host_dir(self, registry: str) -> str | None:
        """The directory that configures `registry` (containerd's name for it), or None."""
        for name in (registry, "_default"):
            for directory in self.directories:
                candidate = os.path.join(directory, name)
                if os.path.isdir(self._path(candidate)):
                    return candidate
        return None

    def endpoints(self, registry: str) -> tuple[Endpoint, ...]:
        """The hosts to ask for `registry`, in order (see the module rules); () when nothing configures it."""
        directory = self.host_dir(registry)
        if directory is None:
            return ()
        hosts_file = os.path.join(directory, "hosts.toml")
        try:
            st = os.stat(self._path(hosts_file))
            stamp: tuple[object, ...] = (directory, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (directory, None, tuple(sorted(os.listdir(self._path(directory)))))
        cached = self._cache.get(registry)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if stamp[1] is None:
            found = self._certs_dir(registry, directory)
        else:
            found = self._hosts_toml(registry, directory, hosts_file)
        self._cache[registry] = (stamp, found)
        return found

    # -- hosts.toml ----------------------------------------------------------------------------------------------
    def _hosts_toml(self, registry: str, directory: str, path: str) -> tuple[Endpoint, ...]:
        import tomllib

        try:
            with open(self._path(path), "rb") as f:
                data = f.read(MAX_HOSTS_FILE + 1)
        except OSError as exc:
            raise HostsError(f"cannot read {path}: {exc.strerror}") from None
        if len(data) > MAX_HOSTS_FILE:
            raise HostsError(f"{path} is over {MAX_HOSTS_FILE} bytes")
        try:
            doc = tomllib.loads(data.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise HostsError(f"{path} is not valid TOML: {exc}") from None
        found: list[Endpoint] = []
        hosts = doc.get("host", {})
        if not isinstance(hosts, dict):
            raise HostsError(f"{path}: `host` must be a table of [host.\"URL\"] tables")
        for url, table in hosts.items():
            if not isinstance(table, dict):
                raise HostsError(f"{path}: host {url!r} must be a table")
            if table.get("override_path"):
                continue
            endpoint = self._endpoint(url, table, directory, f"{path}: host {url!r}")
            if "pull" in endpoint.capabilities and "resolve" in endpoint.capabilities:
                found.append(endpoint)
        server = doc.get("server") or (DOCKER_HUB_SERVER if registry == DOCKER_HUB else f"https://{registry}")
        if not isinstance(server, str):
            raise HostsError(f"{path}: server must be a URL string, got {server!r}")
        found.append(self._endpoint(server, {k: doc[k] for k in ("ca", "client", "skip_verify") if k in doc},
                                    directory, f"{path}: server"))
        return tuple(found)

    def _endpoint(self, url: str, table: dict[str, object], directory: str, where: str) -> Endpoint:
        if "://" not in url:
            url = f"https://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise HostsError(f"{where}: {url!r} is not an http:// or https:// URL")
        if parts.path.strip("/") not in ("", "v2"):
            raise HostsError(f"{where}: {url!r} has a path; only override_path hosts may (and those are not used)")
        skip = table.get("skip_verify", False)
        if not isinstance(skip, bool):
            raise HostsError(f"{where}: skip_verify must be true or false")
        capabilities = table.get("capabilities", ["pull", "resolve", "push"])
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise HostsError(f"{where}: capabilities must be a list of strings")
        return Endpoint(parts.scheme, parts.netloc, self._files(table.get("ca"), directory, f"{where}: ca"),
                        self._clients(table.get("client"), directory, f"{where}: client"), skip,
                        tuple(capabilities), where)

    def _absolute(self, path: str, directory: str) -> str:
        return path if os.path.isabs(path) else os.path.join(directory, path)

    def _files(self, value: object, directory: str, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and item for item in items):
            raise HostsError(f"{where} must be a path or a list of paths")
        return tuple(self._path(self._absolute(str(item), directory)) for item in items)

    def _clients(self, value: object, directory: str, where: str) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        items: Sequence[object] = value if isinstance(value, list) else [value]
        pairs = []
        for item in items:
            if isinstance(item, str):
                path = self._path(self._absolute(item, directory))
                pairs.append((path, path))
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(p, str) for p in item):
                pairs.append((self._path(self._absolute(item[0], directory)),
                              self._path(self._absolute(item[1], directory))))
            else:
                raise HostsError(f"{where} must be a path or [certificate, key] pairs")
        return tuple(pairs)

    # -- docker-style certs.d --------------------------------------------------------------------------------------
    def _certs_dir(self, registry: str, directory: str) -> tuple[Endpoint, ...]:
        names = sorted(os.listdir(self._path(directory)))
        cas = tuple(self._path(os.path.join(directory, n)) for n in names if n.endswith(".crt"))
        pairs = tuple((self._path(os.path.join(directory, n)), self._path(os.path.join(directory, n[:-5] + ".key")))
                      for n in names if n.endswith(".cert") and n[:-5] + ".key" in names)
        netloc = urlsplit(DOCKER_HUB_SERVER).netloc if registry == DOCKER_HUB else registry
        return (Endpoint("https", netloc, cas, pairs, source=directory),)
