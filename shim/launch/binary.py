"""`containerd-shim-wasmtime-v1`: the binary containerd execs for every container.

Owns the two short-lived actions on containerd's critical path and the hand-off to the long-lived daemon:
- `start` (cwd = bundle): find the daemon serving this container's group or launch one, print its address, exit.
  The listening socket is created HERE and handed to the daemon as fd 3, so `start` never waits for the daemon's
  interpreter and imports: containerd's connect is queued by the kernel until the daemon accepts.
- `delete` (containerd runs it whenever its connection closes, and 1.6 after every container): ask a live daemon to
  kill and delete the task (idempotent), unmount the bundle's rootfs, print a DeleteResponse.

Invariants: stdout carries exactly the one answer containerd parses and nothing else; the daemon never holds
containerd's stdout/stderr pipes (it gets /dev/null and the bundle's `log` FIFO); imports are stdlib-only plus
our pure modules (every import here is paid by every container start: docs/design.md "The lean path").
"""

from __future__ import annotations

# `_socket`, not `socket`: the wrapper module imports selectors and enum (IntEnum conversions), a few ms of every
# container start; the C type has all this path uses (connect, bind, listen, send, recv, timeouts) and
# creates its sockets close-on-exec like the wrapper does.
import _socket
import fcntl
import posix  # not `os` (see contract.py): loaded by the interpreter already
import sys
import time

from ..config import DEFAULT_CONFIG_FILE, ConfigError, ShimConfig, load_config
from . import contract

TYPE_CHECKING = False  # not typing's (see contract.py)
if TYPE_CHECKING:
    from collections.abc import Mapping

VERSION = "0.1.0"
DEVNULL = "/dev/null"
DAEMON_MODULE = "wasm_shim.shim.daemon.main"
_START_TIMEOUT = 10.0

USAGE = """\
containerd-shim-wasmtime-v1 — containerd shim v2 that runs WebAssembly in wasmtime (wasm-shim {version})

containerd runs this binary; you do not normally run it by hand.
usage: containerd-shim-wasmtime-v1 -namespace NS -address ADDR -publish-binary PATH -id ID
         [-bundle PATH] [-debug] ACTION
actions:
  start    find or launch the daemon serving this container's group; print its address (cwd = bundle)
  delete   clean up after a task whose shim connection closed; print a DeleteResponse
runtime_type in containerd's config: io.containerd.wasmtime.v1 (see `wasm-shim containerd-config`)
"""


def _fail(message: str, code: int = 1) -> int:
    sys.stderr.write(f"containerd-shim-wasmtime-v1: {message}\n")
    return code


