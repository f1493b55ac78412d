"""Figure 7, components: what running a component in its own process costs, first start and memory.

A component runs in a runner process (``wasm-shim-component-runner``, runner/) by default, or in a daemon thread
with ``wasm.shim.io/component-isolation: thread``. Rows, for the hello component (`ctr run --rm`, ms):
- first start: no daemon and an empty compiled-artifact cache, so the daemon starts, checks the component and
  the runner compiles it (what the first pod of a new image on a node pays);
- warm, runner: daemon up, the compiled component cached (the steady state);
- warm, thread: the same component in a daemon thread.
And memory (MiB): PSS of each idle runner (the sleep component), and the daemon's PSS after the first start of
the component, minus its PSS after a module ran (what holding the component costs the daemon).
"""

from __future__ import annotations

import subprocess
import time

from .figure import Context, Figure, Row, rotate, timed
from .stats import summarize
from .testbed import OURS, Testbed, pss_kib

ISOLATION_THREAD = ("--annotation", "wasm.shim.io/component-isolation=thread")


def run(ctx: Context) -> Figure:
    figure = Figure("components", "7. Components: start and memory of the runner process")
    return timed(figure, lambda: _measure(ctx, figure))


def _run_thread(testbed: Testbed) -> float:
    image, argv = testbed.workload(OURS, "hello_component")
    cmd = testbed.containerd.ctr_argv("run", "--rm", "--runtime", OURS.runtime, *ISOLATION_THREAD, image,
                                  testbed.new_id("thread"), *argv)
    began = time.perf_counter()
    _ctr(testbed, cmd)
    return (time.perf_counter() - began) * 1000


def _ctr(testbed: Testbed, cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=testbed.containerd.ctr_env(), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {done.returncode}: {done.stderr}")


def _measure(ctx: Context, figure: Figure) -> None:
    samples: dict[str, list[float]] = {"first start": [], "warm, runner": [], "warm, thread": []}
    daemon_growth: list[float] = []
    with ctx.new_testbed("components") as testbed:
        for i in range(ctx.counts.component_runs):
            testbed.stop_daemons()
            testbed.clear_cache()
            testbed.run(OURS, "hello")  # the daemon up, with a module run: the baseline of its memory
            (daemon,) = testbed.daemon_pids()
            before = pss_kib(daemon)
            samples["first start"].append(testbed.run(OURS, "hello_component").seconds * 1000)
            daemon_growth.append((pss_kib(daemon) - before) / 1024)
            for mode in rotate(["warm, runner", "warm, thread"], i):
                if mode == "warm, runner":
                    samples[mode].append(testbed.run(OURS, "hello_component").seconds * 1000)
                else:
                    samples[mode].append(_run_thread(testbed))
            ctx.log(f"  components: iteration {i + 1}/{ctx.counts.component_runs}")
        ids = [testbed.new_id("idle-c") for _ in range(ctx.counts.component_idle)]
        for task_id in ids:
            testbed.run(OURS, "sleep_component", detach=True, task_id=task_id)
        time.sleep(1.0)
        (daemon,) = testbed.daemon_pids()
        runners = [pid for pid in testbed.involved_pids() if pid != daemon and _is_runner(pid)]
        pss = [pss_kib(pid) / 1024 for pid in runners]
    for label, values in samples.items():
        figure.rows.append(Row(f"hello component, {label}", "ms", summarize(values)))
    figure.rows.append(Row("idle runner process (sleep component), PSS", "MiB", summarize(pss),
                           note=f"{len(runners)} runners"))
    figure.rows.append(Row("daemon PSS growth from the first start of a component", "MiB",
                           summarize(daemon_growth)))
    figure.series = samples
    figure.commands = ["ctr run --rm --runtime io.containerd.wasmtime.v1 .../hello_component:latest ID /app.wasm",
                       "... --annotation wasm.shim.io/component-isolation=thread ... (warm, thread)"]
    figure.notes.append(f"{ctx.counts.component_runs} iterations; each first start follows stopping the daemon and "
                        "emptying the compiled-artifact cache (the runner's cache is in the same directory)")


def _is_runner(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as file:
            return file.read().strip().startswith("wasm-shim-compo")  # comm is cut at 15 characters
    except OSError:
        return False
