"""Shim configuration: what an operator can set, where it comes from, and how it is validated.

Owns: the `ShimConfig` value and its sources. Sources, later ones winning:
  1. built-in defaults (safe: per-namespace grouping, a root-only cache dir),
  2. the node file `/etc/wasm-shim/config.toml` (path overridable with WASM_SHIM_CONFIG), if present,
  3. containerd's runtime options for our handler (`runtimeoptions.v1.Options`: `config_body` TOML, or the file
     named by `config_path`) — what `[plugins...runtimes.wasmtime.options]` in containerd's config becomes,
  4. environment variables `WASM_SHIM_<KEY>` (inherited from containerd's environment; handy for tests).

Invariants: unknown keys are errors, not silently ignored (a typo must not fall back to a default the operator
did not choose); values are type-checked; the `start` path imports `tomllib` only when a TOML source exists.
This module is imported by the lean `start`/`delete` path: stdlib only, nothing heavy at import time.
"""

from __future__ import annotations

# `posix`, not `os`: this module is on every container start, the interpreter has `posix` loaded already, and
# `os` would import posixpath, stat and _collections_abc (about a millisecond, -X importtime).
import posix

# No dataclasses/typing/collections.abc at run time: this module is on every container start (`dataclasses`
# alone was measured at tens of ms under load: it imports inspect and compiles code per class).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

GROUPINGS = ("namespace", "pod", "container")
LOG_LEVELS = ("debug", "info", "warning", "error")
TRACING_PROTOCOLS = ("http/protobuf", "grpc")  # OTLP's two transports (shim/daemon/tracing.py)
DEFAULT_CONFIG_FILE = "/etc/wasm-shim/config.toml"
#: Keys of containerd's own runtimeoptions.v1.Options that may appear in the options table (Go field names).
CONTAINERD_OPTION_KEYS = ("TypeUrl", "ConfigPath")


class ConfigError(ValueError):
    """A configuration value an operator set is wrong; the message says which key, where, and why."""


