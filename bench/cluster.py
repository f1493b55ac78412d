"""The cluster figure: 0 -> N replicas of a wasm server vs busybox under runc on one real kubelet.

`python -m bench.cluster` (`make bench-cluster`) brings up its own two-node cluster (e2e/cluster, in a temp state
directory, so a cluster started by a person or the e2e suite is left alone), puts the shim on node-a the way
e2e/conftest.py's `shim_on_node_a` fixture does (link, `wasm-shim containerd-config --merge`, restart containerd, the
RuntimeClass, the node label), measures, and always tears the cluster down again. `measure()` is the figure itself
and needs only a cluster with the shim on the node; e2e/test_bench_cluster.py runs it on the e2e session cluster.

The shim goes on with the options `wasm-shim node install` writes by default (the chart's warm.keepDaemon: the daemon
never idles out) and with the wasm server's image in `warm_images`. For each variant in turn on the same node
(runc; then wasm "cold": the node made fresh — no shim daemon, an empty compiled cache — and the pods arriving
without the installer's warm-up, so the first ones pay the daemon's start and the compile; then wasm "after install":
the node made fresh again, then the installer's warm-up (shim/node/warmup.py: the daemon started through CRI, the
image compiled) as `helm install` runs it; then wasm "warm": the daemon up and the component compiled; then the
module; then runc, wasm warm and the module again with automountServiceAccountToken: false, compared with each
other: the kubelet sets up and waits for the token's projected volume before it asks for a sandbox, polling every
300 ms, a wait every runtime pays alike),
a Deployment pinned to the node, created at 0 replicas, is scaled to N; a watch on its pods, opened at the
list's resourceVersion before the scale, timestamps on the client (time.monotonic, milliseconds) when each pod
is first seen and first reported Ready. Measured:
- all Ready: the scale request sent -> the last pod seen Ready (client clock);
- machine CPU per pod: the busy CPU time of all cores over the same span (/proc/stat), / N: with every pod
  started at once the scale-up is bound by the machine's CPU, so this says where a runtime can still gain; of it,
  the node's runtime processes' and containerd's (each /proc/PID/stat's utime + stime + cutime + cstime, over the
  same span; a process new since its start counts whole);
- the timeline, seconds after the scale request: the last pod first seen (the controller's creates), the last pod
  seen bound to the node (the scheduler), the first pod seen Ready; and the seconds the kubelet's own API client
  waited on its rate limit meanwhile (its /metrics through the API server's node proxy). Together they say whether
  the scale-up waits on the control plane's pacing or on the node's CPU;
- per-pod latency: pod first seen -> Ready seen (client clock), and, apart, the API's own creationTimestamp ->
  Ready condition lastTransitionTime (both have 1-second resolution, so that row is coarse);
- memory per pod once all are Ready: PSS (/proc/PID/smaps_rollup) summed over the node's runtime processes
  (every descendant of the node's PID 1 except containerd, the kubelet, kube-proxy and the kubelet's and
  kube-proxy's own children: shims, our daemon, component runners, pause and container processes), and
  containerd's PSS, each minus its value at the idle baseline just before the scale-up, divided by N.
Then the Deployment is scaled to 0 and the figure waits (bounded) until its pods are gone before the next variant.

Invariants: every wait is bounded in time; the watch thread ends by its own timeout at the latest; nothing here
parses kubectl output (the `kubernetes` client only); the Deployments are deleted even when a step fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.cluster import cluster as cl
from lab.cluster import images
from lab.cluster.topology import NODE_SUPPORT_DIR

from . import report
from .figure import Figure, Row, timed
from .machine import describe, load_average
from .stats import ratio, summarize
from .testbed import pss_kib

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
NODE = "node-a"
REPLICAS = 50
QUICK_REPLICAS = 5
READY_TIMEOUT = 600.0  # seconds for N pods to become Ready on a busy 2-core machine
MAX_WATCH_RESTARTS = 20  # a watch stream that ends early is opened again, this many times at most
GONE_TIMEOUT = 300.0  # seconds for N pods to go after the scale-down
SETTLE_SECONDS = 3.0  # after all Ready / all gone, before PSS is read (shims finish their start-up / exit)
INFRA = ("containerd", "kubelet", "kube-proxy")  # the node's own processes (basename of argv[0] starts with one)
CONFIG = "/etc/containerd/config.toml"
SHIM_LINK = "/usr/local/bin/containerd-shim-wasmtime-v1"
WASM_GOAL_TIME = 0.5  # the goal: all Ready in at most half of runc's time
WASM_GOAL_MEMORY = 0.25  # the goal: at most a quarter of runc's memory per pod


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: a pod template for the same node."""

    label: str
    runtime_class: str | None
    image: str
    command: list[str] | None = None
    args: list[str] | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    prepare: str = ""  # "fresh": no daemon, empty cache before the scale-up; "installed": fresh, then the warm-up
    token: bool = True  # the pods get their service account token (a projected volume the kubelet waits for)


