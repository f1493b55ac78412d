"""A TOML file as its own lines, grouped into table sections: the unit the runtime-table merge and its removal edit.

Owns splitting a file's lines into sections and reading a table header's dotted key (toml.io v1.0.0 "Table":
bare or quoted key parts joined by dots). Pure: lists of lines in, indices out.

A *section* is a `[table]` header line and every line up to the next header; the lines before the first header
are the preamble (path None), and so is an `[[array of tables]]` entry (never ours to edit). A section's *body*
ends after its last line that is neither blank nor a comment; the blank and comment lines after that (its tail)
usually introduce the next section, so an edit that drops a section keeps them unless the next section goes too.

Invariants: the lines are the file's own, line endings included (`str.splitlines(keepends=True)`), so an edit
that drops or inserts whole lines leaves every other byte as it was. The split is textual: a line inside a
multi-line string that looks like a header is taken for one, which is why every edit built on this module is
checked by parsing its result (shim/node/containerd_config.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_HEADER_LINE = re.compile(r"^\s*\[(?!\[)(?P<body>.*)\]\s*(#.*)?$")


@dataclass(frozen=True)
class Section:
    path: tuple[str, ...] | None  # the table's dotted key; None: the preamble, an array-of-tables entry
    start: int  # index of its first line (the header)
    body_end: int  # one past its last line that is neither blank nor a comment (== start + 1 for a bare header)
    end: int  # one past its last line

    def under(self, prefix: tuple[str, ...]) -> bool:
        """Whether this is the table `prefix` or one below it (`prefix.options`)."""
        return self.path is not None and self.path[: len(prefix)] == prefix


def parse_header(body: str) -> tuple[str, ...] | None:
    """Split a table header's dotted key into its parts (bare or quoted); None if it is not one we can read."""
    parts: list[str] = []
    rest = body.strip()
    while rest:
        if rest[0] == '"':
            match = re.match(r'"((?:[^"\\]|\\.)*)"', rest)
            if not match:
                return None
            try:
                parts.append(json.loads(match.group(0)))
            except ValueError:
                return None
        elif rest[0] == "'":
            match = re.match(r"'([^']*)'", rest)
            if not match:
                return None
            parts.append(match.group(1))
        else:
            match = re.match(r"[A-Za-z0-9_-]+", rest)
            if not match:
                return None
            parts.append(match.group(0))
        rest = rest[match.end():].lstrip()
        if rest.startswith("."):
            rest = rest[1:].lstrip()
        elif rest:
            return None
    return tuple(parts)


def is_blank_or_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def split(lines: Sequence[str]) -> list[Section]:
    """The sections of a file's lines, in order, covering every line exactly once."""
    starts: list[tuple[int, tuple[str, ...] | None]] = [(0, None)]
    for index, line in enumerate(lines):
        if line.lstrip().startswith("[["):
            starts.append((index, None))
            continue
        match = _HEADER_LINE.match(line)
        if match:
            starts.append((index, parse_header(match.group("body"))))
    if len(starts) > 1 and starts[1][0] == 0:
        starts.pop(0)  # no preamble: the file opens with a header
    sections = []
    for number, (start, path) in enumerate(starts):
        end = starts[number + 1][0] if number + 1 < len(starts) else len(lines)
        body_end = end
        while body_end > start + 1 and is_blank_or_comment(lines[body_end - 1]):
            body_end -= 1
        sections.append(Section(path, start, body_end, end))
    return sections


def runs(sections: Sequence[Section], chosen: Iterable[int]) -> list[tuple[int, int]]:
    """The line ranges [start, end) that remove the chosen sections (indices into `sections`): each section's
    body, plus its tail when the section after it is chosen too (the lines between two dropped tables belong to
    neither neighbour that stays). Sorted, non-overlapping."""
    picked = sorted(set(chosen))
    out: list[tuple[int, int]] = []
    for position, index in enumerate(picked):
        section = sections[index]
        following = picked[position + 1] if position + 1 < len(picked) else None
        end = section.end if following == index + 1 else section.body_end
        if out and out[-1][1] == section.start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((section.start, end))
    return out