class ShimConfig:
    """The effective settings; immutable (change with `merged`). Keys and defaults are in `DEFAULTS`."""

    __slots__ = ("grouping", "idle_timeout", "cache_dir", "socket_dir", "log_level", "component_runner", "policy",
                 "artifact_dir", "artifact_cache_mb", "artifact_registries", "metrics_address",
                 "registry_config_path", "registry_docker_config", "registry_ca_bundle", "https_proxy", "http_proxy",
                 "no_proxy", "metrics_dir", "tracing_endpoint", "tracing_protocol", "warm_images")

    #: grouping: which containers share one daemon. "namespace": every wasm container of one containerd (address)
    #:   and namespace on the node (densest; the default). "pod": one daemon per pod (keyed by the CRI annotation
    #:   io.kubernetes.cri.sandbox-id; a container outside a pod gets its own). "container": one daemon each.
    #: idle_timeout: seconds an idle daemon (no tasks, no connections) stays up so the next container skips
    #:   interpreter start, imports and compilation. 0 exits as soon as the last task is deleted; "never" keeps it
    #:   up for good while its config is current (the installer's keep-warm: an options file that changed or went
    #:   away makes it idle out as with the default).
    #: cache_dir: compiled modules (AOT cache, keyed by content digest). Must be root-owned; created 0700.
    #: socket_dir: the daemons' unix sockets (containerd 2.3+ may pass its own `socket_dir`, which wins).
    #: component_runner: the program each process-isolated component runs in (runner/; the only one that honours
    #:   network grants); "" = `wasm-shim-component-runner` beside the daemon's Python interpreter, else on PATH.
    #: policy: the signature policy file (TOML, oci/policy.py; docs/supply-chain.md); "" = no signature checks.
    #:   A policy that does not parse makes the daemon refuse every container with the reason, then exit when idle.
    #: artifact_dir: the node-local cache of artifacts the shim pulls itself (annotation wasm.shim.io/artifact).
    #: artifact_cache_mb: its size cap in MiB; least recently used artifacts are evicted beyond it.
    #: artifact_registries: the registries a pod's wasm.shim.io/artifact may name (oci/allowlist.py): HOST[:PORT]
    #:   (every repository there) or HOST[:PORT]/PATH (PATH and the repositories below it); a TOML list, or one
    #:   string of entries separated by commas (the installer's options file, WASM_SHIM_ARTIFACT_REGISTRIES).
    #:   Empty (the default) refuses the annotation: the daemon contacts no registry a pod names.
    #: metrics_address: where the daemon serves Prometheus metrics (shim/daemon/metrics.py): "" = off (the default),
    #:   "127.0.0.1:PORT", "[::1]:PORT", "localhost:PORT" or "unix:/absolute/path". Loopback or a unix socket only:
    #:   the endpoint has no authentication. One daemon per address: with several daemons on a node (one per
    #:   namespace, or per pod) the first binds it and the others log that they serve no metrics.
    #: metrics_dir: a root-only directory (created 0700) where every daemon serves its metrics on a unix socket of
    #:   its own (``<daemon id>.sock``, 0600), for the node's one endpoint (`wasm-shim metrics serve`, the chart's
    #:   metrics container) to read them all; "" = off (the default). Independent of metrics_address.
    #: tracing_endpoint: the OTLP collector the daemon sends traces of its task calls to (shim/daemon/tracing.py),
    #:   an http:// or https:// base URL like OTEL_EXPORTER_OTLP_ENDPOINT; "" = the daemon's environment
    #:   (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT), and without those no tracing.
    #: tracing_protocol: "http/protobuf" or "grpc"; "" = OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL, else http/protobuf.
    #: registry_config_path: containerd's registry host directories (`HOST[:PORT]/hosts.toml`, `:`-separated) the
    #:   shim's own lookups (signatures, attestations, wasm.shim.io/artifact) follow: "" = the config_path of the
    #:   containerd the daemon serves, read from its config file (shim/image/hosts.py).
    #: registry_docker_config: a directory holding config.json (docker's format: auths, credHelpers, credsStore)
    #:   with the credentials of those lookups; "" = the daemon's $DOCKER_CONFIG, else ~/.docker. The policy's
    #:   `[registry] docker_config` wins over it.
    #: registry_ca_bundle: PEM CA certificates those lookups trust besides the system's; "" = the system's only.
    #:   The policy's `[registry] ca_bundle` (which replaces the system's) wins over it.
    #: https_proxy, http_proxy, no_proxy: the proxies of those lookups (oci/proxy.py: Go's rules); "" = the
    #:   daemon's environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, inherited from containerd's).
    #: warm_images: images (in containerd's image store, namespace k8s.io) whose wasm the daemon compiles into its
    #:   cache as soon as it starts, so their first container finds it compiled (shim/daemon/warm.py); a TOML list
    #:   or one string of references separated by commas. Empty (the default): nothing ahead of time.
    DEFAULTS: dict[str, Any] = {
        "grouping": "namespace",
        "idle_timeout": 300.0,
        "cache_dir": "/var/lib/wasm-shim/cache",
        "socket_dir": "/run/containerd/s",
        "log_level": "info",
        "component_runner": "",
        "policy": "",
        "artifact_dir": "/var/lib/wasm-shim/artifacts",
        "artifact_cache_mb": 1024,
        "artifact_registries": (),
        "metrics_address": "",
        "registry_config_path": "",
        "registry_docker_config": "",
        "registry_ca_bundle": "",
        "https_proxy": "",
        "http_proxy": "",
        "no_proxy": "",
        "metrics_dir": "",
        "tracing_endpoint": "",
        "tracing_protocol": "",
        "warm_images": (),
    }

    grouping: str
    idle_timeout: float
    cache_dir: str
    socket_dir: str
    log_level: str
    component_runner: str
    policy: str
    artifact_dir: str
    artifact_cache_mb: int
    artifact_registries: tuple[str, ...]
    metrics_address: str
    registry_config_path: str
    registry_docker_config: str
    registry_ca_bundle: str
    https_proxy: str
    http_proxy: str
    no_proxy: str
    metrics_dir: str
    tracing_endpoint: str
    tracing_protocol: str
    warm_images: tuple[str, ...]

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown ShimConfig fields: {sorted(unknown)}")
        for key, default in self.DEFAULTS.items():
            object.__setattr__(self, key, values.get(key, default))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ShimConfig is immutable; use merged()")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShimConfig) and all(getattr(self, k) == getattr(other, k) for k in self.DEFAULTS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in self.DEFAULTS))

    def __repr__(self) -> str:
        return "ShimConfig(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.DEFAULTS) + ")"

    @classmethod
    def keys(cls) -> list[str]:
        return list(cls.DEFAULTS)

    def merged(self, values: Mapping[str, Any], origin: str) -> ShimConfig:
        """Return a copy with `values` applied; raise ConfigError naming `origin` for a bad key or value."""
        changes: dict[str, Any] = {k: getattr(self, k) for k in self.DEFAULTS}
        for key, value in values.items():
            norm = key.replace("-", "_")
            if norm not in self.DEFAULTS:
                raise ConfigError(
                    f"{origin}: unknown option {key!r} (known options: {', '.join(self.keys())})"
                )
            changes[norm] = _coerce(norm, value, origin)
        return ShimConfig(**changes)


