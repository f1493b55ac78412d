"""The pod sandbox through containerd 2.x's Sandbox API (`sandboxer = "shim"`, what `wasm-shim containerd-config`
writes for 2.x), driven by real `crictl` against a private containerd with CNI: the pod is a holder process of
our daemon, not CRI's pause container under runc; its containers see the pod's namespaces and files; what the
holder cannot make is refused with the reason; nothing is left behind. (containerd 1.6/1.7 have no Sandbox API:
their pods keep the pause container, tests/integration/test_cri.py.)"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.containerd import CONFIG_V2_KINDS, ContainerdFactory
from lab.cri_tools import HANDLER, PAUSE_REF, CrictlError, CriNode, start_cri_node, wait_for
from lab.fixtures import BUSYBOX, BUSYBOX_APPLETS
from lab.shimtools import daemon_pids
from wasm_shim.oci.layout import Symlink
from wasm_shim.shim.sandbox.holder import HOLDER

pytestmark = pytest.mark.integration

CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture
def node(request: pytest.FixtureRequest, containerd_factory: ContainerdFactory, guests: Path,
         tmp_path: Path) -> Iterator[CriNode]:
    if request.node.callspec.params["containerd_factory"] in CONFIG_V2_KINDS:
        pytest.skip("containerd 1.6/1.7 take config version 2, where our table has no sandboxer: their pods keep "
                    "CRI's pause container (test_cri.py)")
    cri = start_cri_node(containerd_factory, "2.x", guests / "pause", tmp_path / "cri")
    try:
        yield cri
    finally:
        cri.teardown()


def _busybox(node: CriNode) -> str:
    files: dict[str, object] = {"/bin/busybox": BUSYBOX}
    files.update({f"/bin/{applet}": Symlink("busybox") for applet in BUSYBOX_APPLETS})
    return node.image("busybox", files, entrypoint=["/bin/sh"])  # type: ignore[arg-type]


def _holders(node: CriNode) -> dict[int, int]:
    """Holder pid -> its parent, for every holder whose parent is one of this containerd's daemons."""
    daemons = set(daemon_pids(node.containerd))
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if os.path.basename(exe) == HOLDER and parent in daemons:
            found[int(entry.name)] = parent
    return found


def _runp(node: CriNode, name: str, **extra: object) -> tuple[str, Path]:
    pod = node.pod_config(name, **extra)
    return node.crictl.runp(pod, runtime=HANDLER), pod


def _cri_files_dir(node: CriNode, pod_id: str) -> Path:
    return Path(node.containerd.root) / "io.containerd.grpc.v1.cri" / "sandboxes" / pod_id


def test_a_wasm_pod_is_held_by_the_daemon_without_runc_or_a_pause_container(node: CriNode, guests: Path) -> None:
    crictl = node.crictl
    hello = node.wasm_image("hello", guests / "hello.wasm")
    pod_id, pod = _runp(node, "held")
    assert crictl.pod_state(pod_id) == "SANDBOX_READY"
    holders = _holders(node)
    assert len(holders) == 1, f"one holder, a child of our daemon: {holders}"
    tasks = node.ctr_k8s("tasks", "ls", "-q").stdout.split()
    assert pod_id not in tasks, "no pause task: CRI asked the shim for the sandbox"
    assert node.ctr_k8s("containers", "ls", "-q").stdout.split() == [], "no pause container record"
    assert not (Path("/run/containerd/runc/k8s.io") / pod_id).exists(), "nothing of the pod under runc"
    assert (_cri_files_dir(node, pod_id) / "resolv.conf").is_file()
    assert json.loads(crictl.run("inspectp", pod_id).stdout)["status"]["state"] == "SANDBOX_READY"

    cid = crictl.create(pod_id, node.container_config("hello", hello), pod)
    crictl.run("start", cid)
    crictl.wait_state(cid, "CONTAINER_EXITED")
    assert crictl.logs(cid).stdout.strip() == "hello from wasm"

    crictl.run("stopp", pod_id)
    assert crictl.pod_state(pod_id) == "SANDBOX_NOTREADY"
    assert _holders(node) == {}, "StopPodSandbox ended the holder"
    crictl.run("rmp", pod_id)
    assert crictl.pod_state(pod_id) == ""
    assert not _cri_files_dir(node, pod_id).exists(), "the pod's /etc files went with it"


