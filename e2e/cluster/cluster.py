#!/usr/bin/env python3
"""A two-node Kubernetes cluster inside private namespaces on this machine: start, wait, stop.

This module owns the cluster's process tree, its namespaces and its state directory. Standard library only (it
runs as PID 1 of the namespaces it creates), driven by ``e2e/cluster/up`` and ``e2e/cluster/down``.

Shape (addresses are private to the cluster's network namespace; the machine's network never sees them):

    machine ── 127.0.0.1:PORT (the only thing on the machine's network: a TCP relay to the API server)
     └─ cluster: own PID, mount and network namespaces (pinned under STATE/ns for nsenter)
        │  bridge wsbr0 10.255.0.1/24; etcd on 127.0.0.1; kube-apiserver on 10.255.0.1:6443;
        │  kube-controller-manager and kube-scheduler on 127.0.0.1;
        │  a registry (Debian's docker-registry, plain HTTP) on 10.255.0.1:5000, storing under STATE/registry
        ├─ node-a: own PID, mount and network namespaces; eth0 10.255.0.11, pods 10.244.1.0/24
        │   containerd 2.x, kubelet, kube-proxy, supervised by the node's PID 1 (this module)
        └─ node-b: the same with Debian's containerd 1.6; eth0 10.255.0.12, pods 10.244.2.0/24

Each node's mount namespace has a tmpfs on /run and overlays on /etc, /usr/local, /opt and /var (upper dirs in
STATE), so containerd, the kubelet and anything installed onto the node (the chart's installer writes
/etc/containerd/config.toml and its bundle) keep their default paths while nothing reaches the machine's own
files. The kubelet writes six host sysctls at start; plain files are bind-mounted over them. Pod cgroups live
under a per-node cgroup root (``cgroupRoot``) that ``down`` removes.

The registry is what the nodes pull wasm OCI artifacts from: both containerds read registry hosts from
/etc/containerd/certs.d, where each node's PID 1 writes a hosts.toml sending 10.255.0.1:5000 to plain HTTP. Like
the API server it is reachable only inside the cluster's network namespace (nodes and pods route to the bridge);
``push_artifact`` (``cluster.py push-artifact``) pushes into it from inside node-a with ``wasm-shim push``.

Restarting a node's containerd (what the chart's installer must do after changing its config): inside a node,
PID 1 is this supervisor, so ``nsenter -t 1 -m -n -p -- /run/wasm-shim-node/restart-containerd`` from a hostPID pod
(or ``kill -HUP 1`` there) restarts it; the script waits until the new containerd answers on its socket and exits 0, or
exits 1 with the reason. From the machine: ``cluster.py restart-containerd NODE``.

Invariants:
- Every process the cluster starts carries ``WASM_SHIM_E2E_CLUSTER=<STATE>`` in its environment and lives in the
  cluster's PID namespace, so killing the cluster's PID 1 kills all of them, and ``down`` can prove none is left.
- ``down`` is idempotent and ends with nothing of the cluster on the machine: processes, mounts, namespace pins,
  cgroups, the state directory; it reports anything it could not remove and exits non-zero then.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
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
_LAUNCHED: dict[Path, subprocess.Popen[bytes]] = {}


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


def unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


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


# --- certificates and configuration files (on the machine, before anything starts) --------------------------------


def openssl_cert(pki: Path, name: str, subject: str, *, sans: Sequence[str] = (), server: bool = False,
                 client: bool = True) -> None:
    """An RSA key and a certificate signed by pki/ca, valid one year."""
    key, csr, crt = pki / f"{name}.key", pki / f"{name}.csr", pki / f"{name}.crt"
    usages = ",".join(u for u, on in (("serverAuth", server), ("clientAuth", client)) if on)
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
           f"extendedKeyUsage={usages}"]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    extfile = write(pki / f"{name}.ext", "\n".join(ext) + "\n")
    run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-subj", subject,
         "-out", str(csr)])
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-CAcreateserial", "-days", "365", "-sha256", "-extfile", str(extfile), "-out", str(crt)])
    csr.unlink()
    extfile.unlink()


def make_pki(state: State) -> None:
    pki = state.pki
    pki.mkdir(parents=True, exist_ok=True)
    run(["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "ca.key"),
         "-subj", "/CN=wasm-shim-e2e-ca", "-days", "365", "-sha256", "-out", str(pki / "ca.crt"),
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    api_sans = ["DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local", "DNS:localhost", f"IP:{SERVICE_API_IP}",
                f"IP:{BRIDGE_IP}", "IP:127.0.0.1"]
    openssl_cert(pki, "apiserver", "/CN=kube-apiserver", sans=api_sans, server=True, client=False)
    # The API server's client identity towards kubelets (logs, exec): system:masters passes their webhook authz.
    openssl_cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    openssl_cert(pki, "admin", "/O=system:masters/CN=wasm-shim-e2e-admin")
    openssl_cert(pki, "controller-manager", "/CN=system:kube-controller-manager")
    openssl_cert(pki, "scheduler", "/CN=system:kube-scheduler")
    openssl_cert(pki, "kube-proxy", "/CN=system:kube-proxy")
    for node in NODES:
        # Node authorizer + NodeRestriction: a kubelet is system:node:<name> in group system:nodes.
        openssl_cert(pki, f"kubelet-{node.name}", f"/O=system:nodes/CN=system:node:{node.name}")
        openssl_cert(pki, f"kubelet-serving-{node.name}", f"/CN={node.name}",
                     sans=[f"IP:{node.ip}", f"DNS:{node.name}"], server=True, client=False)
    run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"])
    run(["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")])


def kubeconfig(state: State, path: Path, user: str, server: str) -> Path:
    pki = state.pki
    return write(path, json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "wasm-shim-e2e",
        "clusters": [{"name": "wasm-shim-e2e", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"), "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "wasm-shim-e2e", "context": {"cluster": "wasm-shim-e2e", "user": user}}],
    }, indent=2) + "\n", 0o600)


def containerd_config(node: Node) -> str:
    """containerd's config for a node: default root/state/socket (private to the node's namespaces); registry hosts
    from REGISTRY_HOSTS_DIR (registry_hosts_toml)."""
    pause = "wasm-shim.local/pause:e2e"
    if node.containerd == "1.6":
        return f"""version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{REGISTRY_HOSTS_DIR}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"""
    return f"""version = 3
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{pause}"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{REGISTRY_HOSTS_DIR}"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def registry_hosts_toml() -> str:
    """containerd's hosts.toml for REGISTRY: plain HTTP (it has no TLS), used to resolve tags and pull.

    Without it containerd tries HTTPS first and fails the pull ("server gave HTTP response to HTTPS client"):
    only localhost registries get the plain-HTTP fallback.
    """
    return f'server = "http://{REGISTRY}"\n\n[host."http://{REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'


