"""Render the daemon samples of the load-and-soak test (tests/integration/test_rel_soak.py) for docs/reliability.md.

    WASM_SHIM_SOAK_SERIES=/tmp/series.json scripts/soak.sh tests/integration/test_rel_soak.py
    .venv/bin/python scripts/soak-series.py /tmp/series.json [docs/img/soak-daemon.png]

Prints a markdown table: the first sample of each phase and one sample every ``--every`` seconds within a phase.
With a PNG path (and matplotlib installed: the `bench` extra), also plots RSS/PSS (MiB) and fds/threads/mounts over
time with the phases shaded. Reads one JSON file; writes only the PNG it is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(data: dict, every: float) -> str:
    rows = [f"{data['cycles']} cycles from {data['clients']} clients, {data['idle']} idle guests; "
            "daemon samples (RSS/PSS in MiB):", "",
            "| t (s) | phase | RSS | PSS | fds | threads | mounts |", "|---|---|---|---|---|---|---|"]
    last_phase, last_t = None, -every
    for t, phase, s in data["series"]:
        if phase == last_phase and t - last_t < every:
            continue
        rows.append(f"| {t:.0f} | {phase} | {s['rss_kib'] / 1024:.1f} | {s['pss_kib'] / 1024:.1f} | {s['fds']} | "
                    f"{s['threads']} | {s['mounts']} |")
        last_phase, last_t = phase, t
    return "\n".join(rows) + "\n"


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = data["series"]
    t = [row[0] for row in series]
    fig, (mem, counts) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    mem.plot(t, [row[2]["rss_kib"] / 1024 for row in series], label="RSS")
    mem.plot(t, [row[2]["pss_kib"] / 1024 for row in series], label="PSS")
    mem.set_ylabel("MiB")
    mem.legend(loc="upper left")
    for key in ("fds", "threads", "mounts"):
        counts.plot(t, [row[2][key] for row in series], label=key)
    counts.set_ylabel("count")
    counts.set_xlabel("seconds")
    counts.legend(loc="upper left")
    phases: list[tuple[str, float]] = []
    for when, phase, _ in series:
        if not phases or phases[-1][0] != phase:
            phases.append((phase, when))
    for axis in (mem, counts):
        for phase, start in phases:
            if phase == "cycles":
                end = next((w for p, w in phases if w > start), t[-1])
                axis.axvspan(start, end, alpha=0.1, color="gray")
    mem.set_title(f"wasm-shim daemon: {data['cycles']} cycles (8 clients), {data['idle']} idle guests (shaded: cycles)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", type=Path)
    parser.add_argument("png", type=Path, nargs="?")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between rows within a phase")
    args = parser.parse_args()
    data = json.loads(args.series.read_text())
    print(table(data, args.every), end="")
    if args.png:
        plot(data, args.png)


if __name__ == "__main__":
    main()
