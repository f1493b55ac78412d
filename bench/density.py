"""Figure 5, density: memory per idle running container, as PSS summed over every process involved.

For each runtime, a fresh private containerd; idle containers are started with `ctr run -d` (4 at a time): our
shim and peers run the `sleep` guest (blocked in poll_oneoff), runc runs busybox `sleep 3600`. At each step the
PSS (Pss: of /proc/PID/smaps_rollup) of every process that runs containers for that containerd is summed: shims
and shim daemons (found by the containerd addresses in their argv or environment) and their descendants (runc's
container processes); containerd itself is reported apart, as its growth over its idle start. Per container =
that sum / containers (fixed costs such as our daemon's interpreter are shared out). Goal: <= 1 MiB at
1000 wasm containers; runc (a shim and a process per container) is measured at fewer containers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .figure import Context, Figure, Row, met, timed
from .stats import summarize
from .testbed import OURS, RUNC, Runtime, Testbed, pss_kib

PARALLEL = 4
SETTLE_SECONDS = 2.0


def run(ctx: Context) -> Figure:
    figure = Figure("density", "5. Density: PSS per idle container (MiB)", plot_kind="lines", plot_unit="MiB")
    return timed(figure, lambda: _measure(ctx, figure))


def _start(testbed: Testbed, rt: Runtime, count: int) -> None:
    with ThreadPoolExecutor(PARALLEL) as pool:
        for future in [pool.submit(testbed.run, rt, "sleep", detach=True) for _ in range(count)]:
            future.result()


def _measure(ctx: Context, figure: Figure) -> None:
    runtimes: list[Runtime] = [OURS, RUNC, *ctx.peers]
    for rt in runtimes:
        steps = ctx.counts.density_steps if rt is OURS else ctx.counts.density_baseline_steps
        with ctx.new_testbed(f"density-{rt.label.replace(':', '_')}") as testbed:
            ctrd_idle = pss_kib(testbed.containerd_pid())
            running = 0
            for step in steps:
                began = time.monotonic()
                _start(testbed, rt, step - running)
                running = step
                took = time.monotonic() - began
                time.sleep(SETTLE_SECONDS)
                pids = testbed.involved_pids()
                total = sum(pss_kib(pid) for pid in pids)
                per = total / step / 1024
                ctrd = (pss_kib(testbed.containerd_pid()) - ctrd_idle) / 1024
                goal = "<= 1 MiB at 1000" if rt is OURS and step == max(steps) else ""
                row = Row(f"{rt.label}, {step} containers", "MiB", summarize([per]), goal=goal,
                          met=met(per, 1.0) if goal else None,
                          note=f"{len(pids)} processes, {total / 1024:.0f} MiB in all; containerd "
                               f"+{ctrd:.0f} MiB; started in {took:.0f} s")
                figure.rows.append(row)
                figure.lines.setdefault(rt.label, []).append((step, per))
                ctx.log(f"  density: {rt.label} {step} containers: {per:.2f} MiB each ({len(pids)} processes)")
    figure.commands = ["ctr run -d --runtime io.containerd.wasmtime.v1 .../sleep:latest ID /app.wasm 3600",
                       "ctr run -d --runtime io.containerd.runc.v2 .../busybox:latest ID /bin/sleep 3600"]
    by_label = {rt.label: dict(figure.lines.get(rt.label, [])) for rt in runtimes}
    ours = by_label.get(OURS.label, {})
    if len(ours) >= 2:
        (n0, p0), (n1, p1) = sorted(ours.items())[0], sorted(ours.items())[-1]
        slope = (p1 * n1 - p0 * n0) / (n1 - n0) if n1 != n0 else float("nan")
        figure.notes.append(f"wasm-shim marginal cost between {n0} and {n1} containers: {slope:.3f} MiB each")
    runc = by_label.get(RUNC.label, {})
    if runc and ours:
        figure.notes.append("runc at " + ", ".join(f"{n}: {v:.2f} MiB" for n, v in sorted(runc.items())))