def registry_config(state: State) -> str:
    """docker-registry's config: REGISTRY over plain HTTP, blobs under STATE/registry, deletes allowed."""
    return (f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"  # info logs each request
            f"storage:\n  filesystem:\n    rootdirectory: {state.registry / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {REGISTRY}\n")


def cni_config(node: Node) -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "wasm-shim-e2e",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr, "gateway": node.pod_gateway}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2) + "\n"


def kubelet_config(state: State, node: Node) -> str:
    pki = state.pki
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # 1.35+ refuses cgroup v1 otherwise; this machine has only v1
        "cgroupDriver": "cgroupfs", "cgroupRoot": "/" + state.cgroup_name(node),
        "failSwapOn": False,
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "oomScoreAdj": 0,  # root here lacks CAP_SYS_RESOURCE to lower its own score
        "podLogsDir": "/var/log/pods",
        "staticPodPath": str(state.node_dir(node) / "manifests"),
        "address": node.ip, "readOnlyPort": 0,
        "tlsCertFile": str(pki / f"kubelet-serving-{node.name}.crt"),
        "tlsPrivateKeyFile": str(pki / f"kubelet-serving-{node.name}.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        # The machine's disk is shared with builds: never evict or garbage-collect the imported images for space.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }, indent=2) + "\n"


def kube_proxy_config(state: State, node: Node) -> str:
    return json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(state.node_dir(node) / "kube-proxy.kubeconfig")},
        "hostnameOverride": node.name, "mode": "iptables", "clusterCIDR": CLUSTER_CIDR,
        "bindAddress": node.ip, "healthzBindAddress": f"{node.ip}:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # nf_conntrack_max and the conntrack timeouts are machine-wide sysctls: leave them alone (0 = skip).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }, indent=2) + "\n"


RESTART_SCRIPT = f"""#!/bin/sh
# Restart this node's containerd through its supervisor (the node's PID 1) and wait for the outcome.
# Exit 0 once the new containerd answers on its socket; 1 with the reason otherwise.
dir={NODE_SUPPORT_DIR}
# Only from inside the node's PID namespace: there PID 1 is the supervisor (elsewhere it is the machine's init).
if [ "$(readlink /proc/self/ns/pid 2>/dev/null)" != "$(cat "$dir/pidns" 2>/dev/null)" ]; then
    echo "restart-containerd: not in a wasm-shim e2e node's PID namespace (use nsenter -t 1 -m -n -p)" >&2
    exit 1
fi
before=$(cat "$dir/containerd.generation" 2>/dev/null)
kill -HUP 1 || {{ echo "restart-containerd: cannot signal the node supervisor (PID 1)" >&2; exit 1; }}
i=0
while [ "$i" -lt 1200 ]; do
    now=$(cat "$dir/containerd.generation" 2>/dev/null)
    if [ -n "$now" ] && [ "$now" != "$before" ]; then
        status=$(cat "$dir/containerd.status" 2>/dev/null)
        [ "$status" = ok ] && exit 0
        echo "restart-containerd: $status" >&2
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
echo "restart-containerd: no answer from the node supervisor after 120 s" >&2
exit 1
"""


