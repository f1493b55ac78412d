"""Where a pod's time goes on a real kubelet: `python -m bench.pod_path` (docs/benchmarks.md "The pod path").

Brings up the two-node cluster of e2e/cluster in a temp state directory (as bench/cluster.py does), puts the shim
on node-a with the installer's defaults and warms it, then creates single pods pinned to node-a, one at a time,
each variant in turn (runc busybox sleep; the wasm sleep module; the wasm wasi:sockets server; runc and the module
again with automountServiceAccountToken: false, so without the token volume the kubelet otherwise waits for), and
splits each pod's path from the API's create to the Ready the kubelet reports:

  created -> RunPodSandbox called      the kubelet picks the pod up (watch, admission, volumes, cgroups)
  RunPodSandbox                        containerd: network namespace, CNI, the sandbox (runc's pause container,
                                       or our daemon's holder), as containerd's log times it
  -> CreateContainer called            the kubelet between the two (image check, the container's config)
  CreateContainer                      containerd: snapshot, spec, container record
  -> StartContainer called
  StartContainer                       containerd: the task's Create and Start through the runtime
  -> Ready seen                        the kubelet notices the container runs (its PLEG relist) and reports Ready,
                                       the API server and the watch deliver it

The kubelet's and containerd's times come from containerd's log lines for the pod ("RunPodSandbox for ...
returns", "CreateContainer within sandbox ... returns", "StartContainer for ... returns"), millisecond wall clock
on the same machine as the client's watch (time.time()). Medians over the runs. Always tears the cluster down.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from lab.cluster import cluster as cl
from lab.cluster import images

from .cluster import NODE, install_shim, warm_node
from .machine import load_average

PHASES = ("created -> RunPodSandbox", "RunPodSandbox", "-> CreateContainer", "CreateContainer",
          "-> StartContainer", "StartContainer", "-> Ready seen", "total")
# label -> (runtime class, image, command, args, annotations, whether the pod gets its service account token).
# Every pod the API server admits gets the token as a projected volume unless its spec says
# automountServiceAccountToken: false; the kubelet then waits for that volume before it asks for the sandbox, and
# its wait polls every 300 ms (pkg/kubelet/volumemanager: podAttachAndMountRetryInterval), the same for every runtime.
VARIANTS = {
    "runc, busybox sleep": (None, images.BUSYBOX, ["/bin/busybox", "sleep", "3600"], None, {}, True),
    "wasm-shim, module (sleep)": ("wasmtime", images.WASM_SLEEP, None, ["3600"], {}, True),
    "wasm-shim, component server": ("wasmtime", images.WASM_NET, None, ["listen", "0.0.0.0", "8080", "0"],
                                    {"wasm.shim.io/network": "tcp-listen=*:8080"}, True),
    "runc, no token volume": (None, images.BUSYBOX, ["/bin/busybox", "sleep", "3600"], None, {}, False),
    "wasm-shim, module, no token volume": ("wasmtime", images.WASM_SLEEP, None, ["3600"], {}, False),
}
_STAMP = re.compile(r'time="([^"]+)"')


def _when(line: str) -> float:
    found = _STAMP.search(line)
    if not found:
        return float("nan")
    text = found.group(1).rstrip("Z")
    whole, _, fraction = text.partition(".")
    stamp = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    return stamp + float("0." + (fraction or "0"))


def _pod(name: str, variant: tuple) -> object:  # type: ignore[type-arg]
    from kubernetes import client

    runtime_class, image, command, args, annotations, token = variant
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, annotations=annotations or None),
        spec=client.V1PodSpec(
            runtime_class_name=runtime_class, termination_grace_period_seconds=1,
            automount_service_account_token=None if token else False,
            node_selector={"kubernetes.io/hostname": NODE},
            containers=[client.V1Container(name="main", image=image, image_pull_policy="Never", command=command,
                                           args=args)]))


def one_pod(api: object, state: cl.State, variant: tuple, log_path: Path) -> dict[str, float]:  # type: ignore[type-arg]
    """Create one pod, wait until it is Ready, delete it; its phases in ms."""
    from kubernetes import client, watch

    core = client.CoreV1Api(api)
    name = f"path-{uuid.uuid4().hex[:8]}"
    ready: dict[str, float] = {}
    stream = watch.Watch()

    def follow() -> None:
        for event in stream.stream(core.list_namespaced_pod, "default", field_selector=f"metadata.name={name}",
                                   timeout_seconds=120):
            pod = event["object"]
            if any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])):
                ready["at"] = time.time()
                stream.stop()
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    time.sleep(0.3)  # the watch is open
    created = time.time()
    core.create_namespaced_pod("default", _pod(name, variant))
    thread.join(150)
    try:
        if "at" not in ready:
            raise cl.ClusterError(f"pod {name} not Ready within 150 s")
        time.sleep(0.5)  # containerd's log lines are flushed
        lines = log_path.read_text(errors="replace").splitlines()
        sandbox = next(re.search(r'returns sandbox id \\"([0-9a-f]+)\\"', line).group(1)  # type: ignore[union-attr]
                       for line in lines if f'RunPodSandbox for name:\\"{name}\\"' in line and "returns" in line)
        marks = {}
        for line in lines:
            if f'RunPodSandbox for name:\\"{name}\\"' in line:
                marks["returns" in line and "sandbox_end" or "sandbox_begin"] = _when(line)
            elif f'CreateContainer within sandbox \\"{sandbox}\\"' in line:
                marks["returns" in line and "create_end" or "create_begin"] = _when(line)
                container = re.search(r'returns container id \\"([0-9a-f]+)\\"', line)
                if container:
                    marks_container = container.group(1)
                    for other in lines:
                        if f'StartContainer for \\"{marks_container}\\"' in other:
                            marks["returns" in other and "start_end" or "start_begin"] = _when(other)
        times = [created, marks["sandbox_begin"], marks["sandbox_end"], marks["create_begin"], marks["create_end"],
                 marks["start_begin"], marks["start_end"], ready["at"]]
        phases = {phase: (b - a) * 1000 for phase, a, b in zip(PHASES, times, times[1:], strict=False)}
        phases["total"] = (ready["at"] - created) * 1000
        return phases
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not core.list_namespaced_pod("default", field_selector=f"metadata.name={name}").items:
                break
            time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pod_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from kubernetes import config

    from lab.guests.fixtures import build_guests

    work = Path(tempfile.mkdtemp(prefix="wasm-shim-pod-path-"))
    state = cl.State(work / "cluster")
    samples: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PHASES} for v in VARIANTS}
    began_load = load_average()
    try:
        tars = images.build(work / "images", build_guests())
        kubeconfig = cl.up(state, images=tars)
        api = config.new_client_from_config(config_file=str(kubeconfig))
        try:
            install_shim(api, state)
            warm_node(state, NODE, lambda text: print(text, file=sys.stderr))
            log_path = state.node_dir(cl.node_by_name(NODE)) / "logs" / "containerd.log"
            for variant in VARIANTS.values():  # untimed: images unpacked, the component compiled and checked
                one_pod(api, state, variant, log_path)
            for i in range(args.runs):
                for label, variant in VARIANTS.items():
                    for phase, value in one_pod(api, state, variant, log_path).items():
                        samples[label][phase].append(value)
                print(f"pod_path: run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
        finally:
            api.close()
    finally:
        cl.down(state)
        shutil.rmtree(work, ignore_errors=True)
    end_load = load_average()
    print(f"load average at start {began_load[0]:.2f} {began_load[1]:.2f}, at end {end_load[0]:.2f} "
          f"{end_load[1]:.2f}; {args.runs} pods per variant, one at a time, interleaved; medians in ms")
    print("| phase | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for phase in PHASES:
        cells = [f"{statistics.median(samples[v][phase]):.0f}" for v in VARIANTS]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
