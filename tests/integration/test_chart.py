"""charts/wasm-shim and k8s/ with the real `helm` (scripts/setup.sh builds it from the Go module proxy).

Rendered objects are checked against the Kubernetes API's own OpenAPI v3 schemas (lab/k8s_openapi.py,
k8s.io/kubernetes from the Go module cache); bad values must fail at render time naming the value; the chart
goes through `helm package` + `helm push` to Debian's docker-registry on loopback and back with `helm show` /
`helm template oci://...`. The DaemonSet's and the test hook's command lines are parsed by the real CLI parser,
so a flag the chart passes and `wasm-shim` lacks fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.cri_tools import LocalRegistry
from lab.k8s_openapi import K8S_VERSION, SchemaMissing, spec_dir, validate
from wasm_shim.shim.cli.main import build_parser
from wasm_shim.shim.engines.network import parse_network_grant
from wasm_shim.shim.node.containerd_config import validate_options

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "wasm-shim"
HELM_CANDIDATES = (REPO / ".tools" / "bin" / "helm", Path("~/.cache/wasm-shim/go/helm-v3.22.0/bin/helm").expanduser())

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def helm() -> str:
    for candidate in HELM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm is missing: run scripts/setup.sh (it builds helm v3.22.0 with go install)")
    return found


@pytest.fixture(scope="module", autouse=True)
def openapi() -> None:
    try:
        spec_dir()
    except SchemaMissing as exc:
        pytest.fail(str(exc))


def run_helm(helm: str, *args: str, home: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:  # registry logins and the cache stay in the test's directory
        env.update({"HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_DATA_HOME": str(home / "data"), "HELM_REGISTRY_CONFIG": str(home / "registry.json")})
    done = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, env=env, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done


def render(helm: str, *args: str, chart: str = str(CHART), home: Path | None = None) -> list[dict[str, Any]]:
    # --kube-version: the release whose API schemas we validate against (helm built by `go install` says 1.20).
    out = run_helm(helm, "template", "wasm-shim", chart, "--namespace", "wasm-system", "--kube-version", K8S_VERSION,
                   *args, home=home).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def assert_valid(objects: list[dict[str, Any]]) -> None:
    problems = [problem for obj in objects for problem in validate(obj)]
    assert problems == []


EVERY_VALUE = {
    "image": {"repository": "127.0.0.1:5000/wasm-shim/installer", "tag": "dev", "pullPolicy": "Never"},
    "imagePullSecrets": ["regcred"],
    "runtimeClass": {"create": True, "name": "wasm", "handler": "wasmtime-dev", "overhead": {"memory": "8Mi",
                     "cpu": "10m"}, "extraNodeSelector": {"pool": "wasm"},
                     "tolerations": [{"key": "wasm", "operator": "Exists", "effect": "NoSchedule"}]},
    "node": {"runtimeType": "io.containerd.wasmdev.v1", "shimBinary": "containerd-shim-wasmdev-v1",
             "layout": "containerd", "containerdConfig": "/etc/kind/containerd.toml", "restart": False,
             "restartCommand": "supervisorctl restart containerd", "criSocket": "/run/kind/containerd.sock",
             "restartTimeoutSeconds": 30, "maxConcurrentRestarts": 3, "prefix": "/opt/wasm", "binDir": "/opt/bin",
             "uninstallOnDelete": False},
    "shim": {"grouping": "pod", "idleTimeout": 60, "logLevel": "debug", "cacheDir": "/var/cache/wasm-shim",
             "metricsAddress": "127.0.0.1:9464", "artifactRegistries": ["ghcr.io/team", "127.0.0.1:5000"]},
    "warm": {"keepDaemon": True, "images": ["registry.example.com/team/app:v1"], "timeoutSeconds": 120},
    "nodeSelector": {"kubernetes.io/os": "linux", "wasm": "yes"},
    "tolerations": [{"operator": "Exists"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
    "resources": {"requests": {"cpu": "20m", "memory": "80Mi"}, "limits": {"memory": "300Mi"}},
    "priorityClassName": "system-node-critical",
    "podAnnotations": {"example.com/team": "wasm"},
    "terminationGracePeriodSeconds": 300,
    "maxUnavailable": "20%",
    "maxSurge": 0,
    "signaturePolicy": {"toml": 'default = "deny"\n[[rule]]\nimages = ["registry.example.com/*"]\n'
                                'keys = ["team.pub"]\n',
                        "keys": {"team.pub": "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n"}},
    "serviceAccount": {"create": False, "name": "wasm-installer", "restrictToOwnNode": True},
    "test": {"enabled": True, "command": ["/test/other.wasm"], "expect": "other"},
}


def spec_annotations(ds: dict[str, Any]) -> dict[str, str]:
    return ds["spec"]["template"]["metadata"]["annotations"]


def installer_argv(objects: list[dict[str, Any]]) -> list[str]:
    (ds,) = by_kind(objects, "DaemonSet")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    command: list[str] = container["command"]
    assert command[0] == "/bundle/bin/wasm-shim"
    return command[1:]


def test_lint(helm: str) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_defaults_render_valid_objects(helm: str) -> None:
    objects = render(helm)
    assert_valid(objects)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Role",
                            "RoleBinding", "ConfigMap", "Lease",
                            *["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 3,
                            "DaemonSet", "RuntimeClass", *["Pod", "ServiceAccount", "Role", "RoleBinding"] * 2, "Pod"])
    (ds,) = by_kind(objects, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert spec["containers"][0]["image"] == f"ghcr.io/wasm-shim/installer:{chart['appVersion']}"
    # Nothing beyond what the installer uses: one hostPath (/) and the policy ConfigMap, hostPID for nsenter,
    # privileged for setns.
    assert [v.get("hostPath", {}).get("path") or v["configMap"]["name"] for v in spec["volumes"]] == [
        "/", "wasm-shim-policy"]
    (policy,) = by_kind(objects, "ConfigMap")
    assert not policy.get("data")  # no policy: the installer writes an allow-all one
    # --wait means every selected node installed: a new installer is Ready before the old one goes.
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["hostPID"] is True and spec["containers"][0]["securityContext"] == {"privileged": True}
    assert "hostNetwork" not in spec
    # Opt-in: only the nodes an operator labelled, and only the bundle's platform (x86_64 Linux).
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                                    "wasm.shim.io/install": "true"}
    # One restart slot by default: one node restarts containerd at a time, on install, upgrade and uninstall.
    (slot,) = by_kind(objects, "Lease")
    assert (slot["metadata"]["name"], slot["metadata"]["namespace"], slot["spec"]) == (
        "wasm-shim-restart-0", "wasm-system", {})
    argv = installer_argv(objects)
    args = build_parser().parse_args(argv)
    assert (args.action, args.host_root, args.uninstall_on_delete, args.namespace, args.event_namespace) == (
        "run", "/host", "wasm-shim", "wasm-system", "default")
    assert (args.restart_slots, args.max_concurrent_restarts) == ("wasm-shim-restart", 1)
    assert (args.handler, args.runtime_type, args.shim_binary) == ("wasmtime", "io.containerd.wasmtime.v1",
                                                                   "containerd-shim-wasmtime-v1")
    events_role = next(r for r in by_kind(objects, "Role") if r["metadata"]["name"] == "wasm-shim-events")
    assert events_role["metadata"]["namespace"] == "default"
    # warm.keepDaemon (the default): a later idle_timeout=never wins over shim.idleTimeout, and the node is warmed.
    assert args.option == ["grouping=namespace", "idle_timeout=300", "log_level=info",
                           "cache_dir=/var/lib/wasm-shim/cache", "idle_timeout=never"]
    assert args.warm_timeout == 300
    assert args.policy_dir is None
    (rc,) = by_kind(objects, "RuntimeClass")
    assert rc["handler"] == "wasmtime" and rc["scheduling"]["nodeSelector"] == {"wasm.shim.io/runtime": "ready"}
    assert "overhead" not in rc
    rules = {r["metadata"]["name"]: [(tuple(rule["apiGroups"]), tuple(rule["resources"]), tuple(rule["verbs"]),
                                      tuple(rule.get("resourceNames", []))) for rule in r["rules"]]
             for r in objects if r["kind"] in ("ClusterRole", "Role")}
    assert rules == {
        "wasm-shim": [(("apps",), ("daemonsets",), ("get",), ("wasm-shim",)),
                      (("coordination.k8s.io",), ("leases",), ("get", "update"), ("wasm-shim-restart-0",))],
        "wasm-shim-events": [(("",), ("events",), ("create",), ())],
        "wasm-shim-test": [(("",), ("pods", "pods/log"), ("get",), ("wasm-shim-test-wasm",))],
        "wasm-shim-uninstall": [(("apps",), ("daemonsets",), ("get", "delete"), ("wasm-shim",))],
    }
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert cluster_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}]
    hook = next(p for p in by_kind(objects, "Pod") if p["metadata"]["name"] == "wasm-shim-uninstall")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    hook_args = build_parser().parse_args(hook["spec"]["containers"][0]["command"][1:])
    assert (hook_args.action, hook_args.daemonset, hook_args.namespace) == ("delete-daemonset", "wasm-shim",
                                                                              "wasm-system")
    probe = ds["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert build_parser().parse_args(probe[1:]).check is True


def test_the_installers_token_is_limited_to_its_own_node(helm: str) -> None:
    # RBAC grants `patch nodes` on every node; the policies (Kubernetes >= 1.30) bind it to the token's own node
    # and to our keys, for the chart's ServiceAccount only, failing closed. Behaviour: test_node_report.py (a real
    # API server) and e2e/test_chart.py (the installer pod's own token).
    objects = render(helm)
    policies = {p["metadata"]["name"]: p for p in by_kind(objects, "ValidatingAdmissionPolicy")}
    bindings = {b["metadata"]["name"]: b for b in by_kind(objects, "ValidatingAdmissionPolicyBinding")}
    assert sorted(policies) == sorted(bindings) == ["wasm-shim-own-events", "wasm-shim-own-node",
                                                    "wasm-shim-own-slots"]
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["failurePolicy"] == "Fail"
        assert spec["matchConditions"] == [{"name": "the-installer", "expression": 'request.userInfo.username == '
                                            '"system:serviceaccount:wasm-system:wasm-shim"'}]
        assert "authentication.kubernetes.io/node-name" in spec["variables"][0]["expression"]
        assert bindings[name]["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    rules = {name: [(r["resources"], r["operations"]) for r in p["spec"]["matchConstraints"]["resourceRules"]]
             for name, p in policies.items()}
    assert rules == {"wasm-shim-own-node": [(["nodes"], ["UPDATE"])],
                     "wasm-shim-own-events": [(["events"], ["CREATE"])],
                     "wasm-shim-own-slots": [(["leases"], ["UPDATE"])]}
    # What RBAC grants, each rule narrowed by a policy.
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert [r["resources"] for r in cluster_role["rules"]] == [["nodes"]]
    # A named ServiceAccount is the one the policies name.
    named = render(helm, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=installer")
    assert all('"system:serviceaccount:wasm-system:installer"' in p["spec"]["matchConditions"][0]["expression"]
               for p in by_kind(named, "ValidatingAdmissionPolicy"))
    # Before 1.30 the token names no node: no policies (RBAC alone); and they can be turned off.
    old = run_helm(helm, "template", "wasm-shim", str(CHART), "--namespace", "wasm-system", "--kube-version",
                   "1.29.0").stdout
    assert "ValidatingAdmissionPolicy" not in old
    off = render(helm, "--set", "serviceAccount.restrictToOwnNode=false")
    assert by_kind(off, "ValidatingAdmissionPolicy") == [] == by_kind(off, "ValidatingAdmissionPolicyBinding")


def test_every_value_renders_valid_objects(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps(EVERY_VALUE))
    objects = render(helm, "-f", str(values))
    assert_valid(objects)
    assert by_kind(objects, "ServiceAccount") == [o for o in by_kind(objects, "ServiceAccount")
                                                   if o["metadata"]["name"].endswith("-test")]
    (ds,) = by_kind(objects, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "127.0.0.1:5000/wasm-shim/installer:dev"
    assert spec["serviceAccountName"] == "wasm-installer"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "20%", "maxSurge": 0}
    args = build_parser().parse_args(installer_argv(objects))
    (policy,) = by_kind(objects, "ConfigMap")
    assert policy["data"] == {"policy.toml": EVERY_VALUE["signaturePolicy"]["toml"],
                              "team.pub": EVERY_VALUE["signaturePolicy"]["keys"]["team.pub"]}
    assert args.policy_dir == "/etc/wasm-shim-policy"
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "signature-policy")
    assert mount == {"name": "signature-policy", "mountPath": args.policy_dir, "readOnly": True}
    # The policy's checksum is in the pod template, so a new policy rolls the installers that write it.
    default_ds = by_kind(render(helm), "DaemonSet")[0]
    annotation = "wasm.shim.io/signature-policy-sha256"
    assert spec_annotations(ds)[annotation] != spec_annotations(default_ds)[annotation]
    assert spec_annotations(ds)["example.com/team"] == "wasm"
    assert (args.layout, args.containerd_config, args.no_restart, args.restart_command, args.cri_socket,
            args.restart_timeout, args.prefix, args.bin_dir, args.uninstall_on_delete) == (
        "containerd", "/etc/kind/containerd.toml", True, "supervisorctl restart containerd",
        "/run/kind/containerd.sock", 30.0, "/opt/wasm", "/opt/bin", None)
    assert args.option == ["grouping=pod", "idle_timeout=60", "log_level=debug", "cache_dir=/var/cache/wasm-shim",
                           "metrics_address=127.0.0.1:9464", "artifact_registries=ghcr.io/team,127.0.0.1:5000",
                           "idle_timeout=never", "warm_images=registry.example.com/team/app:v1"]
    assert args.warm_timeout == 120
    assert validate_options(dict(option.split("=", 1) for option in args.option))  # as the installer checks them
    (rc,) = by_kind(objects, "RuntimeClass")
    assert rc["metadata"]["name"] == "wasm" and rc["handler"] == "wasmtime-dev"
    assert rc["overhead"] == {"podFixed": {"memory": "8Mi", "cpu": "10m"}}
    assert args.max_concurrent_restarts == 3
    assert sorted(lease["metadata"]["name"] for lease in by_kind(objects, "Lease")) == [
        f"wasm-shim-restart-{i}" for i in range(3)]
    # Another handler's label: two releases on one node never touch each other's (shim/node/distributions.py).
    assert rc["scheduling"]["nodeSelector"] == {"wasm.shim.io/runtime-wasmtime-dev": "ready", "pool": "wasm"}
    assert (args.handler, args.runtime_type, args.shim_binary) == ("wasmtime-dev", "io.containerd.wasmdev.v1",
                                                                   "containerd-shim-wasmdev-v1")
    pods = {p["metadata"]["name"]: p for p in by_kind(objects, "Pod")}
    assert pods["wasm-shim-test-wasm"]["spec"]["runtimeClassName"] == "wasm"
    assert pods["wasm-shim-test-wasm"]["spec"]["containers"][0]["command"] == ["/test/other.wasm"]
    check = pods["wasm-shim-test-log"]["spec"]["containers"][0]["command"]
    check_args = build_parser().parse_args(check[1:])
    assert (check_args.action, check_args.pod, check_args.expect) == ("check-log", "wasm-shim-test-wasm", "other")


def test_optional_parts_can_be_turned_off(helm: str) -> None:
    objects = render(helm, "--set", "runtimeClass.create=false", "--set", "test.enabled=false")
    assert by_kind(objects, "RuntimeClass") == []
    assert [p["metadata"]["name"] for p in by_kind(objects, "Pod")] == ["wasm-shim-uninstall"]
    assert_valid(objects)
    kept = render(helm, "--set", "node.uninstallOnDelete=false")
    assert "wasm-shim-uninstall" not in {o["metadata"]["name"] for o in kept}
    assert build_parser().parse_args(installer_argv(kept)).uninstall_on_delete is None
    assert_valid(objects)


BAD_VALUES = {
    "shim.grouping=sometimes": "grouping",
    "shim.logLevel=loud": "logLevel",
    "shim.idleTimeout=soon": "idleTimeout",
    "shim.cacheDir=relative/cache": "cacheDir",
    "shim.metricsAddress=0.0.0.0:9464": "metricsAddress",
    "shim.artifactRegistries={https://ghcr.io/team}": "artifactRegistries",
    "shim.bogus=1": "bogus",
    "node.layout=docker": "layout",
    "node.restartTimeoutSeconds=0": "restartTimeoutSeconds",
    "node.prefix=opt": "prefix",
    "node.prefix=/opt": "prefix",
    "node.prefix=/": "prefix",
    "serviceAccount.restrictToOwnNode=maybe": "restrictToOwnNode",
    "image.pullPolicy=Sometimes": "pullPolicy",
    "runtimeClass.overhead.disk=1Gi": "disk",
    "runtimeClass.name=Not_A_Name": "name",
    "resources.limits.memory=lots": "memory",
    "tolerations=none": "tolerations",
    "signaturePolicy.keys.policy\\.toml=-----BEGIN PUBLIC KEY-----": "policy.toml",
    "signaturePolicy.keys.team\\.pub=not a key": "team.pub",
    "signaturePolicy.rules=x": "rules",
    "maxUnavailable=-1": "maxUnavailable",
    "unknownTopLevel=1": "unknownTopLevel",
}


@pytest.mark.parametrize("assignment", sorted(BAD_VALUES))
def test_bad_values_fail_naming_the_value(helm: str, assignment: str) -> None:
    done = run_helm(helm, "template", "wasm-shim", str(CHART), "--kube-version", K8S_VERSION, "--set", assignment,
                    check=False)
    assert done.returncode != 0, f"{assignment} was accepted"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert BAD_VALUES[assignment] in done.stderr


def test_k8s_runtimeclass_is_the_charts(helm: str) -> None:
    (chart_rc,) = by_kind(render(helm), "RuntimeClass")
    chart_rc["metadata"].pop("labels")
    ours = yaml.safe_load((REPO / "k8s" / "runtimeclass.yaml").read_text())
    assert ours == chart_rc
    assert_valid([ours])


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs an object carries: a Pod's own, a workload's template; none for a Service."""
    if obj["kind"] == "Pod":
        yield obj["spec"]
    elif "template" in obj["spec"]:
        yield obj["spec"]["template"]["spec"]


