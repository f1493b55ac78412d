"""The CRI harness: a private containerd with its CRI plugin, CNI, a local pause image, our runtime
table (made by `wasm-shim containerd-config`), and real `crictl` pointed at it.

Owns: the CNI bridge config (a unique bridge name and a private 10.88.x.0/24 subnet per instance, host-local IPAM
state in the instance's temp dir, no masquerading: traffic stays inside the network namespaces the tests create),
the pause and wasm images imported into CRI's namespace `k8s.io`, the `Crictl` wrapper, and a teardown that removes
every pod (so CNI releases the netns and IPs), the bridge, and runc's state for the ids this instance created.

Invariants:
- Every crictl call is bounded by a timeout; a failure raises CrictlError showing crictl's output and the tail of
  containerd's log (what an operator would look at).
- Nothing is pulled from the network: images are imported from tarballs built here (the artifact test pulls from a
  registry on 127.0.0.1 only).
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.containerd import CONFIG_V2_KINDS, TOOLS_BIN, VENV_BIN, Containerd, HarnessError, Kind
from lab.procs import stop_process
from lab.registries import DockerRegistry
from wasm_shim.oci.layout import build_image_tar

CRI_NAMESPACE = "k8s.io"  # containerd's CRI plugin keeps every pod and image here (1.6 and 2.x)
CRICTL = TOOLS_BIN / "crictl"
WASM_SHIM = VENV_BIN / "wasm-shim"
PAUSE_REF = "localhost/wasm-shim-test/pause:latest"
HANDLER = "wasmtime"
CRI_TIMEOUT = 60.0
_RUNC_ROOT = Path("/run/containerd/runc")


class CrictlError(HarnessError):
    """Crictl exited non-zero; str() shows the command, its output and containerd's log tail."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str, log_tail: str) -> None:
        super().__init__(
            f"`{' '.join(cmd)}` exited {returncode}\n--- stdout\n{stdout}--- stderr\n{stderr}"
            f"--- containerd log (tail)\n{log_tail}"
        )
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def containerd_config_table(kind: Kind, *options: str, handler: str = HANDLER, sandboxer: str = "") -> str:
    """Our runtime table, exactly as the operator gets it: from `wasm-shim containerd-config` (``sandboxer``:
    its --sandboxer, containerd 2.x only; "" = the CLI's default)."""
    argv = [str(WASM_SHIM), "containerd-config", "--config-version", "2" if kind in CONFIG_V2_KINDS else "3",
            "--handler", handler]
    if sandboxer:
        argv += ["--sandboxer", sandboxer]
    for option in options:
        argv += ["--option", option]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise HarnessError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr}")
    return done.stdout


def sandbox_image_config(kind: Kind, ref: str = PAUSE_REF) -> str:
    """The TOML that makes `ref` CRI's sandbox (pause) image (docs/protocol.md "CRI and RuntimeClass").

    Also `restrict_oom_score_adj`: CRI gives the pause container oom_score_adj -998, which needs
    CAP_SYS_RESOURCE; this machine's root lacks it (runc: "failed to update /proc/self/oom_score_adj:
    Permission denied"), so CRI must clamp it to containerd's own, as on rootless/nested nodes."""
    if kind in CONFIG_V2_KINDS:
        return (f'[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "{ref}"\n'
                "  restrict_oom_score_adj = true\n")
    return (f'[plugins."io.containerd.cri.v1.images".pinned_images]\n  sandbox = "{ref}"\n'
            '[plugins."io.containerd.cri.v1.runtime"]\n  restrict_oom_score_adj = true\n')


@dataclass(frozen=True)
class CniNetwork:
    bridge: str
    subnet: str
    gateway: str

    @classmethod
    def fresh(cls) -> CniNetwork:
        token = secrets.token_hex(3)
        third = secrets.randbelow(200) + 20  # 10.88.20-219.0/24: unlikely to meet another instance's
        return cls(bridge=f"wsh{token}", subnet=f"10.88.{third}.0/24", gateway=f"10.88.{third}.1")

    def conflist(self, ipam_dir: Path) -> dict[str, Any]:
        """CNI 0.4.0 config list: one bridge + host-local IPAM (containerd adds its own loopback)."""
        return {
            "cniVersion": "0.4.0",
            "name": f"wasm-shim-test-{self.bridge}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(ipam_dir),
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }


