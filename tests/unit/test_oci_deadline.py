"""Total deadlines of registry exchanges (oci/deadline.py): the arithmetic, and what expiry does to the sockets.

Socket stand-ins record `shutdown`; that a real exchange ends at its deadline is tested against a trickling registry
in tests/integration/test_rel_hostile_registry.py.
"""

from __future__ import annotations

import socket
import threading

import pytest

from wasm_shim.oci.deadline import Deadline, Expired


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


def test_each_wait_is_bounded_by_the_time_left_and_none_is_allowed_after_it() -> None:
    clock = Clock()
    deadline = Deadline(6.0, 64 << 10, clock)
    sock = FakeSocket()
    deadline.attach(sock)  # type: ignore[arg-type]
    assert deadline.wait_for(2.0) == 2.0  # the read timeout, while more than that is left
    clock.now += 5.0
    assert deadline.wait_for(2.0) == 1.0  # the time left, when that is shorter
    deadline.check()  # a read timeout with time left is not the deadline's: nothing happens
    assert not deadline.expired and not sock.shut.is_set()
    clock.now += 1.0
    with pytest.raises(Expired, match="the deadline of 6 s plus 1 s per 64 KiB received passed"):
        deadline.wait_for(2.0)
    assert deadline.expired and sock.shut.is_set()


def test_a_wait_that_timed_out_at_the_deadline_expires_it() -> None:
    clock = Clock()
    deadline = Deadline(1.0, 1, clock)
    clock.now += 1.0
    with pytest.raises(Expired):
        deadline.check()
    assert deadline.expired
