"""Task and exec ids as the daemon accepts them: containerd's identifier rule, checked at the API's edge.

Owns ``check_id``. containerd itself validates every container and exec id with this rule before it reaches a
shim (``pkg/identifiers``: letters and digits, joined by single ``.``, ``_`` or ``-``; at most 76 characters), so
a request that breaks it did not come from containerd: it is refused with INVALID_ARGUMENT naming the id.

Why it matters although the daemon never builds a path from an id (socket names are digests, see launch.py):
ids reach runc (which names its state directory after them), thread names, log lines and events; an id with
``/``, ``..``, a NUL or a newline must not get that far (docs/reliability.md "Access").
"""

from __future__ import annotations

import re

MAX_LENGTH = 76
_ALLOWED = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid identifier, or None when it is."""
    if not value:
        return "it is empty"
    if len(value) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if _ALLOWED.fullmatch(value) is None:
        return ("only letters, digits and single '.', '_' or '-' between them are allowed "
                "(no '/', '..', NUL or other characters)")
    return None
