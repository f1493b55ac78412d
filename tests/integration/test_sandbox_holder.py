"""The pod sandbox holder, for real: the static `wasm-shim-sandbox-holder` spawned by `Holders` as the daemon
does, in a network namespace the test creates. What a pod's containers rely on (its namespaces, name, sysctls),
what keeps the host safe from it (chroot, user, non-dumpable), and that none outlives its daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import network_namespace
from wasm_shim.shim.sandbox.holder import Holder, HolderError, HolderPlan, Holders, find_holder

pytestmark = pytest.mark.integration


@pytest.fixture
def holders() -> Iterator[Holders]:
    binary = find_holder()
    if binary is None:
        pytest.fail("wasm-shim-sandbox-holder is not built: run scripts/setup.sh")
    spawner = Holders(binary)
    try:
        yield spawner
    finally:
        spawner.close()


@pytest.fixture
def netns() -> Iterator[Path]:
    with network_namespace("wsh-holder") as path:
        yield path


def _root(tmp_path: Path) -> str:
    root = tmp_path / "rootfs"
    root.mkdir(mode=0o711)
    return str(root)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _ns(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_a_holder_holds_the_pods_namespaces_as_pid_1(holders: Holders, netns: Path, tmp_path: Path) -> None:
    holder = holders.spawn(HolderPlan(root=_root(tmp_path), uid=65535, gid=65535, netns=str(netns),
                                      hostname="pod-a", sysctls=(("net.ipv4.ip_unprivileged_port_start", "0"),)))
    status = _status(holder.pid)
    assert status["NSpid"].split() == [str(holder.pid), "1"], "PID 1 of a PID namespace of its own"
    assert _ns(holder.pid, "net") == os.stat(netns).st_ino, "in the pod's network namespace"
    for kind in ("ipc", "uts", "pid"):
        assert _ns(holder.pid, kind) != _ns("self", kind), f"a {kind} namespace of its own"
    name = subprocess.run(["nsenter", f"--uts=/proc/{holder.pid}/ns/uts", "hostname"], capture_output=True,
                          text=True, check=True, timeout=10).stdout.strip()
    assert name == "pod-a"
    port_start = subprocess.run(["ip", "netns", "exec", netns.name, "cat",
                                 "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    assert port_start == "0", "the pod's sysctl, written in its network namespace"


def test_a_holder_shows_nothing_of_the_host_and_cannot_be_looked_into(holders: Holders, netns: Path,
                                                                      tmp_path: Path) -> None:
    root = _root(tmp_path)
    holder = holders.spawn(HolderPlan(root=root, uid=65535, gid=65535, netns=str(netns)))
    status = _status(holder.pid)
    assert status["Uid"].split() == ["65535"] * 4 and status["Gid"].split() == ["65535"] * 4
    assert status["Groups"] == "" and status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1"
    assert os.readlink(f"/proc/{holder.pid}/root") == root, "chrooted into the empty directory"
    # Non-dumpable: its /proc files belong to root, so a process of the pod running as 65535 (sharing the PID
    # namespace) cannot follow /proc/1/root or read its memory.
    assert os.stat(f"/proc/{holder.pid}/environ").st_uid == 0
    assert sorted(os.listdir(f"/proc/{holder.pid}/fd")) == ["0", "1", "2", "3"], "no fd of the daemon kept"


def test_a_holder_killed_reports_its_status_once(holders: Holders, netns: Path, tmp_path: Path) -> None:
    holder = holders.spawn(HolderPlan(root=_root(tmp_path), uid=65535, gid=65535, netns=str(netns)))
    seen: list[int] = []
    holder.arm(seen.append)
    assert holders.running == 1
    holder.kill()
    assert holder.wait(10)
    assert seen == [137] and holder.exit_status == 137
    assert holders.running == 0
    holder.kill()  # after the reap: a no-op, never a signal to a recycled pid
    late: list[int] = []
    holder.arm(late.append)
    assert late == [137]


@pytest.mark.parametrize(("plan", "message"), [
    ({"netns": "/nonexistent/netns"}, "network namespace /nonexistent/netns: No such file or directory"),
    ({"sysctls": (("net.ipv4.no_such_sysctl", "1"),)}, "sysctl net.ipv4.no_such_sysctl: No such file or directory"),
    ({"uid": 0, "gid": 0, "root": "/nonexistent/root"}, "chroot /nonexistent/root: No such file or directory"),
])
def test_a_holder_that_cannot_set_up_is_an_error_with_its_reason(holders: Holders, netns: Path, tmp_path: Path,
                                                                 plan: dict, message: str) -> None:  # type: ignore[type-arg]
    values = {"root": _root(tmp_path), "uid": 65535, "gid": 65535, "netns": str(netns), **plan}
    with pytest.raises(HolderError, match=message):
        holders.spawn(HolderPlan(**values))
    assert holders.running == 0, "the failed holder was reaped"


def test_no_holder_outlives_its_daemon(netns: Path, tmp_path: Path) -> None:
    """A daemon that dies without cleaning up (SIGKILL, a crash) takes its holders with it: the lifeline."""
    script = textwrap.dedent(f"""
        import os, sys
        from wasm_shim.shim.sandbox.holder import Holders, HolderPlan, find_holder
        holder = Holders(find_holder()).spawn(HolderPlan(root={_root(tmp_path)!r}, uid=65535, gid=65535,
                                                         netns={str(netns)!r}))
        print(holder.pid, flush=True)
        sys.stdin.read()
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as daemon:
        assert daemon.stdout is not None
        pid = int(daemon.stdout.readline())
        assert Path(f"/proc/{pid}").exists()
        daemon.kill()
        daemon.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not Path(f"/proc/{pid}").exists(), "the holder exited with its daemon (reaped by init)"


def test_a_pod_sharing_the_hosts_pid_and_network_gets_no_new_namespace(holders: Holders, tmp_path: Path) -> None:
    holder: Holder = holders.spawn(HolderPlan(root=_root(tmp_path), uid=65535, gid=65535, netns=None,
                                              new_pid=False, new_ipc=False, new_uts=False))
    for kind in ("net", "pid", "ipc", "uts"):
        assert _ns(holder.pid, kind) == _ns("self", kind), kind
