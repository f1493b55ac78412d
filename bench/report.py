"""Rendering: the text table for stdout, the markdown for docs/benchmarks.md, results.json, and PNG plots.

Invariants: rendering never raises for missing data (NaN prints "n/a"); plots need matplotlib (the `bench` extra)
and are skipped with a note when it is absent, so the table is always printed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .figure import Figure, Row
from .machine import Machine
from .stats import fmt

_HEADER = ("what", "unit", "n", "p50", "p99", "p25..p75", "min..max", "vs base", "goal", "met")


def _cells(row: Row) -> tuple[str, ...]:
    s = row.summary
    digits = 3 if row.unit == "MiB" else (2 if not math.isnan(s.p50) and s.p50 < 10 else 1)
    met = "" if row.met is None else ("yes" if row.met else "NO")
    return (
        row.label,
        row.unit,
        str(s.n),
        fmt(s.p50, digits),
        fmt(s.p99, digits),
        f"{fmt(s.p25, digits)}..{fmt(s.p75, digits)}",
        f"{fmt(s.min, digits)}..{fmt(s.max, digits)}",
        "" if math.isnan(row.vs_baseline) else f"{row.vs_baseline:.2f}x",
        row.goal,
        met,
    )


def text_table(machine: Machine, figures: Sequence[Figure]) -> str:
    out = ["wasm-shim benchmarks", *machine.lines(), ""]
    for figure in figures:
        out.append(f"== {figure.title}  [{figure.seconds:.0f} s]")
        if figure.error:
            out.append(f"   FAILED: {figure.error}")
        rows = [_HEADER, *(_cells(r) for r in figure.rows)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
        for r in rows:
            out.append("   " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        for row in figure.rows:
            if row.note:
                out.append(f"   - {row.label}: {row.note}")
        out += [f"   note: {n}" for n in figure.notes]
        out += [f"   $ {c}" for c in figure.commands]
        out.append("")
    return "\n".join(out)


def markdown(machine: Machine, figures: Sequence[Figure], image_dir: str | None) -> str:
    out = ["```", *machine.lines(), "```", ""]
    for figure in figures:
        out.append(f"### {figure.title}")
        out.append("")
        if figure.error:
            out += [f"**Failed:** `{figure.error.splitlines()[0]}`", ""]
        out.append("| " + " | ".join(_HEADER) + " |")
        out.append("|" + "---|" * len(_HEADER))
        for row in figure.rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
        out.append("")
        for row in figure.rows:
            if row.note:
                out.append(f"- {row.label}: {row.note}")
        out += [f"- {n}" for n in figure.notes]
        if figure.commands:
            out += ["", "```", *figure.commands, "```"]
        if image_dir is not None and (figure.series or figure.lines):
            out += ["", f"![{figure.title}]({image_dir}/{figure.key}.png)"]
        out.append("")
    return "\n".join(out)


def results_json(machine: Machine, figures: Sequence[Figure]) -> str:
    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean({"machine": asdict(machine), "figures": [asdict(f) for f in figures]}), indent=1)


def load_results(path: Path) -> tuple[Machine, list[Figure]]:
    """The Machine and Figures a run saved in results.json (for --replot)."""
    from .stats import Summary

    data = json.loads(path.read_text())

    def number(value: object) -> float:
        return math.nan if value is None else float(value)  # type: ignore[arg-type]

    m = data["machine"]
    machine = Machine(nproc=m["nproc"], cpu=m["cpu"], mem_gib=m["mem_gib"], kernel=m["kernel"],
                      versions=m["versions"], load_start=tuple(m["load_start"]), load_end=tuple(m["load_end"]),
                      measured_at=m.get("measured_at", ""))
    figures = []
    for f in data["figures"]:
        rows = [Row(label=r["label"], unit=r["unit"],
                    summary=Summary(r["summary"]["n"], *(number(r["summary"][k]) for k in
                                                         ("p50", "p99", "p25", "p75", "min", "max"))),
                    vs_baseline=number(r["vs_baseline"]), goal=r["goal"], met=r["met"], note=r["note"])
                for r in f["rows"]]
        figures.append(Figure(key=f["key"], title=f["title"], rows=rows, series=f["series"],
                              lines={k: [(x, y) for x, y in v] for k, v in f["lines"].items()},
                              plot_kind=f["plot_kind"], plot_unit=f["plot_unit"], commands=f["commands"],
                              notes=f["notes"], error=f["error"], seconds=f["seconds"]))
    return machine, figures


def plot(figures: Sequence[Figure], out: Path) -> list[Path]:
    """One PNG per figure with data into ``out``; returns the files written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for figure in figures:
        if not (figure.series or figure.lines):
            continue
        height = 4.0 if figure.plot_kind == "lines" else 1.2 + 0.45 * max(len(figure.series), 3)
        fig, ax = plt.subplots(figsize=(9, height))
        if figure.plot_kind == "lines":
            from matplotlib.ticker import FormatStrFormatter, NullFormatter

            for label, points in figure.lines.items():
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=label)
            ax.axhline(1.0, linestyle="--", color="grey", label="goal: 1 MiB")
            ax.set_xlabel("idle containers")
            ax.set_ylabel(f"PSS per container ({figure.plot_unit})")
            ax.set_yscale("log")
            ax.set_yticks([0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10])
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
        else:
            labels = [k for k, v in figure.series.items() if v]
            data = [figure.series[k] for k in labels]
            if figure.plot_kind == "bar":
                medians = [sorted(d)[len(d) // 2] for d in data]
                low = [m - min(d) for m, d in zip(medians, data, strict=True)]
                high = [max(d) - m for m, d in zip(medians, data, strict=True)]
                ax.barh(labels, medians, xerr=[low, high], capsize=3, color="tab:blue", alpha=0.7)
            else:
                ax.boxplot(data, vert=False, tick_labels=labels, showfliers=True)
                flat = [x for d in data for x in d if x > 0]
                if flat and max(flat) / min(flat) > 50:
                    ax.set_xscale("log")
            ax.set_xlabel(figure.plot_unit)
            ax.grid(True, axis="x", which="both", alpha=0.3)
        ax.set_title(figure.title)
        fig.tight_layout()
        path = out / f"{figure.key}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"


def update_docs(doc: Path, generated: str) -> None:
    """Replace what lies between the results markers in ``doc`` (the hand-written rest stays)."""
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{generated}\n{END}{tail}")
