"""The cluster's fixed facts and small helpers: addresses, nodes, the state directory, tools, waiting.

Owns: the constants every other part of ``lab.cluster`` reads (bridge, node and service addresses, paths inside
the nodes), ``Node``/``NODES``, ``State`` (where everything of one cluster lives on the machine), and the small
process, HTTP and waiting helpers. Standard library only: the cluster's PID 1 imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..procs import unix_socket_answers as unix_socket_answers  # re-exported for the PID 1s

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
# How the cluster starts its own PID 1s: this package as a module, run with the repository as the working directory.
SELF = (sys.executable, "-m", "lab.cluster")
DEFAULT_STATE = Path(os.environ.get("WASM_SHIM_CLUSTER_DIR", "/tmp/wasm-shim-cluster"))
MARKER = "WASM_SHIM_E2E_CLUSTER"
NODE_MARKER = "WASM_SHIM_E2E_NODE"

BRIDGE = "wsbr0"
BRIDGE_IP = "10.255.0.1"
NODE_NET_PREFIX = 24
SERVICE_CIDR = "10.96.0.0/12"
SERVICE_API_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
CLUSTER_CIDR = "10.244.0.0/16"
API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:2379"
REGISTRY = f"{BRIDGE_IP}:5000"  # the in-cluster registry, plain HTTP; pods' images name it as REGISTRY/REPO@DIGEST
REGISTRY_BINARY = "/usr/bin/docker-registry"  # Debian's docker-registry: distribution 2.8
REGISTRY_HOSTS_DIR = "/etc/containerd/certs.d"  # the CRI `registry.config_path` of every node's containerd

# Host sysctls the kubelet sets at start (pkg/kubelet/cm: setupKernelTunables) and the values it wants.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
NODE_OVERLAYS = ("/etc", "/usr/local", "/opt", "/var")
CNI_BIN_DIR = "/usr/lib/cni"
NODE_SUPPORT_DIR = "/run/wasm-shim-node"  # inside each node: the restart helper and containerd's status
SYS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

START_TIMEOUT = 240.0  # seconds for `up`: the whole cluster to Ready on a busy 2-core machine
STOP_TIMEOUT = 150.0  # seconds for the cluster's PID 1 to stop everything (the apiserver alone can take 60)


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    pod_cidr: str
    containerd: str  # "2.x" or "1.6"

    @property
    def pod_gateway(self) -> str:
        return self.pod_cidr.rsplit(".", 1)[0] + ".1"


NODES = (
    Node("node-a", "10.255.0.11", "10.244.1.0/24", "2.x"),
    Node("node-b", "10.255.0.12", "10.244.2.0/24", "1.6"),
)


# unshare processes started by up() in this process, waited for by down() (so none is left a zombie).


class ClusterError(RuntimeError):
    """A component did not come up or go away; the message names it and carries its log tail."""


# --- small helpers ----------------------------------------------------------------------------------------------


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"    (no log: {exc})"
    return "\n".join("    " + line[:300] for line in text.splitlines()[-lines:])


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result


def tool(name: str) -> str:
    """A binary from .tools/bin (built by e2e/cluster/build or scripts/setup.sh), resolved to its cache path."""
    path = TOOLS_BIN / name
    if not path.exists():
        hint = "scripts/setup.sh" if name in ("containerd-2", "ctr-2", "helm") else "e2e/cluster/build"
        raise ClusterError(f"{path} is missing: run {hint} first")
    return str(path.resolve())


def containerd_binaries(node: Node) -> tuple[str, str]:
    """(containerd, ctr) for a node: the 2.x build from .tools/bin, or Debian's 1.6 from /usr/bin."""
    if node.containerd == "2.x":
        return tool("containerd-2"), tool("ctr-2")
    for path in ("/usr/bin/containerd", "/usr/bin/ctr"):
        if not os.access(path, os.X_OK):
            raise ClusterError(f"{path} is missing: apt-get install containerd (Debian's 1.6)")
    return "/usr/bin/containerd", "/usr/bin/ctr"


def registry_binary() -> str:
    """Debian's docker-registry, which serves the cluster's registry (REGISTRY)."""
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise ClusterError(f"{REGISTRY_BINARY} is missing: apt-get install docker-registry (scripts/setup.sh does)")
    return REGISTRY_BINARY


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path | None,
             alive: Callable[[], bool] | None = None) -> None:
    """Poll ``check`` until true; raise naming ``what`` with the tail of ``log`` on timeout or death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
            raise ClusterError(f"{what} exited before it was ready{tail}")
        time.sleep(0.25)
    tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
    raise ClusterError(f"{what} was not ready after {timeout:.0f} s{tail}")


def https_ok(url: str, pki: Path, client: str | None = "admin") -> bool:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client:
        context.load_cert_chain(str(pki / f"{client}.crt"), str(pki / f"{client}.key"))
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def https_json(url: str, pki: Path) -> dict:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        return json.loads(response.read())


def mount(*args: str) -> None:
    run(["mount", *args])


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# --- state layout ------------------------------------------------------------------------------------------------


class State:
    """Paths under the state directory (default /tmp/wasm-shim-cluster, $WASM_SHIM_CLUSTER_DIR)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve() if root.exists() else root.absolute()
        self.pki = self.root / "pki"
        self.logs = self.root / "logs"
        self.ns = self.root / "ns"
        self.kubeconfig = self.root / "kubeconfig"
        self.init_pid = self.root / "init.pid"
        self.port = self.root / "api-port"
        self.failed = self.root / "failed"
        self.processes_ready = self.root / "processes-ready"
        self.registry = self.root / "registry"  # the registry's config and blobs (removed by `down`)

    def node_dir(self, node: Node) -> Path:
        return self.root / "nodes" / node.name

    def cgroup_name(self, node: Node) -> str:
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:8]
        return f"wasm-shim-e2e-{key}-{node.name}"


# --- processes ------------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _child_of(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise ClusterError("unshare did not start the cluster's PID 1")


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