def _coerce(key: str, value: Any, origin: str) -> Any:
    if key == "idle_timeout":
        if value == "never":
            return float("inf")
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: idle_timeout must be a number of seconds or \"never\", "
                              f"got {value!r}") from None
        if seconds < 0:
            raise ConfigError(f"{origin}: idle_timeout must not be negative, got {value!r}")
        return seconds
    if key == "artifact_cache_mb":
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: artifact_cache_mb must be a whole number of MiB, got {value!r}") from None
        if size <= 0 or isinstance(value, bool | float):
            raise ConfigError(f"{origin}: artifact_cache_mb must be a positive whole number of MiB, got {value!r}")
        return size
    if key == "artifact_registries":
        return _registry_entries(value, origin)
    if key == "warm_images":
        return _image_list(value, origin)
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: {key} must be a string, got {value!r}")
    if key == "grouping" and value not in GROUPINGS:
        raise ConfigError(f"{origin}: grouping must be one of {', '.join(GROUPINGS)}, got {value!r}")
    if key == "log_level" and value.lower() not in LOG_LEVELS:
        raise ConfigError(f"{origin}: log_level must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    if key == "metrics_address" and value:
        parse_metrics_address(value, origin)
    if key == "registry_config_path" and not all(d.startswith("/") for d in value.split(":") if d):
        raise ConfigError(f"{origin}: registry_config_path must be absolute directories separated by ':', got "
                          f"{value!r}")
    if key in ("https_proxy", "http_proxy") and value and "://" in value and \
            not value.startswith(("http://", "https://")):
        raise ConfigError(f"{origin}: {key} must be an http:// or https:// proxy URL, got {value!r}")
    if key == "tracing_endpoint" and value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{origin}: tracing_endpoint must be an http:// or https:// URL (an OTLP collector), got "
                          f"{value!r}")
    if key == "tracing_protocol" and value not in ("", *TRACING_PROTOCOLS):
        raise ConfigError(f"{origin}: tracing_protocol must be one of {', '.join(TRACING_PROTOCOLS)}, got {value!r}")
    optional = key in ("component_runner", "policy", "registry_docker_config", "registry_ca_bundle",
                       "metrics_dir") and value == ""
    paths = ("cache_dir", "socket_dir", "component_runner", "policy", "artifact_dir", "registry_docker_config",
             "registry_ca_bundle", "metrics_dir")
    if key in paths and not optional and not value.startswith("/"):
        raise ConfigError(f"{origin}: {key} must be an absolute path, got {value!r}")
    return value.lower() if key == "log_level" else value


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")


def _registry_entries(value: Any, origin: str) -> tuple[str, ...]:
    """`artifact_registries` as a tuple of HOST[:PORT][/PATH] entries, from a list or a comma-separated string.

    The shape is checked here with string operations only (this module is on every container start); the full
    reference grammar and the canonical form are oci/allowlist.py's, applied when a pod names an artifact."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
        entries = [item for item in items if item]
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        entries = [item.strip() for item in value]
    else:
        raise ConfigError(f"{origin}: artifact_registries must be a list of HOST[:PORT][/PATH] strings (or one "
                          f"string of them separated by commas), got {value!r}")
    for entry in entries:
        problem = _registry_entry_problem(entry)
        if problem:
            raise ConfigError(f"{origin}: artifact_registries entry {entry!r}: {problem}")
    return tuple(entries)


def _image_list(value: Any, origin: str) -> tuple[str, ...]:
    """`warm_images` as a tuple of image references, from a list or a comma-separated string (the reference grammar
    is oci/reference.py's, applied when the daemon looks the image up: this module is on every container start)."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise ConfigError(f"{origin}: warm_images must be a list of image references (or one string of them "
                          f"separated by commas), got {value!r}")
    for item in items:
        if item and (any(c.isspace() for c in item) or item.startswith("-")):
            raise ConfigError(f"{origin}: warm_images entry {item!r} is not an image reference")
    return tuple(item for item in items if item)


