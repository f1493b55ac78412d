"""containerd's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`) as plain async methods: pods held by the daemon.

On containerd 2.x a runtime table with `sandboxer = "shim"` makes CRI ask the runtime's shim for each pod's
sandbox instead of running CRI's pause container through it (containerd plugins/sandbox/controller.go). The
daemon answers with a holder process per pod (holder.py): the pod's namespaces at the cost of one small
static process, with no pause image, no snapshot, no container record and no runc. `rpc.py` in shim/daemon
adapts these methods to ttrpc (rule 2 of docs/design.md).

The calls, as containerd makes them: CreateSandbox (right after the shim's `start`) records the pod: its plan
(pod.py) and its /etc files (files.py); StartSandbox spawns the holder, places it in the pod's cgroup
(cgroup.py) and answers its pid, from which CRI names every container's namespaces; WaitSandbox blocks until the
holder is gone; StopSandbox kills it (and its PID namespace with it); ShutdownSandbox forgets the pod and removes
its files; SandboxStatus, PingSandbox, Platform and SandboxMetrics describe it; UpdateSandbox is UNIMPLEMENTED
(optional in the API; CRI tolerates it).

Invariants:
- A sandbox belongs to the namespace it was created in; a call from another finds nothing (as for tasks).
- The exit of a holder is recorded once, with its status and time, whoever caused it; WaitSandbox of a stopped
  sandbox answers at once, and every WaitSandbox answers once the holder is gone.
- Stop and Shutdown are idempotent; Shutdown of an unknown sandbox is not an error (containerd retries it).
- Every failure a pod author can cause (a user namespace, a sysctl outside the pod's namespaces) is an RPC error
  naming it, which CRI shows as the pod's event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from ..daemon.identifiers import id_problem
from ..daemon.stats import task_metrics
from ..engines.child import proc_usage
from ..protos import sandbox_pb2, types_pb2
from ..protos.platform_pb2 import Platform
from ..ttrpc.status import Code, RpcError
from . import cgroup, files
from .holder import Holder, HolderError, HolderPlan, Holders
from .pod import PodError, PodPlan, pod_config, pod_plan

log = logging.getLogger(__name__)

READY = "SANDBOX_READY"
NOT_READY = "SANDBOX_NOTREADY"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
                  "riscv64": "riscv64"}


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)
    return ts


@dataclass
class Sandbox:
    """One pod's sandbox. Touched on the event loop only."""

    id: str
    namespace: str
    bundle: str
    plan: PodPlan
    created_at_ns: int
    files_dir: str | None = None  # CRI's directory of the pod's /etc files, when this daemon made it
    holder: Holder | None = None
    cgroups: list[str] = field(default_factory=list)
    exit_status: int | None = None
    exited_at_ns: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.holder is not None and self.exit_status is None


