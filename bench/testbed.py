"""A private containerd with everything the benchmarks run: runtimes, images, timed `ctr` runs, process memory.

Owns: starting containerd through the test harness (`lab.containerd.launch`, so the same isolation and
cleanup guarantees hold: everything lives in a temp dir and `close()` leaves the machine as it found it), building
and importing the images (wasm guests from lab/guests/src, Debian's static busybox for runc), registering peer
shims as runtimes, and measuring processes.

Invariants:
- Every `ctr` call has a timeout; a failure raises BenchError with ctr's stderr and containerd's log tail.
- Container ids are unique per Testbed (a counter), so a leftover container never collides with the next run.
- Peer shims are symlinked as `containerd-shim-peerN-v1` into a directory first on containerd's PATH and run as
  runtime `io.containerd.peerN.v1`; they run the same wasm images as our shim.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.containerd import VENV_BIN, Containerd, Kind, launch, process_alive
from wasm_shim.oci.layout import Symlink, build_image_tar
from wasm_shim.shim.launch.binary import DAEMON_MODULE

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "true")
RUN_TIMEOUT = 60.0


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which command and shows the evidence."""


@dataclass(frozen=True)
class Runtime:
    """A containerd runtime under test. ``wasm``: runs the wasm images (ours, peers) rather than busybox (runc)."""

    label: str
    runtime: str
    wasm: bool
    binary: str = ""


OURS = Runtime("wasm-shim", "io.containerd.wasmtime.v1", True, str(VENV_BIN / "containerd-shim-wasmtime-v1"))
RUNC = Runtime("runc", "io.containerd.runc.v2", False, "containerd-shim-runc-v2")


def peer_runtimes(paths: Sequence[str]) -> list[Runtime]:
    peers = []
    for n, path in enumerate(paths, 1):
        resolved = shutil.which(path) if os.sep not in path else path
        if not resolved or not os.access(resolved, os.X_OK):
            raise BenchError(f"--peer-shim {path}: not an executable file")
        peers.append(Runtime(f"peer:{Path(path).name}", f"io.containerd.peer{n}.v1", True, os.path.abspath(resolved)))
    return peers


@dataclass
class RunResult:
    seconds: float  # wall time of the whole `ctr` command
    spawned_ns: int  # wall clock (time.time_ns) just before ctr was spawned
    returncode: int
    stdout: str
    stderr: str


# What each runtime kind runs for a workload: wasm images take args after /app.wasm; busybox gets a full argv.
_NATIVE_ARGV = {
    "hello": ["/bin/echo", "hello"],
    "hello_component": ["/bin/echo", "hello"],
    "sleep": ["/bin/sleep", "3600"],
    "clock": ["/bin/sh", "-c", "echo realtime_us=$EPOCHREALTIME"],
}
_WASM = {  # workload -> (guest file, default args)
    "hello": ("hello.wasm", []),
    "hello_component": ("hello.component.wasm", []),  # runs in a component runner process (runner/)
    "sleep": ("sleep.wasm", ["3600"]),
    "sleep_component": ("sleep.component.wasm", ["3600"]),
    "clock": ("clock.wasm", []),
    "sha256": ("sha256.wasm", []),
}


def build_guests() -> Path:
    from lab.guests.fixtures import build_guests as build

    return build()


