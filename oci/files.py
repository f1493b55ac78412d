"""Writing files so a reader never sees half of one: the temporary is removed when the write fails.

Every writer here (the artifact cache, key files, pulled artifacts, a layer placed in a container's rootfs) writes
a temporary sibling opened with O_EXCL, then renames it over the final name. The rename is the writer's; this
module owns only the clean-up: whatever goes wrong before it, the temporary does not outlive the attempt.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def removed_on_failure(temporary: str) -> Iterator[None]:
    """Unlink ``temporary`` (if it exists) when the block raises anything, then re-raise it unchanged."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