class SandboxService:
    """The pods of one daemon; see the module docstring."""

    def __init__(self, holders: Holders | None, *, clock: Callable[[], int] = time.time_ns,
                 on_empty: Callable[[], None] | None = None) -> None:
        self._holders = holders  # None: no holder binary on this node (every StartSandbox says so)
        self._clock = clock
        self._on_empty = on_empty or (lambda: None)
        self.sandboxes: dict[str, Sandbox] = {}

    def _get(self, sandbox_id: str, namespace: str | None) -> Sandbox:
        problem = id_problem(sandbox_id)
        if problem is not None:
            raise RpcError(Code.INVALID_ARGUMENT, f"sandbox id {sandbox_id!r} is not valid: {problem}")
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or (namespace is not None and sandbox.namespace != namespace):
            where = f" in namespace {namespace!r}" if namespace is not None else ""
            raise RpcError(Code.NOT_FOUND, f"sandbox {sandbox_id!r} not found{where}")
        return sandbox

    # -- the Sandbox API -----------------------------------------------------------------------------------------
    async def create(self, req: sandbox_pb2.CreateSandboxRequest, namespace: str) -> sandbox_pb2.CreateSandboxResponse:
        problem = id_problem(req.sandbox_id)
        if problem is not None:
            raise RpcError(Code.INVALID_ARGUMENT, f"sandbox id {req.sandbox_id!r} is not valid: {problem}")
        if req.sandbox_id in self.sandboxes:
            raise RpcError(Code.ALREADY_EXISTS, f"sandbox {req.sandbox_id!r} already exists")
        try:
            plan = pod_plan(pod_config(req.options if req.HasField("options") else None), req.netns_path)
        except PodError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"sandbox {req.sandbox_id}: {exc}") from None
        sandbox = Sandbox(req.sandbox_id, namespace, req.bundle_path, plan, self._clock())
        self.sandboxes[req.sandbox_id] = sandbox
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write_files, sandbox)
        except OSError as exc:
            del self.sandboxes[req.sandbox_id]
            raise RpcError(Code.FAILED_PRECONDITION,
                           f"sandbox {req.sandbox_id}: cannot write the pod's /etc files: {exc}") from None
        log.info("sandbox created for pod %s", plan.name, extra=_context(sandbox))
        return sandbox_pb2.CreateSandboxResponse()

    def _write_files(self, sandbox: Sandbox) -> None:
        directory = files.cri_sandbox_dir(sandbox.bundle, sandbox.id)
        if directory is None:
            log.warning("sandbox %s: bundle %s has no `work` link into containerd's sandbox controller root: the "
                        "pod's containers get no hostname, hosts or resolv.conf from it", sandbox.id, sandbox.bundle)
            return
        if files.write(directory, sandbox.plan):
            sandbox.files_dir = directory

    async def start(self, req: sandbox_pb2.StartSandboxRequest, namespace: str) -> sandbox_pb2.StartSandboxResponse:
        sandbox = self._get(req.sandbox_id, namespace)
        if sandbox.holder is not None:
            raise RpcError(Code.FAILED_PRECONDITION, f"sandbox {sandbox.id} was already started")
        if self._holders is None:
            raise RpcError(Code.FAILED_PRECONDITION,
                           f"sandbox {sandbox.id}: wasm-shim-sandbox-holder is not installed beside the shim's "
                           "interpreter or on PATH (scripts/setup.sh builds it; the node bundle carries it)")
        loop = asyncio.get_running_loop()
        try:
            holder, cgroups = await loop.run_in_executor(None, self._spawn, sandbox)
        except (HolderError, cgroup.CgroupError) as exc:
            raise RpcError(Code.FAILED_PRECONDITION, f"sandbox {sandbox.id} (pod {sandbox.plan.name}): {exc}") from None
        sandbox.holder, sandbox.cgroups = holder, cgroups

        def on_exit(status: int) -> None:  # from the watcher thread, once
            loop.call_soon_threadsafe(self._holder_exited, sandbox, status)

        holder.arm(on_exit)
        log.info("sandbox started (holder pid %d)", holder.pid, extra=_context(sandbox))
        return sandbox_pb2.StartSandboxResponse(pid=holder.pid, created_at=_timestamp(sandbox.created_at_ns))

    def _spawn(self, sandbox: Sandbox) -> tuple[Holder, list[str]]:
        assert self._holders is not None
        plan = sandbox.plan
        leaf = cgroup.leaf_path(plan.cgroup_parent, sandbox.id) if plan.cgroup_parent else ""
        root = os.path.join(sandbox.bundle, "rootfs")
        if not os.path.isdir(root):
            os.makedirs(root, mode=0o711, exist_ok=True)
        holder = self._holders.spawn(HolderPlan(
            root=root, uid=plan.uid, gid=plan.gid, netns=plan.netns, new_pid=plan.new_pid, new_ipc=plan.new_ipc,
            new_uts=plan.new_uts, hostname=plan.hostname, sysctls=plan.sysctls,
        ))
        return holder, cgroup.place(holder.pid, leaf) if leaf else []

    def _holder_exited(self, sandbox: Sandbox, status: int) -> None:
        if sandbox.exit_status is not None:
            return
        sandbox.exit_status, sandbox.exited_at_ns = status, self._clock()
        sandbox.exited.set()
        log.info("sandbox holder exited with status %d", status, extra=_context(sandbox))
        if sandbox.cgroups:
            cgroups, sandbox.cgroups = sandbox.cgroups, []
            asyncio.get_running_loop().run_in_executor(None, cgroup.remove, cgroups)

    async def platform(self, req: sandbox_pb2.PlatformRequest, namespace: str) -> sandbox_pb2.PlatformResponse:
        self._get(req.sandbox_id, namespace)
        machine = platform.machine()
        return sandbox_pb2.PlatformResponse(platform=Platform(
            os="linux", architecture=_ARCHITECTURES.get(machine, machine)))

    async def stop(self, req: sandbox_pb2.StopSandboxRequest, namespace: str) -> sandbox_pb2.StopSandboxResponse:
        sandbox = self._get(req.sandbox_id, namespace)
        await self._stop(sandbox)
        return sandbox_pb2.StopSandboxResponse()

    async def _stop(self, sandbox: Sandbox) -> None:
        if sandbox.holder is None:
            if sandbox.exit_status is None:  # never started: it "exits" now
                self._holder_exited(sandbox, 128 + signal.SIGKILL)
            return
        # The holder holds nothing worth a grace period (no process of the pod runs as it): SIGKILL. Its PID
        # namespace's other processes (a pod sharing it) are killed with it (pid_namespaces(7)).
        sandbox.holder.kill(signal.SIGKILL)
        await sandbox.exited.wait()

    async def wait(self, req: sandbox_pb2.WaitSandboxRequest, namespace: str) -> sandbox_pb2.WaitSandboxResponse:
        sandbox = self._get(req.sandbox_id, namespace)
        await sandbox.exited.wait()
        assert sandbox.exit_status is not None
        return sandbox_pb2.WaitSandboxResponse(exit_status=sandbox.exit_status,
                                               exited_at=_timestamp(sandbox.exited_at_ns))

    async def status(self, req: sandbox_pb2.SandboxStatusRequest,
                     namespace: str) -> sandbox_pb2.SandboxStatusResponse:
        sandbox = self._get(req.sandbox_id, namespace)
        response = sandbox_pb2.SandboxStatusResponse(
            sandbox_id=sandbox.id, pid=sandbox.holder.pid if sandbox.ready and sandbox.holder else 0,
            state=READY if sandbox.ready else NOT_READY, created_at=_timestamp(sandbox.created_at_ns))
        if sandbox.exit_status is not None:
            response.exited_at.CopyFrom(_timestamp(sandbox.exited_at_ns))
        if req.verbose:
            response.info["pod"] = sandbox.plan.name
            response.info["sandboxer"] = "wasm-shim"
        return response

    async def ping(self, req: sandbox_pb2.PingRequest, namespace: str) -> sandbox_pb2.PingResponse:
        self._get(req.sandbox_id, namespace)
        return sandbox_pb2.PingResponse()

    async def shutdown(self, req: sandbox_pb2.ShutdownSandboxRequest,
                       namespace: str) -> sandbox_pb2.ShutdownSandboxResponse:
        try:
            sandbox = self._get(req.sandbox_id, namespace)
        except RpcError as exc:
            if exc.code is Code.NOT_FOUND:
                return sandbox_pb2.ShutdownSandboxResponse()
            raise
        await self._stop(sandbox)
        del self.sandboxes[sandbox.id]
        if sandbox.files_dir is not None:
            await asyncio.get_running_loop().run_in_executor(None, files.remove, sandbox.files_dir)
        log.info("sandbox shut down", extra=_context(sandbox))
        if not self.sandboxes:
            self._on_empty()
        return sandbox_pb2.ShutdownSandboxResponse()

    async def metrics(self, req: sandbox_pb2.SandboxMetricsRequest,
                      namespace: str) -> sandbox_pb2.SandboxMetricsResponse:
        sandbox = self._get(req.sandbox_id, namespace)
        usage = proc_usage(sandbox.holder.pid) if sandbox.ready and sandbox.holder else None
        memory, cpu_ns = usage or (0, 0)
        return sandbox_pb2.SandboxMetricsResponse(metrics=types_pb2.Metric(
            timestamp=_timestamp(self._clock()), id=sandbox.id, data=task_metrics(memory, cpu_ns)))

    async def update(self, req: sandbox_pb2.UpdateSandboxRequest,
                     namespace: str) -> sandbox_pb2.UpdateSandboxResponse:
        self._get(req.sandbox_id, namespace)
        raise RpcError(Code.UNIMPLEMENTED, "UpdateSandbox is not implemented by wasm-shim's pod sandbox")

    async def stop_all(self) -> None:
        """Daemon shutdown: every holder killed (the lifeline would end them too, a moment later)."""
        for sandbox in list(self.sandboxes.values()):
            await self._stop(sandbox)


def _context(sandbox: Sandbox) -> dict[str, str]:
    return {"task": sandbox.id, "namespace": sandbox.namespace}