class Testbed:
    """One private containerd for a set of figures. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        kind: Kind,
        workdir: Path,
        guests: Path,
        peers: Sequence[Runtime] = (),
        *,
        shim_log_level: str = "info",
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.workdir = workdir
        self.guests = guests
        self.peers = list(peers)
        self._ids = itertools.count(1)
        workdir.mkdir(parents=True, exist_ok=True)
        peer_bin = workdir / "peer-bin"
        peer_bin.mkdir(exist_ok=True)
        for peer in self.peers:
            name = "containerd-shim-" + peer.runtime.split(".")[2] + "-v1"
            link = peer_bin / name
            link.unlink(missing_ok=True)
            link.symlink_to(peer.binary)
        environment = {"WASM_SHIM_LOG_LEVEL": shim_log_level, **(env or {})}
        # containerd at info level: its own debug logging would slow every runtime and is not under test.
        self.containerd: Containerd = launch(
            kind,
            workdir / "ctrd",
            path_prepend=[VENV_BIN, peer_bin],
            extra_config='[debug]\nlevel = "info"\n',
            env=environment,
        )
        try:
            self.images = self._import_images()
        except BaseException:
            self.containerd.stop()
            raise

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.containerd.stop()

    @property
    def runtimes(self) -> list[Runtime]:
        return [OURS, RUNC, *self.peers]

    # -- images ----------------------------------------------------------------------------------------------
    def _import_images(self) -> dict[str, str]:
        images: dict[str, str] = {}
        tars = self.workdir / "images"
        tars.mkdir(exist_ok=True)
        for workload, (guest, _) in _WASM.items():
            ref = f"localhost/wasm-shim-bench/{workload}:latest"
            tar = tars / f"{workload}.tar"
            build_image_tar(tar, ref, {"/app.wasm": self.guests / guest}, entrypoint=["/app.wasm"],
                            architecture="amd64", os="linux")
            self.containerd.import_image(tar)
            images[workload] = ref
        if not BUSYBOX.is_file():
            raise BenchError(f"{BUSYBOX} is missing (apt-get install busybox-static): it is the runc baseline")
        files: dict[str, bytes | Path | Symlink] = {"/bin/busybox": BUSYBOX}
        files.update({f"/bin/{applet}": Symlink("busybox") for applet in BUSYBOX_APPLETS})
        ref = "localhost/wasm-shim-bench/busybox:latest"
        build_image_tar(tars / "busybox.tar", ref, files, entrypoint=["/bin/sh"], env=["PATH=/bin"])
        self.containerd.import_image(tars / "busybox.tar")
        images["busybox"] = ref
        return images

    def workload(self, runtime: Runtime, name: str, args: Sequence[str] = ()) -> tuple[str, list[str]]:
        """(image ref, argv after the container id) for ``name`` on ``runtime``."""
        if runtime.wasm:
            _, default = _WASM[name]
            return self.images[name], ["/app.wasm", *(args or default)]
        if name not in _NATIVE_ARGV:
            raise BenchError(f"workload {name!r} has no native (busybox) form")
        return self.images["busybox"], list(args or _NATIVE_ARGV[name])

    # -- ctr -------------------------------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def run(
        self,
        runtime: Runtime,
        workload: str,
        *,
        args: Sequence[str] = (),
        detach: bool = False,
        task_id: str | None = None,
        timeout: float = RUN_TIMEOUT,
        check: bool = True,
    ) -> RunResult:
        """`ctr run --rm` (or `ctr run -d`) of ``workload`` on ``runtime``, timed from spawn to exit."""
        image, argv = self.workload(runtime, workload, args)
        task_id = task_id or self.new_id(workload)
        mode = ["-d"] if detach else ["--rm"]
        cmd = self.containerd.ctr_argv("run", *mode, "--runtime", runtime.runtime, image, task_id, *argv)
        env = self.containerd.ctr_env()
        spawned_ns = time.time_ns()
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise BenchError(f"`{' '.join(cmd)}` did not finish within {timeout:g} s (killed)\n{err}"
                             f"--- containerd log (tail)\n{self.containerd.log_tail()}") from None
        seconds = time.perf_counter() - began
        if check and proc.returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` exited {proc.returncode}\n--- stderr\n{err}"
                             f"--- containerd log (tail)\n{self.containerd.log_tail()}")
        return RunResult(seconds, spawned_ns, proc.returncode, out, err)

    # -- our daemon ------------------------------------------------------------------------------------------
    def daemon_pids(self) -> list[int]:
        """Our shim daemons serving this containerd (their argv names the daemon module and its address)."""
        mark = self.containerd.address.encode()
        pids = []
        for pid in _pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if DAEMON_MODULE.encode() in argv and mark in argv:
                pids.append(pid)
        return sorted(pids)

    def stop_daemons(self, timeout: float = 10.0) -> None:
        """SIGTERM our daemons and wait until they are gone: the next container starts a fresh one."""
        pids = self.daemon_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(process_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise BenchError(f"shim daemons {pids} still alive {timeout:g} s after SIGTERM")
            time.sleep(0.005)

    @property
    def cache_dir(self) -> Path:
        return Path(self.containerd.env["WASM_SHIM_CACHE_DIR"])

    def clear_cache(self) -> None:
        """Empty our compiled-module cache on disk (a daemon's in-memory cache goes with stop_daemons)."""
        if self.cache_dir.exists():
            shutil.rmtree(self.cache_dir)

    def shim_log_text(self) -> str:
        directory = self.containerd.shim_socket_dir
        assert directory is not None
        return "".join(p.read_text(errors="replace") for p in sorted(Path(directory).glob("*.log*")))

    # -- processes -------------------------------------------------------------------------------------------
    def involved_pids(self) -> set[int]:
        """Every process that runs containers for this containerd, containerd itself excluded: processes whose
        argv or environment carries its addresses (shims and shim daemons, whatever their binary), and their
        descendants (runc's container processes are children of their shim)."""
        marks = [self.containerd.address.encode(), self.containerd.ttrpc_address.encode()]
        table = _process_table()
        roots = set()
        for pid in table:
            if pid == os.getpid():
                continue
            for name in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{name}").read_bytes()
                except OSError:
                    continue
                if any(mark in data for mark in marks):
                    roots.add(pid)
                    break
        ctrd = self.containerd.process.pid if self.containerd.process else -1
        roots.discard(ctrd)
        found, frontier = set(roots), set(roots)
        while frontier:
            frontier = {pid for pid, ppid in table.items() if ppid in frontier and pid not in found}
            found |= frontier
        found.discard(ctrd)
        return {pid for pid in found if not _is_ctr(pid)}

    def containerd_pid(self) -> int:
        assert self.containerd.process is not None
        return self.containerd.process.pid


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (/proc/PID/smaps_rollup), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _is_ctr(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("ctr", "ctr-2")
    except OSError:
        return False


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _process_table() -> dict[int, int]:
    table = {}
    for pid in _pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            table[pid] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