def test_k8s_examples_are_valid_and_use_the_charts_runtimeclass(helm: str) -> None:
    (chart_rc,) = by_kind(render(helm), "RuntimeClass")
    examples = sorted((REPO / "k8s" / "examples").glob("*.yaml"))
    kinds = set()
    for path in examples:
        objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert_valid(objects)
        for obj in objects:
            kinds.add(obj["kind"])
            for spec in _pod_specs(obj):
                assert spec["runtimeClassName"] == chart_rc["metadata"]["name"], path.name
            if not any(True for _ in _pod_specs(obj)):
                continue  # a Service beside its Deployment: validated above, runs nothing
            annotations = ((obj["spec"].get("template") or obj).get("metadata") or {}).get("annotations") or {}
            if "wasm.shim.io/network" in annotations:
                kinds.add("network grant")
                assert parse_network_grant(annotations).rules, path.name  # the shim's own parser accepts it
            if any(c.get("restartPolicy") == "Always" for s in _pod_specs(obj) for c in s.get("initContainers", [])):
                kinds.add("native sidecar")
    assert {"Deployment", "Job", "Pod", "network grant", "native sidecar"} <= kinds


def test_package_push_and_render_from_an_oci_registry(helm: str, tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry").start()
    try:
        run_helm(helm, "package", str(CHART), "--destination", str(tmp_path), home=tmp_path)
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        package = tmp_path / f"wasm-shim-{chart['version']}.tgz"
        assert package.is_file()
        pushed = run_helm(helm, "push", str(package), f"oci://{registry.address}/charts", "--plain-http",
                          home=tmp_path)
        assert "Digest: sha256:" in pushed.stdout + pushed.stderr
        ref = f"oci://{registry.address}/charts/wasm-shim"
        shown = run_helm(helm, "show", "chart", ref, "--version", chart["version"], "--plain-http", home=tmp_path)
        assert yaml.safe_load(shown.stdout)["appVersion"] == chart["appVersion"]
        values = run_helm(helm, "show", "values", ref, "--version", chart["version"], "--plain-http", home=tmp_path)
        assert yaml.safe_load(values.stdout) == yaml.safe_load((CHART / "values.yaml").read_text())
        remote = render(helm, "--version", chart["version"], "--plain-http", chart=ref, home=tmp_path)
        assert remote == render(helm)
        bad = run_helm(helm, "template", "wasm-shim", ref, "--version", chart["version"], "--plain-http",
                       "--kube-version", K8S_VERSION,
                       "--set", "shim.grouping=sometimes", home=tmp_path, check=False)
        assert bad.returncode != 0 and "grouping" in bad.stderr  # the schema travels with the package
    finally:
        registry.stop()


def test_the_schema_check_catches_what_an_api_server_would_reject(helm: str) -> None:
    (ds,) = by_kind(render(helm), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    spec["hostPID"] = "yes"
    spec["containers"][0]["securityContext"]["privilegd"] = True
    spec["volumes"][0]["hostPath"].pop("path")
    ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = 1.5
    problems = validate(ds)
    assert any(".spec.template.spec.hostPID: must be boolean" in p for p in problems), problems
    assert any("securityContext: unknown field 'privilegd'" in p for p in problems), problems
    assert any("hostPath: missing required field 'path'" in p for p in problems), problems
    assert any("maxUnavailable: matches none of oneOf" in p for p in problems), problems
    assert len(problems) == 4, problems


def test_policy_keys_without_a_policy_are_refused(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"signaturePolicy": EVERY_VALUE["signaturePolicy"] | {"toml": ""}}))
    done = run_helm(helm, "template", "wasm-shim", str(CHART), "--kube-version", K8S_VERSION, "-f", str(values),
                    check=False)
    assert done.returncode != 0
    assert "signaturePolicy.keys is set but signaturePolicy.toml is empty" in done.stderr


