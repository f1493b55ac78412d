"""Figure 12, a pod through CRI: `crictl runp` + `crictl create` + `crictl start`, wasm against runc.

What a kubelet asks of a node for every pod, driven by real `crictl` against a private containerd 2.x with its CRI
plugin, CNI (a bridge on a private subnet) and the lab's static pause image (lab/cri_tools.py). Per variant and
run, three crictl calls are timed from spawn to exit: RunPodSandbox (`runp`: the network namespace, CNI, the
sandbox), CreateContainer (`create`: the snapshot, the spec, the container record) and StartContainer (`start`:
the task's Create and Start through the runtime); then the pod is stopped and removed (untimed). The container is
a sleeping one, so `start` returns with it running.

Variants (the same node, interleaved, the order rotating):
- runc: handler `runc`, busybox `sleep` (runc's shim, a pause container and the sleep process);
- wasm-shim: handler `wasmtime` as `wasm-shim containerd-config` writes it for containerd 2.x (the pod's
  sandbox in our daemon through the Sandbox API: docs/cri.md "The pod sandbox"), the `sleep` module;
- wasm-shim, pause through runc: handler `wasmtime-podsandbox`, the same table with `sandboxer = "podsandbox"`
  (CRI's pause container, which our daemon hands to runc): the path containerd 1.6/1.7 take;
- wasm-shim, no daemon: the first variant with our daemon stopped before `runp` (the first pod after a quiet
  spell without a kept-warm daemon);
- each `--peer-shim`, as handler `peerN` (CRI's own pause container through that shim), the `sleep` module.
Goal: the wasm pod's total at most 0.5x the runc pod's (p50).

crictl's own start (a Go binary, three per pod) is in every variant alike.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.containerd import VENV_BIN, Containerd, launch
from lab.cri_tools import CriNode, containerd_config_table, start_cri_node
from lab.shimtools import daemon_pids
from wasm_shim.oci.layout import Symlink

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import BUSYBOX, BUSYBOX_APPLETS, BenchError, Runtime

PHASES = ("runp", "create", "start")


@dataclass(frozen=True)
class Variant:
    label: str
    handler: str
    wasm: bool
    cold: bool = False  # stop our daemons before the pod


def run(ctx: Context) -> Figure:
    figure = Figure("pod_start", "13. A pod through CRI: `crictl runp` + `create` + `start` (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _peer_tables(peers: list[Runtime]) -> str:
    plugin = "io.containerd.cri.v1.runtime"
    return "".join(f'[plugins."{plugin}".containerd.runtimes.peer{n}]\n  runtime_type = "{peer.runtime}"\n'
                   for n, peer in enumerate(peers, 1))


def _node(ctx: Context) -> CriNode:
    peer_bin = ctx.workdir / "pod-peer-bin"
    peer_bin.mkdir(parents=True, exist_ok=True)
    for peer in ctx.peers:
        link = peer_bin / ("containerd-shim-" + peer.runtime.split(".")[2] + "-v1")
        link.unlink(missing_ok=True)
        link.symlink_to(peer.binary)

    def factory(kind: str, *, cri: bool = False, extra_config: str = "",
                env: dict[str, str] | None = None) -> Containerd:
        # containerd and our daemon at info level: their debug logging is not under test.
        return launch("2.x", ctx.workdir / "pod-ctrd", path_prepend=[VENV_BIN, peer_bin], cri=cri,
                      extra_config=extra_config + '[debug]\nlevel = "info"\n',
                      env={**(env or {}), "WASM_SHIM_LOG_LEVEL": "info"})

    extra = (containerd_config_table("2.x", handler="wasmtime-podsandbox", sandboxer="podsandbox")
             if _sandboxer_option_known() else "") + _peer_tables(list(ctx.peers))
    return start_cri_node(factory, "2.x", ctx.guests / "pause", ctx.workdir / "pod-cri", extra_config=extra)


def _sandboxer_option_known() -> bool:
    """Whether this checkout's `wasm-shim containerd-config` knows the sandboxer option (older ones do not)."""
    done = subprocess.run([str(VENV_BIN / "wasm-shim"), "containerd-config", "--help"], capture_output=True,
                          text=True, timeout=30)
    return "sandboxer" in done.stdout


