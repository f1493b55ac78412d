"""Inside the namespaces: the cluster's PID 1 and each node's PID 1, supervising their processes.

Owns: ``Supervisor`` (start, watch, restart on request, stop in order), ``cluster_init`` (bridge, etcd, the
control plane, the registry, the API relay, the nodes), ``node_init`` (a node's mounts, cgroup root, containerd,
kubelet, kube-proxy). Both run as PID 1 of a PID namespace, so every process they start dies with them.
Standard library only.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .files import RESTART_SCRIPT, registry_hosts_toml
from .topology import (
    API_PORT,
    BRIDGE,
    BRIDGE_IP,
    ETCD_CLIENT,
    KUBELET_SYSCTLS,
    MARKER,
    NODE_MARKER,
    NODE_NET_PREFIX,
    NODE_OVERLAYS,
    NODE_SUPPORT_DIR,
    NODES,
    REGISTRY,
    REGISTRY_HOSTS_DIR,
    ROOT,
    SELF,
    SERVICE_CIDR,
    SYS_PATH,
    ClusterError,
    Node,
    State,
    _child_of,
    _zombie,
    containerd_binaries,
    https_ok,
    log_tail,
    mount,
    registry_binary,
    run,
    tool,
    unix_socket_answers,
    wait_for,
    write,
)

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
                 "--propagation", "private", "--", *SELF,
                 "--state", str(state.root), "_node", node.name],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=node_env,
                start_new_session=True, cwd=ROOT)
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