def parent_chart(work: Path, values: dict[str, Any]) -> Path:
    """A chart of an operator's own that depends on ours (file://, as from a registry), with `values`."""
    parent = work / "platform"
    parent.mkdir()
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "wasm-shim", "version": yaml.safe_load((CHART / "Chart.yaml").read_text())[
            "version"], "repository": f"file://{CHART}"}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump(values))
    return parent


def test_the_chart_renders_as_a_subchart_with_global_values(helm: str, tmp_path: Path) -> None:
    # helm hands a subchart the parent's `global` values: the schema must accept them (else "additional
    # properties 'global' not allowed"). Names follow the parent's release, and nameOverride/fullnameOverride
    # and podLabels work as the Helm conventions say.
    parent = parent_chart(tmp_path, {"global": {"imageRegistry": "registry.example.com"},
                                     "wasm-shim": {"podLabels": {"team": "platform"}}})
    run_helm(helm, "dependency", "build", str(parent), home=tmp_path)
    objects = render(helm, chart=str(parent), home=tmp_path)
    assert_valid(objects)
    (ds,) = by_kind(objects, "DaemonSet")
    assert ds["metadata"]["name"] == "wasm-shim"  # release "wasm-shim" holds the chart's name
    assert ds["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    assert "team" not in ds["spec"]["selector"]["matchLabels"]
    named = render(helm, "--set", "nameOverride=wasmrt", chart=str(CHART))
    assert by_kind(named, "DaemonSet")[0]["metadata"]["name"] == "wasm-shim-wasmrt"
    assert by_kind(named, "DaemonSet")[0]["metadata"]["labels"]["app.kubernetes.io/name"] == "wasmrt"
    full = render(helm, "--set", "fullnameOverride=wasm-node", chart=str(CHART))
    assert {o["metadata"]["name"] for o in by_kind(full, "DaemonSet") + by_kind(full, "Lease")} == {
        "wasm-node", "wasm-node-restart-0"}
    args = build_parser().parse_args(installer_argv(full))
    assert (args.uninstall_on_delete, args.restart_slots) == ("wasm-node", "wasm-node-restart")


def test_the_charts_readme_lists_every_value_and_artifact_hub_its_image(helm: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "chart-values-table.py"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    images = yaml.safe_load(chart["annotations"]["artifacthub.io/images"])
    assert [i["image"] for i in images] == [f"{values['image']['repository']}:{chart['appVersion']}"]
    assert chart["annotations"]["artifacthub.io/license"] == "Apache-2.0"


def test_warm_values_reach_the_installer(helm: str) -> None:
    """warm.images become the warm_images option; warm.keepDaemon false leaves shim.idleTimeout alone and, with no
    images, no warm-up at all; a reference with a space fails the schema with the key's name."""
    objects = render(helm, "--set", "warm.images={reg.example.com/a:1,reg.example.com/b:2}",
                     "--set", "warm.timeoutSeconds=60")
    args = build_parser().parse_args(installer_argv(objects))
    assert "warm_images=reg.example.com/a:1,reg.example.com/b:2" in args.option and args.warm_timeout == 60
    cold = build_parser().parse_args(installer_argv(render(helm, "--set", "warm.keepDaemon=false")))
    assert "idle_timeout=never" not in cold.option and cold.warm_timeout == 0
    bad = run_helm(helm, "template", "x", str(CHART), "--kube-version", K8S_VERSION,
                   "--set", "warm.images={with space}", check=False)
    assert bad.returncode != 0 and "/warm/images/0" in bad.stderr
