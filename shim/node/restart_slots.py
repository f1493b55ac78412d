"""How many nodes restart containerd at once: a node restarts it only while it holds one of N slots, the
coordination.k8s.io Leases `<name>-0` .. `<name>-(N-1)` the chart creates in its namespace (chart value
`node.maxConcurrentRestarts`, templates/restart-slots.yaml).

Owns taking a slot and giving it back (the `kubernetes` client's Lease calls; imported here and in report.py only).

Invariants:
- A slot is taken by a replace carrying the resourceVersion it was read at: when two nodes race for one free slot,
  the API server accepts one write and answers the other 409 Conflict, so a slot never has two holders.
- A slot is free when it has no holder, when its holder is this node (an earlier run of ours that died holding
  it), or when its holder has not renewed it for its leaseDurationSeconds (a node that died mid-restart blocks
  the others for at most that long).
- Nothing on the node changes while a run waits for a slot: install.py and uninstall.py take it before their
  first write whenever they will restart containerd, and installer.Node gives it back only after containerd
  answered CRI again (or after the rollback's restart), so a pod killed while waiting leaves its node as it was.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

from .distributions import InstallError
from .restart import say

#: How often a waiting node looks again, and how often it says what it waits for.
POLL_SECONDS = 2.0
REPORT_SECONDS = 30.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class RestartSlots:
    """The restart slots of one release, taken and given back by one node (`holder`)."""

    def __init__(self, name: str, count: int, namespace: str, holder: str, duration: int, *,
                 timeout: float = 0.0, sleep: Callable[[float], None] = time.sleep, api_client: Any = None) -> None:
        from kubernetes import client

        if count < 1:
            raise InstallError(f"--max-concurrent-restarts must be at least 1, not {count}")
        self.names = [f"{name}-{i}" for i in range(count)]
        self.namespace = namespace
        self.holder = holder
        self.duration = duration  # leaseDurationSeconds written when taking a slot
        self.timeout = timeout  # 0: wait as long as it takes (nothing has changed while waiting)
        self._sleep = sleep
        self._api = client.CoordinationV1Api(api_client)  # None: the configuration report.py loaded
        self._exceptions = client.exceptions
        self.held: str = ""

    def _free(self, lease: Any) -> bool:
        spec = lease.spec
        holder = (spec.holder_identity if spec is not None else None) or ""
        if holder in ("", self.holder):
            return True
        renewed = spec.renew_time or spec.acquire_time
        duration = spec.lease_duration_seconds or 0
        return renewed is None or _now() > renewed + datetime.timedelta(seconds=duration)

    def _try(self, name: str) -> str:
        """Take slot `name` if free; "" when taken, else who holds it (or why it cannot be had)."""
        from kubernetes import client

        ApiException = self._exceptions.ApiException
        try:
            lease = self._api.read_namespaced_lease(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return "not created yet"  # helm creates Leases after the DaemonSet (kinds it does not order)
            raise InstallError(f"cannot read the restart slot {self.namespace}/{name}: {exc.status} "
                               f"{exc.reason}") from None
        if not self._free(lease):
            return f"held by {lease.spec.holder_identity if lease.spec is not None else '?'}"
        now = _now()
        spec = lease.spec or client.V1LeaseSpec()
        spec.holder_identity = self.holder
        spec.lease_duration_seconds = self.duration
        spec.acquire_time = now
        spec.renew_time = now
        lease.spec = spec
        try:
            self._api.replace_namespaced_lease(name, self.namespace, lease)  # carries the resourceVersion read
        except ApiException as exc:
            if exc.status == 409:
                return "taken by another node just now"
            raise InstallError(f"cannot take the restart slot {self.namespace}/{name}: {exc.status} "
                               f"{exc.reason}") from None
        return ""

    def take(self) -> None:
        """Block until this node holds a slot (InstallError after `timeout` s when one is set)."""
        if self.held:
            return
        started = last_report = time.monotonic()
        while True:
            holders = []
            for name in self.names:
                why = self._try(name)
                if not why:
                    self.held = name
                    say(f"holding restart slot {self.namespace}/{name} "
                        f"(at most {len(self.names)} node(s) restart containerd at once)")
                    return
                holders.append(f"{name}: {why}")
            waited = time.monotonic() - started
            if self.timeout and waited >= self.timeout:
                raise InstallError(f"no restart slot free after {waited:.0f} s ({'; '.join(holders)}); nothing "
                                   "was changed")
            if time.monotonic() - last_report >= REPORT_SECONDS or waited == 0:
                say("waiting for a restart slot before changing anything (" + "; ".join(holders) + ")")
                last_report = time.monotonic()
            self._sleep(POLL_SECONDS)

    def give_back(self) -> None:
        """Free the slot this node holds (none held: nothing to do). Failures are reported, never raised: the
        slot then frees itself after its leaseDurationSeconds."""
        name, self.held = self.held, ""
        if not name:
            return
        ApiException = self._exceptions.ApiException
        for _ in range(5):
            try:
                lease = self._api.read_namespaced_lease(name, self.namespace)
                spec = lease.spec
                if spec is None or spec.holder_identity != self.holder:
                    return  # expired and taken by another node meanwhile
                spec.holder_identity = None
                spec.acquire_time = None
                spec.renew_time = None
                self._api.replace_namespaced_lease(name, self.namespace, lease)
                say(f"gave back restart slot {self.namespace}/{name}")
                return
            except ApiException as exc:
                if exc.status == 409:
                    continue  # changed between read and write: read again
                say(f"could not give back restart slot {self.namespace}/{name} ({exc.status} {exc.reason}); it "
                    f"frees itself after {self.duration} s")
                return
        say(f"could not give back restart slot {self.namespace}/{name}; it frees itself after {self.duration} s")