RUNC = Variant("runc, busybox httpd", None, images.BUSYBOX, command=["/bin/busybox", "httpd", "-f", "-p", "8080"])
# A fresh node: no shim daemon, the component not yet compiled (the runner compiles it at first start).
WASM = Variant("wasm-shim cold", "wasmtime", images.WASM_NET, args=["listen", "0.0.0.0", "8080", "0"],
               annotations={"wasm.shim.io/network": "tcp-listen=*:8080"}, prepare="fresh")
# A fresh node after the installer's warm-up: the first pod after `helm install`.
WASM_INSTALLED = dataclasses.replace(WASM, label="wasm-shim after install", prepare="installed")
# Right after: the daemon up (never idles out) and the compiled component in the node's cache.
WASM_WARM = dataclasses.replace(WASM, label="wasm-shim warm", prepare="")
# Not a server: a core-wasm module (the sleep guest) runs as a thread of the daemon, not in a runner process;
# it shows what the per-pod memory is without a process per guest.
WASM_MODULE = Variant("wasm-shim module (sleep)", "wasmtime", images.WASM_SLEEP, args=["3600"])
# The same pods without the service account token (automountServiceAccountToken: false): no volume for the kubelet
# to set up and wait for (its wait polls every 300 ms), for runc and wasm alike; compared with each other.
RUNC_NO_TOKEN = dataclasses.replace(RUNC, label="runc, busybox httpd, no token volume", token=False)
WASM_WARM_NO_TOKEN = dataclasses.replace(WASM_WARM, label="wasm-shim warm, no token volume", token=False)
WASM_MODULE_NO_TOKEN = dataclasses.replace(WASM_MODULE, label="wasm-shim module (sleep), no token volume",
                                           token=False)
VARIANTS = (RUNC, WASM, WASM_INSTALLED, WASM_WARM, WASM_MODULE, RUNC_NO_TOKEN, WASM_WARM_NO_TOKEN,
            WASM_MODULE_NO_TOKEN)
WARM_GOAL = 1.2  # the first pods after install within 1.2x of warm ones
SHIM_OPTIONS = ("idle_timeout=never", f"warm_images={images.WASM_NET}")  # the installer's keep-warm, this image


@dataclass
class ScaleResult:
    """What one 0 -> N scale-up of one variant measured."""

    variant: Variant
    replicas: int
    all_ready_s: float = math.nan
    per_pod_watch_s: list[float] = field(default_factory=list)
    per_pod_api_s: list[float] = field(default_factory=list)
    runtime_kib: float = math.nan  # PSS growth of the node's runtime processes, all pods
    containerd_kib: float = math.nan
    runtime_processes: int = 0
    gone_s: float = math.nan
    watch_restarts: int = 0
    first_pod_events: str = ""  # the first Ready pod's events, seconds after its creation (where its time went)
    cpu_s: float = math.nan  # the machine's busy CPU time (all cores) from the scale request to all Ready
    runtime_cpu_s: float = math.nan  # of which the node's runtime processes (self and waited-for children)
    containerd_cpu_s: float = math.nan  # and containerd's (self and children: CNI plugins, shim `start` execs)
    # The scale-up's timeline, seconds after the scale request (client clock): where the wall time went.
    last_created_s: float = math.nan  # the last pod first seen (the ReplicaSet controller's creates)
    last_scheduled_s: float = math.nan  # the last pod seen bound to the node (the scheduler)
    first_ready_s: float = math.nan  # the first pod seen Ready (the kubelet and the runtime, all pods at once)
    kubelet_throttled_s: float = math.nan  # the kubelet's API client's own rate-limiter waits over the scale-up
    error: str = ""


