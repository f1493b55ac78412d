"""What containerd passes to the shim binary, and how a container finds its daemon (group).

Owns: parsing the Go-style flags containerd execs us with, decoding what `start` reads on stdin (a protobuf `Any`
with runtime options on containerd 1.6-2.2, a `BootstrapParams` on 2.3+), the group key and the daemon's socket
path, and encoding what `start` prints. Pure functions, stdlib only: this is on the path of every container start
(docs/protocol.md "The shim binary"), so it must not import protobuf, asyncio, grpc or wasmtime.

Invariants:
- The socket path is a function of (containerd address, namespace, group) only, so every `start` of the same
  group computes the same path and a daemon is found again after containerd restarts.
- What `start` prints matches what the calling containerd accepts: a BootstrapResult when it sent
  BootstrapParams (2.3+, protocol version 3 = `containerd.task.v3.Task`), JSON version 2 when MAX_SHIM_VERSION
  is set (1.7-2.2, which all set it to 2), else the plain address (1.6).
"""

from __future__ import annotations

# `posix`, not `os`: the interpreter has loaded `posix` already, while `os` imports posixpath, stat and
# _collections_abc (about a millisecond of every container start, measured with -X importtime).
import posix

from ..ttrpc.wire import WireError, field_bytes, field_string, field_varint, iter_fields

TYPE_CHECKING = False  # not typing's: `typing` costs the lean path milliseconds; mypy honours this name too
if TYPE_CHECKING:
    from collections.abc import Mapping

# Lean imports (`start` runs per container): hashlib loads OpenSSL and json its decoder and `re`, a few ms on every
# container start; the builtin SHA-256 module gives the same digest. json is imported only where it is used.
try:
    from _sha256 import sha256 as _sha256  # CPython 3.11
except ImportError:  # pragma: no cover - 3.12+ merged it into _sha2
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[no-redef]

# Wire types (protobuf encoding spec).
_VARINT, _LEN = 0, 2

RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"
SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"


class UsageError(Exception):
    """The command line is not one containerd would produce; the message says what is wrong."""


