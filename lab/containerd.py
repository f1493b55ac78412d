"""A private containerd (Debian's 1.6, or the 1.7 and 2.x builds in .tools/bin) for one test, in a temp dir.

Owns: writing the config, starting containerd with the PATH that finds our shim, waiting until it answers,
running `ctr` against it, and `stop()`, which leaves the machine as it found it.

Invariants:
- Everything containerd and its shims keep is under ``tmp`` (root, state, opt, CNI config) or under a short
  socket dir (gRPC/ttrpc sockets and, on 2.x, shim sockets), except what containerd 1.6 and runc hard-code:
  the runc root ``/run/containerd/runc/<namespace>`` and shim sockets in ``/run/containerd/s``. ``stop()``
  removes those too, and only those that belong to this instance (its unique namespace, its shims' sockets).
- ``stop()`` is idempotent and safe at any point of a failed start or test. It kills containerd; every process
  whose argv names this instance's address, or whose environment containerd gave our addresses (shims,
  whatever their binary), with their descendants; every process in this namespace's cgroups. Then it unmounts
  what is mounted under ``tmp`` (deepest first, lazily), removes this namespace's cgroups and runc state, and
  deletes ``tmp``.
- Every wait is bounded; a failure says what was running and shows the tail of containerd's log.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lab.procs import unix_socket_answers

from .toml_writer import deep_merge, dumps

Kind = Literal["1.6", "1.7", "2.x"]
KINDS: tuple[Kind, ...] = ("1.6", "1.7", "2.x")
#: The kinds every containerd test runs on; a test marked ``containerd_1_7`` runs on 1.7 too (lab/fixtures.py).
DEFAULT_KINDS: tuple[Kind, ...] = ("1.6", "2.x")
#: Kinds whose config is version 2 with the one CRI plugin io.containerd.grpc.v1.cri (1.6 and 1.7).
CONFIG_V2_KINDS: tuple[Kind, ...] = ("1.6", "1.7")
#: Kinds whose CRI pull can pull a wasm OCI artifact: their unpacker skips layers that are not tars (1.7's
#: pkg/unpack splits layers from non-layers by media type); 1.6.20 unpacks every layer as a tar and fails.
ARTIFACT_PULL_KINDS: tuple[Kind, ...] = ("1.7", "2.x")

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
VENV_BIN = REPO_ROOT / ".venv" / "bin"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# sun_path holds 108 bytes on Linux; containerd 2.x also caps its shim socket_dir at 42 characters
# (core/runtime/v2/socket_linux.go) so that dir + "/" + 64 hex digits of the shim's socket name fits.
_MAX_SOCKET_PATH = 100
_MAX_SHIM_SOCKET_DIR = 42
_RUNC_ROOT = Path("/run/containerd/runc")  # runc shim's default `--root` (1.6 and 2.x), namespaced below
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_HINT_DIR = Path("/run/wasm-shim/start-hints")  # shim/launch/contract.py HINT_DIR
_CNI_BIN_DIR = "/usr/lib/cni"  # Debian containernetworking-plugins
_TASK_COMMANDS = ("task", "tasks", "t")  # ctr's names (and aliases) for its task command
_CONTAINER_COMMANDS = ("container", "containers", "c")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DISABLED_PLUGINS: dict[Kind, list[str]] = {
    # Snapshotters we never use (they probe devices or kernel features) and tracing. (Not runtime.v1.linux:
    # 1.6's tasks service fails to load without a v1 runtime plugin.)
    "1.6": [
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ],
    "1.7": [
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.nri.v1.nri",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ],
    # Also NRI: it would listen on the machine-wide /var/run/nri/nri.sock.
    "2.x": [
        "io.containerd.snapshotter.v1.blockfile",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.erofs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.differ.v1.erofs",
        "io.containerd.nri.v1.nri",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ],
}
_CRI_PLUGINS: dict[Kind, list[str]] = {
    "1.6": ["io.containerd.grpc.v1.cri"],
    "1.7": ["io.containerd.grpc.v1.cri"],
    "2.x": [
        "io.containerd.grpc.v1.cri",
        "io.containerd.cri.v1.images",
        "io.containerd.cri.v1.runtime",
        "io.containerd.podsandbox.controller.v1.podsandbox",
    ],
}


#: Left enabled when containerd's environment names an OTLP endpoint (a tracing test); otherwise tracing is off.
_TRACING_PLUGINS = ("io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing")


# What the `containerd_factory` fixture returns: factory(kind=None, *, cri=False, extra_config="", env=None).
ContainerdFactory = Callable[..., "Containerd"]


class HarnessError(RuntimeError):
    """The harness could not do what a test asked; the message says what and shows containerd's log tail."""


