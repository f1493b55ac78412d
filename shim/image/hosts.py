"""Which registry host configuration applies to the shim's own lookups: containerd's, for the containerd this
daemon serves.

Owns `ContainerdHosts.registry_hosts()`: the shim option `registry_config_path` when set (directories separated by
`:`, as containerd's own `config_path`), else the `config_path` of the containerd behind the daemon's gRPC socket,
read from that containerd's config file: its process is the socket's peer (SO_PEERCRED), its config file the
`--config`/`-c` of its command line (default /etc/containerd/config.toml), read through `/proc/PID/root` so a
containerd in another mount namespace (k3s, rke2) is read as it sees its files. containerd 2.x's CRI images plugin
(`plugins."io.containerd.cri.v1.images".registry.config_path`, default `/etc/containerd/certs.d:/etc/docker/certs.d`)
and 1.6/1.7's (`plugins."io.containerd.grpc.v1.cri".registry.config_path`, no default) are read.

Invariants: discovery happens once per daemon (a containerd restart with another config starts new daemons, whose
config identity differs only if the option does: the hosts.toml files themselves are re-read when they change);
anything that cannot be found or read means "no host configuration" and is logged once with the reason, never an
error of the container: the policy's own `[registry]` settings still apply.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_2_DEFAULT = "/etc/containerd/certs.d:/etc/docker/certs.d"
MAX_CONFIG = 4 << 20


def containerd_pid(address: str) -> int:
    """The pid of the process listening on the unix socket `address` (containerd's gRPC socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(2)
        conn.connect(address)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return int(pid)


def config_file_of(pid: int) -> str:
    """The config file of containerd process `pid` as its own command line names it."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    path = DEFAULT_CONTAINERD_CONFIG
    for index, arg in enumerate(argv[1:], start=1):
        if arg in ("--config", "-c") and index + 1 < len(argv):
            path = argv[index + 1]
        elif arg.startswith(("--config=", "-c=")):
            path = arg.split("=", 1)[1]
    return path if os.path.isabs(path) else os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)


def config_path_of(doc: dict[str, Any]) -> str:
    """The CRI registry `config_path` of a parsed containerd config ("" when it sets none and has no default)."""
    plugins = doc.get("plugins") if isinstance(doc.get("plugins"), dict) else {}
    assert isinstance(plugins, dict)
    version = doc.get("version", 1)
    if version == 3:
        table = plugins.get("io.containerd.cri.v1.images", {})
        default = CONTAINERD_2_DEFAULT
    else:
        table = plugins.get("io.containerd.grpc.v1.cri" if version == 2 else "cri", {})
        default = ""
    registry = table.get("registry", {}) if isinstance(table, dict) else {}
    value = registry.get("config_path", default) if isinstance(registry, dict) else default
    return value if isinstance(value, str) else default


class ContainerdHosts:
    """The registry host configuration for this daemon's lookups (see the module docstring)."""

    def __init__(self, config_path: str = "", grpc_address: str | None = None) -> None:
        self._explicit = config_path
        self._address = grpc_address
        self._lock = threading.Lock()
        self._resolved: Any = None
        self._done = False

    def registry_hosts(self) -> Any:
        """An oci.hosts.RegistryHosts, or None when there is no host configuration to follow."""
        with self._lock:
            if not self._done:
                self._resolved = self._resolve()
                self._done = True
            return self._resolved

    def _resolve(self) -> Any:
        from wasm_shim.oci.hosts import RegistryHosts

        if self._explicit:
            return RegistryHosts.from_config_path(self._explicit)
        from .content_store import GRPC_ADDRESS_ENV

        address = self._address if self._address is not None else os.environ.get(GRPC_ADDRESS_ENV, "")
        if not address:
            return None
        try:
            import tomllib

            pid = containerd_pid(address)
            path = config_file_of(pid)
            root = f"/proc/{pid}/root"
            try:
                with open(root + path, "rb") as f:
                    data = f.read(MAX_CONFIG)
                doc = tomllib.loads(data.decode())
            except FileNotFoundError:
                doc = {}  # containerd runs on its defaults
            config_path = config_path_of(doc)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("containerd's registry host configuration is not followed (cannot read it through %s: %s); "
                        "the policy's [registry] settings apply", address, exc)
            return None
        if not config_path:
            log.info("containerd (%s) has no registry config_path: registries are asked directly", path)
            return None
        log.info("registry lookups follow containerd's host configuration: config_path %s (from %s)",
                 config_path, path)
        return RegistryHosts.from_config_path(config_path, root)
