"""Figure 3, the `start` subcommand with the daemon (or shim) already up, exec'd the way containerd does it.

For each runtime a sleeping container is started first (so its daemon/shim is up); then the shim binary is exec'd
as containerd would for another container of that group: `BINARY -namespace NS -address ADDR -publish-binary
CONTAINERD -id ID start`, cwd = a bundle (a scratch copy of the running container's config.json, so containerd's
bundle is not touched), containerd's environment plus NAMESPACE, TTRPC_ADDRESS, GRPC_ADDRESS (and
MAX_SHIM_VERSION=2 on containerd 2.x), stdin empty (ctr passes no runtime options). The same container id is
used, so runc's shim (grouped by id) and ours (grouped by namespace) both find the running one and only print its
address: the path every container of a pod or namespace takes. The bundle also has the `log` FIFO containerd makes
for every shim (runwasi's shim refuses to start without it), read by us as containerd would. Timed from spawn to
exit; goal p50 <= 40 ms. A runtime whose `start` fails is left out of the figure with a note saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import OURS, RUNC, BenchError, Runtime, Testbed

TIMEOUT = 10.0


def run(ctx: Context) -> Figure:
    figure = Figure("start_cmd", "3. `start` subcommand, daemon already up (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _binary(testbed: Testbed, rt: Runtime) -> str:
    if os.sep in rt.binary:
        return rt.binary
    found = shutil.which(rt.binary, path=testbed.containerd.env["PATH"])
    if not found:
        raise BenchError(f"{rt.binary} not found on containerd's PATH")
    return found


def _invocation(testbed: Testbed, rt: Runtime, task_id: str, bundle: Path) -> tuple[list[str], dict[str, str]]:
    c = testbed.containerd
    argv = [_binary(testbed, rt), "-namespace", c.namespace, "-address", c.address,
            "-publish-binary", c.containerd_binary, "-id", task_id, "start"]
    env = dict(c.env)
    env.update({"NAMESPACE": c.namespace, "TTRPC_ADDRESS": c.ttrpc_address, "GRPC_ADDRESS": c.address})
    if c.kind == "2.x":
        env["MAX_SHIM_VERSION"] = "2"
    return argv, env


def _log_fifo(bundle: Path) -> int:
    """The bundle's `log` FIFO, opened for reading (non-blocking) as containerd does before it execs a shim."""
    path = bundle / "log"
    if not path.exists():
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass


def _exec(argv: list[str], env: dict[str, str], bundle: Path) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=bundle, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - began
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"`{' '.join(argv)}` (cwd {bundle}) exited {done.returncode}: "
                         f"stdout {done.stdout!r} stderr {done.stderr!r}")
    return seconds, done.stdout.strip()


def _measure(ctx: Context, figure: Figure) -> None:
    testbed = ctx.testbed()
    runtimes: list[Runtime] = [OURS, RUNC, *testbed.peers]
    calls: dict[str, tuple[list[str], dict[str, str], Path]] = {}
    running: list[str] = []
    logs: list[int] = []
    try:
        for rt in list(runtimes):
            task_id = testbed.new_id("idle")
            testbed.run(rt, "sleep", detach=True, task_id=task_id)
            running.append(task_id)
            state = Path(testbed.containerd.state) / "io.containerd.runtime.v2.task" / testbed.containerd.namespace
            bundle = ctx.workdir / "start-bundles" / rt.label.replace(":", "_")
            bundle.mkdir(parents=True, exist_ok=True)
            shutil.copy(state / task_id / "config.json", bundle / "config.json")
            logs.append(_log_fifo(bundle))
            argv, env = _invocation(testbed, rt, task_id, bundle)
            calls[rt.label] = (argv, env, bundle)
            try:
                _, address = _exec(argv, env, bundle)  # warm-up, and check it answers with the running address
            except BenchError as exc:
                if rt is OURS or rt is RUNC:
                    raise
                runtimes.remove(rt)  # a peer we cannot drive this way: say so, measure the others
                figure.notes.append(f"{rt.label} left out: {str(exc)[:300]}")
                continue
            figure.notes.append(f"{rt.label} answered {address[:60]}...")
        samples: dict[str, list[float]] = {rt.label: [] for rt in runtimes}
        for i in range(ctx.counts.start_cmd_runs):
            for rt in rotate(runtimes, i):
                argv, env, bundle = calls[rt.label]
                samples[rt.label].append(_exec(argv, env, bundle)[0] * 1000)
                for fd in logs:
                    _drain(fd)
    finally:
        for fd in logs:
            os.close(fd)
        for task_id in running:
            testbed.containerd.ctr("task", "kill", "-s", "SIGKILL", task_id, check=False)
        for task_id in running:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                if testbed.containerd.ctr("task", "rm", task_id, check=False).returncode == 0:
                    break
                time.sleep(0.05)
            testbed.containerd.ctr("container", "rm", task_id, check=False)
    runc = summarize(samples[RUNC.label])
    for rt in runtimes:
        s = summarize(samples[rt.label])
        goal = "p50 <= 40 ms" if rt is OURS else ""
        figure.rows.append(Row(f"{rt.label} start", "ms", s, ratio(s.p50, runc.p50), goal,
                               met(s.p50, 40.0) if goal else None))
    figure.series = samples
    figure.commands = [" ".join(calls[rt.label][0]) + "   (cwd = bundle copy with a log FIFO)" for rt in runtimes]
