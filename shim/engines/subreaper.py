"""Child subreaper: the daemon adopts the container processes that outlive their parents.

Owns the one process-wide setting prctl(2) PR_SET_CHILD_SUBREAPER. ``runc create`` exits once the container's
init waits for ``runc start``; init is then re-parented to the nearest subreaper above it, which must be the daemon
so that it can reap init and learn its exit status (``child.ExitWatcher``). The pod sandbox's holder processes
are the daemon's own children and need no subreaper. The setting is not inherited across fork.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

# prctl(2) options (include/uapi/linux/prctl.h).
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, arg: Any) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.prctl(option, arg, 0, 0, 0))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value))
    return bool(value.value)


def become_subreaper() -> None:
    """Make this process the child subreaper of its descendants (prctl PR_SET_CHILD_SUBREAPER).

    Container init processes outlive ``runc create`` and are re-parented to us instead of to PID 1, so the
    daemon can reap them and learn their exit status. Not inherited across fork; idempotent.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