def test_a_wasm_pod_needs_no_pause_image(node: CriNode, guests: Path) -> None:
    node.ctr_k8s("images", "rm", PAUSE_REF)
    hello = node.wasm_image("hello", guests / "hello.wasm")
    pod_id, pod = _runp(node, "no-pause")
    cid = node.crictl.create(pod_id, node.container_config("hello", hello), pod)
    node.crictl.run("start", cid)
    node.crictl.wait_state(cid, "CONTAINER_EXITED")
    assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"
    assert PAUSE_REF not in node.ctr_k8s("images", "ls", "-q").stdout, "CRI did not pull it either"


def test_a_native_sidecar_sees_the_pods_name_dns_sysctls_and_not_the_host(node: CriNode, guests: Path) -> None:
    crictl = node.crictl
    busybox = _busybox(node)
    spin = node.wasm_image("spin", guests / "spin.wasm")
    pod_id, pod = _runp(node, "mixed", hostname="the-pod",
                        dns_config={"servers": ["192.0.2.53"], "searches": ["ns1.svc.cluster.local"]})
    app = crictl.create(pod_id, node.container_config("app", spin), pod)
    script = ("cat /proc/sys/kernel/hostname /etc/resolv.conf /proc/sys/net/ipv4/ip_unprivileged_port_start; "
              "ls /proc/1/root/ || echo no-host-root; echo done; exec sleep 600")
    sidecar = crictl.create(pod_id, node.container_config(
        "sidecar", busybox, command=["/bin/sh"], args=["-c", script],
        linux={"security_context": {"run_as_user": {"value": 65535}}}), pod)
    crictl.run("start", app, sidecar)
    crictl.wait_state(sidecar, "CONTAINER_RUNNING")
    wait_for(lambda: "done" in crictl.logs(sidecar).stdout, 10, "the sidecar's output in `crictl logs`")
    logs = crictl.logs(sidecar)
    lines = logs.stdout.splitlines()
    assert lines[0] == "the-pod", "the pod's hostname, in the pod's UTS namespace"
    assert "search ns1.svc.cluster.local" in lines and "nameserver 192.0.2.53" in lines
    assert lines[lines.index("nameserver 192.0.2.53") + 1] == "0", "CRI's unprivileged-port default"
    # PID 1 of the pod's PID namespace is the holder, running as the sidecar's own uid: non-dumpable, it still
    # cannot be looked into (and its root is an empty directory anyway).
    assert "no-host-root" in lines and "Permission denied" in logs.stderr
    crictl.run("stopp", pod_id, timeout=60)
    assert crictl.container_state(app) == "CONTAINER_EXITED"
    assert crictl.container_state(sidecar) == "CONTAINER_EXITED"
    crictl.run("rmp", pod_id)