def machine_busy_s() -> float:
    """CPU seconds every core of this machine has spent busy since boot (/proc/stat's first line, all but idle and
    iowait): the node, the control plane, the client and anything else alike."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


# --- the node's processes -----------------------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def _program(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return ""
    return os.path.basename(argv0)


def node_processes(state: cl.State, node: str) -> tuple[list[int], list[int]]:
    """(runtime processes, containerd processes) of a node, as machine PIDs (see the module docstring)."""
    pid1 = cl.node_pid1(state, cl.node_by_name(node))
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    runtime: list[int] = []
    containerd: list[int] = []
    stack = list(children.get(pid1, []))
    for _ in range(100_000):  # bounded walk of the node's process tree
        if not stack:
            break
        pid = stack.pop()
        program = _program(pid)
        infra = next((name for name in INFRA if program.startswith(name) and "shim" not in program), None)
        if infra == "containerd":
            containerd.append(pid)
            stack.extend(children.get(pid, []))  # shims may be its children (containerd is a subreaper)
        elif infra is None:
            runtime.append(pid)
            stack.extend(children.get(pid, []))
        # kubelet and kube-proxy, with whatever they run (iptables, mount), are not the runtime's
    return runtime, containerd


def process_cpu_s(pids: list[int]) -> dict[tuple[int, int], float]:
    """CPU seconds each of ``pids`` has used (utime + stime) plus its waited-for children's (cutime + cstime), keyed
    by (pid, start time) so a reused pid is a new process; a process gone meanwhile is left out."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[(pid, int(fields[19]))] = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return found


def cpu_since(before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]) -> float:
    """What the processes of ``after`` used since ``before`` (a process new since then: all it used)."""
    return sum(used - before.get(key, 0.0) for key, used in after.items())


def node_pss_kib(state: cl.State, node: str) -> tuple[int, int, int]:
    """(PSS of the runtime processes, PSS of containerd, how many runtime processes), in KiB."""
    runtime, containerd = node_processes(state, node)
    return sum(pss_kib(p) for p in runtime), sum(pss_kib(p) for p in containerd), len(runtime)


THROTTLE_METRIC = "rest_client_rate_limiter_duration_seconds_sum"


def kubelet_throttled_s(api: object, node: str) -> float:
    """The seconds the node's kubelet has waited on its own API client's rate limiter since it started (the sum of
    THROTTLE_METRIC over every verb and host, from the kubelet's /metrics through the API server's node proxy);
    NaN when the metrics cannot be read. A wait there delays a pod's status (Ready) on its way to the API server."""
    from kubernetes import client
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = client.CoreV1Api(api).connect_get_node_proxy_with_path(node, "metrics")  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - a diagnostic row only; the figure goes on without it
        return math.nan
    samples = [sample.value for family in text_string_to_metric_families(str(text)) for sample in family.samples
               if sample.name == THROTTLE_METRIC]
    return math.fsum(samples) if samples else math.nan


# --- one scale-up ---------------------------------------------------------------------------------------------------


def _deployment(name: str, variant: Variant, node: str) -> object:
    from kubernetes import client

    container = client.V1Container(
        name="server", image=variant.image, image_pull_policy="Never", command=variant.command, args=variant.args,
        ports=[client.V1ContainerPort(container_port=8080)],
        resources=client.V1ResourceRequirements(limits={"memory": "128Mi"}))
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1DeploymentSpec(
            replicas=0, selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}, annotations=variant.annotations or None),
                spec=client.V1PodSpec(
                    runtime_class_name=variant.runtime_class, termination_grace_period_seconds=1,
                    automount_service_account_token=None if variant.token else False,
                    node_selector={"kubernetes.io/hostname": node}, containers=[container]))))


def _ready(pod: object) -> object | None:
    for condition in (getattr(pod.status, "conditions", None) or []):  # type: ignore[attr-defined]
        if condition.type == "Ready" and condition.status == "True":
            return condition
    return None