def prepare(state: State) -> None:
    """Write everything the cluster reads: certificates, kubeconfigs, node configs."""
    state.logs.mkdir(parents=True, exist_ok=True)
    make_pki(state)
    inside = f"https://{BRIDGE_IP}:{API_PORT}"
    for user in ("controller-manager", "scheduler", "admin"):
        kubeconfig(state, state.root / f"{user}.kubeconfig", user, inside)
    write(state.registry / "config.yml", registry_config(state))
    for node in NODES:
        d = state.node_dir(node)
        for sub in ("manifests", "logs", "containerd-root", "kubelet-root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for overlay in NODE_OVERLAYS:
            name = overlay.strip("/").replace("/", "-")
            (d / "overlay" / name / "upper").mkdir(parents=True, exist_ok=True)
            (d / "overlay" / name / "work").mkdir(parents=True, exist_ok=True)
        for key, value in KUBELET_SYSCTLS.items():
            write(d / "sysctl" / key.replace("/", "."), value + "\n")
        write(d / "containerd.toml", containerd_config(node))
        write(d / "cni.conflist", cni_config(node))
        write(d / "kubelet.yaml", kubelet_config(state, node))
        write(d / "kube-proxy.yaml", kube_proxy_config(state, node))
        kubeconfig(state, d / "kubelet.kubeconfig", f"kubelet-{node.name}", inside)
        kubeconfig(state, d / "kube-proxy.kubeconfig", "kube-proxy", inside)


# --- process supervision (PID 1 of the cluster and of each node) ---------------------------------------------------


class Supervisor:
    """Children by name; as PID 1 it also reaps every orphan re-parented to it (shims, runc's children)."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.children: dict[str, int] = {}
        self.exited: dict[int, int] = {}
        self.lock = threading.Lock()

    def start(self, name: str, argv: Sequence[str]) -> int:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=self.env, start_new_session=True)
        log.close()
        self.children[name] = process.pid
        return process.pid

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with self.lock:
                self.exited[pid] = status

    def alive(self, name: str) -> bool:
        self.reap()
        pid = self.children.get(name)
        # A node's PID 1 is unshare's child, reaped by unshare, not here: also ask /proc.
        return pid is not None and pid not in self.exited and not _zombie(pid)

    def stop(self, name: str, timeout: float) -> None:
        pid = self.children.get(name)
        if pid is None or not self.alive(name):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive(name):
            time.sleep(0.1)
        if self.alive(name):
            os.kill(pid, signal.SIGKILL)
            while self.alive(name):
                time.sleep(0.05)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def mount_proc_and_run() -> None:
    # A new PID namespace needs its own /proc so that pids, /proc/self and cgroup files read right inside it.
    mount("-t", "proc", "proc", "/proc")
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")


def cluster_init(state: State, listener_fd: int) -> None:
    """PID 1 of the cluster: network, registry, control plane, nodes, the API relay; stops them all on SIGTERM."""
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    env = {"PATH": SYS_PATH, MARKER: str(state.root), "HOME": "/root"}
    sup = Supervisor(state.logs, env)
    pki = state.pki
    try:
        mount_proc_and_run()
        run(["ip", "link", "set", "lo", "up"])
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{BRIDGE_IP}/{NODE_NET_PREFIX}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")  # per network namespace

        # The registry listens on the bridge address, so it needs the bridge up; the nodes pull from it.
        sup.start("registry", [registry_binary(), "serve", str(state.registry / "config.yml")])
        wait_for(f"the registry (docker-registry on {REGISTRY})", registry_answers, 30, sup.log("registry"),
                 lambda: sup.alive("registry"))

        sup.start("etcd", [tool("etcd"), "--name", "e2e", "--data-dir", str(state.root / "etcd"),
                           "--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT,
                           "--listen-peer-urls", "http://127.0.0.1:2380",
                           "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                           "--initial-cluster", "e2e=http://127.0.0.1:2380", "--log-level", "warn"])

        def etcd_healthy() -> bool:
            try:
                with urllib.request.urlopen(ETCD_CLIENT + "/health", timeout=2) as r:
                    return bool(json.loads(r.read()).get("health") == "true")
            except OSError:
                return False

        wait_for("etcd", etcd_healthy, 60, sup.log("etcd"), lambda: sup.alive("etcd"))

        sup.start("kube-apiserver", [
            tool("kube-apiserver"), f"--etcd-servers={ETCD_CLIENT}",
            f"--bind-address={BRIDGE_IP}", f"--advertise-address={BRIDGE_IP}", f"--secure-port={API_PORT}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            # Otherwise logs/exec resolve the node's hostname through the machine's resolver and time out.
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",  # the chart's installer DaemonSet is privileged
            "--profiling=false", "--v=1",
        ])
        api = f"https://{BRIDGE_IP}:{API_PORT}"
        wait_for("kube-apiserver", lambda: https_ok(api + "/readyz", pki), 120, sup.log("kube-apiserver"),
                 lambda: sup.alive("kube-apiserver"))

        sup.start("kube-controller-manager", [
            tool("kube-controller-manager"), f"--kubeconfig={state.root / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={state.root / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={state.root / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false", "--v=1",
        ])
        sup.start("kube-scheduler", [
            tool("kube-scheduler"), f"--kubeconfig={state.root / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={state.root / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={state.root / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--v=1",
        ])
        # Their /healthz is open to anyone (authorization-always-allow-paths); the serving cert is self-signed.
        wait_for("kube-controller-manager", lambda: _insecure_ok("https://127.0.0.1:10257/healthz"), 90,
                 sup.log("kube-controller-manager"), lambda: sup.alive("kube-controller-manager"))
        wait_for("kube-scheduler", lambda: _insecure_ok("https://127.0.0.1:10259/healthz"), 90,
                 sup.log("kube-scheduler"), lambda: sup.alive("kube-scheduler"))

        for node in NODES:
            netns = f"/run/netns/{node.name}"
            run(["ip", "netns", "add", node.name])
            host_end = f"v-{node.name}"
            run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", node.name])
            run(["ip", "link", "set", host_end, "master", BRIDGE, "up"])
            node_env = dict(env, **{NODE_MARKER: node.name})
            log = open(state.node_dir(node) / "logs" / "supervisor.log", "ab")  # noqa: SIM115
            process = subprocess.Popen(
                ["nsenter", f"--net={netns}", "--", "unshare", "--mount", "--pid", "--fork",
                 "--propagation", "private", "--", sys.executable, str(Path(__file__).resolve()),
                 "--state", str(state.root), "_node", node.name],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=node_env,
                start_new_session=True)
            log.close()
            # unshare --fork waits for its child (the node's PID 1), which is the process to signal.
            sup.children[node.name] = _child_of(process.pid, 10)
            run(["ip", "route", "add", node.pod_cidr, "via", node.ip])
        for node in NODES:
            ready = state.node_dir(node) / "processes-ready"
            wait_for(f"{node.name} (containerd, kubelet, kube-proxy)", ready.exists, 120,
                     state.node_dir(node) / "logs" / "supervisor.log", functools.partial(sup.alive, node.name))

        relay = threading.Thread(target=api_relay, args=(listener_fd, (BRIDGE_IP, API_PORT)), daemon=True)
        relay.start()
        state.processes_ready.write_text("ok\n")
        print("cluster: control plane and nodes started", flush=True)
        while not stop_requested.wait(0.5):
            sup.reap()
            for name in ("registry", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
                if not sup.alive(name) and not state.failed.exists():
                    state.failed.write_text(f"{name} exited; last lines of {sup.log(name)}:\n"
                                            f"{log_tail(sup.log(name))}\n")
    except Exception as exc:  # noqa: BLE001 - reported to `up` through the failed file, then everything stops
        state.failed.write_text(f"{exc}\n")
        print(f"cluster: {exc}", flush=True)
    finally:
        # Nodes first (their supervisors stop the kubelet before containerd), then the control plane top-down,
        # then the registry the nodes pulled from.
        for node in NODES:
            sup.stop(node.name, 60)
        for name, timeout in (("kube-scheduler", 20), ("kube-controller-manager", 20), ("kube-apiserver", 70),
                              ("etcd", 20), ("registry", 10)):
            sup.stop(name, timeout)
        print("cluster: stopped", flush=True)
    # Returning ends PID 1: the kernel kills whatever is left in the cluster's PID namespace.


def registry_answers() -> bool:
    """The registry's API base answers 200 (distribution's version check: `GET /v2/`)."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _insecure_ok(url: str) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def api_relay(listener_fd: int, target: tuple[str, int]) -> None:
    """Relay TCP connections from the machine's loopback listener (made before the namespaces) to the API server.

    The listening socket was created in the machine's network namespace and inherited; sockets keep the
    namespace they were made in, so accept() serves 127.0.0.1:PORT on the machine while connect() runs here.
    """
    listener = socket.socket(fileno=listener_fd)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay_one, args=(client, target), daemon=True).start()