@dataclass
class Crictl:
    """Real `crictl` against one containerd's CRI endpoint."""

    containerd: Containerd
    config_file: Path
    pod_ids: set[str] = field(default_factory=set)
    container_ids: set[str] = field(default_factory=set)

    def argv(self, *args: str) -> list[str]:
        endpoint = f"unix://{self.containerd.address}"
        return [str(CRICTL), "--config", str(self.config_file), "--runtime-endpoint", endpoint,
                "--image-endpoint", endpoint, "--timeout", "30s", *args]

    def run(self, *args: str, check: bool = True, timeout: float = CRI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        cmd = self.argv(*args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise CrictlError(cmd, -9, _text(exc.stdout), _text(exc.stderr) + f"\n(killed after {timeout:g} s)",
                              self.containerd.log_tail()) from None
        if check and done.returncode != 0:
            raise CrictlError(cmd, done.returncode, done.stdout, done.stderr, self.containerd.log_tail())
        return done

    def json(self, *args: str) -> Any:
        # urfave/cli: a command's flags go before its arguments.
        return json.loads(self.run(args[0], "-o", "json", *args[1:]).stdout)

    # -- pods and containers ---------------------------------------------------------------------------------
    def runp(self, pod_config: Path, runtime: str = HANDLER) -> str:
        pod_id = self.run("runp", "--runtime", runtime, str(pod_config), timeout=90).stdout.strip()
        self.pod_ids.add(pod_id)
        return pod_id

    def create(self, pod_id: str, container_config: Path, pod_config: Path) -> str:
        container_id = self.run("create", "--no-pull", pod_id, str(container_config), str(pod_config)).stdout.strip()
        self.container_ids.add(container_id)
        return container_id

    def container_state(self, container_id: str) -> str:
        """CONTAINER_CREATED / CONTAINER_RUNNING / CONTAINER_EXITED, as `crictl ps -a` shows it."""
        for entry in self.json("ps", "-a").get("containers", []):
            if entry["id"] == container_id:
                return str(entry["state"])
        return ""

    def pod_state(self, pod_id: str) -> str:
        for entry in self.json("pods").get("items", []):
            if entry["id"] == pod_id:
                return str(entry["state"])
        return ""

    def inspect(self, container_id: str) -> dict[str, Any]:
        status: dict[str, Any] = self.json("inspect", container_id)["status"]
        return status

    def wait_state(self, container_id: str, state: str, timeout: float = 30) -> None:
        wait_for(lambda: self.container_state(container_id) == state, timeout,
                 f"container {container_id} in state {state} (now {self.container_state(container_id)!r})")

    def logs(self, container_id: str) -> subprocess.CompletedProcess[str]:
        return self.run("logs", container_id)

    def network_ready(self) -> bool:
        done = self.run("info", check=False, timeout=30)
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "NetworkReady" and c.get("status") for c in conditions)

    def remove_everything(self) -> None:
        """Stop and remove every pod (CNI teardown releases the netns and IP); best effort, bounded."""
        with suppress(HarnessError):
            for item in self.json("pods").get("items", []):
                self.pod_ids.add(item["id"])
            for item in self.json("ps", "-a").get("containers", []):
                self.container_ids.add(item["id"])
        for pod_id in sorted(self.pod_ids):
            self.run("stopp", pod_id, check=False, timeout=60)
            self.run("rmp", "-f", pod_id, check=False, timeout=60)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def wait_for(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what() if callable(what) else what}")


@dataclass
class CriNode:
    """A private containerd with CRI set up like a Kubernetes node: what the `cri_node` fixture returns."""

    containerd: Containerd
    crictl: Crictl
    network: CniNetwork
    workdir: Path  # pod/container configs and CRI log directories
    _counter: int = 0

    @property
    def kind(self) -> Kind:
        return self.containerd.kind

    def ctr_k8s(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ctr -n k8s.io ARGS` against this containerd (image import into CRI's namespace)."""
        cmd = [self.containerd.ctr_binary, "--address", self.containerd.address, "--namespace", CRI_NAMESPACE,
               *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.containerd.ctr_env(),
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise HarnessError(f"`{' '.join(cmd)}` exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def import_image(self, tar: Path) -> None:
        self.ctr_k8s("images", "import", str(tar))

    def image(
        self, name: str, files: Mapping[str, bytes | Path], *, entrypoint: Sequence[str],
        cmd: Sequence[str] = (), env: Sequence[str] = (),
    ) -> str:
        """Build a one-layer image from `files`, import it into k8s.io, return its ref."""
        ref = f"localhost/wasm-shim-test/{name}:latest"
        tar = self.workdir / f"{name}.tar"
        build_image_tar(tar, ref, dict(files), entrypoint=entrypoint, cmd=cmd, env=env)
        self.import_image(tar)
        return ref

    def wasm_image(self, name: str, wasm: Path, *, args: Sequence[str] = ()) -> str:
        return self.image(name, {"/app.wasm": wasm}, entrypoint=["/app.wasm"], cmd=args)

    def pod_config(self, name: str, **extra: Any) -> Path:
        self._counter += 1
        logs = self.workdir / "logs" / f"{name}-{self._counter}"
        logs.mkdir(parents=True, exist_ok=True)
        config = {
            "metadata": {"name": name, "namespace": "default", "uid": f"{name}-uid-{secrets.token_hex(4)}",
                         "attempt": 0},
            "log_directory": str(logs),
            "linux": {},
            **extra,
        }
        path = self.workdir / f"pod-{name}-{self._counter}.json"
        path.write_text(json.dumps(config))
        return path

    def container_config(self, name: str, image: str, *, args: Sequence[str] = (),
                         command: Sequence[str] = (), **extra: Any) -> Path:
        self._counter += 1
        config: dict[str, Any] = {
            "metadata": {"name": name},
            "image": {"image": image},
            "log_path": f"{name}.log",
            "linux": {},
            **extra,
        }
        if args:
            config["args"] = list(args)
        if command:
            config["command"] = list(command)
        path = self.workdir / f"ctr-{name}-{self._counter}.json"
        path.write_text(json.dumps(config))
        return path

    def restart_containerd(self) -> None:
        """Kill containerd (not its shims) and start it again on the same config, as `systemctl restart` does."""
        assert self.containerd.process is not None
        stop_process(self.containerd.process, timeout=20)
        with self.containerd.log_path.open("ab") as log:
            self.containerd.process = subprocess.Popen(
                [self.containerd.containerd_binary, "--config", str(self.containerd.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.containerd.env,
                cwd=self.containerd.tmp, start_new_session=True,
            )
        wait_for(lambda: self.containerd.ctr("version", check=False, timeout=10).returncode == 0, 30,
                 "containerd to answer again after the restart")
        wait_for(lambda: self.crictl.run("version", check=False, timeout=10).returncode == 0, 30,
                 "CRI to answer again after the restart")

    def teardown(self) -> None:
        try:
            if self.containerd.process is not None and self.containerd.process.poll() is None:
                self.crictl.remove_everything()
        finally:
            for ident in self.crictl.pod_ids | self.crictl.container_ids:
                shutil.rmtree(_RUNC_ROOT / CRI_NAMESPACE / ident, ignore_errors=True)
            with suppress(OSError):
                (_RUNC_ROOT / CRI_NAMESPACE).rmdir()  # only when empty: never another node's state
            with suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["ip", "link", "del", self.network.bridge], capture_output=True, timeout=10)


def cni_config(kind: Kind, conf_dir: Path) -> str:
    plugin = "io.containerd.grpc.v1.cri" if kind in CONFIG_V2_KINDS else "io.containerd.cri.v1.runtime"
    table = f'plugins."{plugin}".cni'
    return f'[{table}]\n  conf_dir = "{conf_dir}"\n'


def runc_table(kind: Kind) -> str:
    """The default `runc` handler. Needed once any runtime table is given: the `runtimes` map then replaces
    containerd's built-in one, and CRI refuses to load without its default_runtime_name ("runc")."""
    plugin = "io.containerd.grpc.v1.cri" if kind in CONFIG_V2_KINDS else "io.containerd.cri.v1.runtime"
    return f'[plugins."{plugin}".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'


def cri_extra_config(kind: Kind, *runtime_options: str, extra: str = "") -> str:
    """Containerd config overrides for a CRI node: sandbox image, runc, and our runtime table (from the real
    CLI)."""
    return sandbox_image_config(kind) + runc_table(kind) + containerd_config_table(kind, *runtime_options) + extra


def start_cri_node(
    factory: Callable[..., Containerd], kind: Kind, pause: Path, workdir: Path, *,
    runtime_options: Sequence[str] = (), extra_config: str = "", env: Mapping[str, str] | None = None,
) -> CriNode:
    """Start a CRI-enabled containerd `kind` from `factory` (the harness fixture), set up CNI, import the pause
    image, and wait until CRI reports its network ready."""
    # The CNI config is in place before containerd starts, so CRI loads it at start-up (it also watches the dir).
    workdir.mkdir(parents=True, exist_ok=True)
    network = CniNetwork.fresh()
    conf_dir, ipam_dir = workdir / "cni" / "net.d", workdir / "cni" / "ipam"
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-wasm-shim-test.conflist").write_text(json.dumps(network.conflist(ipam_dir), indent=2))
    containerd = factory(kind, cri=True, env=env, extra_config=cri_extra_config(
        kind, *runtime_options, extra=cni_config(kind, conf_dir) + extra_config))
    config_file = workdir / "crictl.yaml"
    config_file.write_text(f"runtime-endpoint: unix://{containerd.address}\n"
                           f"image-endpoint: unix://{containerd.address}\ntimeout: 30\n")
    node = CriNode(containerd=containerd, crictl=Crictl(containerd, config_file), network=network,
                   workdir=workdir)
    try:
        pause_tar = workdir / "pause.tar"
        build_image_tar(pause_tar, PAUSE_REF, {"/pause": pause}, entrypoint=["/pause"])
        node.import_image(pause_tar)
        wait_for(node.crictl.network_ready, 30, lambda: "CRI to load the CNI config (NetworkReady in `crictl "
                 f"info`):\n{node.crictl.run('info', check=False).stdout[:3000]}")
    except BaseException:
        node.teardown()
        raise
    return node



class LocalRegistry(DockerRegistry):
    """Debian's `docker-registry` (distribution 2.8), plain HTTP on 127.0.0.1:<free port>, storing under `root`;
    `hosts_config` points a containerd at it."""

    def hosts_config(self, directory: Path) -> Path:
        """A containerd registry `config_path` dir whose hosts.toml sends pulls to us over plain HTTP."""
        host_dir = directory / self.address
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / "hosts.toml").write_text(
            f'server = "http://{self.address}"\n\n[host."http://{self.address}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
        return directory
