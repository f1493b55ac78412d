"""ttrpc adapters for the task and sandbox services: bytes in, message out, nothing else.

Owns the method tables of `containerd.task.v2.Task` and `containerd.task.v3.Task` (the same methods with
wire-identical messages, docs/protocol.md "The task service") and of `containerd.runtime.sandbox.v1.Sandbox`
(containerd 2.x with `sandboxer = "shim"`, shim/sandbox/service.py), and the decoding of each request. Handlers
are thin: decode, call the plain service method, encode (docs/design.md, rule 2). A request that does not decode
is INVALID_ARGUMENT; methods we do not offer are UNIMPLEMENTED with a message naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError, Message

from ..protos import task_pb2
from ..ttrpc.server import CallContext, Handler
from ..ttrpc.status import Code, RpcError
from .task_service import TaskService

if TYPE_CHECKING:
    from ..sandbox.service import SandboxService

log = logging.getLogger(__name__)

TASK_SERVICES = ("containerd.task.v2.Task", "containerd.task.v3.Task")
SANDBOX_SERVICE = "containerd.runtime.sandbox.v1.Sandbox"

_UNSUPPORTED = {
    "Exec": task_pb2.ExecProcessRequest,
    "Checkpoint": task_pb2.CheckpointTaskRequest,
    "ResizePty": task_pb2.ResizePtyRequest,
    "Update": task_pb2.UpdateTaskRequest,
}


def _adapter(
    request_type: type[Message], call: Callable[[Any, CallContext], Awaitable[Message | None]]
) -> Handler:
    async def handle(payload: bytes, ctx: CallContext) -> bytes:
        log.debug("rpc %s/%s", ctx.service, ctx.method)
        request = request_type()
        try:
            request.ParseFromString(payload)
        except DecodeError as exc:
            raise RpcError(Code.INVALID_ARGUMENT, f"{ctx.method}: malformed {request_type.__name__}: {exc}") from None
        response = await call(request, ctx)
        return response.SerializeToString() if response is not None else b""

    return handle


def _refuse(service: TaskService, name: str) -> Callable[[Any, CallContext], Awaitable[None]]:
    async def call(request: Any, ctx: CallContext) -> None:
        await service.not_implemented(name)

    return call


def task_handlers(service: TaskService, default_namespace: str) -> dict[tuple[str, str], Handler]:
    def namespace(ctx: CallContext) -> str:
        # Every call is scoped to the caller's namespace (containerd always sends it); a task of another
        # namespace answers NOT_FOUND (task_service.py). No metadata: the daemon's own namespace.
        return ctx.namespace or default_namespace

    methods: dict[str, Handler] = {
        "Create": _adapter(task_pb2.CreateTaskRequest, lambda r, c: service.create(r, namespace(c))),
        "Start": _adapter(task_pb2.StartRequest, lambda r, c: service.start(r, namespace(c))),
        "Wait": _adapter(task_pb2.WaitRequest, lambda r, c: service.wait(r, namespace(c))),
        "Kill": _adapter(task_pb2.KillRequest, lambda r, c: service.kill(r, namespace(c))),
        "Delete": _adapter(task_pb2.DeleteRequest, lambda r, c: service.delete(r, namespace(c))),
        "State": _adapter(task_pb2.StateRequest, lambda r, c: service.state(r, namespace(c))),
        "Pids": _adapter(task_pb2.PidsRequest, lambda r, c: service.pids(r, namespace(c))),
        "Connect": _adapter(task_pb2.ConnectRequest, lambda r, c: service.connect(r, namespace(c))),
        "CloseIO": _adapter(task_pb2.CloseIORequest, lambda r, c: service.close_io(r, namespace(c))),
        "Shutdown": _adapter(task_pb2.ShutdownRequest, lambda r, c: service.shutdown(r)),
        "Stats": _adapter(task_pb2.StatsRequest, lambda r, c: service.stats(r, namespace(c))),
        "Pause": _adapter(task_pb2.PauseRequest, lambda r, c: service.pause(r, namespace(c))),
        "Resume": _adapter(task_pb2.ResumeRequest, lambda r, c: service.resume(r, namespace(c))),
    }
    for name, request_type in _UNSUPPORTED.items():
        methods[name] = _adapter(request_type, _refuse(service, name))
    return {(svc, name): handler for svc in TASK_SERVICES for name, handler in methods.items()}


def sandbox_handlers(service: SandboxService, default_namespace: str) -> dict[tuple[str, str], Handler]:
    from ..protos import sandbox_pb2 as sb

    def namespace(ctx: CallContext) -> str:
        return ctx.namespace or default_namespace

    methods: dict[str, Handler] = {
        "CreateSandbox": _adapter(sb.CreateSandboxRequest, lambda r, c: service.create(r, namespace(c))),
        "StartSandbox": _adapter(sb.StartSandboxRequest, lambda r, c: service.start(r, namespace(c))),
        "Platform": _adapter(sb.PlatformRequest, lambda r, c: service.platform(r, namespace(c))),
        "StopSandbox": _adapter(sb.StopSandboxRequest, lambda r, c: service.stop(r, namespace(c))),
        "WaitSandbox": _adapter(sb.WaitSandboxRequest, lambda r, c: service.wait(r, namespace(c))),
        "SandboxStatus": _adapter(sb.SandboxStatusRequest, lambda r, c: service.status(r, namespace(c))),
        "PingSandbox": _adapter(sb.PingRequest, lambda r, c: service.ping(r, namespace(c))),
        "ShutdownSandbox": _adapter(sb.ShutdownSandboxRequest, lambda r, c: service.shutdown(r, namespace(c))),
        "SandboxMetrics": _adapter(sb.SandboxMetricsRequest, lambda r, c: service.metrics(r, namespace(c))),
        "UpdateSandbox": _adapter(sb.UpdateSandboxRequest, lambda r, c: service.update(r, namespace(c))),
    }
    return {(SANDBOX_SERVICE, name): handler for name, handler in methods.items()}
