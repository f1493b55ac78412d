"""Sizes, resource samples and records for the reliability suite: one test, two sizes.

`make test` runs every reliability test (marker ``soak``) at its smoke size, seconds, so none of them can rot.
`make soak` (scripts/soak.sh) runs the same tests with ``WASM_SHIM_SOAK=full`` at their full size (the fuzz
million, the 1000-cycle soak, ...). Each test calls :func:`record` once with what it tried, what held and the
resource figures before and after; with ``WASM_SHIM_SOAK_REPORT`` set, the record is appended there as one JSON
line, and scripts/soak.sh renders those lines into the table of docs/reliability.md.

Ownership: this module owns no process; :func:`sample` reads /proc of a pid it is given.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

FULL = os.environ.get("WASM_SHIM_SOAK") == "full"
REPORT_ENV = "WASM_SHIM_SOAK_REPORT"


def size(smoke: int, full: int) -> int:
    """The count a bounded loop runs: ``smoke`` in `make test`, ``full`` in `make soak`."""
    return full if FULL else smoke


def sample(pid: int) -> dict[str, int]:
    """RSS and PSS (KiB), open fds, threads and mounts of process ``pid`` (its mount namespace's table).

    Raises ProcessLookupError when the process is gone, so a test that samples a dead daemon says so.
    """
    proc = Path(f"/proc/{pid}")
    try:
        status = (proc / "status").read_text()
        rollup = (proc / "smaps_rollup").read_text()
        fds = len(os.listdir(proc / "fd"))
        mounts = len((proc / "mountinfo").read_text().splitlines())
    except FileNotFoundError as exc:
        raise ProcessLookupError(f"process {pid} is gone") from exc

    def field(text: str, name: str) -> int:
        for line in text.splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return 0

    return {"rss_kib": field(status, "VmRSS"), "pss_kib": field(rollup, "Pss"), "fds": fds,
            "threads": field(status, "Threads"), "mounts": mounts}


def threads(pid: int) -> list[str]:
    """The names of process ``pid``'s threads (``/proc/<pid>/task/*/comm``), sorted: what a thread-count
    assertion prints when it fails, so the thread that stayed is named."""
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:
            continue  # the thread ended while we listed
    return sorted(names)


def record(test: str, *, tried: str, held: str, before: Mapping[str, object] | None = None,
           after: Mapping[str, object] | None = None, seconds: float | None = None) -> None:
    """Append one result line for docs/reliability.md (a no-op unless ``WASM_SHIM_SOAK_REPORT`` is set).

    ``tried`` says what was thrown at the node (counts, sizes); ``held`` what the test asserted held.
    """
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = json.dumps({"test": test, "size": "full" if FULL else "smoke", "tried": tried, "held": held,
                       "before": dict(before or {}), "after": dict(after or {}), "seconds": seconds,
                       "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    # O_APPEND: one write of one line, so parallel writers never interleave inside a line.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _figures(values: Mapping[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "-"


def render(lines: list[str]) -> str:
    """The markdown table of docs/reliability.md from the JSON lines :func:`record` wrote."""
    rows = ["| test | size | what it tried | what held | before | after | s |", "|---|---|---|---|---|---|---|"]
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        cells = [r["test"], r["size"], r["tried"], r["held"], _figures(r["before"]), _figures(r["after"]), secs]
        rows.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def write_table(doc: Path, table: str) -> bool:
    """Replace what stands between the markers in ``doc`` with ``table`` and a date line; False without markers."""
    text = doc.read_text() if doc.exists() else ""
    if BEGIN not in text or END not in text:
        return False
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    doc.write_text(f"{head}{BEGIN}\n_Written by `make soak` on {stamp}._\n\n{table.rstrip()}\n{END}{tail}")
    return True


if __name__ == "__main__":  # scripts/soak.sh: python -m lab.soak REPORT [DOC]
    import sys

    table = render(Path(sys.argv[1]).read_text().splitlines())
    print(table, end="")
    if len(sys.argv) > 2:
        doc = Path(sys.argv[2])
        if write_table(doc, table):
            print(f"soak.sh: table written into {doc}", file=sys.stderr)
        else:
            print(f"soak.sh: {doc} has no {BEGIN} marker; the table is printed only", file=sys.stderr)