def _relay_one(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    other.start()
    pump(client, upstream)
    other.join()
    client.close()
    upstream.close()


def prepare_cgroup_root(name: str) -> None:
    """Create the kubelet's cgroupRoot in every v1 hierarchy it uses (cpuset needs cpus/mems filled in)."""
    base = Path("/sys/fs/cgroup")
    for hierarchy in sorted(base.iterdir()):
        # The kubelet checks every v1 hierarchy, the named `systemd` one included; `unified` is cgroup v2's.
        if hierarchy.name == "unified" or not hierarchy.is_dir() or hierarchy.is_symlink():
            continue
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for key in ("cpuset.cpus", "cpuset.mems"):
                (directory / key).write_text((hierarchy / key).read_text())


def node_init(state: State, node: Node) -> None:
    """PID 1 of a node: its mounts and network, then containerd, kubelet and kube-proxy, supervised."""
    d = state.node_dir(node)
    stop_requested = threading.Event()
    restart_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    signal.signal(signal.SIGHUP, lambda *_: restart_requested.set())
    containerd_bin, ctr_bin = containerd_binaries(node)
    path = f"{Path(containerd_bin).parent}:{SYS_PATH}"  # containerd finds its runc shim on PATH
    env = {"PATH": path, MARKER: str(state.root), NODE_MARKER: node.name, "HOME": "/root"}
    sup = Supervisor(d / "logs", env)
    support = Path(NODE_SUPPORT_DIR)
    try:
        mount_proc_and_run()
        for overlay in NODE_OVERLAYS:
            o = d / "overlay" / overlay.strip("/").replace("/", "-")
            mount("-t", "overlay", "overlay", "-o",
                  f"lowerdir={overlay},upperdir={o / 'upper'},workdir={o / 'work'}", overlay)
        # Snapshots and pod volumes need a real filesystem (an overlay upper dir cannot sit on an overlay).
        for src, dst in ((d / "containerd-root", "/var/lib/containerd"), (d / "kubelet-root", "/var/lib/kubelet")):
            Path(dst).mkdir(parents=True, exist_ok=True)
            mount("--bind", str(src), dst)
        for key in KUBELET_SYSCTLS:
            mount("--bind", str(d / "sysctl" / key.replace("/", ".")), f"/proc/sys/{key}")
        run(["ip", "link", "set", "lo", "up"])
        run(["ip", "addr", "add", f"{node.ip}/{NODE_NET_PREFIX}", "dev", "eth0"])
        run(["ip", "link", "set", "eth0", "up"])
        run(["ip", "route", "add", "default", "via", BRIDGE_IP])
        for other in NODES:
            if other != node:
                run(["ip", "route", "add", other.pod_cidr, "via", other.ip])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        Path("/etc/containerd").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / "containerd.toml", "/etc/containerd/config.toml")
        write(Path(REGISTRY_HOSTS_DIR) / REGISTRY / "hosts.toml", registry_hosts_toml())  # in the /etc overlay
        Path("/etc/cni/net.d").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / "cni.conflist", "/etc/cni/net.d/10-wasm-shim-e2e.conflist")
        write(support / "restart-containerd", RESTART_SCRIPT, 0o755)
        write(support / "pidns", os.readlink("/proc/self/ns/pid") + "\n")
        prepare_cgroup_root(state.cgroup_name(node))

        generation = 0

        def start_containerd() -> str:
            sup.start("containerd", [containerd_bin, "--config", "/etc/containerd/config.toml"])
            try:
                wait_for(f"containerd ({node.containerd}) on {node.name}",
                         lambda: unix_socket_answers("/run/containerd/containerd.sock"), 60,
                         sup.log("containerd"), lambda: sup.alive("containerd"))
            except ClusterError as exc:
                return str(exc).replace("\n", " | ")
            return "ok"

        def report(status: str) -> None:
            nonlocal generation
            generation += 1
            write(support / "containerd.status", status + "\n")
            write(support / "containerd.generation", f"{generation}\n")

        status = start_containerd()
        report(status)
        if status != "ok":
            raise ClusterError(status)
        images = d / "images"
        for tar in sorted(images.glob("*.tar")) if images.is_dir() else []:
            run([ctr_bin, "--address", "/run/containerd/containerd.sock", "-n", "k8s.io", "images", "import",
                 str(tar)], timeout=180)
        sup.start("kubelet", [
            tool("kubelet"), f"--config={d / 'kubelet.yaml'}", f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            "--root-dir=/var/lib/kubelet", f"--cert-dir={d / 'kubelet-pki'}", f"--node-ip={node.ip}",
            f"--hostname-override={node.name}", f"--node-labels=wasm-shim.io/e2e-containerd={node.containerd}",
            "--v=1",
        ])
        sup.start("kube-proxy", [tool("kube-proxy"), f"--config={d / 'kube-proxy.yaml'}", "--v=1"])
        time.sleep(1)
        for name in ("kubelet", "kube-proxy"):
            if not sup.alive(name):
                raise ClusterError(f"{name} on {node.name} exited at start; last lines of {sup.log(name)}:\n"
                                   f"{log_tail(sup.log(name))}")
        (d / "processes-ready").write_text("ok\n")
        print(f"{node.name}: containerd, kubelet and kube-proxy started", flush=True)
        while not stop_requested.wait(0.2):
            sup.reap()
            if restart_requested.is_set():
                restart_requested.clear()
                print(f"{node.name}: restarting containerd on request", flush=True)
                sup.stop("containerd", 30)
                report(start_containerd())
    except Exception as exc:  # noqa: BLE001 - reported through the supervisor log the cluster's PID 1 shows
        print(f"{node.name}: {exc}", flush=True)
    finally:
        for name, timeout in (("kubelet", 20), ("kube-proxy", 10), ("containerd", 20)):
            sup.stop(name, timeout)
        print(f"{node.name}: stopped", flush=True)