class _Record:
    """A plain mutable record: keyword construction over class-level defaults, equality and repr by fields.
    (Not a dataclass: `dataclasses` imports `inspect` and `ast`, about 5 ms of every container start.)"""

    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}  # every field's default; a list default is copied per instance

    def __init__(self, **values: object) -> None:
        for name in self.__slots__:
            default = self._defaults[name]
            setattr(self, name, values.pop(name) if name in values else (
                list(default) if isinstance(default, list) else default))
        if values:
            raise TypeError(f"{type(self).__name__}: unknown field(s) {', '.join(values)}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


class ShimArgs(_Record):
    __slots__ = ("action", "namespace", "address", "publish_binary", "id", "bundle", "socket", "debug", "extra")
    _defaults = {"action": "", "namespace": "", "address": "", "publish_binary": "", "id": "", "bundle": "",
                 "socket": "", "debug": False, "extra": []}
    action: str
    namespace: str
    address: str
    publish_binary: str
    id: str
    bundle: str
    socket: str
    debug: bool
    extra: list[str]


_VALUE_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
_BOOL_FLAGS = {"debug", "v", "version", "h", "help", "info"}


def parse_args(argv: list[str]) -> ShimArgs:
    """Parse `-flag value ... ACTION` the way Go's flag package does (one or two dashes, `-flag=value`)."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            break
        name = arg.lstrip("-")
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in _BOOL_FLAGS:
            flags.add(name)
        elif name in _VALUE_FLAGS:
            if value is None:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag -{name} needs a value")
                value = argv[i]
            values[name] = value
        else:
            raise UsageError(f"unknown flag -{name}")
        i += 1
    rest = argv[i:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if flags & {"h", "help"}:
        action = "help"
    elif flags & {"v", "version"}:
        action = "version"
    elif "info" in flags:
        action = "info"
    else:
        action = rest[0] if rest else ""
    return ShimArgs(
        action=action,
        namespace=values.get("namespace", ""),
        address=values.get("address", ""),
        publish_binary=values.get("publish-binary", ""),
        id=values.get("id", ""),
        bundle=values.get("bundle", ""),
        socket=values.get("socket", ""),
        debug="debug" in flags,
        extra=rest[1:],
    )


class StartInput(_Record):
    """What containerd told `start` on stdin (and in the environment)."""

    __slots__ = ("bootstrap", "namespace", "ttrpc_address", "grpc_address", "containerd_version", "socket_dir",
                 "log_level", "options_path", "options_body", "options_type")
    _defaults = {"bootstrap": False, "namespace": "", "ttrpc_address": "", "grpc_address": "",
                 "containerd_version": "", "socket_dir": "", "log_level": 0, "options_path": "", "options_body": "",
                 "options_type": ""}
    bootstrap: bool  # True when containerd sent BootstrapParams (2.3+)
    namespace: str
    ttrpc_address: str
    grpc_address: str
    containerd_version: str
    socket_dir: str
    log_level: int
    options_path: str
    options_body: str
    options_type: str  # type URL of a runtime options Any we did not understand


def _decode_any(data: bytes) -> tuple[str, bytes]:
    type_url, value = "", b""
    for num, wt, val in iter_fields(data):
        if num == 1 and wt == _LEN:
            type_url = bytes(val).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif num == 2 and wt == _LEN:
            value = bytes(val)  # type: ignore[arg-type]
    return type_url, value


def _apply_options(result: StartInput, type_url: str, value: bytes) -> None:
    if type_url.rsplit("/", 1)[-1] != RUNTIME_OPTIONS_TYPE:
        result.options_type = type_url
        return
    for num, wt, val in iter_fields(value):
        if wt != _LEN:
            continue
        text = bytes(val).decode("utf-8", "replace")  # type: ignore[arg-type]
        if num == 2:
            result.options_path = text
        elif num == 3:
            result.options_body = text


def _looks_like_any(data: bytes) -> bool:
    """An Any has only fields 1 (type URL, a string with a '/' or '.') and 2 (bytes)."""
    try:
        fields_seen = list(iter_fields(data))
    except WireError:
        return False
    if not fields_seen or any(num not in (1, 2) or wt != _LEN for num, wt, _ in fields_seen):
        return False
    first = [bytes(v) for n, _, v in fields_seen if n == 1]  # type: ignore[arg-type]
    return bool(first) and (b"/" in first[0] or b"." in first[0])


def join(directory: str, name: str) -> str:
    """``os.path.join`` for a name without a leading slash (what the lean path joins)."""
    return name if not directory else (directory if directory.endswith("/") else directory + "/") + name


def environ() -> dict[str, str]:
    """The process environment as ``os.environ`` decodes it (filesystem encoding, surrogateescape)."""
    return {key.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
            for key, value in posix.environ.items()}


def decode_start_input(data: bytes, environ: Mapping[str, str]) -> StartInput:
    """Decode `start`'s stdin: empty, an options `Any` (1.6-2.2) or `BootstrapParams` (2.3+)."""
    result = StartInput(
        namespace=environ.get("NAMESPACE", ""),
        ttrpc_address=environ.get("TTRPC_ADDRESS", ""),
        grpc_address=environ.get("GRPC_ADDRESS", ""),
    )
    if not data:
        return result
    if _looks_like_any(data):
        _apply_options(result, *_decode_any(data))
        return result
    result.bootstrap = True
    for num, wt, val in iter_fields(data):
        if wt == _LEN:
            raw = bytes(val)  # type: ignore[arg-type]
            text = raw.decode("utf-8", "replace")
            if num == 2:
                result.namespace = text
            elif num == 4:
                result.containerd_version = text
            elif num == 5:
                result.ttrpc_address = text
            elif num == 6:
                result.grpc_address = text
            elif num == 8:  # Extension{value=1 Any}
                for enum, ewt, ev in iter_fields(raw):
                    if enum == 1 and ewt == _LEN:
                        _apply_options(result, *_decode_any(bytes(ev)))  # type: ignore[arg-type]
            elif num == 9:
                result.socket_dir = text
        elif wt == _VARINT and num == 3:
            level = int(val)  # type: ignore[arg-type]
            result.log_level = level - (1 << 64) if level >= 1 << 63 else level
    return result


def read_annotations(bundle: str) -> dict[str, str] | None:
    """The spec's annotations; None when the bundle directory holds no config.json (containerd 2.x's Sandbox API
    starts the pod's shim so, with the sandbox's own id), {} when it cannot be read otherwise."""
    import json  # only the "pod" grouping reads the spec

    try:
        with open(join(bundle, "config.json"), "rb") as f:
            spec = json.load(f)
    except FileNotFoundError:
        try:
            posix.stat(bundle)
        except OSError:
            return {}
        return None
    except (OSError, ValueError):
        return {}
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def group_key(grouping: str, container_id: str, bundle: str) -> str:
    """The part of the daemon identity chosen by the grouping policy (see ShimConfig.grouping)."""
    if grouping == "namespace":
        return "namespace"
    if grouping == "pod":
        annotations = read_annotations(bundle)
        if annotations is None:  # a pod's sandbox: its containers reach this daemon without another `start`
            return f"pod:{container_id}"
        sandbox = annotations.get(SANDBOX_ID_ANNOTATION)
        return f"pod:{sandbox}" if sandbox else f"container:{container_id}"
    return f"container:{container_id}"


def socket_path(socket_dir: str, containerd_address: str, namespace: str, group: str, settings: str = "") -> str:
    """The daemon's socket: one per containerd, namespace, group and `settings` (the effective shim config as
    text). A container whose config differs from a running daemon's (a new policy path, log level, limits...)
    gets a daemon of its own with that config; the old one keeps its tasks and exits once idle."""
    digest = _sha256(f"wasm-shim\0{containerd_address}\0{namespace}\0{group}\0{settings}".encode()).hexdigest()
    return join(socket_dir, digest)


def encode_start_output(address: str, start_input: StartInput, environ: Mapping[str, str]) -> bytes:
    """What `start` prints for the calling containerd (see module docstring)."""
    if start_input.bootstrap:
        # BootstrapResult{version=1, address=2, protocol=3}
        return field_varint(1, 3) + field_string(2, address) + field_string(3, "ttrpc")
    max_version = environ.get("MAX_SHIM_VERSION", "")
    if max_version.isdigit() and int(max_version) >= 2:
        import json  # containerd 1.7-2.2 only

        version = min(int(max_version), 3)
        return json.dumps({"version": version, "address": address, "protocol": "ttrpc"}).encode()
    return address.encode()


# --- start hints: what fast_start.c answers from without Python ------------------------------------------------
HINT_DIR = "/run/wasm-shim/start-hints"  # root-only (0700); fast_start.c trusts nothing else
HINT_TAG = "wasm-shim-start-hint-v1"
HINT_ENV = ("NAMESPACE", "TTRPC_ADDRESS", "GRPC_ADDRESS", "MAX_SHIM_VERSION")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # the bytes the environment held (environ() decoded them)


def hint_key(address: str, namespace: str, environ: Mapping[str, str], stdin: bytes) -> str:
    """The key fast_start.c computes for these inputs (its header comment says what goes in, in which order)."""
    digest = _sha256()
    parts = [HINT_TAG, address, namespace]
    parts += [f"{name}={environ[name]}" if name in environ else name for name in HINT_ENV]
    ours = sorted(_raw(f"{name}={value}") for name, value in environ.items() if name.startswith("WASM_SHIM_"))
    for part in [_raw(p) for p in parts] + ours:
        digest.update(part + b"\0")
    keyed = without_id(stdin)
    digest.update(b"%016x" % len(keyed))
    digest.update(keyed)
    return digest.hexdigest()


_U64 = (1 << 64) - 1


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """A base-128 varint at ``pos``: (its value as 64 bits keep it, the position after it); None when it runs past
    the end or past 64 bits (fast_start.c's ``varint``)."""
    value, shift, end = 0, 0, len(data)
    while True:
        if pos >= end or shift > 63:
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value & _U64, pos


def without_id(stdin: bytes) -> bytes:
    """containerd's start input without its field 1 (the id of the sandbox or container being started, which
    containerd 2.x puts there): every other top-level field's bytes, in order. The whole input, unchanged, when it
    is not a well-formed protobuf message (fast_start.c does the same, byte for byte)."""
    kept = bytearray()
    pos, end = 0, len(stdin)
    while pos < end:
        start = pos
        tag = _varint(stdin, pos)
        if tag is None:
            return stdin
        key, pos = tag
        wire = key & 7
        if wire == 0:
            while True:
                if pos >= end:
                    return stdin
                pos += 1
                if not stdin[pos - 1] & 0x80:
                    break
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length = _varint(stdin, pos)
            if length is None or length[0] > end - length[1]:
                return stdin
            pos = length[1] + length[0]
        else:
            return stdin
        if pos > end:
            return stdin
        if key >> 3 != 1 or wire != 2:
            kept += stdin[start:pos]
    return bytes(kept)


def file_state(path: str) -> str:
    """A config file as a hint records it: "file PATH INO SIZE MTIME_NS CTIME_NS", or "none PATH" if absent."""
    try:
        st = posix.stat(path)
    except FileNotFoundError:
        return f"none {path}"
    return f"file {path} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"


def hint_text(socket: str, address: str, answer: bytes, files: list[str]) -> bytes | None:
    """A hint's content (fast_start.c's format); None when something in it would not survive its parsing."""
    lines = ["wasm-shim-hint 1", socket, address, answer.hex(), *files]
    if any(not line or any(c.isspace() and c != " " for c in line) for line in lines) or \
            any(" " in path for path in (socket, address)) or \
            any(len(line.split(" ")) != (6 if line.startswith("file ") else 2) for line in files):
        return None
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def encode_runtime_info(name: str, version: str) -> bytes:
    """containerd.types.RuntimeInfo{name=1, version=2 RuntimeVersion{version=1, revision=2}}: what containerd
    2.x reads from `-info` (api/types/introspection.proto)."""
    return field_string(1, name) + field_bytes(2, field_string(1, version))


def encode_delete_response(exit_status: int, exited_at_ns: int, pid: int = 0) -> bytes:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3 Timestamp{seconds=1, nanos=2}}."""
    seconds, nanos = divmod(exited_at_ns, 1_000_000_000)
    timestamp = field_varint(1, seconds) + (field_varint(2, nanos) if nanos else b"")
    out = field_varint(1, pid) if pid else b""
    out += field_varint(2, exit_status) if exit_status else b""
    return out + field_bytes(3, timestamp)
