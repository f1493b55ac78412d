"""Task events: one queue, one publisher, in order (docs/design.md, rule 4).

Owns: the order in which events leave the daemon and their delivery to containerd's events service over ttrpc
(`containerd.services.events.ttrpc.v1.Events/Forward`, an `Envelope` whose `event` Any has the bare type URL
containerd uses, e.g. `containerd.events.TaskExit`).

Invariants:
- `publish` never blocks and never fails: it is called from task-service methods on the event loop.
- Events leave in the order they were published, one at a time; a failed delivery is retried (bounded) before the
  next event is attempted, so containerd never sees an exit before its start.
- `close()` flushes what is queued (bounded by a timeout) before the daemon exits.
- Observers (`observe`, e.g. the metrics) see each event as it is published, on the loop; one that fails is
  logged and never stops the event or the other observers.
The sink is a collaborator (`Forwarder`), so tests can capture events without containerd.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from ..protos import events_pb2, ttrpc_events_pb2
from ..ttrpc.client import Client

log = logging.getLogger(__name__)

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"

TOPICS: dict[type[Message], str] = {
    events_pb2.TaskCreate: "/tasks/create",
    events_pb2.TaskStart: "/tasks/start",
    events_pb2.TaskExit: "/tasks/exit",
    events_pb2.TaskDelete: "/tasks/delete",
    events_pb2.TaskOOM: "/tasks/oom",
    events_pb2.TaskPaused: "/tasks/paused",
    events_pb2.TaskResumed: "/tasks/resumed",
    events_pb2.TaskExecAdded: "/tasks/exec-added",
    events_pb2.TaskExecStarted: "/tasks/exec-started",
}


@dataclass(frozen=True)
class Envelope:
    """One event on its way to containerd (events.proto `Envelope`): where, which topic, the message, when."""

    namespace: str
    topic: str
    message: Message
    timestamp_ns: int


Forwarder = Callable[[Envelope], Awaitable[None]]


def encode_forward_request(event: Envelope) -> bytes:
    request = ttrpc_events_pb2.ForwardRequest()
    envelope = request.envelope
    seconds, nanos = divmod(event.timestamp_ns, 1_000_000_000)
    envelope.timestamp.seconds = seconds
    envelope.timestamp.nanos = nanos
    envelope.namespace = event.namespace
    envelope.topic = event.topic
    # containerd's typeurl registry uses the bare full name, not type.googleapis.com/...
    envelope.event.type_url = event.message.DESCRIPTOR.full_name
    envelope.event.value = event.message.SerializeToString()
    return request.SerializeToString()


class TtrpcForwarder:
    """Delivers events to containerd's ttrpc events service, reconnecting as needed."""

    def __init__(self, address: str) -> None:
        self._path = address.removeprefix("unix://")
        self._client: Client | None = None

    async def __call__(self, event: Envelope) -> None:
        if self._client is None:
            self._client = await Client.connect(self._path, timeout=5.0)
        try:
            await self._client.call(
                EVENTS_SERVICE,
                "Forward",
                encode_forward_request(event),
                timeout=5.0,
                metadata={"containerd-namespace-ttrpc": event.namespace},
            )
        except ConnectionError:
            await self.close()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class EventQueue:
    """The daemon's single outgoing event stream."""

    def __init__(self, forward: Forwarder, *, attempts: int = 5, backoff: float = 0.2) -> None:
        self._forward = forward
        self._queue: asyncio.Queue[Envelope | None] = asyncio.Queue()
        self._attempts = attempts
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._observers: list[Callable[[Envelope], None]] = []

    def observe(self, observer: Callable[[Envelope], None]) -> None:
        """Call ``observer(event)`` for every event published from now on (on the loop, before delivery)."""
        self._observers.append(observer)

    def publish(self, namespace: str, message: Message) -> None:
        topic = TOPICS[type(message)]
        event = Envelope(namespace, topic, message, time.time_ns())
        self._queue.put_nowait(event)
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                log.exception("event observer failed on %s", topic)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            await self._deliver(event)

    async def _deliver(self, event: Envelope) -> None:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                await self._forward(event)
                return
            except Exception as exc:  # any failure of the sink: retry, then drop with a log line
                if attempt == self._attempts:
                    log.error("dropping event %s (%s) after %d attempts: %s", event.topic, event.namespace,
                              attempt, exc)
                    return
                log.warning("event %s not delivered (attempt %d): %s; retrying", event.topic, attempt, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.error("event flush timed out with %d events queued", self._queue.qsize())
            self._task.cancel()
        self._task = None
