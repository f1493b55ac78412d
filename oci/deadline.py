"""Total deadlines for registry exchanges: a response's headers and body must arrive in time, not only each read.

A read timeout bounds one wait; a server trickling a byte every second never trips it. So each exchange (one HTTP
request and its response) also has a `Deadline`: it is over `seconds` after it began plus one second per `rate`
bytes received, so a large blob on a slow but honest link keeps going while a trickle ends after about `seconds`.

Owns `Deadline` and `Watchdog` (one thread per registry client that wakes at the earliest deadline and shuts the
sockets of an expired exchange down, which ends a read blocked in recv(2) at once: shutdown(2) makes it return
end-of-file). oci/transport.py attaches the socket an exchange uses once its request is sent, so the response
head is bounded as well as the body.

Invariants: a deadline's expiry only moves later (bytes received add time); an expired deadline shuts down every
socket attached to it, including one attached after it expired; the watchdog thread holds no deadline once it is
disarmed, and exits when the watchdog is closed or has had nothing armed for `IDLE_EXIT` seconds; a deadline that
was not expired when `disarm` returned never will be (disarm and expiry hold the same lock), so a connection whose
deadline is disarmed unexpired may be kept for the next exchange.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

IDLE_EXIT = 10.0  # seconds the watchdog thread waits with nothing armed before it ends


class Deadline:
    """When one exchange must be over; `progress` extends it by the bytes received."""

    def __init__(self, seconds: float, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.rate = rate
        self.started = clock()
        self.received = 0
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def progress(self, count: int) -> None:
        self.received += count

    def expires_at(self) -> float:
        return self.started + self.seconds + self.received / self.rate

    def describe(self) -> str:
        return f"{self.seconds:g} s plus 1 s per {self.rate >> 10} KiB received"

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            late = self.expired
        if late:
            _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing is blocked on it


class Watchdog:
    """Expires armed deadlines when their time comes. The thread starts with the first `arm`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, idle_exit: float = IDLE_EXIT) -> None:
        self._clock = clock
        self._idle_exit = idle_exit
        self._wake = threading.Condition()
        self._armed: set[Deadline] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, deadline: Deadline) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the registry client is closed")
            self._armed.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="registry-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def disarm(self, deadline: Deadline) -> None:
        with self._wake:
            self._armed.discard(deadline)

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                now = self._clock()
                soonest: float | None = None
                for deadline in list(self._armed):
                    at = deadline.expires_at()
                    if at <= now:
                        self._armed.discard(deadline)
                        deadline.expire()
                    elif soonest is None or at < soonest:
                        soonest = at
                if soonest is None:
                    # Nothing armed: linger a little for the next exchange, then end, so a client nobody closed
                    # leaves no thread behind (the next `arm` starts another).
                    self._wake.wait(self._idle_exit)
                    if not self._armed:
                        self._thread = None
                        return
                else:
                    self._wake.wait(soonest - now)

    @property
    def running(self) -> bool:
        with self._wake:
            return self._thread is not None

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._armed.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