class ComponentMissing(HarnessError):
    """The machine lacks a component (not root, containerd not installed); tests skip with this reason."""


class CtrError(subprocess.CalledProcessError, HarnessError):
    """`ctr` exited non-zero; unlike CalledProcessError, str() shows its output and containerd's log tail."""

    def __init__(self, returncode: int, cmd: list[str], output: str, stderr: str, log_tail: str) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.log_tail = log_tail

    def __str__(self) -> str:
        return (
            f"`{' '.join(self.cmd)}` exited {self.returncode}\n"
            f"--- stdout\n{self.output}--- stderr\n{self.stderr}--- containerd log (tail)\n{self.log_tail}"
        )


def require_root() -> None:
    if os.geteuid() != 0:
        raise ComponentMissing(f"containerd tests need root (mounts, cgroups, runc); euid is {os.geteuid()}")


def binaries(kind: Kind) -> tuple[str, str]:
    """(containerd, ctr) for ``kind``: Debian's in /usr/bin for 1.6, `.tools/bin/{containerd,ctr}-1.7` or
    `-2` else."""
    if kind == "1.6":
        found = [shutil.which(name, path="/usr/local/bin:/usr/bin:/bin") for name in ("containerd", "ctr")]
        if not all(found):
            raise ComponentMissing("Debian's containerd 1.6 is not installed (apt-get install containerd)")
        return found[0] or "", found[1] or ""
    if kind in ("1.7", "2.x"):
        suffix = "1.7" if kind == "1.7" else "2"
        daemon, client = TOOLS_BIN / f"containerd-{suffix}", TOOLS_BIN / f"ctr-{suffix}"
        for path in (daemon, client):
            if not os.access(path, os.X_OK):
                # Not a skip: setup builds these on any machine with Go, so a missing one is a setup failure.
                raise HarnessError(f"{path} is missing; run `make setup` (it builds containerd {kind} with Go)")
        return str(daemon), str(client)
    raise ValueError(f"containerd kind must be one of {KINDS}, not {kind!r}")


def overlay_supported(directory: Path) -> bool:
    """True when an overlay mount with upper and work dirs on ``directory``'s filesystem works."""
    probe = Path(tempfile.mkdtemp(prefix="ovl-", dir=directory))
    try:
        for part in ("lower", "upper", "work", "merged"):
            (probe / part).mkdir()
        options = f"lowerdir={probe / 'lower'},upperdir={probe / 'upper'},workdir={probe / 'work'}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")],
            capture_output=True,
            timeout=10,
        )
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", str(probe / "merged")], capture_output=True, timeout=10, check=True)
        return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})\n"
    return "\n".join(text.splitlines()[-lines:]) + "\n"