def test_a_host_network_pod_stays_in_the_hosts_network(node: CriNode, guests: Path) -> None:
    hello = node.wasm_image("hello", guests / "hello.wasm")
    pod_id, pod = _runp(node, "hostnet", linux={"security_context": {"namespace_options": {"network": 2}}})
    (holder,) = _holders(node)
    assert os.stat(f"/proc/{holder}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    assert os.stat(f"/proc/{holder}/ns/uts").st_ino == os.stat("/proc/self/ns/uts").st_ino
    cid = node.crictl.create(pod_id, node.container_config("hello", hello), pod)
    node.crictl.run("start", cid)
    node.crictl.wait_state(cid, "CONTAINER_EXITED")
    assert node.crictl.logs(cid).stdout.strip() == "hello from wasm"


def test_a_sysctl_outside_the_pods_namespaces_fails_runp_with_the_reason(node: CriNode) -> None:
    with pytest.raises(CrictlError) as failed:
        _runp(node, "bad-sysctl", linux={"sysctls": {"kernel.panic": "1"}})
    assert "sysctl kernel.panic is not in a namespace of the pod's own" in failed.value.stderr
    assert _holders(node) == {}
    assert node.crictl.json("pods").get("items", []) == []


@pytest.fixture
def pod_cgroup() -> Iterator[str]:
    """A pod cgroup as the kubelet makes one (cgroupfs driver), in every hierarchy; removed afterwards."""
    name = f"wsh-pod-{secrets.token_hex(4)}"
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    roots = [CGROUP_ROOT] if v2 else [p for p in CGROUP_ROOT.iterdir()
                                      if p.name != "unified" and not p.is_symlink() and (p / "cgroup.procs").exists()]
    made = []
    for root in roots:
        (root / name).mkdir()
        made.append(root / name)
        if (root / name / "cpuset.cpus").exists():
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (root / name / knob).write_text((root / knob).read_text())
    try:
        yield "/" + name
    finally:
        for directory in made:
            for leaf in directory.iterdir():
                if leaf.is_dir():
                    leaf.rmdir()
            directory.rmdir()


def test_the_holder_is_placed_in_the_pods_cgroup_and_the_leaf_removed(pod_cgroup: str, node: CriNode) -> None:
    pod_id, _ = _runp(node, "cgrouped", linux={"cgroup_parent": pod_cgroup})
    (holder,) = _holders(node)
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    paths = {line.split(":", 2)[2] for line in Path(f"/proc/{holder}/cgroup").read_text().splitlines()
             if line.split(":", 2)[1] in (("",) if v2 else ("memory", "pids"))}
    assert paths == {f"{pod_cgroup}/{pod_id}"}
    memory = CGROUP_ROOT / ("memory" if (CGROUP_ROOT / "memory").exists() else "") / pod_cgroup.lstrip("/") / pod_id
    assert memory.is_dir()
    node.crictl.run("stopp", pod_id)
    wait_for(lambda: not memory.exists(), 10, f"{memory} removed once the holder was gone")


def test_a_daemon_that_dies_takes_its_holders_and_the_pod_reads_not_ready(node: CriNode) -> None:
    pod_id, _ = _runp(node, "orphan")
    (holder,) = _holders(node)
    for pid in daemon_pids(node.containerd):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{holder}").exists(), 10, f"holder {holder} gone with its daemon")
    wait_for(lambda: node.crictl.pod_state(pod_id) == "SANDBOX_NOTREADY", 20, "the pod NOTREADY")
    node.crictl.run("stopp", pod_id)
    node.crictl.run("rmp", pod_id)
    assert node.crictl.pod_state(pod_id) == ""


def test_crictl_stats_of_the_pod_answer(node: CriNode) -> None:
    pod_id, _ = _runp(node, "measured")
    stats = node.crictl.json("statsp", "--id", pod_id)
    assert [entry["attributes"]["id"] for entry in stats["stats"]] == [pod_id]




def test_the_holder_reaps_the_orphans_of_a_shared_pid_namespace(node: CriNode) -> None:
    """A sidecar's orphan is re-parented to PID 1 of the pod's PID namespace, the holder, which must reap it: a
    pause container does (its SIGCHLD handler); the holder ignores SIGCHLD, so the kernel discards the status."""
    busybox = _busybox(node)
    pod_id, pod = _runp(node, "reaper")
    (holder,) = _holders(node)
    orphaner = node.crictl.create(pod_id, node.container_config(
        "orphaner", busybox, command=["/bin/sh"], args=["-c", "(sleep 1 &); echo forked; exec sleep 600"]), pod)
    node.crictl.run("start", orphaner)
    wait_for(lambda: "forked" in node.crictl.logs(orphaner).stdout, 10, "the orphan forked")

    def children(state: str) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == holder and fields[0] == state:
                found.append(int(entry.name))
        return found

    wait_for(lambda: not children("S") and not children("Z"), 10,
             lambda: f"the holder's children gone, zombies included (sleeping {children('S')}, "
                     f"zombies {children('Z')})")
    node.crictl.run("stopp", pod_id)
    node.crictl.run("rmp", pod_id)
