"""`python -m bench`: run the benchmark figures, print the table, write results and plots (see bench/__init__.py).

Usage: python -m bench [--quick] [--containerd 1.6|2.x] [--peer-shim PATH]... [--wasmtime-cli PATH]
                       [--only FIG,...] [--out DIR] [--update-docs] [--max-minutes M]
Run from the repository root as root (containerd, mounts). Exit status: 0 when every figure ran (goals missed or
not), 1 when a figure failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import (
    cli,
    cold_start,
    components,
    compute,
    density,
    http_serving,
    instance_start,
    pod_start,
    report,
    start_cmd,
    supply_chain,
    throughput,
)
from .figure import FULL, QUICK, Context, Figure
from .machine import Machine, describe, load_average
from .testbed import BenchError, build_guests, peer_runtimes

FIGURES: dict[str, Callable[[Context], Figure]] = {
    "cold_start": cold_start.run,
    "instance_start": instance_start.run,
    "start_cmd": start_cmd.run,
    "throughput": throughput.run,
    "density": density.run,
    "compute": compute.run,
    "components": components.run,
    "supply_chain": supply_chain.run,
    "http": http_serving.run,
    "http_start": http_serving.run_first_answer,
    "cli": cli.run,
    "pod_start": pod_start.run,
}
REPO = Path(__file__).resolve().parents[1]
# scripts/setup.sh --with wasmtime-cli links it into .tools/bin; the cargo root is where it builds it.
CLI_CANDIDATES = (
    str(REPO / ".tools" / "bin" / "wasmtime"),
    "~/.cache/wasm-shim/cargo/wasmtime-cli-48.0.0/bin/wasmtime",
)


def _wasmtime_cli(given: str | None) -> str | None:
    if given:
        return given
    for candidate in (os.environ.get("WASMTIME_CLI", ""), *CLI_CANDIDATES):
        path = os.path.expanduser(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("wasmtime")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny counts: checks the harness (CI smoke run)")
    p.add_argument("--containerd", choices=("1.6", "2.x"), default="1.6")
    p.add_argument("--peer-shim", action="append", default=[], metavar="PATH",
                   help="another shim v2 binary to run the wasm images beside ours (repeatable)")
    p.add_argument("--wasmtime-cli", metavar="PATH", help="wasmtime CLI for figures 6 and 9 (default: found)")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(FIGURES)}")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    p.add_argument("--update-docs", action="store_true",
                   help="write the results into docs/benchmarks.md and the plots into docs/img/")
    p.add_argument("--replot", action="store_true",
                   help="measure nothing: redraw the plots (and with --update-docs the docs) from OUT/results.json")
    p.add_argument("--max-minutes", type=float, default=25.0,
                   help="skip figures not yet started once this much time has passed")
    args = p.parse_args(argv)
    unknown = [f for f in args.only.split(",") if f and f not in FIGURES]
    if unknown:
        p.error(f"unknown figure(s) {unknown}; known: {', '.join(FIGURES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("bench: run as root (containerd, runc and mounts need it)", file=sys.stderr)
        return 2
    try:
        peers = peer_runtimes(args.peer_shim)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    selected = [f for f in args.only.split(",") if f] or list(FIGURES)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        try:
            saved_machine, saved = report.load_results(args.out / "results.json")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"bench: --replot needs a results.json written by a run in {args.out}: {exc}", file=sys.stderr)
            return 2
        _write(args, saved_machine, saved, argv)
        return 1 if any(f.error for f in saved) else 0
    guests = build_guests()
    cli = _wasmtime_cli(args.wasmtime_cli)
    from lab.containerd import binaries

    ctrd, ctr = binaries(args.containerd)
    machine = describe(ctrd, ctr, cli)
    workdir = Path(tempfile.mkdtemp(prefix="wsb-", dir="/tmp"))
    ctx = Context(args.containerd, QUICK if args.quick else FULL, workdir, guests, peers, cli)
    began = time.monotonic()
    figures: list[Figure] = []
    try:
        for key in selected:
            if time.monotonic() - began > args.max_minutes * 60:
                figures.append(Figure(key, key, error=f"skipped: the {args.max_minutes:g}-minute budget is spent"))
                continue
            one, five, _ = load_average()
            ctx.log(f"bench: {key} (load average {one:.2f} {five:.2f})")
            ctx.wasmtime_cli = _wasmtime_cli(args.wasmtime_cli)  # look again: a build may have finished meanwhile
            try:
                figures.append(FIGURES[key](ctx))
            except Exception as exc:  # one failed figure must not hide the others
                traceback.print_exc()
                figures.append(Figure(key, key, error=f"{exc.__class__.__name__}: {exc}"))
    finally:
        ctx.close()
        shutil.rmtree(workdir, ignore_errors=True)
    machine.load_end = load_average()
    if ctx.wasmtime_cli and ctx.wasmtime_cli != cli:
        machine.versions.update(describe(ctrd, ctr, ctx.wasmtime_cli).versions)
    _write(args, machine, figures, argv)
    return 1 if any(f.error for f in figures) else 0


def _write(args: argparse.Namespace, machine: Machine, figures: list[Figure], argv: list[str] | None) -> None:
    table = report.text_table(machine, figures)
    print(table, flush=True)
    (args.out / "results.txt").write_text(table + "\n")
    (args.out / "results.json").write_text(report.results_json(machine, figures))
    plots = report.plot(figures, args.out)
    (args.out / "results.md").write_text(report.markdown(machine, figures, "." if plots else None))
    print(f"bench: wrote {args.out}/results.{{txt,json,md}} and {len(plots)} plot(s)"
          + ("" if plots else " (install the `bench` extra for plots: pip install -e '.[bench]')"), flush=True)
    if args.update_docs:
        img = REPO / "docs" / "img"
        img.mkdir(parents=True, exist_ok=True)
        for path in plots:
            shutil.copy(path, img / path.name)
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        when = machine.measured_at or "an unrecorded time"
        generated = f"Measured on {when}; written by `{command.strip()}`.\n\n"
        report.update_docs(REPO / "docs" / "benchmarks.md",
                           generated + report.markdown(machine, figures, "img" if plots else None))
        print("bench: updated docs/benchmarks.md and docs/img/", flush=True)


if __name__ == "__main__":
    sys.exit(main())
