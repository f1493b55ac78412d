"""The daemon's log line format: logfmt, one line per record.

Owns ``LogfmtFormatter``. Every line is ``key=value`` pairs in a fixed order, the same keys containerd and its
shims use (logrus' text format), so one grep or one log pipeline reads containerd's lines and ours alike:

    time=2026-11-30T15:04:05.123Z level=info msg="task exited with status 0" task=t1 namespace=k8s.io
        runtime=wasm-shim pid=4242

- ``time`` is UTC, RFC 3339 with milliseconds; ``level`` is debug, info, warning or error.
- ``task`` and ``namespace`` appear when the record carries them (``extra={"task": ..., "namespace": ...}``):
  every info line about one task's lifecycle does (task_service.py). ``received_ns`` and ``done_ns`` (the
  wall-clock nanoseconds a Create or Start was received and answered) follow on "task created" and "task started":
  bench/instance_start.py reads them, so the daemon is measured at the level it runs at.
- A value is quoted (Go ``%q`` style: backslash, quote, newline, tab and other control characters escaped) when
  it is empty or holds a space, ``=``, a quote or a control character, so a line never breaks in two: a traceback
  becomes the ``error`` value.
"""

from __future__ import annotations

import logging
import time

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@,+[]()#%")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
CONTEXT_KEYS = ("task", "namespace", "received_ns", "done_ns")


def quote(value: str) -> str:
    """``value`` as a logfmt value: bare when it is plain, else quoted with escapes."""
    if value and all(c in _PLAIN for c in value):
        return value
    out = []
    for c in value:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


class LogfmtFormatter(logging.Formatter):
    """Formats a record as one logfmt line (see the module docstring for the keys)."""

    def __init__(self, runtime: str = "wasm-shim") -> None:
        super().__init__()
        self._runtime = runtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"time={stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"msg={quote(record.getMessage())}"]
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                parts.append(f"{key}={quote(str(value))}")
        if record.exc_info:
            parts.append(f"error={quote(self.formatException(record.exc_info))}")
        parts.append(f"runtime={self._runtime}")
        parts.append(f"pid={record.process}")
        return " ".join(parts)
