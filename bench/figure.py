"""What every figure module shares: the run context (counts, runtimes, where to work) and the result shape.

A figure's `run(ctx) -> Figure` measures; `report.py` renders every Figure the same way (table rows, a plot).
Invariant: a Figure's rows carry their own goal and verdict, so the table needs no figure-specific code.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from lab.containerd import Kind

from .stats import Summary
from .testbed import Runtime, Testbed

T = TypeVar("T")


@dataclass(frozen=True)
class Counts:
    """How much each figure measures. FULL is what `make bench` runs; QUICK is the CI smoke run."""

    cold_iterations: int
    instance_runs: int
    start_cmd_runs: int
    throughput_tasks: int
    throughput_rounds: int
    throughput_clients: tuple[int, ...]
    density_steps: tuple[int, ...]
    density_baseline_steps: tuple[int, ...]  # runc and peers (each container is a process or more)
    compute_runs: int
    compute_rounds: int
    component_runs: int
    component_idle: int
    http_first_runs: int
    http_cold_runs: int  # of them with an empty cache (each compiles the 14 MB component: about a minute here)
    http_rounds: int
    http_seconds: float
    http_connections: tuple[int, ...]
    pod_runs: int


FULL = Counts(
    cold_iterations=10,
    instance_runs=150,
    start_cmd_runs=60,
    throughput_tasks=500,
    throughput_rounds=5,
    throughput_clients=(1, 4),
    density_steps=(100, 500, 1000),
    density_baseline_steps=(100,),
    compute_runs=9,
    compute_rounds=100,
    component_runs=5,
    component_idle=5,
    http_first_runs=10,
    http_cold_runs=3,
    http_rounds=3,
    http_seconds=10.0,
    http_connections=(1, 16),
    pod_runs=12,
)
QUICK = Counts(
    cold_iterations=1,
    instance_runs=4,
    start_cmd_runs=3,
    throughput_tasks=4,
    throughput_rounds=2,
    throughput_clients=(1, 2),
    density_steps=(2, 4),
    density_baseline_steps=(2,),
    compute_runs=1,
    compute_rounds=2,
    component_runs=1,
    component_idle=2,
    http_first_runs=3,
    http_cold_runs=1,
    http_rounds=1,
    http_seconds=2.0,
    http_connections=(1, 16),
    pod_runs=2,
)


@dataclass
class Context:
    kind: Kind
    counts: Counts
    workdir: Path
    guests: Path
    peers: Sequence[Runtime]
    wasmtime_cli: str | None
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)
    _lab: Testbed | None = None

    def testbed(self) -> Testbed:
        """The shared containerd (info-level shim logs) for figures that need no private one."""
        if self._lab is None:
            self._lab = self.new_testbed("shared")
        return self._lab

    def new_testbed(self, name: str, **kwargs: object) -> Testbed:
        return Testbed(self.kind, self.workdir / name, self.guests, self.peers, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._lab is not None:
            self._lab.close()
            self._lab = None


@dataclass
class Row:
    """One line of the table: a summary of samples (or one value) for a runtime/variant."""

    label: str
    unit: str
    summary: Summary
    vs_baseline: float = math.nan  # value / the baseline's (runc's unless the figure says otherwise)
    goal: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Figure:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    # label -> samples, for box plots; or label -> [(x, y)] for line plots (see plot_kind)
    series: dict[str, list[float]] = field(default_factory=dict)
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    plot_kind: Literal["box", "bar", "lines"] = "box"
    plot_unit: str = "ms"
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0


def rotate(items: Sequence[T], i: int) -> list[T]:
    """``items`` rotated by ``i``: interleaved A/B where each takes the first slot equally often."""
    if not items:
        return []
    k = i % len(items)
    return [*items[k:], *items[:k]]


def timed(figure: Figure, body: Callable[[], None]) -> Figure:
    began = time.monotonic()
    try:
        body()
    finally:
        figure.seconds = time.monotonic() - began
    return figure


def met(value: float, goal_max: float | None = None, goal_min: float | None = None) -> bool | None:
    if math.isnan(value):
        return None
    if goal_max is not None:
        return value <= goal_max
    if goal_min is not None:
        return value >= goal_min
    return None