# --- on the machine: up, down, helpers -----------------------------------------------------------------------------


def find_marked(state: State, node: str | None = None) -> list[int]:
    """PIDs (machine namespace) of processes carrying this cluster's marker (and node marker, if given)."""
    want = f"{MARKER}={state.root}".encode()
    want_node = f"{NODE_MARKER}={node}".encode() if node else None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if want in environ and (want_node is None or want_node in environ):
            found.append(int(entry.name))
    return found


def node_pid1(state: State, node: Node) -> int:
    """The machine-namespace PID of a node's supervisor (PID 1 of the node's PID namespace)."""
    for pid in find_marked(state, node.name):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) == 3 and nspid[-1] == "1":  # machine, cluster, node
            return pid
    raise ClusterError(f"{node.name} is not running (no supervisor process found)")


def node_by_name(name: str) -> Node:
    for node in NODES:
        if node.name == name:
            return node
    raise ClusterError(f"no node {name!r}; nodes: {', '.join(n.name for n in NODES)}")


def node_exec(state: State, node: Node, argv: Sequence[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run a command in a node's mount and network namespaces (e.g. ctr, cat /etc/containerd/config.toml)."""
    pid = node_pid1(state, node)
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "-n", "-p", "--", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def load_image(state: State, node: Node, tar: Path) -> None:
    _, ctr = containerd_binaries(node)
    result = node_exec(state, node, [ctr, "--address", "/run/containerd/containerd.sock", "-n", "k8s.io",
                                     "images", "import", str(tar.resolve())])
    if result.returncode != 0:
        raise ClusterError(f"importing {tar} into {node.name}'s containerd failed: {result.stderr.strip()}")


def push_artifact(state: State, wasm: Path, repository_tag: str, node: Node = NODES[0],
                  timeout: float = 120) -> str:
    """Push a wasm module or component into the cluster's registry as REGISTRY/REPOSITORY:TAG (a CNCF wasm OCI
    artifact, with this clone's ``wasm-shim push``) and return the ``REGISTRY/REPOSITORY@sha256:...`` it printed.

    The registry answers only inside the cluster's network namespace, so the push runs in ``node``'s mount and
    network namespaces. The file is staged under STATE first: a node sees STATE (its configs live there) but not
    the machine's /run, and /etc, /usr/local, /opt and /var only through its own overlays.
    """
    repository, sep, tag = repository_tag.rpartition(":")
    if not sep or not repository or "/" in tag or "@" in repository_tag or repository.startswith(REGISTRY):
        raise ClusterError(f"push_artifact wants REPOSITORY:TAG (the registry is always {REGISTRY}), "
                           f"got {repository_tag!r}")
    cli = ROOT / ".venv" / "bin" / "wasm-shim"
    if not cli.exists():
        raise ClusterError(f"{cli} is missing: run scripts/setup.sh first")
    staging = Path(tempfile.mkdtemp(prefix="push-", dir=state.root))
    try:
        staged = staging / wasm.name
        shutil.copyfile(wasm, staged)
        result = node_exec(state, node, [str(cli), "push", "--insecure-registry", REGISTRY, "--timeout", "30",
                                         str(staged), f"{REGISTRY}/{repository_tag}"], timeout=timeout)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    printed = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    if not printed or not printed[0].startswith(f"{REGISTRY}/{repository}@sha256:"):
        raise ClusterError(f"wasm-shim push {wasm} {REGISTRY}/{repository_tag} on {node.name} failed "
                           f"(exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return printed[0]


def pin_namespaces(state: State) -> None:
    """A private bind mount of STATE/ns, so the namespace pins made in it never propagate anywhere."""
    state.ns.mkdir(parents=True, exist_ok=True)
    mount("--bind", str(state.ns), str(state.ns))
    mount("--make-private", str(state.ns))
    for name in ("net", "mnt"):
        (state.ns / name).touch()


def up(state: State, *, port: int = 0, timeout: float = START_TIMEOUT,
       images: Sequence[Path] = ()) -> Path:
    """Start the cluster (after cleaning any leftover of a previous one) and return the admin kubeconfig path."""
    if state.init_pid.exists() and _alive(int(state.init_pid.read_text())) and state.processes_ready.exists():
        return state.kubeconfig
    if state.root.exists():
        down(state)
    if os.geteuid() != 0:
        raise ClusterError("run as root: the cluster needs namespaces, mounts and cgroups")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
        tool(name)
    for node in NODES:
        containerd_binaries(node)
    registry_binary()
    began = time.monotonic()
    state.root.mkdir(parents=True)
    prepare(state)
    for node in NODES:
        (state.node_dir(node) / "images").mkdir(exist_ok=True)
        for tar in images:
            shutil.copyfile(tar, state.node_dir(node) / "images" / tar.name)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    port = listener.getsockname()[1]
    state.port.write_text(f"{port}\n")
    kubeconfig(state, state.kubeconfig, "admin", f"https://127.0.0.1:{port}")
    pin_namespaces(state)
    log = open(state.logs / "cluster.log", "ab")  # noqa: SIM115 - handed to the child
    unshare = subprocess.Popen(
        ["unshare", f"--net={state.ns / 'net'}", f"--mount={state.ns / 'mnt'}", "--pid", "--fork",
         "--propagation", "private", "--", sys.executable, str(Path(__file__).resolve()),
         "--state", str(state.root), "_init", "--listener-fd", str(listener.fileno())],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=[listener.fileno()],
        env={"PATH": SYS_PATH, MARKER: str(state.root), "HOME": "/root"}, start_new_session=True)
    log.close()
    listener.close()
    _LAUNCHED[state.root] = unshare
    try:
        init_pid = _child_of(unshare.pid, 10)
        state.init_pid.write_text(f"{init_pid}\n")

        def progressed() -> bool:
            if state.failed.exists():
                raise ClusterError(state.failed.read_text().strip())
            return state.processes_ready.exists()

        wait_for("the cluster's processes", progressed, timeout, state.logs / "cluster.log",
                 lambda: unshare.poll() is None)
        remaining = max(30.0, timeout - (time.monotonic() - began))
        api = f"https://127.0.0.1:{port}"
        wait_for("nodes Ready (" + ", ".join(n.name for n in NODES) + ")",
                 lambda: _nodes_ready(api, state.pki), remaining, None)
        wait_for("the default ServiceAccount", lambda: _default_sa(api, state.pki), 60,
                 state.logs / "kube-controller-manager.log")
    except (ClusterError, subprocess.TimeoutExpired) as exc:
        message = str(exc)
        for node in NODES:
            if f"{node.name} " in message or "nodes Ready" in message:
                for name in ("supervisor", "kubelet", "containerd"):
                    message += f"\nlast lines of {node.name}'s {name} log:\n" + log_tail(
                        state.node_dir(node) / "logs" / f"{name}.log", 12)
        down(state, keep_logs=True)
        raise ClusterError(message + f"\n(logs kept in {state.root}/logs and nodes/*/logs)") from None
    return state.kubeconfig


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


def _nodes_ready(api: str, pki: Path) -> bool:
    try:
        items = https_json(api + "/api/v1/nodes", pki)["items"]
    except OSError:
        return False
    ready = {item["metadata"]["name"] for item in items
             if any(c["type"] == "Ready" and c["status"] == "True" for c in item["status"].get("conditions", []))}
    return ready >= {n.name for n in NODES}


def _default_sa(api: str, pki: Path) -> bool:
    try:
        https_json(api + "/api/v1/namespaces/default/serviceaccounts/default", pki)
    except OSError:
        return False
    return True


def _mounts_under(root: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(str(root) + "/"):
            found.append(point)
    return found


def down(state: State, *, keep_logs: bool = False) -> list[str]:
    """Stop the cluster and remove every trace of it; returns what could not be removed (empty: clean)."""
    problems: list[str] = []
    launched = _LAUNCHED.pop(state.root, None)
    if state.init_pid.exists():
        pid = int(state.init_pid.read_text())
        if _alive(pid) and MARKER.encode() in _environ(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and _alive(pid) and not _zombie(pid):
                time.sleep(0.2)
            if _alive(pid) and not _zombie(pid):
                problems.append(f"the cluster's PID 1 ({pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f} s; killed")
                os.kill(pid, signal.SIGKILL)
    # Killing PID 1 of a PID namespace kills everything in it; anything else marked is a stray.
    deadline = time.monotonic() + 20
    while (left := [p for p in find_marked(state) if not _zombie(p)]) and time.monotonic() < deadline:
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
    if left:
        problems.append(f"processes still running: {left}")
    if launched is not None:
        try:
            launched.wait(timeout=10)  # unshare exits with the cluster's PID 1; reap it
        except subprocess.TimeoutExpired:
            problems.append(f"unshare ({launched.pid}) did not exit after the cluster's PID 1")
    for point in sorted(_mounts_under(state.root), key=len, reverse=True):
        r = run(["umount", point], check=False)
        if r.returncode != 0:
            r = run(["umount", "-l", point], check=False)
            if r.returncode != 0:
                problems.append(f"cannot unmount {point}: {r.stderr.strip()}")
    for node in NODES:
        name = state.cgroup_name(node)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / name
            if not top.is_dir():
                continue
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                    reverse=True) + [top]:
                for attempt in range(20):
                    try:
                        directory.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError as exc:
                        if attempt == 19:
                            problems.append(f"cannot remove cgroup {directory}: {exc}")
                        time.sleep(0.1)
    if state.root.exists():
        if keep_logs:
            for item in state.root.iterdir():
                if item.name not in ("logs", "nodes"):
                    _remove(item, problems)
            for node_dir in (state.root / "nodes").glob("*"):
                for item in node_dir.iterdir():
                    if item.name != "logs":
                        _remove(item, problems)
        else:
            _remove(state.root, problems)
    return problems


def _remove(path: Path, problems: list[str]) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        problems.append(f"cannot remove {path}: {exc}")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2e/cluster/cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state directory (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the cluster; prints the admin kubeconfig path")
    p_up.add_argument("--port", type=int, default=0, help="API relay port on 127.0.0.1 (default: any free one)")
    p_up.add_argument("--timeout", type=float, default=START_TIMEOUT)
    p_up.add_argument("--image", type=Path, action="append", default=[],
                      help="an OCI image tarball to import into every node's containerd before kubelets start")
    p_down = sub.add_parser("down", help="stop the cluster and remove every trace of it (idempotent)")
    p_down.add_argument("--keep-logs", action="store_true")
    p_load = sub.add_parser("load-image", help="import an OCI image tarball into nodes' containerd (k8s.io)")
    p_load.add_argument("tar", type=Path)
    p_load.add_argument("--node", action="append", help="only this node (repeatable; default: all)")
    p_push = sub.add_parser("push-artifact", help=f"push a .wasm into the cluster's registry ({REGISTRY}) from "
                            "inside a node; prints REGISTRY/REPOSITORY@DIGEST for a pod's image")
    p_push.add_argument("wasm", type=Path)
    p_push.add_argument("repository_tag", metavar="REPOSITORY:TAG")
    p_push.add_argument("--node", default=NODES[0].name, help="the node to push from (default %(default)s)")
    p_restart = sub.add_parser("restart-containerd", help="restart a node's containerd through its supervisor")
    p_restart.add_argument("node")
    p_exec = sub.add_parser("node-exec", help="run a command in a node's mount and network namespaces")
    p_exec.add_argument("node")
    p_exec.add_argument("argv", nargs=argparse.REMAINDER)
    p_init = sub.add_parser("_init")
    p_init.add_argument("--listener-fd", type=int, required=True)
    p_node = sub.add_parser("_node")
    p_node.add_argument("node")
    args = parser.parse_args(argv)
    state = State(args.state)
    try:
        if args.command == "up":
            print(up(state, port=args.port, timeout=args.timeout, images=args.image))
        elif args.command == "down":
            problems = down(state, keep_logs=args.keep_logs)
            for problem in problems:
                print(f"down: {problem}", file=sys.stderr)
            return 1 if problems else 0
        elif args.command == "load-image":
            for name in args.node or [n.name for n in NODES]:
                load_image(state, node_by_name(name), args.tar)
        elif args.command == "push-artifact":
            print(push_artifact(state, args.wasm, args.repository_tag, node_by_name(args.node)))
        elif args.command == "restart-containerd":
            node = node_by_name(args.node)
            result = node_exec(state, node, [f"{NODE_SUPPORT_DIR}/restart-containerd"])
            sys.stderr.write(result.stderr)
            return result.returncode
        elif args.command == "node-exec":
            result = node_exec(state, node_by_name(args.node), args.argv)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.returncode
        elif args.command == "_init":
            cluster_init(state, args.listener_fd)
        elif args.command == "_node":
            node_init(state, node_by_name(args.node))
    except ClusterError as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
