"""The pod sandbox's pure parts: CRI's PodSandboxConfig onto a plan (pod.py), the holder's cgroup path
(cgroup.py), the pod's /etc files and where CRI wants them (files.py), and the runtime table's sandboxer."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from wasm_shim.shim.node.containerd_config import ConfigMergeError, RuntimeTable, merge_runtime_table
from wasm_shim.shim.protos import cri_pod_pb2, pack_any
from wasm_shim.shim.sandbox import cgroup, files
from wasm_shim.shim.sandbox.holder import HolderPlan
from wasm_shim.shim.sandbox.pod import PAUSE_USER, PodError, pod_config, pod_plan

NETNS = "/var/run/netns/cni-1234"


def _config(**linux: object) -> cri_pod_pb2.PodSandboxConfig:
    config = cri_pod_pb2.PodSandboxConfig(hostname="web-0")
    config.metadata.name, config.metadata.namespace = "web-0", "shop"
    for key, value in linux.items():
        if key == "sysctls":
            config.linux.sysctls.update(value)  # type: ignore[arg-type]
        elif key in ("network", "pid", "ipc"):
            setattr(config.linux.security_context.namespace_options, key, value)
        elif key == "run_as_user":
            config.linux.security_context.run_as_user.value = value  # type: ignore[assignment]
        elif key == "cgroup_parent":
            config.linux.cgroup_parent = value  # type: ignore[assignment]
    return config


def test_a_pod_gets_its_own_namespaces_hostname_and_the_unprivileged_defaults() -> None:
    plan = pod_plan(_config(), NETNS)
    assert (plan.netns, plan.new_pid, plan.new_ipc, plan.new_uts) == (NETNS, True, True, True)
    assert plan.hostname == "web-0" and plan.name == "shop/web-0"
    assert dict(plan.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "0",
                                  "net.ipv4.ping_group_range": "0 2147483647"}
    assert (plan.uid, plan.gid) == (PAUSE_USER, PAUSE_USER)


def test_the_pods_own_sysctls_win_over_the_defaults() -> None:
    plan = pod_plan(_config(sysctls={"net.ipv4.ip_unprivileged_port_start": "1024", "kernel.shmmax": "1"}), NETNS)
    assert dict(plan.sysctls)["net.ipv4.ip_unprivileged_port_start"] == "1024"
    assert dict(plan.sysctls)["kernel.shmmax"] == "1"


def test_host_network_keeps_the_hosts_network_uts_and_name() -> None:
    plan = pod_plan(_config(network=cri_pod_pb2.NODE), "")
    assert plan.host_network and not plan.new_uts and plan.hostname == ""
    assert plan.sysctls == ()  # no net.* defaults: they would be the node's


def test_node_pid_and_ipc_modes_share_the_nodes() -> None:
    plan = pod_plan(_config(pid=cri_pod_pb2.NODE, ipc=cri_pod_pb2.NODE), NETNS)
    assert not plan.new_pid and not plan.new_ipc and plan.new_uts


def test_run_as_user_is_the_holders_user_and_group() -> None:
    plan = pod_plan(_config(run_as_user=1000), NETNS)
    assert (plan.uid, plan.gid) == (1000, 1000)


@pytest.mark.parametrize(("linux", "netns", "message"), [
    ({"sysctls": {"kernel.panic": "1"}}, NETNS, "kernel.panic is not in a namespace of the pod's own"),
    ({"sysctls": {"net.core.somaxconn": "9"}, "network": cri_pod_pb2.NODE}, "",
     "a host-network pod cannot set net.\\* sysctls"),
    ({"sysctls": {"kernel.shmmax": "9"}, "ipc": cri_pod_pb2.NODE}, NETNS, "host IPC namespace"),
    ({"sysctls": {"net/../../x": "1"}}, NETNS, "is not a sysctl name"),
    ({"sysctls": {"net.core.somaxconn": "1\n2"}}, NETNS, "must be one line"),
    ({}, "", "gave no network namespace"),
])
def test_what_the_holder_cannot_do_is_refused_with_the_reason(linux: dict, netns: str,  # type: ignore[type-arg]
                                                                message: str) -> None:
    with pytest.raises(PodError, match=message):
        pod_plan(_config(**linux), netns)


def test_a_pod_user_namespace_is_refused() -> None:
    config = _config()
    config.linux.security_context.namespace_options.userns_options.mode = cri_pod_pb2.POD
    with pytest.raises(PodError, match="hostUsers: false"):
        pod_plan(config, NETNS)


def test_options_decode_from_an_any_and_anything_else_is_refused() -> None:
    assert pod_config(pack_any(_config())).hostname == "web-0"
    assert pod_config(None) == cri_pod_pb2.PodSandboxConfig()
    with pytest.raises(PodError, match="expected a protobuf Any holding runtime.v1.PodSandboxConfig"):
        pod_config(pack_any(cri_pod_pb2.DNSConfig()))


def test_dns_config_becomes_resolv_conf_as_containerd_writes_it() -> None:
    config = _config()
    config.dns_config.servers.extend(["10.96.0.10", "10.96.0.11"])
    config.dns_config.searches.extend(["shop.svc.cluster.local", "svc.cluster.local"])
    config.dns_config.options.append("ndots:5")
    assert files.resolv_conf(pod_plan(config, NETNS)) == (
        "search shop.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\nnameserver 10.96.0.11\n"
        "options ndots:5\n")
    assert files.resolv_conf(pod_plan(_config(), NETNS)) is None  # no DNS config: the node's is copied


def test_cri_sandbox_dir_follows_the_bundles_work_link(tmp_path: Path) -> None:
    bundle = tmp_path / "state" / "io.containerd.sandbox.controller.v1.shim" / "k8s.io" / "sb1"
    work = tmp_path / "root" / "io.containerd.sandbox.controller.v1.shim" / "k8s.io" / "sb1"
    bundle.mkdir(parents=True)
    work.mkdir(parents=True)
    (bundle / "work").symlink_to(work)
    assert files.cri_sandbox_dir(str(bundle), "sb1") == str(tmp_path / "root" / "io.containerd.grpc.v1.cri" /
                                                            "sandboxes" / "sb1")
    assert files.cri_sandbox_dir(str(bundle), "another") is None
    assert files.cri_sandbox_dir(str(tmp_path), "sb1") is None  # no link: no files


def test_files_are_written_whole_and_removed(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    target = tmp_path / "sandboxes" / "sb1"
    assert files.write(str(target), pod_plan(_config(), NETNS), etc=str(etc)) is True
    assert (target / "hostname").read_text() == "web-0\n"
    assert (target / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (target / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert sorted(os.listdir(target)) == ["hostname", "hosts", "resolv.conf"]  # no partial file left
    assert oct((target / "hosts").stat().st_mode & 0o777) == "0o644"
    files.remove(str(target))
    assert not target.exists()


@pytest.mark.parametrize(("parent", "leaf"), [
    ("/kubepods/besteffort/pod12", "kubepods/besteffort/pod12/sb1"),
    ("kubepods-besteffort-pod12.slice",
     "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/wasm-shim-sandbox-sb1.scope"),
    ("-.slice", "wasm-shim-sandbox-sb1.scope"),
])
def test_the_holders_cgroup_is_a_leaf_of_the_pods(parent: str, leaf: str) -> None:
    assert cgroup.leaf_path(parent, "sb1") == leaf


@pytest.mark.parametrize("parent", ["kubepods/pod1", "/kubepods/../etc", "a--b.slice", "-a.slice"])
def test_a_cgroup_parent_of_neither_form_is_refused(parent: str) -> None:
    with pytest.raises(cgroup.CgroupError):
        cgroup.leaf_path(parent, "sb1")


def test_holder_argv_asks_for_exactly_the_plan() -> None:
    plan = HolderPlan(root="/b/rootfs", uid=65535, gid=65535, netns=NETNS, new_ipc=True, new_uts=True,
                      hostname="web-0", sysctls=(("net.core.somaxconn", "1024"),))
    assert plan.argv("/h") == ["/h", "--root", "/b/rootfs", "--uid", "65535", "--gid", "65535", "--netns", NETNS,
                               "--new-ipc", "--new-uts", "--hostname", "web-0", "--sysctl",
                               "net.core.somaxconn=1024"]
    host = HolderPlan(root="/r", uid=0, gid=0, netns=None, new_pid=False, new_ipc=False, new_uts=False,
                      hostname="ignored")
    assert host.argv("/h") == ["/h", "--root", "/r", "--uid", "0", "--gid", "0"]


def test_containerd_2_tables_hand_the_sandbox_to_the_shim() -> None:
    text, _ = merge_runtime_table("version = 3\n", RuntimeTable(version=3))
    assert text is not None
    table = tomllib.loads(text)["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["wasmtime"]
    assert table["sandboxer"] == "shim" and table["disable_pause_image_pull"] is True
    podsandbox = RuntimeTable(version=3, sandboxer="podsandbox").as_data()
    assert podsandbox["sandboxer"] == "podsandbox" and "disable_pause_image_pull" not in podsandbox
    assert "sandboxer" not in RuntimeTable(version=2).as_data()  # 1.6/1.7: no sandbox API


@pytest.mark.parametrize(("version", "sandboxer", "message"), [
    (2, "shim", "have no sandbox API"),
    (3, "vm", "sandboxer must be one of shim, podsandbox"),
])
def test_a_sandboxer_that_cannot_work_is_refused(version: int, sandboxer: str, message: str) -> None:
    with pytest.raises(ConfigMergeError, match=message):
        RuntimeTable(version=version, sandboxer=sandboxer)


def test_the_cli_table_names_the_sandboxer_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    from wasm_shim.shim.cli.main import main

    assert main(["containerd-config", "--config-version", "3", "--sandboxer", "podsandbox"]) == 0
    table = tomllib.loads(capsys.readouterr().out)["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]
    assert table["runtimes"]["wasmtime"]["runtime_type"] == "io.containerd.wasmtime.v1"
    assert table["runtimes"]["wasmtime"]["sandboxer"] == "podsandbox"
