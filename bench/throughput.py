"""Figure 4, throughput: create/start/wait/delete cycles per second with 1 and N parallel clients.

Each client is a thread running `ctr run --rm` of the hello workload (busybox echo for runc) back to back, so a
cycle is exactly what a user's `ctr run --rm` does: create the container and task, start, wait, delete task and
container, with ctr's own process start included for every runtime alike. (Driving containerd's gRPC API directly
would take ctr's ~20-40 ms per cycle out of both sides; this repository carries no containerd client protos, and
`ctr` is what containerd ships as its reference client.) The tasks per runtime and client count are split into
rounds; rounds alternate the runtimes (interleaved A/B); each round gives one tasks/s sample.
Goal: >= 2x runc's tasks/s at 4 clients.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import OURS, RUNC, Runtime, Testbed


def run(ctx: Context) -> Figure:
    figure = Figure("throughput", "4. Throughput: `ctr run --rm` cycles per second", plot_kind="bar",
                    plot_unit="tasks/s")
    return timed(figure, lambda: _measure(ctx, figure))


def _round(testbed: Testbed, rt: Runtime, tasks: int, clients: int) -> float:
    counter = itertools.count()
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                n = next(counter)
            if n >= tasks:
                return
            testbed.run(rt, "hello")

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return tasks / (time.perf_counter() - began)


def _measure(ctx: Context, figure: Figure) -> None:
    testbed = ctx.testbed()
    runtimes: list[Runtime] = [OURS, RUNC, *testbed.peers]
    counts = ctx.counts
    per_round = max(1, counts.throughput_tasks // counts.throughput_rounds)
    for rt in runtimes:
        testbed.run(rt, "hello")  # warm-up
    top = max(counts.throughput_clients)
    for clients in counts.throughput_clients:
        samples: dict[str, list[float]] = {rt.label: [] for rt in runtimes}
        for i in range(counts.throughput_rounds):
            for rt in rotate(runtimes, i):
                samples[rt.label].append(_round(testbed, rt, per_round, clients))
            ctx.log(f"  throughput: {clients} client(s), round {i + 1}/{counts.throughput_rounds}")
        runc = summarize(samples[RUNC.label])
        for rt in runtimes:
            s = summarize(samples[rt.label])
            r = ratio(s.p50, runc.p50)
            goal = ">= 2x runc" if rt is OURS and clients == top else ""
            figure.rows.append(Row(f"{rt.label}, {clients} client(s)", "tasks/s", s, r, goal,
                                   met(r, goal_min=2.0) if goal else None))
            figure.series[f"{rt.label} x{clients}"] = samples[rt.label]
    figure.notes.append(f"{per_round * counts.throughput_rounds} tasks per runtime and client count, in "
                        f"{counts.throughput_rounds} rounds of {per_round}")
    figure.commands = ["N threads, each: ctr run --rm --runtime RUNTIME IMAGE ID ARGS (as in figure 1), back to back"]