def _timed(node: CriNode, *args: str) -> tuple[float, str]:
    cmd = node.crictl.argv(*args)
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` exited {done.returncode}\n{done.stderr}"
                         f"--- containerd log (tail)\n{node.containerd.log_tail()}")
    return seconds * 1000, done.stdout.strip()


def _pod(node: CriNode, variant: Variant, images: dict[str, str], n: int) -> dict[str, float]:
    pod = node.pod_config(f"bench-{n}")
    image = images["wasm" if variant.wasm else "busybox"]
    command = {} if variant.wasm else {"command": ["/bin/sleep"], "args": ["3600"]}
    container = node.container_config("sleep", image, **({"args": ["3600"]} if variant.wasm else command))
    times: dict[str, float] = {}
    times["runp"], pod_id = _timed(node, "runp", "--runtime", variant.handler, str(pod))
    node.crictl.pod_ids.add(pod_id)
    try:
        times["create"], cid = _timed(node, "create", "--no-pull", pod_id, str(container), str(pod))
        times["start"], _ = _timed(node, "start", cid)
    finally:
        node.crictl.run("stopp", pod_id, check=False, timeout=60)
        node.crictl.run("rmp", "-f", pod_id, check=False, timeout=60)
        node.crictl.pod_ids.discard(pod_id)
    return times


def _stop_daemons(node: CriNode) -> None:
    pids = daemon_pids(node.containerd)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise BenchError(f"shim daemons {pids} still alive 10 s after SIGTERM")
        time.sleep(0.005)


def _measure(ctx: Context, figure: Figure) -> None:
    node = _node(ctx)
    try:
        files: dict[str, object] = {"/bin/busybox": BUSYBOX}
        files.update({f"/bin/{applet}": Symlink("busybox") for applet in BUSYBOX_APPLETS})
        images = {
            "busybox": node.image("busybox", files, entrypoint=["/bin/sh"]),  # type: ignore[arg-type]
            "wasm": node.wasm_image("sleep", ctx.guests / "sleep.wasm"),
        }
        variants = [Variant("runc", "runc", False), Variant("wasm-shim", "wasmtime", True)]
        if _sandboxer_option_known():
            variants.append(Variant("wasm-shim, pause through runc", "wasmtime-podsandbox", True))
        variants += [Variant(peer.label, f"peer{n}", True) for n, peer in enumerate(ctx.peers, 1)]
        cold = Variant("wasm-shim, no daemon", "wasmtime", True, cold=True)
        for variant in variants:  # untimed: images unpacked, daemons up, modules compiled
            _pod(node, variant, images, 0)
        samples: dict[str, dict[str, list[float]]] = {
            v.label: {p: [] for p in (*PHASES, "total")} for v in (*variants, cold)}
        runs = ctx.counts.pod_runs
        for i in range(runs):
            for variant in rotate([*variants, cold], i):
                if variant.cold:
                    _stop_daemons(node)
                times = _pod(node, variant, images, i + 1)
                for phase, value in times.items():
                    samples[variant.label][phase].append(value)
                samples[variant.label]["total"].append(sum(times.values()))
            ctx.log(f"  pod start: {i + 1}/{runs}")
    finally:
        node.teardown()
        node.containerd.stop()
    runc = summarize(samples["runc"]["total"])
    for variant in (*variants, cold):
        total = summarize(samples[variant.label]["total"])
        r = ratio(total.p50, runc.p50)
        goal = "<= 0.5x runc" if variant.label == "wasm-shim" else ""
        figure.rows.append(Row(f"{variant.label}: runp + create + start", "ms", total, r, goal,
                               met(r, 0.5) if goal else None))
        for phase in PHASES:
            s = summarize(samples[variant.label][phase])
            base = summarize(samples["runc"][phase])
            figure.rows.append(Row(f"  {variant.label}: {phase}", "ms", s, ratio(s.p50, base.p50)))
    figure.series = {v.label: samples[v.label]["total"] for v in (*variants, cold)}
    figure.commands = [
        "crictl runp --runtime HANDLER pod.json; crictl create --no-pull POD ctr.json pod.json; crictl start ID",
        "runc: busybox /bin/sleep 3600; wasm: the sleep module (/app.wasm 3600); containerd 2.x, CNI bridge",
    ]
    figure.notes.append(f"{runs} runs per variant, interleaved; each pod stopped and removed after (untimed)")
