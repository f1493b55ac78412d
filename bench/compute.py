"""Figure 6, guest compute: a CPU-bound guest (lab/guests/src/sha256.c: ROUNDS SHA-256 passes over 1 MiB) in
our shim against the same module under the `wasmtime` CLI, and under any peer shim.

The guest measures its own compute time (CLOCK_MONOTONIC around the rounds: `compute_ns=`), which is what
"steady-state speed" means; the whole command's wall time is reported beside it. The CLI runs twice: as a user
would (`wasmtime run`), and with epoch interruption on (`-W timeout=3600s`, which the CLI implements with an epoch
deadline: the mechanism our engine uses for kill), so a gap between the two shows what that costs. The CLI is built
from crates.io (48.0.0: newer ones need a newer rustc than this machine's) while the shim embeds wasmtime-py 50:
the Cranelift versions differ. No runc row: a native program is not the same program.
Goal: speed >= 0.95x the CLI's (CLI time / ours).
"""

from __future__ import annotations

import subprocess
import time

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import OURS, BenchError, Runtime

TIMEOUT = 300.0


def run(ctx: Context) -> Figure:
    figure = Figure("compute", "6. Guest compute: sha256 guest, guest-measured time (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _compute_ms(stdout: str, what: str) -> float:
    for line in stdout.splitlines():
        if line.startswith("compute_ns="):
            return int(line.split("=", 1)[1]) / 1e6
    raise BenchError(f"{what}: no compute_ns= line in its output: {stdout!r}")


def _cli(argv: list[str]) -> tuple[float, float, str]:
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    wall = (time.perf_counter() - began) * 1000
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
    return _compute_ms(done.stdout, argv[0]), wall, done.stdout


def _measure(ctx: Context, figure: Figure) -> None:
    testbed = ctx.testbed()
    rounds = str(ctx.counts.compute_rounds)
    module = str(ctx.guests / "sha256.wasm")
    variants: dict[str, list[str]] = {}
    if ctx.wasmtime_cli:
        variants["wasmtime CLI"] = [ctx.wasmtime_cli, "run", module, rounds]
        # The CLI's -W timeout is implemented with epoch interruption (a deadline far away), as our engine's kill.
        variants["wasmtime CLI, epoch interruption"] = [ctx.wasmtime_cli, "run", "-W", "timeout=3600s",
                                                        module, rounds]
        for name, argv in list(variants.items()):
            try:
                _cli(argv)  # warm-up, and drop a variant this CLI does not take
            except BenchError as exc:
                lines = str(exc).splitlines()
                reason = " / ".join([lines[0], *(line.strip() for line in lines if "trap" in line)][:3])
                figure.notes.append(f"{name} skipped: {reason[:300]}")
                del variants[name]
    else:
        figure.notes.append("no wasmtime CLI found: `scripts/setup.sh --with wasmtime-cli` builds 48.0.0 "
                            "(or pass --wasmtime-cli PATH); only the shims are measured")
    shims: list[Runtime] = [OURS, *testbed.peers]
    for rt in shims:
        testbed.run(rt, "sha256", args=[rounds])  # warm-up: compiled and cached
    names = [rt.label for rt in shims] + list(variants)
    compute: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    digests: set[str] = set()
    for i in range(ctx.counts.compute_runs):
        for name in rotate(names, i):
            if name in variants:
                c, w, out = _cli(variants[name])
            else:
                rt = next(r for r in shims if r.label == name)
                result = testbed.run(rt, "sha256", args=[rounds], timeout=TIMEOUT)
                c, w, out = _compute_ms(result.stdout, name), result.seconds * 1000, result.stdout
            compute[name].append(c)
            wall[name].append(w)
            digests.update(line for line in out.splitlines() if line.startswith("digest="))
        ctx.log(f"  compute: run {i + 1}/{ctx.counts.compute_runs}")
    if len(digests) > 1:
        figure.notes.append(f"DIFFERENT RESULTS between runs: {sorted(digests)}")
    cli = summarize(compute.get("wasmtime CLI", []))
    for name in names:
        s = summarize(compute[name])
        speed = ratio(cli.p50, s.p50)  # > 1: faster than the CLI
        goal = ">= 0.95x CLI speed" if name == OURS.label and variants else ""
        figure.rows.append(Row(f"{name} (speed vs CLI {speed:.2f}x)" if variants else name, "ms", s,
                               ratio(s.p50, cli.p50), goal, met(speed, goal_min=0.95) if goal else None,
                               note=f"whole command p50 {summarize(wall[name]).p50:.0f} ms"))
    figure.series = compute
    figure.commands = [" ".join(v) for v in variants.values()] + [
        f"ctr run --rm --runtime {OURS.runtime} .../sha256:latest ID /app.wasm {rounds}"]
    figure.notes.append(f"{ctx.counts.compute_runs} runs each, interleaved; 'vs' column here = time / CLI time")