class PodWatch:
    """A watch on one Deployment's pods from a given resourceVersion: client times of first sight, of being bound to
    a node and of Ready."""

    def __init__(self, core: object, selector: str, resource_version: str, timeout: float) -> None:
        from kubernetes import watch

        self.seen: dict[str, float] = {}
        self.scheduled: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.api_latency: dict[str, float] = {}
        self.changed = threading.Condition()
        self._watch = watch.Watch()
        self._selector = selector
        self._resource_version = resource_version
        self._deadline = time.monotonic() + timeout
        self._stopped = False
        self.restarts = 0
        self._core = core
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A watch stream can end before its timeoutSeconds (seen here under load 20+: the API server or the relay
        # closed it): open it again from the last resourceVersion seen, a bounded number of times.
        try:
            for _ in range(MAX_WATCH_RESTARTS + 1):
                left = self._deadline - time.monotonic()
                if left <= 1 or self._stopped:
                    break
                for event in self._watch.stream(  # type: ignore[attr-defined]
                        self._core.list_namespaced_pod, namespace=NAMESPACE,  # type: ignore[attr-defined]
                        label_selector=self._selector, resource_version=self._resource_version,
                        timeout_seconds=int(left), _request_timeout=left + 10):
                    self._record(event["object"], time.monotonic())
                self._resource_version = self._watch.resource_version or self._resource_version
                if self._stopped:
                    break
                self.restarts += 1
        except Exception as exc:  # noqa: BLE001 - reported by the waiter, which then fails with it
            self.error = f"{exc.__class__.__name__}: {exc}"
        with self.changed:
            self.changed.notify_all()

    def _record(self, pod: object, now: float) -> None:
        name = pod.metadata.name  # type: ignore[attr-defined]
        with self.changed:
            self.seen.setdefault(name, now)
            if pod.spec.node_name:  # type: ignore[attr-defined]
                self.scheduled.setdefault(name, now)
            condition = _ready(pod)
            if condition is not None and name not in self.ready:
                self.ready[name] = now
                self.api_latency[name] = (condition.last_transition_time  # type: ignore[attr-defined]
                                          - pod.metadata.creation_timestamp).total_seconds()  # type: ignore
            self.changed.notify_all()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_ready(self, count: int, timeout: float) -> float | None:
        """The monotonic time the count-th pod was seen Ready, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.ready) < count:
                left = deadline - time.monotonic()
                if left <= 0 or self.error or not self._thread.is_alive():
                    return None
                self.changed.wait(min(left, 1.0))
            return sorted(self.ready.values())[count - 1]

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()
        self._thread.join(timeout=5)  # the stream ends at its next event or its own timeout


def _event_timeline(core: object, pod_name: str) -> str:
    """The pod's events as "Reason +S s" after its creation (1-second resolution, like the API's timestamps)."""
    pod = core.read_namespaced_pod(pod_name, NAMESPACE)  # type: ignore[attr-defined]
    created = pod.metadata.creation_timestamp
    events = core.list_namespaced_event(  # type: ignore[attr-defined]
        NAMESPACE, field_selector=f"involvedObject.name={pod_name}").items
    steps = []
    for event in events:
        when = event.event_time or event.first_timestamp or event.last_timestamp
        if when is not None:
            steps.append(((when - created).total_seconds(), event.reason or "?"))
    ready = _ready(pod)
    if ready is not None:
        steps.append(((ready.last_transition_time - created).total_seconds(), "Ready"))  # type: ignore[attr-defined]
    return ", ".join(f"{reason} +{offset:.1f} s" for offset, reason in sorted(steps))


def scale_once(api: object, state: cl.State, variant: Variant, replicas: int, node: str = NODE,
               log: Callable[[str], None] = lambda _: None) -> ScaleResult:
    """Create the Deployment at 0, scale it to ``replicas``, measure, scale to 0, wait for the pods to go, delete."""
    from kubernetes import client

    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    if variant.prepare:
        fresh_node(state, node, log)
    if variant.prepare == "installed":
        warm_node(state, node, log)
    name = f"bench-{'wasm' if variant.runtime_class else 'runc'}-{uuid.uuid4().hex[:6]}"
    selector = f"app={name}"
    result = ScaleResult(variant, replicas)
    apps.create_namespaced_deployment(NAMESPACE, _deployment(name, variant, node))
    watch: PodWatch | None = None
    try:
        time.sleep(SETTLE_SECONDS)
        base_runtime, base_ctrd, _ = node_pss_kib(state, node)
        listed = core.list_namespaced_pod(NAMESPACE, label_selector=selector)
        watch = PodWatch(core, selector, listed.metadata.resource_version, READY_TIMEOUT + 30)
        runtime_pids, containerd_pids = node_processes(state, node)
        runtime_cpu, containerd_cpu = process_cpu_s(runtime_pids), process_cpu_s(containerd_pids)
        throttled = kubelet_throttled_s(api, node)
        began, busy = time.monotonic(), machine_busy_s()
        apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": replicas}})
        last = watch.wait_ready(replicas, READY_TIMEOUT)
        result.cpu_s = machine_busy_s() - busy
        runtime_pids, containerd_pids = node_processes(state, node)
        result.runtime_cpu_s = cpu_since(runtime_cpu, process_cpu_s(runtime_pids))
        result.containerd_cpu_s = cpu_since(containerd_cpu, process_cpu_s(containerd_pids))
        if last is None:
            result.error = (f"{len(watch.ready)}/{replicas} pods seen Ready after {time.monotonic() - began:.0f} s"
                            + (f" (the watch failed: {watch.error})" if watch.error else
                               " (the watch ended)" if len(watch.ready) < replicas and not watch.alive() else ""))
            log(f"  cluster: {variant.label}: {result.error}")
            return result
        result.all_ready_s = last - began
        result.kubelet_throttled_s = kubelet_throttled_s(api, node) - throttled
        with watch.changed:
            result.per_pod_watch_s = [watch.ready[p] - watch.seen[p] for p in watch.ready]
            result.per_pod_api_s = list(watch.api_latency.values())
            result.last_created_s = max(watch.seen.values()) - began
            result.last_scheduled_s = max(watch.scheduled.values(), default=math.nan) - began
            result.first_ready_s = min(watch.ready.values()) - began
        log(f"  cluster: {variant.label}: {replicas} Ready in {result.all_ready_s:.1f} s")
        try:
            result.first_pod_events = _event_timeline(core, min(watch.ready, key=watch.ready.__getitem__))
        except Exception as exc:  # noqa: BLE001 - a diagnostic only; the measurement goes on without it
            result.first_pod_events = f"(events not read: {exc.__class__.__name__})"
        time.sleep(SETTLE_SECONDS)
        runtime, ctrd, result.runtime_processes = node_pss_kib(state, node)
        result.runtime_kib = runtime - base_runtime
        result.containerd_kib = ctrd - base_ctrd
        log(f"  cluster: {variant.label}: runtime PSS +{result.runtime_kib / 1024:.0f} MiB "
            f"({result.runtime_processes} processes), containerd +{result.containerd_kib / 1024:.0f} MiB")
    finally:
        if watch is not None:
            watch.stop()
            result.watch_restarts = watch.restarts
        down_began = time.monotonic()
        try:
            apps.patch_namespaced_deployment_scale(name, NAMESPACE, {"spec": {"replicas": 0}})
            deadline = down_began + GONE_TIMEOUT
            while core.list_namespaced_pod(NAMESPACE, label_selector=selector).items:
                if time.monotonic() > deadline:
                    result.error = result.error or f"pods still there {GONE_TIMEOUT:.0f} s after scaling to 0"
                    break
                time.sleep(0.5)
            else:
                result.gone_s = time.monotonic() - down_began
        finally:
            apps.delete_namespaced_deployment(name, NAMESPACE)
    return result


# --- the figure -------------------------------------------------------------------------------------------------------


def measure(api: object, state: cl.State, replicas: int = REPLICAS, node: str = NODE,
            variants: Sequence[Variant] = VARIANTS, log: Callable[[str], None] = lambda _: None) -> Figure:
    """The figure on a running cluster whose ``node`` has the shim and the `wasmtime` RuntimeClass."""
    containerd = cl.node_by_name(node).containerd
    figure = Figure(f"cluster-{node}", f"9. Cluster: {replicas} pods 0 -> Ready on one kubelet ({node}, containerd "
                    f"{containerd})", plot_unit="s")
    results: list[ScaleResult] = []
    timed(figure, lambda: results.extend(scale_once(api, state, v, replicas, node, log) for v in variants))
    _rows(figure, results, replicas, node)
    return figure


CACHE_DIR = "/var/lib/wasm-shim/cache"  # the shim's default cache_dir, inside the node


def fresh_node(state: cl.State, node: str, log: Callable[[str], None]) -> None:
    """The node as before its first wasm pod: our daemons stopped (SIGTERM, by pid), the compiled cache emptied."""
    import signal

    from wasm_shim.shim.launch.binary import DAEMON_MODULE

    runtime, _ = node_processes(state, node)
    daemons = [pid for pid in runtime if DAEMON_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
               .split(b"\0")] if runtime else []
    for pid in daemons:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in daemons):
        if time.monotonic() > deadline:
            raise cl.ClusterError(f"shim daemons {daemons} on {node} still there 30 s after SIGTERM")
        time.sleep(0.1)
    done = cl.node_exec(state, cl.node_by_name(node), ["sh", "-c", f"rm -rf {CACHE_DIR}/*"])
    if done.returncode != 0:
        raise cl.ClusterError(f"emptying {CACHE_DIR} on {node}: {done.stderr.strip()}")
    log(f"  cluster: {node} made fresh ({len(daemons)} daemon(s) stopped, the compiled cache emptied)")


def warm_node(state: cl.State, node: str, log: Callable[[str], None]) -> None:
    """What `wasm-shim node install --warm-timeout` does after the install (the images are preloaded: no pull)."""
    script = ("import sys; from wasm_shim.shim.node.warmup import warm_up; "
              f"w = warm_up('/run/containerd/containerd.sock', 'wasmtime', [{images.WASM_NET!r}], "
              f"'{CACHE_DIR}/warm-status.json', 300, print, pull=False); print('warnings:', w)")
    began = time.monotonic()
    done = cl.node_exec(state, cl.node_by_name(node), [str(ROOT / ".venv" / "bin" / "python"), "-c", script],
                        timeout=400)
    if done.returncode != 0:  # a warning (e.g. a shim put on without warm_images) is in the log, not an error
        raise cl.ClusterError(f"warm-up on {node}: {done.stdout.strip()} {done.stderr.strip()}")
    log(f"  cluster: {node} warmed in {time.monotonic() - began:.1f} s: {done.stdout.strip()}")


# The timeline rows: (what, the ScaleResult field in seconds after the scale request, the row's note).
TIMELINE = (
    ("last pod created", "last_created_s",
     "scale request -> the last pod first seen by the watch: the ReplicaSet controller's creates (its API client's "
     "own rate limit holds them, for every runtime alike)"),
    ("last pod bound to the node", "last_scheduled_s",
     "scale request -> the last pod seen with its nodeName (the scheduler)"),
    ("first pod Ready", "first_ready_s",
     "scale request -> the first pod seen Ready: every pod's sandbox, container and status is worked on at once on "
     "the node, so the first is Ready late when the CPU is the bound"),
    ("kubelet's API client throttled", "kubelet_throttled_s",
     "seconds the kubelet's requests waited on its own client rate limit over the scale-up (all requests summed; "
     "kubeAPIQPS/kubeAPIBurst): near 0 means its status updates were not held"),
)


def _rows(figure: Figure, results: list[ScaleResult], replicas: int, node: str) -> None:
    errors = [f"{r.variant.label}: {r.error}" for r in results if r.error]
    figure.error = "; ".join(errors)
    for r in results:
        # Against runc's pods of the same spec (with or without the token volume).
        base = next((b for b in results if b.variant.runtime_class is None and b.variant.token == r.variant.token),
                    None)
        is_wasm = r.variant.runtime_class is not None
        label = r.variant.label
        per_runtime = r.runtime_kib / replicas / 1024
        per_ctrd = r.containerd_kib / replicas / 1024
        per_total = per_runtime + per_ctrd
        if base is not None:
            base_runtime = base.runtime_kib / replicas / 1024
            base_ctrd = base.containerd_kib / replicas / 1024
            base_total = base_runtime + base_ctrd
        else:
            base_runtime = base_ctrd = base_total = math.nan
        t_ratio = ratio(r.all_ready_s, base.all_ready_s) if base else math.nan
        m_ratio = ratio(per_total, base_total)
        figure.rows += [
            Row(f"{label}: all {replicas} Ready", "s", summarize([r.all_ready_s] if not math.isnan(r.all_ready_s)
                                                                 else []),
                vs_baseline=t_ratio, goal=f"<= {WASM_GOAL_TIME}x runc" if is_wasm else "",
                met=(t_ratio <= WASM_GOAL_TIME if not math.isnan(t_ratio) else None) if is_wasm else None,
                note="; ".join(part for part in (
                    f"scaled back to 0 and gone in {r.gone_s:.1f} s" if not math.isnan(r.gone_s) else "",
                    f"first pod Ready: {r.first_pod_events}" if r.first_pod_events else "",
                    f"the watch was reopened {r.watch_restarts} time(s)" if r.watch_restarts else "") if part)),
            Row(f"{label}: machine CPU per pod", "ms", summarize([r.cpu_s / replicas * 1000]
                                                                 if not math.isnan(r.cpu_s) else []),
                vs_baseline=ratio(r.cpu_s, base.cpu_s) if base else math.nan,
                note="busy CPU time of every core, scale request -> all Ready, / pods (the node, the control "
                     "plane and the client alike)"),
            Row(f"{label}: of which the runtime's", "ms", summarize([r.runtime_cpu_s / replicas * 1000]
                                                                   if not math.isnan(r.runtime_cpu_s) else []),
                vs_baseline=ratio(r.runtime_cpu_s, base.runtime_cpu_s) if base else math.nan,
                note=f"{node}'s runtime processes (shims, our daemon, runners, holders, runc and what they run, "
                     "the pods' processes), self and waited-for children"),
            Row(f"{label}: of which containerd's", "ms", summarize([r.containerd_cpu_s / replicas * 1000]
                                                                  if not math.isnan(r.containerd_cpu_s) else []),
                vs_baseline=ratio(r.containerd_cpu_s, base.containerd_cpu_s) if base else math.nan,
                note="self and waited-for children (CNI plugins, each runtime's `start` exec); the rest of the "
                     "machine CPU is the kubelet, the control plane, the client and the kernel"),
            *(Row(f"{label}: {what}", "s", summarize([getattr(r, name)] if not math.isnan(getattr(r, name)) else []),
                  vs_baseline=ratio(getattr(r, name), getattr(base, name)) if base else math.nan, note=note)
              for what, name, note in TIMELINE),
            Row(f"{label}: per pod, watch", "s", summarize(r.per_pod_watch_s),
                vs_baseline=ratio(summarize(r.per_pod_watch_s).p50, summarize(base.per_pod_watch_s).p50)
                if base else math.nan),
            Row(f"{label}: per pod, API timestamps", "s", summarize(r.per_pod_api_s),
                vs_baseline=ratio(summarize(r.per_pod_api_s).p50, summarize(base.per_pod_api_s).p50)
                if base else math.nan),
            Row(f"{label}: PSS shims+guests per pod", "MiB", summarize([per_runtime] if r.runtime_processes else []),
                vs_baseline=ratio(per_runtime, base_runtime),
                note=f"{r.runtime_processes} runtime processes on {node} with all pods Ready, "
                     f"+{r.runtime_kib / 1024:.1f} MiB over idle"),
            Row(f"{label}: PSS containerd per pod", "MiB", summarize([per_ctrd] if r.runtime_processes else []),
                vs_baseline=ratio(per_ctrd, base_ctrd)),
            Row(f"{label}: PSS total per pod", "MiB", summarize([per_total] if r.runtime_processes else []),
                vs_baseline=m_ratio, goal=f"<= {WASM_GOAL_MEMORY}x runc" if is_wasm else "",
                met=(m_ratio <= WASM_GOAL_MEMORY if not math.isnan(m_ratio) else None) if is_wasm else None),
        ]
        figure.series[label] = r.per_pod_watch_s
    installed = next((r for r in results if r.variant.prepare == "installed"), None)
    warm = next((r for r in results if r.variant is WASM_WARM or r.variant.label == WASM_WARM.label), None)
    if installed is not None and warm is not None:
        w_ratio = ratio(installed.all_ready_s, warm.all_ready_s)
        figure.rows.append(Row(f"{installed.variant.label} vs warm: all {replicas} Ready", "s",
                               summarize([installed.all_ready_s] if not math.isnan(installed.all_ready_s) else []),
                               vs_baseline=w_ratio, goal=f"<= {WARM_GOAL}x warm",
                               met=w_ratio <= WARM_GOAL if not math.isnan(w_ratio) else None,
                               note=f"warm: {warm.all_ready_s:.1f} s; the 'vs' column here is against warm"))
    figure.notes += [
        "all Ready: the scale request sent -> the last pod seen Ready by a watch (client clock, ms resolution)",
        "per pod, watch: pod first seen by the watch -> seen Ready (client clock); per pod, API timestamps: "
        "creationTimestamp -> Ready lastTransitionTime (1-second resolution)",
        f"PSS: smaps_rollup summed over {node}'s runtime processes (shims, our daemon, component runners, pause "
        "and container processes) and containerd, each minus the idle value just before the scale-up, / pods",
        "variants ran one after the other: runc; wasm-shim cold (the node made fresh: no shim daemon, empty compiled "
        "cache, no warm-up); wasm-shim after install (made fresh, then the installer's warm-up: the daemon started "
        "through CRI and the component compiled, so the daemon's PSS is in the idle baseline); wasm-shim warm (the "
        "daemon up, the component compiled); wasm-shim module: the sleep guest, a core-wasm module run as a daemon "
        "thread (no runner process), after the others",
        "'no token volume': the same pods with automountServiceAccountToken: false, so the kubelet sets up and waits "
        "for no volume before the sandbox (its wait polls every 300 ms); each is compared with runc's pods of the "
        "same spec",
    ]
    figure.commands = [
        f"Deployment pinned to {node} (nodeSelector kubernetes.io/hostname), imagePullPolicy Never, "
        f"limits memory 128Mi; PATCH .../deployments/NAME/scale replicas 0 -> {replicas} -> 0",
        f"runc: {RUNC.image} {' '.join(RUNC.command or [])}",
        f"wasm: runtimeClassName wasmtime, {WASM.image} (component) {' '.join(WASM.args or [])}, "
        f"annotation wasm.shim.io/network: {WASM.annotations['wasm.shim.io/network']}",
        f"wasm module: runtimeClassName wasmtime, {WASM_MODULE.image} {' '.join(WASM_MODULE.args or [])}",
    ]


# --- the shim on the node, and the whole run on a cluster of its own -----------------------------------------------


def install_shim(api: object, state: cl.State, nodes: Sequence[str] = (NODE,)) -> None:
    """What e2e/conftest.py's `shim_on_node_a` fixture does, on each of ``nodes`` (not undone: the cluster is this run's
    own and goes away)."""
    import yaml
    from kubernetes import client

    rc = yaml.safe_load((ROOT / "k8s" / "runtimeclass.yaml").read_text())
    for node in nodes:

        def node_ok(*argv: str, node: str = node) -> None:
            done = cl.node_exec(state, cl.node_by_name(node), argv)
            if done.returncode != 0:
                raise cl.ClusterError(f"{' '.join(argv)} on {node}: {done.stderr.strip()}")

        node_ok("ln", "-sfn", str(ROOT / ".venv" / "bin" / "containerd-shim-wasmtime-v1"), SHIM_LINK)
        options = [arg for option in SHIM_OPTIONS for arg in ("--option", option)]
        node_ok(str(ROOT / ".venv" / "bin" / "wasm-shim"), "containerd-config", "--merge", CONFIG, *options)
        node_ok(f"{NODE_SUPPORT_DIR}/restart-containerd")
        client.CoreV1Api(api).patch_node(node, {"metadata": {"labels": rc["scheduling"]["nodeSelector"]}})
    client.NodeV1Api(api).create_runtime_class(rc)


def keep_node_logs(state: cl.State, node: str, into: Path) -> None:
    """Copy a node's logs (containerd, kubelet, supervisor) and the shim daemons' logs (beside their sockets in
    /run/containerd/s, inside the node) into ``into``, before the teardown removes them."""
    into.mkdir(parents=True, exist_ok=True)
    for path in (state.node_dir(cl.node_by_name(node)) / "logs").glob("*.log"):
        shutil.copyfile(path, into / path.name)
    done = cl.node_exec(state, cl.node_by_name(node), ["sh", "-c", "cat /run/containerd/s/*.log 2>/dev/null"])
    (into / "wasm-shim-daemon.log").write_text(done.stdout)


def run_on_own_cluster(replicas: int, log: Callable[[str], None], keep_logs: Path | None = None,
                       nodes: Sequence[str] = (NODE,)) -> list[Figure]:
    """Up a cluster in a temp state dir, install the shim on ``nodes``, measure one figure per node (one node
    after the other); the cluster is always torn down."""
    from kubernetes import config

    from lab.guests.fixtures import build_guests

    work = Path(tempfile.mkdtemp(prefix="wasm-shim-bench-cluster-"))
    state = cl.State(work / "cluster")
    try:
        tars = images.build(work / "images", build_guests())
        log(f"bench.cluster: cluster up in {state.root}")
        kubeconfig = cl.up(state, images=tars)
        api = config.new_client_from_config(config_file=str(kubeconfig))
        try:
            install_shim(api, state, nodes)
            figures = []
            for node in nodes:
                one, five, _ = load_average()
                log(f"bench.cluster: measuring {replicas} replicas on {node} (load average {one:.2f} {five:.2f})")
                figures.append(measure(api, state, replicas, node, log=log))
            return figures
        finally:
            api.close()
            if keep_logs is not None:
                for node in nodes:
                    keep_node_logs(state, node, keep_logs / node)
                log(f"bench.cluster: the nodes' logs kept in {keep_logs}")
    finally:
        log("bench.cluster: tearing the cluster down")
        problems = cl.down(state)
        for problem in problems:
            log(f"bench.cluster: down: {problem}")
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=REPLICAS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPLICAS} replicas: checks the harness")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out-cluster")
    parser.add_argument("--keep-logs", action="store_true", help="copy the nodes' logs into OUT/logs before teardown")
    parser.add_argument("--nodes", default=NODE, help=f"comma-separated, measured in turn (default {NODE}: "
                        "containerd 2.x; node-b runs Debian's containerd 1.6)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench.cluster: run as root (the cluster needs namespaces, mounts and cgroups)", file=sys.stderr)
        return 2
    replicas = QUICK_REPLICAS if args.quick else args.replicas
    nodes = [n for n in args.nodes.split(",") if n]
    unknown = [n for n in nodes if n not in {node.name for node in cl.NODES}]
    if unknown or not nodes:
        parser.error(f"unknown node(s) {unknown}; nodes: {', '.join(n.name for n in cl.NODES)}")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    from lab.containerd import binaries

    ctrd, ctr = binaries("2.x")
    machine = describe(ctrd, ctr, None)
    machine.versions.pop("wasmtime CLI (guest-compute baseline)", None)
    machine.versions["kubelet"] = cl.run([cl.tool("kubelet"), "--version"], check=False).stdout.strip()
    try:
        figures = run_on_own_cluster(replicas, log, args.out / "logs" if args.keep_logs else None, nodes)
    except Exception as exc:  # noqa: BLE001 - the table still says what failed
        figures = [Figure("cluster", f"9. Cluster: {replicas} pods", error=f"{exc.__class__.__name__}: {exc}")]
    machine.load_end = load_average()
    table = report.text_table(machine, figures)
    print(table, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.txt").write_text(table + "\n")
    (args.out / "results.json").write_text(report.results_json(machine, figures))
    (args.out / "results.md").write_text(report.markdown(machine, figures, None))
    return 1 if any(f.error for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
