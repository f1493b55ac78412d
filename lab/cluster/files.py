"""Certificates and configuration files of the cluster, written on the machine before anything starts.

Owns: the PKI (openssl), kubeconfigs, each node's containerd, CNI, kubelet and kube-proxy configuration, the
registry's configuration and hosts.toml, the containerd restart helper script, and ``prepare`` (all of it into
the state directory). Pure text builders apart from ``make_pki``/``prepare``; standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .topology import (
    API_PORT,
    BRIDGE_IP,
    CLUSTER_CIDR,
    CNI_BIN_DIR,
    KUBELET_SYSCTLS,
    NODE_OVERLAYS,
    NODE_SUPPORT_DIR,
    NODES,
    REGISTRY,
    REGISTRY_HOSTS_DIR,
    SERVICE_API_IP,
    Node,
    State,
    run,
    write,
)

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