def _registry_entry_problem(entry: str) -> str:
    host, _, path = entry.partition("/")
    if not host or "://" in entry:
        return "give HOST[:PORT] or HOST[:PORT]/PATH, without a scheme"
    if host.startswith("["):  # an IPv6 literal: [ADDRESS] or [ADDRESS]:PORT
        address, bracket, port = host[1:].partition("]")
        name_ok = bool(bracket and address) and set(address.lower()) <= set("0123456789abcdef:.")
        port_ok = port == "" or (port.startswith(":") and port[1:].isdigit())
    else:
        name, colon, port = host.partition(":")
        name_ok = bool(name) and set(name) <= _HOST_CHARS and ("." in name or bool(colon) or name == "localhost")
        port_ok = not colon or port.isdigit()
    if not name_ok or not port_ok:
        return f"{host!r} is not a registry HOST[:PORT] (a DNS name with a dot, localhost, or with a port)"
    if not set(path) <= _PATH_CHARS:
        return "a repository path is lower-case letters, digits, '.', '_', '-' and '/' (no wildcards or tags)"
    return ""


def parse_metrics_address(value: str, origin: str = "metrics_address") -> tuple[str, int] | str:
    """``(host, port)`` on loopback, or the path of a unix socket, from a ``metrics_address`` value.

    Raises ConfigError for anything else: a non-loopback host above all (the endpoint has no authentication; task
    ids, namespaces and memory figures are not for the network).
    """
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        path = path[2:] if path.startswith("//") else path  # unix:///path, containerd's spelling
        if not path.startswith("/"):
            raise ConfigError(f"{origin}: metrics_address {value!r}: a unix socket needs an absolute path "
                              "(unix:/run/wasm-shim/metrics.sock)")
        return path
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{origin}: metrics_address {value!r}: expected 127.0.0.1:PORT, [::1]:PORT, "
                          "localhost:PORT or unix:/path")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{origin}: metrics_address {value!r}: port {port_text!r} is not in 1..65535")
    if host != "localhost":
        import ipaddress  # only when metrics are configured: not on every container start

        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ConfigError(f"{origin}: metrics_address {value!r}: {host!r} is not an IP address; use "
                              "127.0.0.1, ::1 or localhost") from None
        if not loopback:
            raise ConfigError(f"{origin}: metrics_address {value!r}: {host} is not a loopback address; the "
                              "endpoint has no authentication, so it listens on loopback or a unix socket only")
    return host, int(port_text)


def parse_toml(text: str, origin: str) -> dict[str, Any]:
    import tomllib  # only paid when a TOML source exists

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def _environ() -> dict[str, str]:
    return {key.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
            for key, value in posix.environ.items()}


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True


def load_config(
    *,
    options_body: str = "",
    options_path: str = "",
    environ: Mapping[str, str] | None = None,
) -> ShimConfig:
    """Build the effective config from every source (see the module docstring for the order)."""
    env = _environ() if environ is None else environ
    config = ShimConfig()
    node_file = env.get("WASM_SHIM_CONFIG", DEFAULT_CONFIG_FILE)
    if node_file and _exists(node_file):
        config = config.merged(parse_toml(_read_file(node_file), node_file), node_file)
    if options_path:
        config = config.merged(parse_toml(_read_file(options_path), options_path), options_path)
    elif options_body.strip():
        origin = "containerd runtime options (config_body)"
        body = parse_toml(options_body, origin)
        # containerd 1.7+ sends the whole options table, including its own runtimeoptions.v1.Options keys
        # (TypeUrl; ConfigPath only when empty, else no body is sent): those are not ours to reject.
        ours = {k: v for k, v in body.items() if k not in CONTAINERD_OPTION_KEYS}
        config = config.merged(ours, origin)
    overrides = {
        key: env[f"WASM_SHIM_{key.upper()}"] for key in ShimConfig.keys() if f"WASM_SHIM_{key.upper()}" in env
    }
    if overrides:
        config = config.merged(overrides, "environment")
    return config