def _read_stdin() -> bytes:
    try:
        if posix.isatty(0):
            return b""
        chunks = []
        while True:
            chunk = posix.read(0, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""


def _daemon_alive(path: str) -> bool:
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _open_log_fifo(bundle: str) -> int:
    """The bundle's `log` FIFO, which containerd copies into its own log; /dev/null if there is none."""
    try:
        fd = posix.open(contract.join(bundle, "log"), posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError:
        return posix.open(DEVNULL, posix.O_WRONLY | posix.O_CLOEXEC)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~posix.O_NONBLOCK)
    return fd


def _spawn_daemon(
    listener: _socket.socket,
    sock_path: str,
    args: contract.ShimArgs,
    start_input: contract.StartInput,
    bundle: str,
    group: str = "",
) -> None:
    log_fd = _open_log_fifo(bundle)
    env = contract.environ()
    env.update(
        {
            "WASM_SHIM_DAEMON_SOCKET": sock_path,
            "WASM_SHIM_DAEMON_GROUP": group,  # the grouping's key (pod:SANDBOX, ...): the daemon's metrics name it
            "WASM_SHIM_DAEMON_NAMESPACE": start_input.namespace or args.namespace,
            "WASM_SHIM_DAEMON_TTRPC_ADDRESS": start_input.ttrpc_address,
            "WASM_SHIM_DAEMON_GRPC_ADDRESS": start_input.grpc_address or args.address,
            "WASM_SHIM_DAEMON_OPTIONS_BODY": start_input.options_body,
            "WASM_SHIM_DAEMON_OPTIONS_PATH": start_input.options_path,
            "WASM_SHIM_DAEMON_DEBUG": "1" if args.debug or start_input.log_level < 0 else "",
        }
    )
    # The containerd address is on the command line so operators (and test harnesses) can tell which
    # containerd a daemon belongs to from `ps`.
    argv = [sys.executable, "-m", DAEMON_MODULE, "-address", args.address, "-namespace", args.namespace]
    posix.posix_spawn(
        sys.executable,
        argv,
        env,
        file_actions=[
            (posix.POSIX_SPAWN_OPEN, 0, DEVNULL, posix.O_RDONLY, 0),
            (posix.POSIX_SPAWN_OPEN, 1, DEVNULL, posix.O_WRONLY, 0),
            (posix.POSIX_SPAWN_DUP2, log_fd, 2),
            (posix.POSIX_SPAWN_DUP2, listener.fileno(), 3),
        ],
        setsid=True,
    )
    posix.close(log_fd)


def _listen(path: str) -> _socket.socket:
    try:
        posix.unlink(path)  # stale: nobody answered on it
    except FileNotFoundError:
        pass
    listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old_umask = posix.umask(0o177)  # socket 0600: only root (containerd) may talk to the daemon
    try:
        listener.bind(path)
    finally:
        posix.umask(old_umask)
    listener.listen(512)
    return listener


def _makedirs(path: str, mode: int) -> None:
    """``os.makedirs(path, mode, exist_ok=True)`` (a directory that exists is fine; anything else raises)."""
    try:
        posix.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if not parent or parent == path:
            raise
        _makedirs(parent, mode)
        try:
            posix.mkdir(path, mode)
        except FileExistsError:
            pass


def start(args: contract.ShimArgs, environ: Mapping[str, str]) -> int:
    bundle = posix.getcwd()
    stdin = _read_stdin()
    start_input = contract.decode_start_input(stdin, environ)
    if start_input.options_type:
        return _fail(
            f"unsupported runtime options type {start_input.options_type!r}; "
            f"set `options` for this runtime as {contract.RUNTIME_OPTIONS_TYPE} (config_body TOML)"
        )
    # The files the config comes from, as they are before they are read: a hint made from them holds only while
    # they stay so (fast_start.c compares).
    sources = [p for p in (environ.get("WASM_SHIM_CONFIG", DEFAULT_CONFIG_FILE), start_input.options_path) if p]
    states = [contract.file_state(p) for p in sources]
    try:
        config: ShimConfig = load_config(
            options_body=start_input.options_body, options_path=start_input.options_path, environ=environ
        )
    except ConfigError as exc:
        return _fail(str(exc))
    namespace = start_input.namespace or args.namespace
    if not namespace:
        return _fail("no namespace: containerd passes -namespace NS")
    socket_dir = start_input.socket_dir or config.socket_dir
    group = contract.group_key(config.grouping, args.id, bundle)
    path = contract.socket_path(socket_dir, args.address, namespace, group, repr(config))
    if len(path.encode()) > 107:  # sun_path is 108 bytes with the NUL
        return _fail(f"socket path {path} is longer than a unix socket allows (107 bytes): "
                     f"choose a shorter socket_dir than {socket_dir}")
    try:
        _makedirs(socket_dir, 0o711)
        answer = _start_group(args, start_input, environ, bundle, path, group)
    except OSError as exc:
        return _fail(f"cannot start the shim daemon for {args.id} (socket {path}): {exc}")
    if answer is None:
        return 1
    if config.grouping == "namespace":  # the container decides nothing: the next start can answer without us
        _write_hint(contract.hint_key(args.address, args.namespace, environ, stdin),
                    contract.hint_text(path, f"unix://{path}", answer, states))
    return 0


def _write_hint(key: str, text: bytes | None) -> None:
    """Leave a hint for fast_start.c (best effort: without one, the next start is this one again)."""
    if text is None:
        return
    try:
        _makedirs(contract.HINT_DIR, 0o700)
        st = posix.lstat(contract.HINT_DIR)
        if st.st_uid != posix.geteuid() or st.st_mode & 0o077 or (st.st_mode & 0o170000) != 0o040000:
            return  # not a private directory of ours: fast_start.c would not trust it either
        partial = f"{contract.HINT_DIR}/.{key}.{posix.getpid()}"
        fd = posix.open(partial, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC | posix.O_NOFOLLOW,
                        0o600)
        try:
            posix.write(fd, text)
        finally:
            posix.close(fd)
        posix.rename(partial, f"{contract.HINT_DIR}/{key}")
    except OSError:
        return
    # Hints outlive their daemons (a socket dir cleaned up, a config changed): the ones whose socket is gone go.
    for name in posix.listdir(contract.HINT_DIR):
        if name == key:
            continue
        try:
            with open(f"{contract.HINT_DIR}/{name}", "rb") as hint:
                socket_path = hint.read(4096).split(b"\n")[1]
            posix.stat(socket_path)
        except FileNotFoundError:
            try:
                posix.unlink(f"{contract.HINT_DIR}/{name}")
            except OSError:
                pass
        except (OSError, IndexError):
            pass


def _start_group(
    args: contract.ShimArgs, start_input: contract.StartInput, environ: Mapping[str, str], bundle: str, path: str,
    group: str = "",
) -> bytes | None:
    """Find or launch the group's daemon, write the bundle's address file, print the answer; the answer, or None
    (the reason already written to stderr)."""

    lock_fd = posix.open(path + ".lock", posix.O_RDWR | posix.O_CREAT | posix.O_CLOEXEC, 0o600)
    try:
        # Serialises concurrent starts of one group, and a lingering daemon's decision to exit (it takes the same
        # lock before removing its socket), so a `start` never prints the address of a daemon about to vanish.
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not _daemon_alive(path):
            listener = _listen(path)
            try:
                _spawn_daemon(listener, path, args, start_input, bundle, group)
            finally:
                listener.close()
    finally:
        posix.close(lock_fd)

    address = f"unix://{path}"
    try:
        with open(contract.join(bundle, "address"), "w") as f:
            f.write(address)
    except OSError as exc:
        _fail(f"cannot write the address file in bundle {bundle}: {exc.strerror}")
        return None
    answer = contract.encode_start_output(address, start_input, environ)
    sys.stdout.buffer.write(answer)
    sys.stdout.flush()
    return answer


def _ask_daemon_to_delete(bundle: str, container_id: str, namespace: str) -> bytes | None:
    """Kill (SIGKILL, all), Wait and Delete the task in a live daemon; its DeleteResponse payload, or None.

    Uses the sans-IO ttrpc core over a blocking socket and hand-encoded requests (no protobuf, no asyncio):
    this runs on containerd's teardown path. Usually the task is already gone and the first call says so.
    """
    try:
        with open(contract.join(bundle, "address")) as f:
            address = f.read().strip()
    except OSError:
        return None
    from ..ttrpc.connection import Connection, ResponseReceived, Role
    from ..ttrpc.status import Code
    from ..ttrpc.wire import field_string, field_varint

    conn = Connection(Role.CLIENT)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(5.0)
    metadata = {"containerd-namespace-ttrpc": namespace} if namespace else None
    by_id = field_string(1, container_id)

    def call(method: str, payload: bytes) -> tuple[Code, bytes]:
        stream_id, frame = conn.send_request("containerd.task.v2.Task", method, payload, metadata=metadata)
        sock.sendall(frame)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("daemon closed the connection")
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                    return event.status, event.payload

    try:
        sock.connect(address.removeprefix("unix://"))
        status, _ = call("Kill", by_id + field_varint(3, 9) + field_varint(4, 1))
        if status == Code.NOT_FOUND and call("State", by_id)[0] == Code.NOT_FOUND:
            return None
        call("Wait", by_id)
        status, payload = call("Delete", by_id)
        return payload if status == Code.OK else None
    except OSError:
        return None
    finally:
        sock.close()


def _unmount_rootfs(bundle: str) -> None:
    import os.path  # the delete path only

    rootfs = os.path.realpath(os.path.join(bundle, "rootfs"))
    try:
        with open("/proc/self/mountinfo") as f:
            mounted = any(line.split()[4] == rootfs for line in f)
    except OSError:
        mounted = False
    if mounted:
        from ..mount import unmount_all

        unmount_all(rootfs)


def delete(args: contract.ShimArgs, environ: Mapping[str, str]) -> int:
    bundle = args.bundle or posix.getcwd()
    if not args.id:
        return _fail("delete needs -id")
    response = _ask_daemon_to_delete(bundle, args.id, args.namespace or environ.get("NAMESPACE", ""))
    try:
        _unmount_rootfs(bundle)
    except OSError as exc:
        return _fail(f"cannot unmount {bundle}/rootfs: {exc}")
    if response is None:
        # The task is gone (the usual case: containerd already deleted it). Like runc's shim, report the
        # process as killed, at this moment.
        response = contract.encode_delete_response(128 + 9, time.time_ns())
    sys.stdout.buffer.write(response)
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The binary's entry point: ``argv`` None means this process is the binary containerd exec'd (the launcher's
    call), which then ends with ``_exit`` once its answer is written: finalizing the interpreter's modules at exit
    would only cost every container start about a millisecond. Given ``argv`` (tests), it returns the status."""
    status = _main(sys.argv[1:] if argv is None else argv)
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        posix._exit(status)
    return status


def _main(argv: list[str]) -> int:
    try:
        args = contract.parse_args(argv)
    except contract.UsageError as exc:
        return _fail(f"{exc}\n\n{USAGE.format(version=VERSION)}", 2)
    if args.action == "help":
        sys.stdout.write(USAGE.format(version=VERSION))
        return 0
    if args.action == "version":
        sys.stdout.write(f"containerd-shim-wasmtime-v1\n  Version: {VERSION}\n  Runtime: io.containerd.wasmtime.v1\n")
        return 0
    if args.action == "info":
        sys.stdout.buffer.write(contract.encode_runtime_info("io.containerd.wasmtime.v1", VERSION))
        return 0
    if args.action == "start":
        return start(args, contract.environ())
    if args.action == "delete":
        return delete(args, contract.environ())
    if not args.action:
        return _fail(f"no action given\n\n{USAGE.format(version=VERSION)}", 2)
    return _fail(f"unknown action {args.action!r}\n\n{USAGE.format(version=VERSION)}", 2)


if __name__ == "__main__":
    sys.exit(main())