@dataclass
class Containerd:
    """One running private containerd. ``address`` and ``ttrpc_address`` are socket paths (no ``unix://``)."""

    kind: Kind
    tmp: Path
    address: str
    ttrpc_address: str
    namespace: str
    log_path: Path
    config_path: Path
    snapshotter: str
    containerd_binary: str
    ctr_binary: str
    env: dict[str, str]
    socket_dir: Path | None = None  # the short dir for sockets when ``tmp`` is too long for them
    shim_socket_dir: Path | None = None  # where shims (ours included) put their sockets and our daemon its log
    startup_seconds: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    _shim_sockets: set[str] = field(default_factory=set)

    # -- ctr -------------------------------------------------------------------------------------------------
    def ctr_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        env["CONTAINERD_SNAPSHOTTER"] = self.snapshotter  # read by `ctr run`, `ctr images import` and friends
        return env

    def ctr(
        self, *args: str, timeout: float = 60, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address A --namespace N ARGS``; with ``check``, a failure raises CtrError."""
        cmd = self.ctr_argv(*args)
        try:
            done = subprocess.run(
                cmd,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.ctr_env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(
                f"`{' '.join(cmd)}` did not finish within {timeout:g} s (killed)\n"
                f"--- stdout\n{_text(exc.stdout)}--- stderr\n{_text(exc.stderr)}"
                f"--- containerd log (tail)\n{_log_tail(self.log_path)}"
            ) from None
        if check and done.returncode != 0:
            raise CtrError(done.returncode, cmd, done.stdout, done.stderr, _log_tail(self.log_path))
        return done

    def ctr_argv(self, *args: str) -> list[str]:
        """The full `ctr` command line for ARGS, for callers that run it themselves (a Popen'd `ctr run`).

        Adds the global ``--address``/``--namespace``, and for `run`, `task start` and `task exec` a
        ``--fifo-dir`` under tmp (ctr's default, /run/containerd/fifo, keeps the FIFOs of detached tasks
        forever); `run` and `container create` also get ``--snapshotter`` (ctr's own default is overlayfs).
        """
        return [self.ctr_binary, "--address", self.address, "--namespace", self.namespace, *self._flags(args)]

    def _flags(self, args: Sequence[str]) -> list[str]:
        args = list(args)
        if args[:1] == ["run"]:
            at, extra = 1, ["fifo-dir", "snapshotter"]
        elif len(args) >= 2 and args[0] in _TASK_COMMANDS and args[1] in ("start", "exec"):
            at, extra = 2, ["fifo-dir"]
        elif len(args) >= 2 and args[0] in _CONTAINER_COMMANDS and args[1] == "create":
            at, extra = 2, ["snapshotter"]
        else:
            return args
        values = {"fifo-dir": str(self.tmp / "fifo"), "snapshotter": self.snapshotter}
        added: list[str] = []
        for flag in extra:
            if not any(a == f"--{flag}" or a.startswith(f"--{flag}=") for a in args):
                added += [f"--{flag}", values[flag]]
        return [*args[:at], *added, *args[at:]]

    @property
    def root(self) -> str:
        """containerd's root dir (content, snapshots, metadata)."""
        return str(self.tmp / "root")

    @property
    def state(self) -> str:
        """containerd's state dir; bundles, and so the rootfs mounts of tasks, live below it."""
        return str(self.tmp / "state")

    def import_image(self, tar: Path, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Import (and unpack with this instance's snapshotter) an image tarball, e.g. from oci.layout."""
        return self.ctr("images", "import", str(tar), timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    # -- stop ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Kill containerd and everything it started, unmount, remove its state; see the module docstring."""
        if self.stopped:
            return
        self.stopped = True
        errors: list[str] = []
        try:
            self._kill_everything(errors)
        finally:
            self._unmount_under(errors)
            self._remove_cgroups(errors)
            self._remove_outside_state(errors)
            for directory in (self.tmp, self.socket_dir):
                if directory is not None:
                    _rmtree(directory, errors)
        if errors:
            raise HarnessError("containerd harness cleanup was incomplete:\n  " + "\n  ".join(errors))

    def _marks(self) -> list[bytes]:
        return [self.address.encode(), self.ttrpc_address.encode()]

    def _belongs(self, pid: int) -> bool:
        """Started for this instance: its argv names our address, or containerd handed it our addresses in
        its environment (TTRPC_ADDRESS / GRPC_ADDRESS, docs/protocol.md "The shim binary")."""
        marks = self._marks()
        for name in ("cmdline", "environ"):
            with suppress(OSError):
                data = Path(f"/proc/{pid}/{name}").read_bytes()
                if any(mark in part for part in data.split(b"\0") for mark in marks):
                    return True
        return False

    def _cgroup_dirs(self) -> list[Path]:
        """This namespace's cgroup dirs in every hierarchy (ctr puts containers at /<namespace>/<id>)."""
        dirs = []
        hierarchies = [_CGROUP_ROOT, *_safe_iterdir(_CGROUP_ROOT)]
        candidates = [h / self.namespace for h in hierarchies]
        for candidate in candidates:
            if candidate.is_dir() and not candidate.is_symlink():
                dirs.append(candidate)
        return dirs

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self._cgroup_dirs():
            for procs in top.rglob("cgroup.procs"):
                with suppress(OSError, ValueError):
                    pids.update(int(line) for line in procs.read_text().split())
        return pids

    def _victims(self) -> set[int]:
        me = os.getpid()
        table = _process_table()
        roots = {pid for pid in table if pid != me and self._belongs(pid)}
        if self.process is not None and self.process.poll() is None:
            roots.add(self.process.pid)
        roots |= self._cgroup_pids()
        victims = set(roots)
        frontier = set(roots)
        while frontier:  # descendants: runc containers are children of their shim (a subreaper)
            frontier = {pid for pid, ppid in table.items() if ppid in frontier and pid not in victims}
            victims |= frontier
        victims.discard(me)
        return victims

    def _kill_everything(self, errors: list[str]) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # first, so it cannot start or restart shims while we clean up
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            victims = {pid for pid in self._victims() if process_alive(pid)}
            if not victims:
                return
            for pid in victims:
                self._shim_sockets |= _bound_unix_sockets(pid)
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                errors.append(f"processes still alive after SIGKILL: {sorted(victims)}")
                return
            time.sleep(0.02)

    def _unmount_under(self, errors: list[str]) -> None:
        prefixes = [str(d) for d in (self.tmp, self.socket_dir) if d is not None]
        for _ in range(20):  # stacked mounts reveal the one below after each pass
            targets = [m for m in _mount_points() if any(m == p or m.startswith(p + "/") for p in prefixes)]
            if not targets:
                return
            for target in sorted(targets, key=lambda m: m.count("/"), reverse=True):
                done = subprocess.run(["umount", "-l", target], capture_output=True, text=True, timeout=10)
                if done.returncode != 0 and target in _mount_points():
                    errors.append(f"umount -l {target}: {done.stderr.strip()}")
                    return
        errors.append(f"mounts left under {prefixes} after 20 passes")

    def _remove_cgroups(self, errors: list[str]) -> None:
        for top in self._cgroup_dirs():
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                _rmdir_cgroup(directory, errors)
            _rmdir_cgroup(top, errors)

    def _remove_outside_state(self, errors: list[str]) -> None:
        # containerd's runc shim and our native engine (shim/engines/native.py) each keep runc state per namespace.
        for root in (_RUNC_ROOT, Path("/run/wasm-shim/runc")):
            runc_state = root / self.namespace
            if runc_state.exists():
                _rmtree(runc_state, errors)
        for path in sorted(self._shim_sockets):
            with suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
        # The start hints our shim binary left for this instance's daemons (shim/launch/fast_start.c): each names
        # its daemon's socket on its second line.
        sockets = [str(d) + os.sep for d in (self.shim_socket_dir, self.socket_dir) if d is not None]
        for hint in _safe_iterdir(_HINT_DIR):
            with suppress(OSError, IndexError):
                if sockets and hint.read_text(errors="replace").split("\n")[1].startswith(tuple(sockets)):
                    hint.unlink()


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def _safe_iterdir(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _process_table() -> dict[int, int]:
    """pid -> ppid of each process, from /proc/<pid>/stat (comm may hold ')': split at the last one)."""
    table = {}
    for entry in _safe_iterdir(Path("/proc")):
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = int(fields[1])
    return table


def process_alive(pid: int) -> bool:
    """Exists and is not a zombie (a zombie whose parent is not us is reaped by init, not by us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _bound_unix_sockets(pid: int) -> set[str]:
    """Paths of the unix sockets ``pid`` holds open that are bound to a filesystem path."""
    inodes = set()
    for fd in _safe_iterdir(Path(f"/proc/{pid}/fd")):
        with suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    paths = set()
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            # Num RefCount Protocol Flags Type St Inode Path
            if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith("/"):
                paths.add(parts[7])
    return paths


def _mount_points() -> list[str]:
    """Mount points from /proc/self/mountinfo (field 5), with its octal escapes (\\040 etc.) decoded."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(raw.encode().decode("unicode_escape") if "\\" in raw else raw)
    return points


def _rmdir_cgroup(directory: Path, errors: list[str]) -> None:
    for _ in range(50):  # the kernel refuses rmdir for a moment while the last task is being torn down
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                errors.append(f"rmdir {directory}: {exc}")
                return
            time.sleep(0.02)
    errors.append(f"rmdir {directory}: still busy")


def _rmtree(directory: Path, errors: list[str]) -> None:
    def retry_writable(function: Any, path: str, _exc: BaseException) -> None:
        # overlayfs work dirs ("work/work") can come back mode 000; root may still need to chmod before
        # removal.
        with suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
        try:
            function(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"remove {path}: {exc}")

    if not (directory.exists() or directory.is_symlink()):
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(directory, onexc=retry_writable)
    else:  # `onerror` is deprecated from 3.12 on (a warning, hence an error under -W error)
        shutil.rmtree(directory, onerror=lambda f, p, info: retry_writable(f, p, info[1]))


def _config(
    kind: Kind,
    *,
    tmp: Path,
    address: str,
    ttrpc_address: str,
    shim_socket_dir: Path,
    snapshotter: str,
    cri: bool,
    traced: bool = False,
) -> dict[str, Any]:
    disabled = [p for p in _DISABLED_PLUGINS[kind] if not (traced and p in _TRACING_PLUGINS)]
    disabled += [] if cri else list(_CRI_PLUGINS[kind])
    config: dict[str, Any] = {
        # 1.6 and 1.7 read config version 2; 2.x reads 3 (and migrates it to its own current version).
        "version": 2 if kind in CONFIG_V2_KINDS else 3,
        "root": str(tmp / "root"),
        "state": str(tmp / "state"),
        "disabled_plugins": disabled,
        "grpc": {"address": address},
        "ttrpc": {"address": ttrpc_address},
        "debug": {"level": "debug"},
        "plugins": {"io.containerd.internal.v1.opt": {"path": str(tmp / "opt")}},
    }
    plugins = config["plugins"]
    if kind == "2.x":
        plugins["io.containerd.shim.v1.manager"] = {"socket_dir": str(shim_socket_dir)}
    if cri:
        cni_conf_dir = str(tmp / "cni" / "net.d")
        if kind in CONFIG_V2_KINDS:
            plugins["io.containerd.grpc.v1.cri"] = {
                "stream_server_port": "0",
                "cni": {"conf_dir": cni_conf_dir, "bin_dir": _CNI_BIN_DIR},
                "containerd": {"snapshotter": snapshotter},
            }
        else:
            plugins["io.containerd.grpc.v1.cri"] = {"stream_server_port": "0"}
            cni = {"conf_dir": cni_conf_dir, "bin_dirs": [_CNI_BIN_DIR]}
            plugins["io.containerd.cri.v1.runtime"] = {"cni": cni}
            plugins["io.containerd.cri.v1.images"] = {"snapshotter": snapshotter}
    return config


def _socket_dir_for(tmp: Path) -> tuple[Path, Path | None]:
    """Where sockets go: ``tmp/s`` when short enough, else a fresh short dir under /tmp (returned second)."""
    if len(str(tmp / "s")) <= _MAX_SHIM_SOCKET_DIR:
        return tmp / "s", None
    short = Path(tempfile.mkdtemp(prefix="wsh-", dir="/tmp"))
    return short / "s", short


def launch(
    kind: Kind,
    tmp: Path,
    *,
    path_prepend: Sequence[str | os.PathLike[str]] = (),
    cri: bool = False,
    extra_config: str = "",
    env: Mapping[str, str] | None = None,
    prepare_config: Callable[[str], Path] | None = None,
) -> Containerd:
    """Start containerd ``kind`` under ``tmp`` and return it once `ctr version` answers; the caller must
    stop() it.

    ``prepare_config(text)``, if given, receives the config the harness made and returns the file containerd is
    started with instead (e.g. that text installed as a node's config and then edited by `wasm-shim node install`).

    On any failure everything started so far is stopped and ``tmp`` removed before the error propagates.
    """
    require_root()
    containerd_binary, ctr_binary = binaries(kind)
    tmp = Path(tmp).resolve()
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        overrides = tomllib.loads(extra_config) if extra_config else {}
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"extra_config is not valid TOML: {exc}\n{extra_config}") from None

    sock_dir, short_dir = _socket_dir_for(tmp)
    sock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    address = str(sock_dir.parent / "containerd.sock")
    ttrpc_address = address + ".ttrpc"
    assert len(ttrpc_address) < _MAX_SOCKET_PATH, ttrpc_address

    path = [os.fspath(p) for p in path_prepend]
    if kind == "2.x":
        # containerd looks on PATH before its own dir for shims: put 2.x's runc shim before Debian's 1.6 one.
        path.append(str(Path(containerd_binary).resolve().parent))
    path += [str(TOOLS_BIN), os.environ.get("PATH", _DEFAULT_PATH)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERD_", "NOTIFY_SOCKET"))}
    environment["PATH"] = os.pathsep.join(path)
    # Our shim's own settings (shim/config.py): its sockets and logs beside containerd's, its compiled-module
    # cache private to this instance, debug logs so tests can see which task API containerd speaks.
    environment.update(
        {
            "WASM_SHIM_SOCKET_DIR": str(sock_dir),
            "WASM_SHIM_CACHE_DIR": str(tmp / "wasm-cache"),
            "WASM_SHIM_LOG_LEVEL": "debug",
            "WASM_SHIM_CONFIG": "",
        }
    )
    environment.update(env or {})

    instance = Containerd(
        kind=kind,
        tmp=tmp,
        address=address,
        ttrpc_address=ttrpc_address,
        namespace=f"wsh-{secrets.token_hex(4)}",
        log_path=tmp / "containerd.log",
        config_path=tmp / "config.toml",
        snapshotter="native",
        containerd_binary=containerd_binary,
        ctr_binary=ctr_binary,
        env=environment,
        socket_dir=short_dir,
        shim_socket_dir=sock_dir,
    )
    try:
        instance.snapshotter = "overlayfs" if overlay_supported(tmp) else "native"
        config = _config(
            kind,
            tmp=tmp,
            address=address,
            ttrpc_address=ttrpc_address,
            shim_socket_dir=sock_dir,
            snapshotter=instance.snapshotter,
            cri=cri,
            # containerd's tracing plugins load only with an endpoint; they stay off unless a test names one.
            traced=bool(environment.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                        or environment.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
        )
        if prepare_config is None:
            instance.config_path.write_text(dumps(deep_merge(config, overrides)))
        else:
            instance.config_path = prepare_config(dumps(deep_merge(config, overrides)))
        began = time.monotonic()
        with instance.log_path.open("ab") as log:
            instance.process = subprocess.Popen(
                [containerd_binary, "--config", str(instance.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=tmp,
                start_new_session=True,  # a Ctrl-C aimed at pytest must not reach it before stop() does
            )
        _wait_until_ready(instance, began)
        instance.startup_seconds = time.monotonic() - began
        return instance
    except BaseException:
        instance.stop()
        raise


def _wait_until_ready(instance: Containerd, began: float) -> None:
    assert instance.process is not None
    deadline = began + START_TIMEOUT
    last_error = "socket not there yet"
    while time.monotonic() < deadline:
        code = instance.process.poll()
        if code is not None:
            raise HarnessError(
                f"containerd {instance.kind} exited with {code} during start-up "
                f"(config {instance.config_path}):\n{instance.log_tail()}"
            )
        if unix_socket_answers(instance.address):
            done = instance.ctr("version", timeout=10, check=False)
            if done.returncode == 0:
                return
            last_error = done.stderr.strip()
        time.sleep(0.01)
    raise HarnessError(
        f"containerd {instance.kind} did not answer `ctr version` within {START_TIMEOUT:g} s "
        f"(last error: {last_error}):\n{instance.log_tail()}"
    )


@contextmanager
def start_containerd(
    kind: Kind,
    tmp: Path,
    *,
    path_prepend: Sequence[str | os.PathLike[str]],
    cri: bool = False,
    extra_config: str = "",
    env: Mapping[str, str] | None = None,
) -> Iterator[Containerd]:
    """Run a private containerd for the ``with`` block; it is stopped (and ``tmp`` deleted) however the block
    ends.

    ``path_prepend`` goes first on containerd's PATH (e.g. ``.venv/bin`` so `containerd-shim-wasmtime-v1` is
    ours),
    then the 2.x build's own dir (2.x only), ``.tools/bin``, and the inherited PATH (runc,
    containerd-shim-runc-v2). ``extra_config`` is TOML deep-merged over the generated config (tables merge,
    other values replace). ``env`` is added to containerd's environment, which its shims inherit.
    """
    instance = launch(
        kind, tmp, path_prepend=path_prepend, cri=cri, extra_config=extra_config, env=env
    )
    try:
        yield instance
    finally:
        instance.stop()
