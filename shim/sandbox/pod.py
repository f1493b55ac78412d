"""What a pod's sandbox must be, read from CRI's request: the one mapping of PodSandboxConfig onto a ``PodPlan``.

Owns: decoding ``CreateSandboxRequest.options`` (CRI puts the pod's ``runtime.v1.PodSandboxConfig`` there:
containerd internal/cri/server/sandbox_run.go, ``sb.WithOptions(config)``) and deciding, as containerd's own pause
container spec does (internal/cri/server/podsandbox/sandbox_run_linux.go), which namespaces the pod gets, its
hostname, sysctls, user and cgroup parent. Pure: no I/O.

The rules, each as CRI's pause container has it:
- network: the namespace CRI made (``netns_path``); a host-network pod (mode NODE) stays in the host's, and
  then keeps the host's UTS namespace and name too;
- PID and IPC: new ones unless the pod asks for the node's (NODE);
- hostname: the pod's, in its new UTS namespace;
- sysctls: the pod's, each checked against the namespaces it lives in (as runc does: ``net.*`` needs the pod's
  network namespace, the IPC ones a new IPC namespace, ``kernel.hostname``/``kernel.domainname`` a new UTS
  namespace); for a pod with its own network, containerd 2.x's defaults ``net.ipv4.ip_unprivileged_port_start=0``
  and ``net.ipv4.ping_group_range=0 2147483647`` unless the pod sets them (CRI's enable_unprivileged_ports and
  enable_unprivileged_icmp, both on by default, which the shim cannot read from containerd's config);
- user: the pod's run_as_user/run_as_group, else 65535 (the pause image's user);
- a pod user namespace (``hostUsers: false``) is refused with the reason: the holder does not map ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.any_pb2 import Any

from ..protos import cri_pod_pb2, unpack_any

PAUSE_USER = 65535  # registry.k8s.io/pause runs as 65535:65535
UNPRIVILEGED_DEFAULTS = (("net.ipv4.ip_unprivileged_port_start", "0"), ("net.ipv4.ping_group_range", "0 2147483647"))
_IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                          "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
_UTS_SYSCTLS = frozenset({"kernel.hostname", "kernel.domainname"})
NODE = cri_pod_pb2.NODE
POD = cri_pod_pb2.POD


class PodError(ValueError):
    """CRI asked for a sandbox the shim cannot make; the message says what and why (kubectl describe shows it)."""


@dataclass(frozen=True)
class PodPlan:
    """A pod's sandbox: its names, namespaces, hostname, sysctls, user, cgroup parent and DNS."""

    name: str  # "namespace/name" for logs
    netns: str | None
    new_pid: bool
    new_ipc: bool
    new_uts: bool
    hostname: str
    sysctls: tuple[tuple[str, str], ...]
    uid: int
    gid: int
    cgroup_parent: str
    dns_servers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    has_dns: bool = False  # the pod has a DNS config (else it gets the host's resolv.conf)

    @property
    def host_network(self) -> bool:
        return self.netns is None


def pod_config(options: Any | None) -> cri_pod_pb2.PodSandboxConfig:
    """The PodSandboxConfig in ``options``; an empty one when there is none (a client that is not CRI)."""
    if options is None or not options.type_url:
        return cri_pod_pb2.PodSandboxConfig()
    try:
        return unpack_any(options, cri_pod_pb2.PodSandboxConfig)
    except ValueError as exc:
        raise PodError(f"sandbox options: {exc}") from None


def pod_plan(config: cri_pod_pb2.PodSandboxConfig, netns_path: str) -> PodPlan:
    linux = config.linux
    security = linux.security_context
    modes = security.namespace_options
    if modes.HasField("userns_options") and modes.userns_options.mode == POD:
        raise PodError("the pod asks for a user namespace of its own (hostUsers: false), which wasm-shim's pod "
                       "sandbox does not support; run it with hostUsers: true or another RuntimeClass")
    netns = netns_path or None
    if netns is None and modes.network != NODE:
        raise PodError("CRI gave no network namespace for a pod that is not on the host network")
    new_uts = netns is not None
    new_ipc = modes.ipc != NODE
    plan_sysctls = dict(linux.sysctls)
    for key, value in plan_sysctls.items():
        _check_sysctl(key, value, netns is not None, new_ipc, new_uts)
    if netns is not None:
        for key, value in UNPRIVILEGED_DEFAULTS:
            plan_sysctls.setdefault(key, value)
    metadata = config.metadata
    uid = security.run_as_user.value if security.HasField("run_as_user") else PAUSE_USER
    gid = security.run_as_group.value if security.HasField("run_as_group") else (
        uid if security.HasField("run_as_user") else PAUSE_USER)
    dns = config.dns_config
    return PodPlan(
        name=f"{metadata.namespace}/{metadata.name}" if metadata.name else "(unnamed pod)",
        netns=netns,
        new_pid=modes.pid != NODE,
        new_ipc=new_ipc,
        new_uts=new_uts,
        hostname=config.hostname if new_uts else "",
        sysctls=tuple(sorted(plan_sysctls.items())),
        uid=int(uid),
        gid=int(gid),
        cgroup_parent=linux.cgroup_parent,
        dns_servers=tuple(dns.servers),
        dns_searches=tuple(dns.searches),
        dns_options=tuple(dns.options),
        has_dns=config.HasField("dns_config"),
    )


def _check_sysctl(key: str, value: str, own_net: bool, own_ipc: bool, own_uts: bool) -> None:
    """runc's rule (libcontainer/configs/validate): a sysctl is allowed only in a namespace of the pod's own."""
    if not key or not all(c.isalnum() or c in "_-." for c in key) or ".." in key:
        raise PodError(f"sysctl {key!r} is not a sysctl name")
    if "\n" in value or "\0" in value:
        raise PodError(f"sysctl {key}: the value must be one line")
    if key.startswith("net."):
        if not own_net:
            raise PodError(f"sysctl {key}: a host-network pod cannot set net.* sysctls (they would be the node's)")
        return
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        if not own_ipc:
            raise PodError(f"sysctl {key}: a pod on the host IPC namespace cannot set IPC sysctls")
        return
    if key in _UTS_SYSCTLS:
        if not own_uts:
            raise PodError(f"sysctl {key}: a host-network pod cannot set the node's {key}")
        return
    raise PodError(f"sysctl {key} is not in a namespace of the pod's own (only net.*, the IPC sysctls and "
                   "kernel.hostname/domainname are)")
