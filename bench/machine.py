"""What the benchmarks ran on: machine, load, and the versions of every component. Reads /proc and runs
`--version` commands (each bounded by a timeout); a missing component reads "not found", never an error."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not found ({exc.__class__.__name__})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].strip() if text else f"exit {done.returncode}"


@dataclass
class Machine:
    nproc: int
    cpu: str
    mem_gib: float
    kernel: str
    versions: dict[str, str] = field(default_factory=dict)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    measured_at: str = ""  # UTC, when describe() ran (the start of the run)

    def lines(self) -> list[str]:
        lines = [
            f"machine: {self.nproc} CPUs ({self.cpu}), {self.mem_gib:.1f} GiB RAM, Linux {self.kernel}",
            "load average (1/5/15 min): at start {:.2f} {:.2f} {:.2f}, at end {:.2f} {:.2f} {:.2f}".format(
                *self.load_start, *self.load_end
            ),
        ]
        lines += [f"{name}: {version}" for name, version in self.versions.items()]
        return lines


def describe(containerd_binary: str, ctr_binary: str, wasmtime_cli: str | None) -> Machine:
    try:
        wasmtime_py = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        wasmtime_py = "not installed"
    versions = {
        "containerd": _first_line([containerd_binary, "--version"]),
        "ctr": _first_line([ctr_binary, "--version"]),
        "runc": _first_line(["runc", "--version"]),
        "containerd-shim-runc-v2": _first_line(["containerd-shim-runc-v2", "-v"]),
        "busybox": _first_line(["/bin/busybox"]),
        "wasmtime-py (the shim's engine)": wasmtime_py,
        "wasmtime CLI (baseline of figures 6 and 9)": _first_line([wasmtime_cli, "--version"])
        if wasmtime_cli
        else "not found (scripts/setup.sh --with wasmtime-cli)",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
    }
    return Machine(
        nproc=os.cpu_count() or 0,
        cpu=_cpu_model(),
        mem_gib=_mem_total_gib(),
        kernel=platform.release(),
        versions=versions,
        load_start=load_average(),
        measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
