"""EventQueue: one publisher, in order, bounded retries, flushed on close (a recording sink; no containerd)."""

from __future__ import annotations

import asyncio

import pytest

from wasm_shim.shim.daemon.events import Envelope, EventQueue
from wasm_shim.shim.protos import events_pb2

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class Sink:
    """Fails the first ``failures[topic]`` deliveries of each topic, then records it."""

    def __init__(self, failures: dict[str, int] | None = None, delay: float = 0.0):
        self.failures = dict(failures or {})
        self.delay = delay
        self.attempts: list[str] = []
        self.delivered: list[tuple[str, str]] = []

    async def __call__(self, event: Envelope) -> None:
        self.attempts.append(event.topic)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures.get(event.topic, 0) > 0:
            self.failures[event.topic] -= 1
            raise ConnectionError("containerd is restarting")
        self.delivered.append((event.namespace, event.topic))


def _lifecycle(queue: EventQueue, task: str) -> None:
    queue.publish("ns", events_pb2.TaskCreate(container_id=task))
    queue.publish("ns", events_pb2.TaskStart(container_id=task))
    queue.publish("ns", events_pb2.TaskExit(container_id=task))
    queue.publish("ns", events_pb2.TaskDelete(container_id=task))


async def test_events_leave_in_the_order_they_were_published() -> None:
    sink = Sink()
    queue = EventQueue(sink)
    queue.start()
    _lifecycle(queue, "a")
    queue.publish("other", events_pb2.TaskOOM(container_id="b"))
    await queue.close()
    assert sink.delivered == [("ns", "/tasks/create"), ("ns", "/tasks/start"), ("ns", "/tasks/exit"),
                              ("ns", "/tasks/delete"), ("other", "/tasks/oom")]


async def test_a_failed_delivery_is_retried_before_the_next_event() -> None:
    sink = Sink({"/tasks/start": 2})
    queue = EventQueue(sink, attempts=3, backoff=0.001)
    queue.start()
    _lifecycle(queue, "a")
    await queue.close()
    assert sink.attempts == ["/tasks/create", "/tasks/start", "/tasks/start", "/tasks/start", "/tasks/exit",
                             "/tasks/delete"]  # nothing overtakes the start while it is retried
    assert [topic for _, topic in sink.delivered] == ["/tasks/create", "/tasks/start", "/tasks/exit",
                                                      "/tasks/delete"]


async def test_an_event_is_dropped_after_its_attempts_and_the_rest_still_leave(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink({"/tasks/exit": 10})
    queue = EventQueue(sink, attempts=2, backoff=0.001)
    queue.start()
    _lifecycle(queue, "a")
    await queue.close()
    assert sink.attempts.count("/tasks/exit") == 2
    assert [topic for _, topic in sink.delivered] == ["/tasks/create", "/tasks/start", "/tasks/delete"]
    assert "dropping event /tasks/exit (ns) after 2 attempts" in caplog.text


async def test_close_flushes_what_is_queued_and_gives_up_at_its_timeout(
        caplog: pytest.LogCaptureFixture) -> None:
    slow = Sink(delay=0.01)
    queue = EventQueue(slow)
    queue.start()
    _lifecycle(queue, "a")  # all queued, none delivered yet
    await queue.close(timeout=5.0)
    assert len(slow.delivered) == 4
    stuck = Sink(delay=3600)
    queue = EventQueue(stuck)
    queue.start()
    _lifecycle(queue, "b")
    await queue.close(timeout=0.05)  # returns: a sink that never answers cannot hold the daemon's exit
    assert stuck.delivered == [] and "event flush timed out with" in caplog.text
