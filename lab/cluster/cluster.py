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
``push_artifact`` (``python -m lab.cluster push-artifact``) pushes into it from inside node-a with ``wasm-shim push``.

Restarting a node's containerd (what the chart's installer must do after changing its config): inside a node,
PID 1 is this supervisor, so ``nsenter -t 1 -m -n -p -- /run/wasm-shim-node/restart-containerd`` from a hostPID pod
(or ``kill -HUP 1`` there) restarts it; the script waits until the new containerd answers on its socket and exits 0, or
exits 1 with the reason. From the machine: ``python -m lab.cluster restart-containerd NODE``.

Invariants:
- Every process the cluster starts carries ``WASM_SHIM_E2E_CLUSTER=<STATE>`` in its environment and lives in the
  cluster's PID namespace, so killing the cluster's PID 1 kills all of them, and ``down`` can prove none is left.
- ``down`` is idempotent and ends with nothing of the cluster on the machine: processes, mounts, namespace pins,
  cgroups, the state directory; it reports anything it could not remove and exits non-zero then.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .files import kubeconfig, prepare
from .topology import (
    MARKER,
    NODE_MARKER,
    NODES,
    REGISTRY,
    ROOT,
    SELF,
    START_TIMEOUT,
    STOP_TIMEOUT,
    SYS_PATH,
    ClusterError,
    Node,
    State,
    _alive,
    _child_of,
    _environ,
    _zombie,
    containerd_binaries,
    https_json,
    log_tail,
    mount,
    registry_binary,
    run,
    tool,
    wait_for,
)

_LAUNCHED: dict[Path, subprocess.Popen[bytes]] = {}


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


def oras_push_artifact(state: State, wasm: Path, config: bytes, repository_tag: str, node: Node = NODES[0],
                       timeout: float = 120) -> str:
    """Push ``wasm`` with the real ``oras push --config`` (``config`` as the wasm config blob, byte for byte, so
    several artifacts can share one) from inside ``node``; returns ``REGISTRY/REPOSITORY@sha256:...``."""
    repository, sep, _ = repository_tag.rpartition(":")
    if not sep or not repository or repository.startswith(REGISTRY):
        raise ClusterError(f"oras_push_artifact wants REPOSITORY:TAG, got {repository_tag!r}")
    staging = Path(tempfile.mkdtemp(prefix="oras-", dir=state.root))
    try:
        (staging / "m.wasm").write_bytes(wasm.read_bytes())
        (staging / "config.json").write_bytes(config)
        result = node_exec(state, node, [
            "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", str(staging), tool("oras"), "push", "--plain-http",
            "--format", "json", f"{REGISTRY}/{repository_tag}",
            "--config", "config.json:application/vnd.wasm.config.v0+json", "m.wasm:application/wasm"],
            timeout=timeout)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        digest = json.loads(result.stdout)["digest"]
    except (ValueError, KeyError, TypeError):
        raise ClusterError(f"oras push {wasm} {REGISTRY}/{repository_tag} on {node.name} failed "
                           f"(exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}") from None
    return f"{REGISTRY}/{repository}@{digest}"


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
         "--propagation", "private", "--", *SELF,
         "--state", str(state.root), "_init", "--listener-fd", str(listener.fileno())],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=[listener.fileno()],
        env={"PATH": SYS_PATH, MARKER: str(state.root), "HOME": "/root"}, start_new_session=True, cwd=ROOT)
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


