"""Figure 2, instance start inside the daemon: CreateTask received -> the guest's first instruction.

Measurement points (wall clock, one machine): the daemon's info lines "task created" and "task started" carry
`received_ns=` and `done_ns=` (shim/daemon/task_service.py, logfmt.py), so it is measured at the level it runs at;
the `clock` guest prints
`realtime_ns=` (CLOCK_REALTIME) as the first thing its main does. From them, per task:
- in-daemon: Create's handling (received -> done) + Start received -> first instruction: the daemon's own work,
  without containerd's between the two calls (goal: p50 <= 1 ms from the compiled-module cache);
- Create received -> first instruction: the same, plus containerd's work between Create and Start;
- for every runtime alike, from the client: ctr spawned -> first instruction (runc: busybox sh prints
  $EPOCHREALTIME, microseconds, as its first command).
Runs use their own containerd.
"""

from __future__ import annotations

import re

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import OURS, RUNC, Runtime, Testbed

_TIMING = re.compile(r'msg="task (created|started)[^"]*" task=(\S+) namespace=\S+ received_ns=(\d+) done_ns=(\d+)')
_VERBS = {"created": "create", "started": "start"}


def run(ctx: Context) -> Figure:
    figure = Figure("instance_start", "2. Instance start inside the daemon, cached module (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _first_instruction_ns(rt: Runtime, stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("realtime_ns="):
            return int(line.split("=", 1)[1])
        if line.startswith("realtime_us="):  # busybox sh: $EPOCHREALTIME = seconds.microseconds
            seconds, _, micros = line.split("=", 1)[1].partition(".")
            return int(seconds) * 1_000_000_000 + int(micros.ljust(6, "0")[:6]) * 1000
    raise ValueError(f"{rt.label}: no realtime stamp in the workload's output: {stdout!r}")


def _timings(testbed: Testbed) -> dict[tuple[str, str], tuple[int, int]]:
    found = {}
    for m in _TIMING.finditer(testbed.shim_log_text()):
        found[(_VERBS[m.group(1)], m.group(2))] = (int(m.group(3)), int(m.group(4)))
    return found


def _measure(ctx: Context, figure: Figure) -> None:
    with ctx.new_testbed("instance") as testbed:
        runtimes: list[Runtime] = [OURS, RUNC, *testbed.peers]
        for rt in runtimes:
            testbed.run(rt, "clock")  # warm-up: daemon up, module compiled and cached
        first: dict[str, int] = {}  # our task id -> first instruction
        client: dict[str, list[float]] = {rt.label: [] for rt in runtimes}
        timings: dict[tuple[str, str], tuple[int, int]] = {}
        lost: dict[str, int] = {}
        for i in range(ctx.counts.instance_runs):
            for rt in rotate(runtimes, i):
                task_id = testbed.new_id("clock")
                result = testbed.run(rt, "clock", task_id=task_id)
                try:
                    ns = _first_instruction_ns(rt, result.stdout)
                except ValueError:
                    # Seen with runc under load: `ctr run --rm` exited 0 having copied no output. Counted, not fatal.
                    lost[rt.label] = lost.get(rt.label, 0) + 1
                    continue
                client[rt.label].append((ns - result.spawned_ns) / 1e6)
                if rt is OURS:
                    first[task_id] = ns
            if (i + 1) % 50 == 0:  # the daemon's log rotates at 1 MiB: collect as we go
                timings.update(_timings(testbed))
                ctx.log(f"  instance start: {i + 1}/{ctx.counts.instance_runs}")
        timings.update(_timings(testbed))
    in_daemon, create_to_first, start_to_first, create_handling = [], [], [], []
    for task_id, ns in first.items():
        create, start = timings.get(("create", task_id)), timings.get(("start", task_id))
        if create is None or start is None:
            continue
        create_handling.append((create[1] - create[0]) / 1e6)
        start_to_first.append((ns - start[0]) / 1e6)
        in_daemon.append((create[1] - create[0] + ns - start[0]) / 1e6)
        create_to_first.append((ns - create[0]) / 1e6)
    for label, count in lost.items():
        figure.notes.append(f"{label}: {count} run(s) printed no stamp (ctr copied no output); left out")
    if len(in_daemon) < len(first):
        figure.notes.append(f"timing lines found for {len(in_daemon)} of {len(first)} tasks (log rotation)")
    s = summarize(in_daemon)
    figure.rows.append(Row("wasm-shim in-daemon: Create handling + Start -> first instruction", "ms", s,
                           goal="p50 <= 1 ms", met=met(s.p50, 1.0)))
    figure.rows.append(Row("  of which Create handling (bundle, rootfs mount, prepare, stdio)", "ms",
                           summarize(create_handling)))
    figure.rows.append(Row("  of which Start received -> first instruction", "ms", summarize(start_to_first)))
    figure.rows.append(Row("wasm-shim Create received -> first instruction (incl. containerd)", "ms",
                           summarize(create_to_first)))
    runc = summarize(client[RUNC.label])
    for rt in runtimes:
        c = summarize(client[rt.label])
        figure.rows.append(Row(f"{rt.label}: ctr spawned -> first instruction (client view)", "ms", c,
                               ratio(c.p50, runc.p50)))
    figure.series = {"wasm-shim in-daemon": in_daemon, "wasm-shim Create->first": create_to_first}
    figure.series.update({f"{label}: ctr->first": v for label, v in client.items()})
    figure.commands = ["ctr run --rm --runtime io.containerd.wasmtime.v1 .../clock:latest ID /app.wasm "
                       "(guest prints CLOCK_REALTIME first)",
                       "ctr run --rm --runtime io.containerd.runc.v2 .../busybox:latest ID "
                       "/bin/sh -c 'echo realtime_us=$EPOCHREALTIME'"]
    figure.notes.append(f"{ctx.counts.instance_runs} runs per runtime, interleaved; p99 of n < 100 is the max")
