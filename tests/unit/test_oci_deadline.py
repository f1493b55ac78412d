"""Total deadlines of registry exchanges (oci/deadline.py): the arithmetic, and what expiry does to the sockets.

Socket stand-ins record `shutdown`; that a real blocked read ends is tested against a trickling registry in
tests/integration/test_rel_hostile_registry.py.
"""

from __future__ import annotations

import socket
import threading

from wasm_shim.oci.deadline import Deadline, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeSocket:
    def __init__(self) -> None:
        self.shut = threading.Event()

    def shutdown(self, how: int) -> None:
        assert how == socket.SHUT_RDWR
        self.shut.set()


def test_the_deadline_grows_with_the_bytes_received_only() -> None:
    clock = Clock()
    deadline = Deadline(6.0, 64 << 10, clock)
    assert deadline.expires_at() == 106.0
    deadline.progress(128 << 10)  # two seconds' worth at the minimum rate
    assert deadline.expires_at() == 108.0
    clock.now = 500.0
    assert deadline.expires_at() == 108.0  # time passing never extends it
    assert deadline.describe() == "6 s plus 1 s per 64 KiB received"


def test_expiry_shuts_down_every_attached_socket_even_one_attached_late() -> None:
    deadline = Deadline(1.0, 1, Clock())
    early, late = FakeSocket(), FakeSocket()
    deadline.attach(early)  # type: ignore[arg-type]
    deadline.expire()
    assert deadline.expired and early.shut.is_set()
    deadline.attach(late)  # type: ignore[arg-type]
    assert late.shut.is_set()


def test_the_watchdog_expires_what_is_due_and_spares_what_was_disarmed() -> None:
    clock = Clock()
    spared = Deadline(10.0, 1, clock)
    due = Deadline(50.0, 1, clock)
    due_socket, spared_socket = FakeSocket(), FakeSocket()
    due.attach(due_socket)  # type: ignore[arg-type]
    spared.attach(spared_socket)  # type: ignore[arg-type]
    watchdog = Watchdog(clock)
    try:
        watchdog.arm(spared)
        watchdog.disarm(spared)
        clock.now = 200.0  # both are past their time now; only the armed one may expire
        watchdog.arm(due)
        assert due_socket.shut.wait(10), "the watchdog thread expires a due deadline"
    finally:
        watchdog.close()
    assert due.expired and not spared.expired and not spared_socket.shut.is_set()


def test_an_idle_watchdog_thread_ends_and_the_next_exchange_starts_another() -> None:
    watchdog = Watchdog(idle_exit=0.05)
    try:
        for _ in range(2):
            sock = FakeSocket()
            deadline = Deadline(0.0, 1)
            deadline.attach(sock)  # type: ignore[arg-type]
            watchdog.arm(deadline)
            assert sock.shut.wait(10)
            for _ in range(200):  # a client nobody closes must not keep a thread
                if not watchdog.running:
                    break
                threading.Event().wait(0.05)
            assert not watchdog.running
    finally:
        watchdog.close()
