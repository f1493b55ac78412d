"""Print the values table of charts/wasm-shim/README.md from values.yaml: every value with a `# --` comment, its
default and that comment. `python scripts/chart-values-table.py --check` exits 1 when the README's table differs
(tests/integration/test_chart.py runs it), `--write` puts it between the README's markers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "wasm-shim"
BEGIN, END = "<!-- values table: scripts/chart-values-table.py --write -->", "<!-- end of values table -->"


def table() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows, path, comment, in_comment = [], [], [], False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            comment, in_comment = [stripped[5:]], True
            continue
        if stripped.startswith("#"):
            if in_comment:
                comment.append(stripped[1:].strip())
            continue
        in_comment = False
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        path = path[: len(match.group(1)) // 2] + [match.group(2)]
        if comment:
            value = values
            for key in path:
                value = value[key]
            rows.append(f"| `{'.'.join(path)}` | `{json.dumps(value)}` | {' '.join(comment).replace('|', '/')} |")
        comment = []
    return "\n".join(["| value | default | meaning |", "|---|---|---|", *rows])


def main() -> int:
    readme = CHART / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + table() + "\n" + text[end:]
    if "--write" in sys.argv:
        readme.write_text(new)
        return 0
    if "--check" in sys.argv:
        if new != text:
            sys.stderr.write(f"{readme}: the values table differs from values.yaml; run "
                             "scripts/chart-values-table.py --write\n")
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
