"""Figure 1, cold start: the whole `ctr run --rm` of a hello guest, from spawning ctr to its exit, against runc's
`ctr run --rm` of Debian's static busybox `echo hello` (and any peer shim running the hello guest).

Our shim is measured in three states, prepared (untimed) before each of its runs:
- cold: no daemon and an empty compiled-module cache: interpreter start, `import wasmtime`, compilation;
- disk: no daemon, the compiled module on disk (the daemon exited after its idle timeout);
- warm: the daemon up with the module in memory (back-to-back containers: the steady state on a busy node).
Each iteration runs every state once, each followed by the baselines, the order rotating (interleaved A/B).
Goal: warm <= 0.5x runc's median. One more row, warm too: the hello guest as a component, which runs in
a process of its own (wasm-shim-component-runner) rather than in a daemon thread.
"""

from __future__ import annotations

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import OURS, RUNC, Runtime

COMPONENT = "wasm-shim warm component"
MODES = {
    "cold": "no daemon, empty compiled-module cache",
    "disk": "no daemon, compiled module on disk",
    "warm": "daemon up, module in memory",
}


def run(ctx: Context) -> Figure:
    figure = Figure("cold_start", "1. Cold start: `ctr run --rm` hello to exit (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _measure(ctx: Context, figure: Figure) -> None:
    testbed = ctx.testbed()
    baselines: list[Runtime] = [RUNC, *testbed.peers]
    samples: dict[str, list[float]] = {f"wasm-shim {mode}": [] for mode in MODES}
    samples[COMPONENT] = []
    samples.update({rt.label: [] for rt in baselines})
    for rt in [OURS, *baselines]:  # untimed warm-up: the very first run of each pays one-time costs
        testbed.run(rt, "hello")
    testbed.run(OURS, "hello_component")
    for i in range(ctx.counts.cold_iterations):
        for j, mode in enumerate(MODES):
            for rt in rotate([OURS, *baselines], i + j):
                if rt is OURS:
                    if mode != "warm":
                        testbed.stop_daemons()
                    if mode == "cold":
                        testbed.clear_cache()
                    samples[f"wasm-shim {mode}"].append(testbed.run(rt, "hello").seconds * 1000)
                    if mode == "warm":  # untimed first: the cold state of this iteration emptied the cache
                        testbed.run(rt, "hello_component")
                        samples[COMPONENT].append(testbed.run(rt, "hello_component").seconds * 1000)
                else:
                    samples[rt.label].append(testbed.run(rt, "hello").seconds * 1000)
        ctx.log(f"  cold start: iteration {i + 1}/{ctx.counts.cold_iterations}")
    runc = summarize(samples[RUNC.label])
    for mode, what in MODES.items():
        s = summarize(samples[f"wasm-shim {mode}"])
        r = ratio(s.p50, runc.p50)
        goal = "<= 0.5x runc" if mode == "warm" else ""
        figure.rows.append(Row(f"wasm-shim {mode} ({what})", "ms", s, r, goal, met(r, 0.5) if goal else None))
    s = summarize(samples[COMPONENT])
    figure.rows.append(Row(f"{COMPONENT} (daemon up, component runner process)", "ms", s, ratio(s.p50, runc.p50)))
    for rt in baselines:
        s = summarize(samples[rt.label])
        note = "" if rt is RUNC else "peer: its own caches as they come"
        figure.rows.append(Row(f"{rt.label} ({'busybox echo' if rt is RUNC else 'hello guest'})", "ms", s,
                               ratio(s.p50, runc.p50), note=note))
    figure.series = samples
    image, argv = testbed.workload(OURS, "hello")
    b_image, b_argv = testbed.workload(RUNC, "hello")
    figure.commands = [
        " ".join(testbed.containerd.ctr_argv("run", "--rm", "--runtime", OURS.runtime, image, "ID", *argv)),
        " ".join(testbed.containerd.ctr_argv("run", "--rm", "--runtime", RUNC.runtime, b_image, "ID", *b_argv)),
    ]
    figure.notes.append(f"{ctx.counts.cold_iterations} iterations; runc and peers run after (or before) every "
                        "wasm-shim state, so they have 3 samples per iteration")
