"""The installer's label, annotations and events on a real API server, with exactly the chart's RBAC and its
node restriction (templates/node-restriction.yaml, ValidatingAdmissionPolicies).

etcd and kube-apiserver (v1.37.2, as the cluster e2e builds them into the cache) run on loopback; the chart's
ServiceAccount, RBAC and policies (`helm template --show-only`) are applied; the installer runs with a token of
that ServiceAccount bound to a Pod on its node (as the kubelet mounts it: the token then names the node), so a
permission the chart forgot, or one it grants too widely, shows here. Node objects stand for the nodes and a Pod
object (never started: no kubelet) for each installer pod.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.procs import stop_process
from tests.unit.test_node_installer import CONTAINERD_16, make_bundle, make_root, snapshot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("WASM_SHIM_CACHE", "~/.cache/wasm-shim")).expanduser()
APISERVER = CACHE / "k8s-v1.37.2" / "bin" / "kube-apiserver"
KUBECTL = CACHE / "k8s-v1.37.2" / "bin" / "kubectl"
ETCD = CACHE / "etcd-v3.7.3" / "bin" / "etcd"
HELM = REPO / ".tools" / "bin" / "helm"
WASM_SHIM = REPO / ".venv" / "bin" / "wasm-shim"
NAMESPACE = "wasm-system"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    admin: Path  # kubeconfig of system:masters
    ca: Path  # the apiserver's self-signed serving certificate (--cert-dir), to verify it by

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(KUBECTL), "--kubeconfig", str(self.admin), *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done

    def node(self, name: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.kubectl("get", "node", name, "-o", "json").stdout)  # type: ignore[no-any-return]

    def events(self, reason: str) -> list[dict]:  # type: ignore[type-arg]
        items = json.loads(self.kubectl("get", "events", "-n", "default", "-o", "json").stdout)["items"]
        return [e for e in items if e.get("reason") == reason]


def kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for binary in (APISERVER, KUBECTL, ETCD):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} is missing: the cluster e2e builds Kubernetes and etcd into the cache (make e2e)")
    work = tmp_path_factory.mktemp("apiserver")
    subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                   check=True, capture_output=True)
    (work / "tokens.csv").write_text('admin-token,admin,admin,"system:masters"\n')
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (work / "etcd.log").open("wb") as log:
            processes.append(subprocess.Popen(
                [str(ETCD), "--data-dir", str(work / "etcd"), "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                 "--initial-cluster", f"default=http://127.0.0.1:{peer_port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with (work / "apiserver.log").open("wb") as log:
            processes.append(subprocess.Popen(
                [str(APISERVER), f"--etcd-servers=http://127.0.0.1:{etcd_port}", "--bind-address=127.0.0.1",
                 "--advertise-address=127.0.0.1", f"--secure-port={api_port}", f"--cert-dir={work / 'certs'}",
                 f"--token-auth-file={work / 'tokens.csv'}", "--authorization-mode=RBAC",
                 f"--service-account-key-file={work / 'sa.pub'}",
                 f"--service-account-signing-key-file={work / 'sa.key'}",
                 "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                 "--service-cluster-ip-range=10.96.0.0/16",
                 # Loopback only: no Service endpoints to reconcile (the reconciler refuses a loopback address).
                 "--endpoint-reconciler-type=none"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        server = f"https://127.0.0.1:{api_port}"
        instance = Api(kubeconfig(work / "admin.kubeconfig", server, "admin-token"), work / "certs" / "apiserver.crt")
        deadline = time.monotonic() + 180  # a cold apiserver on a loaded machine: bounded, then a clear failure
        while instance.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
            for process in processes:
                assert process.poll() is None, (work / "apiserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (work / "apiserver.log").read_text()[-3000:]
            time.sleep(1)
        yield instance
    finally:
        for process in reversed(processes):
            stop_process(process, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


CHART_RBAC = ("templates/serviceaccount.yaml", "templates/rbac.yaml", "templates/node-restriction.yaml",
              "templates/restart-slots.yaml")


@pytest.fixture(scope="module")
def chart_rbac(api: Api) -> str:
    """The chart's ServiceAccount, RBAC and node restriction, applied; returns the API server's URL."""
    api.kubectl("create", "namespace", NAMESPACE)
    shown = [arg for template in CHART_RBAC for arg in ("--show-only", template)]
    rendered = subprocess.run(
        [str(HELM), "template", "wasm-shim", str(REPO / "charts" / "wasm-shim"), "--namespace", NAMESPACE,
         "--kube-version", "1.37.2", *shown], capture_output=True, text=True, timeout=60, check=True).stdout
    api.kubectl("apply", "-f", "-", stdin=rendered)
    return str(json.loads(api.admin.read_text())["clusters"][0]["cluster"]["server"])


def installer_token(api: Api, node: str) -> str:
    """A token of the chart's ServiceAccount bound to an installer Pod on `node`: what the kubelet mounts into the
    DaemonSet's pod there (Kubernetes >= 1.30 puts the node's name in it)."""
    add_node(api, node)
    pod = f"installer-{node}"
    if api.kubectl("get", "pod", pod, "-n", NAMESPACE, check=False).returncode != 0:
        api.kubectl("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NAMESPACE},
            "spec": {"serviceAccountName": "wasm-shim", "nodeName": node,
                     "containers": [{"name": "installer", "image": "wasm-shim.local/installer:test"}]}}))
    uid = api.kubectl("get", "pod", pod, "-n", NAMESPACE, "-o", "jsonpath={.metadata.uid}").stdout.strip()
    return api.kubectl("create", "token", "wasm-shim", "-n", NAMESPACE, "--bound-object-kind", "Pod",
                       "--bound-object-name", pod, "--bound-object-uid", uid).stdout.strip()


@pytest.fixture
def kubeconfig_for(api: Api, chart_rbac: str, tmp_path: Path) -> Callable[[str], Path]:
    """node name -> a kubeconfig holding the token of the installer pod on that node."""
    def make(node: str) -> Path:
        return kubeconfig(tmp_path / f"{node}.kubeconfig", chart_rbac, installer_token(api, node))
    return make


def add_node(api: Api, name: str) -> None:
    api.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                      "metadata": {"name": name}}))


def run_node(kubeconfig: Path, root: Path, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WASM_SHIM), "node", *args, "--host-root", str(root), "--node-root", str(root), "--node-name", node,
         "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE, "--no-restart"],
        capture_output=True, text=True, timeout=120, check=False)


def test_install_labels_ready_and_uninstall_unlabels_with_the_charts_rbac(
    api: Api, kubeconfig_for: Callable[[str], Path], tmp_path: Path
) -> None:
    installer_kubeconfig = kubeconfig_for("node-a")
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    done = run_node(installer_kubeconfig, root, "node-a", "install", "--bundle", str(make_bundle(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "could not" not in done.stderr, done.stderr  # every API call was allowed
    meta = api.node("node-a")["metadata"]
    assert meta["labels"]["wasm.shim.io/runtime"] == "ready"
    assert meta["annotations"]["wasm.shim.io/runtime-version"] == "0.1.0-fixture"
    (event,) = api.events("WasmShimInstalled")
    assert event["involvedObject"]["name"] == "node-a" and event["type"] == "Normal"

    before_uninstall = run_node(installer_kubeconfig, root, "node-a", "uninstall")
    assert before_uninstall.returncode == 0, before_uninstall.stderr
    assert "could not" not in before_uninstall.stderr, before_uninstall.stderr
    meta = api.node("node-a")["metadata"]
    assert "wasm.shim.io/runtime" not in (meta.get("labels") or {})
    assert "wasm.shim.io/runtime-version" not in (meta.get("annotations") or {})
    assert api.events("WasmShimUninstalled")


def test_failed_install_labels_failed_with_the_reason(api: Api, kubeconfig_for: Callable[[str], Path],
                                                     tmp_path: Path) -> None:
    installer_kubeconfig = kubeconfig_for("node-b")
    root = make_root(tmp_path, {"etc/containerd/config.toml": "version = 2\n[plugins\n"})
    before = snapshot(root)
    done = run_node(installer_kubeconfig, root, "node-b", "install", "--bundle", str(make_bundle(tmp_path)))
    assert done.returncode == 1
    assert "could not" not in done.stderr, done.stderr
    assert snapshot(root) == before
    meta = api.node("node-b")["metadata"]
    assert meta["labels"]["wasm.shim.io/runtime"] == "failed"
    assert "does not parse as TOML" in meta["annotations"]["wasm.shim.io/runtime-reason"]
    (event,) = api.events("WasmShimInstallFailed")
    assert event["type"] == "Warning" and "does not parse as TOML" in event["message"]


def test_the_charts_rbac_allows_nothing_more(api: Api, kubeconfig_for: Callable[[str], Path]) -> None:
    installer_kubeconfig = kubeconfig_for("node-a")

    def can(*args: str) -> bool:
        done = subprocess.run([str(KUBECTL), "--kubeconfig", str(installer_kubeconfig), "auth", "can-i", *args],
                              capture_output=True, text=True, timeout=60, check=False)
        return done.stdout.strip() == "yes"

    assert can("patch", "nodes") and can("create", "events", "-n", "default")
    assert can("get", "daemonsets/wasm-shim", "-n", NAMESPACE)
    assert not can("get", "nodes") and not can("delete", "nodes") and not can("get", "secrets", "-A")
    assert not can("create", "events", "-n", "kube-system") and not can("get", "daemonsets/other", "-n", NAMESPACE)
    assert not can("create", "pods", "-n", NAMESPACE)
    # The restart slots: read and update, by name only (node-restriction.yaml narrows the update to its node).
    assert can("update", "leases/wasm-shim-restart-0", "-n", NAMESPACE)
    assert not can("update", "leases/other", "-n", NAMESPACE) and not can("create", "leases", "-n", NAMESPACE)
    # Nothing a node agent would use either: leases (node heartbeats), node status, events in the newer API group.
    assert not can("create", "leases", "-n", "kube-node-lease") and not can("get", "leases", "-A")
    assert not can("patch", "nodes", "--subresource", "status") and not can("update", "nodes")
    assert not can("create", "events.events.k8s.io", "-n", "default")
    assert not can("list", "configmaps", "-n", NAMESPACE) and not can("get", "serviceaccounts/token", "-A")


def run_until_sigterm(kubeconfig: Path, root: Path, node: str, bundle: Path) -> subprocess.CompletedProcess[str]:
    """`node run` as the DaemonSet's container: install, then SIGTERM once installed."""
    proc = subprocess.Popen(
        [str(WASM_SHIM), "node", "run", "--host-root", str(root), "--node-root", str(root), "--node-name", node,
         "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE, "--no-restart", "--bundle", str(bundle),
         "--uninstall-on-delete", "wasm-shim"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded: install ends (or fails and the process exits)
            lines.append(line)
            if line.startswith("wasm-shim node: installed"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err)


def test_run_uninstalls_only_when_its_daemonset_is_being_deleted(
    api: Api, kubeconfig_for: Callable[[str], Path], tmp_path: Path
) -> None:
    installer_kubeconfig = kubeconfig_for("node-c")
    api.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "wasm-shim", "namespace": NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
            "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}))
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    before = snapshot(root)
    bundle = make_bundle(tmp_path)
    # An upgrade or an eviction: the DaemonSet stays, so the node stays installed and labelled.
    kept = run_until_sigterm(installer_kubeconfig, root, "node-c", bundle)
    assert kept.returncode == 0, kept.stderr
    assert "leaving the node installed" in kept.stdout
    assert api.node("node-c")["metadata"]["labels"]["wasm.shim.io/runtime"] == "ready"
    # helm uninstall: the pre-delete hook deletes the DaemonSet in the foreground (no garbage collector runs here,
    # so it keeps its deletionTimestamp), then the pod's SIGTERM puts the node back.
    api.kubectl("delete", "daemonset", "wasm-shim", "-n", NAMESPACE, "--cascade=foreground", "--wait=false")
    gone = run_until_sigterm(installer_kubeconfig, root, "node-c", bundle)
    assert gone.returncode == 0, gone.stderr
    assert "is being deleted: uninstalling" in gone.stdout
    assert "could not" not in gone.stderr, gone.stderr
    assert snapshot(root) == before
    assert "wasm.shim.io/runtime" not in (api.node("node-c")["metadata"].get("labels") or {})


def test_failed_upgrade_keeps_the_node_ready_and_says_why(api: Api, kubeconfig_for: Callable[[str], Path],
                                                          tmp_path: Path) -> None:
    installer_kubeconfig = kubeconfig_for("node-c")
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    bundle = str(make_bundle(tmp_path))
    done = run_node(installer_kubeconfig, root, "node-c", "install", "--bundle", bundle)
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "policy"
    bad.mkdir()
    (bad / "policy.toml").write_text('default = "maybe"\n')
    again = run_node(installer_kubeconfig, root, "node-c", "install", "--bundle", bundle, "--policy-dir", str(bad))
    assert again.returncode == 1 and "0.1.0-fixture stays installed" in again.stderr, again.stderr
    assert "could not" not in again.stderr, again.stderr
    meta = api.node("node-c")["metadata"]
    assert meta["labels"]["wasm.shim.io/runtime"] == "ready"  # it still runs the version it had
    reason = meta["annotations"]["wasm.shim.io/runtime-reason"]
    assert reason.startswith("upgrade failed, 0.1.0-fixture still installed:") and "default must be" in reason
    (event,) = api.events("WasmShimUpgradeFailed")
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "node-c"
    assert run_node(installer_kubeconfig, root, "node-c", "uninstall").returncode == 0


def as_installer(api: Api, kubeconfig_path: Path, call: Callable[[Any], object]) -> str:
    """Run `call(CoreV1Api)` with the token in `kubeconfig_path`; "" when the API server allowed it, else its
    refusal (status code and message)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig_path), client_configuration=configuration)
    configuration.verify_ssl = True
    configuration.ssl_ca_cert = str(api.ca)
    api_client = client.ApiClient(configuration)
    try:
        call(client.CoreV1Api(api_client))
    except ApiException as exc:
        return f"{exc.status} {json.loads(exc.body).get('message', '') if exc.body else exc.reason}"
    finally:
        api_client.close()
    return ""


def node_event(node: str, component: str = "wasm-shim-installer") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{node}.wasm-shim.", "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": node, "apiVersion": "v1"},
            "reason": "WasmShimPolicyTest", "message": "x", "type": "Normal",
            "source": {"component": component, "host": node}}


def test_one_nodes_installer_token_cannot_change_another_node(api: Api, kubeconfig_for: Callable[[str], Path],
                                                              tmp_path: Path) -> None:
    # A compromised node holds its installer pod's token. RBAC alone lets it patch every Node; the chart's
    # policies narrow it to its own Node, and to our label and annotations there.
    node_a = kubeconfig_for("node-a")
    add_node(api, "node-d")
    api.kubectl("label", "node", "node-a", "team=blue", "--overwrite")

    def patch(config: Path, node: str, body: dict[str, Any]) -> str:
        return as_installer(api, config, lambda core: core.patch_node(node, body))

    other = patch(node_a, "node-d", {"metadata": {"labels": {"wasm.shim.io/runtime": "ready"}}})
    assert other.startswith("403 ") and \
        "the wasm-shim installer on node node-a may change only its own Node, not node-d" in other, other
    assert "wasm.shim.io/runtime" not in (api.node("node-d")["metadata"].get("labels") or {})
    # The installer itself, with that token, labelling node-d: refused too (its report says so), node-d untouched.
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    done = run_node(node_a, root, "node-d", "install", "--bundle", str(make_bundle(tmp_path)))
    assert "could not label on node node-d" in done.stderr and "may change only its own Node" in done.stderr
    assert "wasm.shim.io/runtime" not in (api.node("node-d")["metadata"].get("labels") or {})
    assert run_node(node_a, root, "node-d", "uninstall").returncode == 0

    own = patch(node_a, "node-a", {"metadata": {"labels": {"wasm.shim.io/runtime": "ready"},
                                                "annotations": {"wasm.shim.io/runtime-version": "v"}}})
    assert own == ""
    assert api.node("node-a")["metadata"]["labels"]["wasm.shim.io/runtime"] == "ready"
    for body, message in (
        ({"metadata": {"labels": {"team": "red"}}}, "may change only the label wasm.shim.io/runtime"),
        ({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}, "only the label"),
        ({"metadata": {"annotations": {"other": "x"}}}, "may change only the annotations"),
        ({"spec": {"unschedulable": True}}, "may not change a Node's spec"),
        ({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}, "may not change a Node's spec"),
    ):
        refused = patch(node_a, "node-a", body)
        assert refused.startswith("403 ") and message in refused, (body, refused)
    meta = api.node("node-a")
    assert meta["metadata"]["labels"]["team"] == "blue" and not meta["spec"].get("unschedulable")

    # Events: about its own Node, as the installer component; nothing else.
    def create(config: Path, event: dict[str, Any]) -> str:
        return as_installer(api, config, lambda core: core.create_namespaced_event("default", event))

    assert create(node_a, node_event("node-a")) == ""
    for event in (node_event("node-d"), node_event("node-a", component="kubelet")):
        refused = create(node_a, event)
        assert refused.startswith("403 ") and "may report events about its own Node only" in refused, refused

    # A token of the ServiceAccount that no pod on a node holds names no node: refused everything.
    token = api.kubectl("create", "token", "wasm-shim", "-n", NAMESPACE).stdout.strip()
    server = json.loads(api.admin.read_text())["clusters"][0]["cluster"]["server"]
    unbound = kubeconfig(tmp_path / "unbound.kubeconfig", server, token)
    refused = patch(unbound, "node-a", {"metadata": {"labels": {"wasm.shim.io/runtime": "ready"}}})
    assert refused.startswith("403 ") and "token names no node" in refused, refused
    assert create(unbound, node_event("node-a")).startswith("403 ")


def client_for(api: Api, kubeconfig: Path) -> Any:
    """A kubernetes ApiClient with the token of `kubeconfig`, verifying the API server by its certificate."""
    from kubernetes import client

    data = json.loads(kubeconfig.read_text())
    configuration = client.Configuration()
    configuration.host = data["clusters"][0]["cluster"]["server"]
    configuration.ssl_ca_cert = str(api.ca)
    configuration.api_key = {"authorization": f"Bearer {data['users'][0]['user']['token']}"}
    return client.ApiClient(configuration)


def slots_for(api: Api, kubeconfig: Path, node: str, **kwargs: Any) -> Any:
    """The restart slots as node `node`'s installer holds them (the chart's default: one slot)."""
    from wasm_shim.shim.node.restart_slots import RestartSlots

    return RestartSlots("wasm-shim-restart", 1, NAMESPACE, node, duration=kwargs.pop("duration", 300),
                        api_client=client_for(api, kubeconfig), **kwargs)


def test_one_restart_slot_lets_one_node_restart_at_a_time(api: Api, kubeconfig_for: Callable[[str], Path]) -> None:
    # The chart's Lease, RBAC and policy: node-a takes the one slot; node-b waits (here: gives up after its
    # timeout, naming the holder) until node-a gives it back, then takes it.
    from wasm_shim.shim.node.distributions import InstallError

    a = slots_for(api, kubeconfig_for("node-a"), "node-a")
    b = slots_for(api, kubeconfig_for("node-b"), "node-b", timeout=3)
    a.take()
    assert a.held == "wasm-shim-restart-0"
    lease = json.loads(api.kubectl("get", "lease", "wasm-shim-restart-0", "-n", NAMESPACE, "-o", "json").stdout)
    assert lease["spec"]["holderIdentity"] == "node-a" and lease["spec"]["leaseDurationSeconds"] == 300
    with pytest.raises(InstallError, match=r"no restart slot free after \d+ s \(wasm-shim-restart-0: held by "
                                            r"node-a\); nothing was changed"):
        b.take()
    a.take()  # its own slot: held already
    a.give_back()
    assert "holderIdentity" not in json.loads(api.kubectl(
        "get", "lease", "wasm-shim-restart-0", "-n", NAMESPACE, "-o", "json").stdout)["spec"]
    b.take()
    assert b.held == "wasm-shim-restart-0"
    b.give_back()


def test_a_slot_whose_holder_died_frees_itself(api: Api, kubeconfig_for: Callable[[str], Path]) -> None:
    a = slots_for(api, kubeconfig_for("node-a"), "node-a", duration=1)
    a.take()
    a.held = ""  # the pod died holding it: nobody gives it back
    b = slots_for(api, kubeconfig_for("node-b"), "node-b", timeout=60, sleep=lambda s: time.sleep(0.5))
    b.take()  # once node-a's leaseDurationSeconds have passed without a renewal
    assert json.loads(api.kubectl("get", "lease", "wasm-shim-restart-0", "-n", NAMESPACE, "-o", "json").stdout)[
        "spec"]["holderIdentity"] == "node-b"
    b.give_back()


def test_a_token_cannot_give_a_slot_to_another_node_or_free_anothers(
    api: Api, kubeconfig_for: Callable[[str], Path]
) -> None:
    # The policy <release>-own-slots: a compromised node cannot hand the slot to another node, nor free the slot
    # another node restarts under.
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    a = slots_for(api, kubeconfig_for("node-a"), "node-a")
    a.take()
    leases = client.CoordinationV1Api(client_for(api, kubeconfig_for("node-b")))
    try:
        for holder in ("node-c", None):
            lease = leases.read_namespaced_lease("wasm-shim-restart-0", NAMESPACE)
            lease.spec.holder_identity = holder
            with pytest.raises(ApiException) as refused:
                leases.replace_namespaced_lease("wasm-shim-restart-0", NAMESPACE, lease)
            assert refused.value.status == 403
            assert "the wasm-shim installer on node node-b may hold a restart slot only for itself and free only " \
                   "its own" in str(refused.value.body)
    finally:
        a.give_back()


def test_a_second_release_with_its_own_handler_labels_only_its_own_keys(api: Api, chart_rbac: str,
                                                                       tmp_path: Path) -> None:
    # A second release of the chart (handler wasm-b) beside the first on one node: its policy admits exactly its
    # own label and annotations (wasm.shim.io/runtime-wasm-b, ...), so the two installers never touch each
    # other's, and the first release's label stays as it was.
    namespace = "wasm-system-b"
    api.kubectl("create", "namespace", namespace)
    shown = [arg for template in CHART_RBAC for arg in ("--show-only", template)]
    rendered = subprocess.run(
        [str(HELM), "template", "wasm-b", str(REPO / "charts" / "wasm-shim"), "--namespace", namespace,
         "--kube-version", "1.37.2", "--set", "runtimeClass.handler=wasm-b", *shown],
        capture_output=True, text=True, timeout=60, check=True).stdout
    api.kubectl("apply", "-f", "-", stdin=rendered)
    add_node(api, "node-e")
    api.kubectl("label", "node", "node-e", "wasm.shim.io/runtime=ready", "--overwrite")  # the first release's
    api.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "installer-b", "namespace": namespace},
        "spec": {"serviceAccountName": "wasm-b-wasm-shim", "nodeName": "node-e",
                 "containers": [{"name": "installer", "image": "wasm-shim.local/installer:test"}]}}))
    uid = api.kubectl("get", "pod", "installer-b", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout.strip()
    token = api.kubectl("create", "token", "wasm-b-wasm-shim", "-n", namespace, "--bound-object-kind", "Pod",
                        "--bound-object-name", "installer-b", "--bound-object-uid", uid).stdout.strip()
    installer_kubeconfig = kubeconfig(tmp_path / "b.kubeconfig", chart_rbac, token)
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    done = subprocess.run(
        [str(WASM_SHIM), "node", "install", "--host-root", str(root), "--node-root", str(root), "--node-name",
         "node-e", "--kubeconfig", str(installer_kubeconfig), "--namespace", namespace, "--no-restart",
         "--handler", "wasm-b", "--runtime-type", "io.containerd.wasmb.v1", "--bundle", str(make_bundle(tmp_path))],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "could not" not in done.stderr, done.stderr  # its label, annotations and event were all admitted
    meta = api.node("node-e")["metadata"]
    assert meta["labels"]["wasm.shim.io/runtime-wasm-b"] == "ready"
    assert meta["labels"]["wasm.shim.io/runtime"] == "ready"  # the first release's, untouched
    assert meta["annotations"]["wasm.shim.io/runtime-version-wasm-b"] == "0.1.0-fixture"
    assert "wasm.shim.io/runtime-version" not in meta["annotations"]
    # Its token may not set the first release's label.
    refused = as_installer(api, installer_kubeconfig, lambda core: core.patch_node(
        "node-e", {"metadata": {"labels": {"wasm.shim.io/runtime": "failed"}}}))
    assert refused.startswith("403") and "may change only the label wasm.shim.io/runtime-wasm-b" in refused, refused
