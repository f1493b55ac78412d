"""Total deadlines for registry exchanges: a response's headers and body must arrive in time, not only each read.

A read timeout bounds one wait; a server trickling a byte every second never trips it. So each exchange (one HTTP
request and its response) also has a `Deadline`: it is over `seconds` after it began plus one second per `rate`
bytes received, so a large blob on a slow but honest link keeps going while a trickle ends after about `seconds`.

Owns `Deadline`. oci/transport.py attaches the socket an exchange uses once its request is sent, and bounds every
wait on it by `wait_for(read_timeout)`: the read timeout, or the time left when that is shorter. A wait that ends
because the time is up expires the deadline, which shuts the attached sockets down (shutdown(2): whatever else
reads them gets end-of-file, and the connection is never used again).

Invariants: a deadline's expiry only moves later (bytes received add time); an expired deadline shuts down every
socket attached to it, including one attached after it expired; `wait_for` never returns a bound past the expiry,
and returns none at all once it has passed (`Expired`), so no wait of an exchange outlasts its deadline.
Standard library only, nothing imported that a registry client would not import anyway.
"""

from __future__ import annotations

import _socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Expired(TimeoutError):
    """The deadline passed (an OSError, as a socket timeout is: callers tell them apart by `Deadline.expired`)."""


class Deadline:
    """When one exchange must be over; `progress` extends it by the bytes received."""

    def __init__(self, seconds: float, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.rate = rate
        self.started = clock()
        self.received = 0
        self.expired = False
        self._clock = clock
        self._sockets: list[_socket.socket] = []

    def progress(self, count: int) -> None:
        self.received += count

    def expires_at(self) -> float:
        return self.started + self.seconds + self.received / self.rate

    def describe(self) -> str:
        return f"{self.seconds:g} s plus 1 s per {self.rate >> 10} KiB received"

    def wait_for(self, timeout: float) -> float:
        """How long the next wait may last: `timeout`, or the time left when that is shorter; Expired (after
        expiring the deadline) when no time is left."""
        left = self.expires_at() - self._clock()
        if left <= 0 or self.expired:
            self.expire()
            raise Expired(f"the deadline of {self.describe()} passed")
        return min(timeout, left)

    def check(self) -> None:
        """After a wait that timed out: Expired when that was the deadline's doing."""
        if self.expired or self.expires_at() - self._clock() <= 0:
            self.expire()
            raise Expired(f"the deadline of {self.describe()} passed")

    def attach(self, sock: _socket.socket) -> None:
        self._sockets.append(sock)
        if self.expired:
            _shutdown(sock)

    def expire(self) -> None:
        self.expired = True
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: _socket.socket) -> None:
    try:
        sock.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing is blocked on it
