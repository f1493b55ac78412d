"""The task service: containerd's `Task` API as plain async methods over protobuf messages.

Owns the table of tasks this daemon serves and every change to it. Each method takes the request message and
returns the response message (docs/design.md, rule 2); `rpc.py` adapts them to ttrpc for both
`containerd.task.v2.Task` and `containerd.task.v3.Task` (wire-identical messages).

Invariants:
- Every state change goes through the task's `Lifecycle`; an illegal one raises FAILED_PRECONDITION naming both
  states (Kill after exit is NOT_FOUND "process already finished", as containerd expects).
- Events are published in lifecycle order: create < start < exit < delete, once each per task.
- A task's exit is recorded only after its stdio is closed and drained, so a client that saw Wait return has all
  the output (`ctr run` waits for EOF on its FIFOs).
- Nothing a task or client does takes down another task: engine and bundle errors become RPC errors for that call.
- Collaborators (engines, event queue, clock) are passed in; there is no module-level state.
- A task belongs to the namespace it was created in: a call naming another namespace (rpc.py passes the caller's
  `containerd-namespace-ttrpc`) finds nothing, exactly as if the task did not exist (docs/reliability.md "Access").
- Ids are checked against containerd's identifier rule (identifiers.py) before anything else: INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from .. import mount as mounts
from ..engines.base import (
    Engine,
    EngineError,
    EntryKind,
    Guest,
    GuestSpec,
    Prepared,
    Staged,
    Unsupported,
    WouldBlock,
    killed_status,
)
from ..image.registry import ARTIFACT_ANNOTATION
from ..image.source import EntrypointSource
from ..protos import events_pb2, task_pb2, task_types_pb2
from ..ttrpc.status import Code, RpcError
from . import bundle as bundles
from .events import EventQueue
from .identifiers import id_problem
from .lifecycle import Action, InvalidTransition, Lifecycle, TaskState
from .rootfs import RootViews
from .stdio import StdioError, TaskIO, open_task_io
from .tracing import NO_TRACING, Tracer

log = logging.getLogger(__name__)

VERSION = "wasm-shim 0.1.0"
Result = TypeVar("Result")


@dataclass
class Task:
    """One container's task. Owned by TaskService; touched only on the event loop."""

    id: str
    namespace: str
    bundle: str
    spec: GuestSpec
    engine: Engine
    prepared: Prepared
    io: TaskIO
    lifecycle: Lifecycle
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    rootfs_mounted: bool = False
    staging: asyncio.Future[Staged] | None = None  # Engine.stage, from Create until Start launches or a kill or
    # delete of the unstarted task discards it (then None)
    started: asyncio.Future[None] | None = None  # done once Start has answered: an exit is recorded after it
    guest: Guest | None = None
    pid: int = 0
    exit_status: int = 0
    exited_at_ns: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    killed_by: int = 0
    unblocking: bool = False  # a kill started TaskIO.unblock_writers
    gone: threading.Event = field(default_factory=threading.Event)  # set once the guest has exited (any thread)


@dataclass(frozen=True)
class TaskFigures:
    """One task as metrics see it (``TaskService.snapshot``): where it is, its state, its guest's memory now."""

    namespace: str
    id: str
    state: str  # the lifecycle state's name, lower case ("running")
    memory: int | None  # bytes, or None: no live guest, or its engine cannot tell


def _context(task_id: str, namespace: str) -> dict[str, str]:
    """The ``extra`` of a log record about one task: logfmt.py writes them as task= and namespace=."""
    return {"task": task_id, "namespace": namespace}


def _timestamp(ns: int):  # type: ignore[no-untyped-def]
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.seconds, ts.nanos = divmod(ns, 1_000_000_000)
    return ts


class TaskService:
    """Containerd's Task API over the tasks of one daemon."""

    def __init__(
        self,
        engines: Sequence[Engine],
        events: EventQueue,
        *,
        on_empty: Callable[[], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        entrypoints: EntrypointSource | None = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self._engines = list(engines)
        self._tracer = tracer  # spans of the steps inside a call (tracing.py); the calls' own are rpc-level
        self._entrypoints = entrypoints or EntrypointSource()
        self._engine_for: dict[EntryKind, Engine] = {}
        for engine in self._engines:
            for kind in engine.accepts:
                if kind in self._engine_for:
                    raise ValueError(f"engines {self._engine_for[kind].name} and {engine.name} both accept "
                                     f"{kind.value} entrypoints: exactly one engine may accept a kind")
                self._engine_for[kind] = engine
        self._events = events
        self._on_empty = on_empty or (lambda: None)
        self._clock = clock
        self.tasks: dict[str, Task] = {}
        self._pending: set[str] = set()  # ids between Create's start and its end
        self._views = RootViews()  # rootfs.py: the wasm tasks whose rootfs needs no mount

    # -- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def _check_ids(task_id: str, exec_id: str = "") -> None:
        problem = id_problem(task_id)
        if problem is not None:
            raise RpcError(Code.INVALID_ARGUMENT, f"task id {task_id!r} is not valid: {problem}")
        problem = id_problem(exec_id) if exec_id else None
        if problem is not None:
            raise RpcError(Code.INVALID_ARGUMENT, f"exec id {exec_id!r} of task {task_id!r} is not valid: {problem}")

    def _get(self, task_id: str, exec_id: str = "", namespace: str | None = None) -> Task:
        """The task ``task_id`` as the caller in ``namespace`` may see it (None: an in-process caller, any)."""
        self._check_ids(task_id, exec_id)
        if exec_id:
            raise RpcError(Code.NOT_FOUND, f"exec process {exec_id!r} of task {task_id!r} not found "
                                           "(exec is not supported for wasm tasks)")
        task = self.tasks.get(task_id)
        if task is None or (namespace is not None and task.namespace != namespace):
            # Another namespace's task is answered exactly like a missing one: its existence is not ours to tell.
            where = f" in namespace {namespace!r}" if namespace is not None else ""
            raise RpcError(Code.NOT_FOUND, f"task {task_id!r} not found{where}")
        return task

    @staticmethod
    def _transition(task: Task, action: Action) -> TaskState:
        try:
            return task.lifecycle.apply(action)
        except InvalidTransition as exc:
            if exc.already_finished:
                raise RpcError(Code.NOT_FOUND, f"task {task.id!r}: process already finished") from None
            raise RpcError(Code.FAILED_PRECONDITION, str(exc)) from None

    @staticmethod
    async def _engine_call(task: Task, verb: str, call: Callable[..., Result], *args: Any) -> Result:
        """Call an engine or guest method where its engine says (a worker thread when ``runs_off_loop``).

        A capability the guest lacks (``Unsupported``) is UNIMPLEMENTED naming it and the engine; an
        EngineError is left to the caller, whose RPC decides its code.
        """
        try:
            if task.engine.runs_off_loop:
                return await asyncio.get_running_loop().run_in_executor(None, call, *args)
            return call(*args)
        except Unsupported as exc:
            raise RpcError(Code.UNIMPLEMENTED, f"{verb} {task.id}: {exc}") from None

    def _engine(self, kind: EntryKind, what: str) -> Engine:
        engine = self._engine_for.get(kind)
        if engine is None:
            raise EngineError(f"{what} is a {kind.value} entrypoint, and no engine of this shim runs those")
        return engine

    async def snapshot(self) -> list[TaskFigures]:
        """Every task's state and its live guest's memory, read on the loop (a guest whose engine blocks is asked
        on a worker thread); a guest that cannot tell, or just ended, has no figure. Changes nothing."""
        figures = []
        for task in list(self.tasks.values()):
            memory: int | None = None
            if task.guest is not None and task.lifecycle.live:
                try:
                    memory = int((await self._engine_call(task, "stats", task.guest.stats))[0])
                except (RpcError, EngineError, OSError) as exc:
                    log.debug("no memory figure for task %s: %s", task.id, exc)
            figures.append(TaskFigures(task.namespace, task.id, TaskState(task.lifecycle.state).name.lower(), memory))
        return figures

    # -- Task API ----------------------------------------------------------------------------------------------
    async def create(self, req: task_pb2.CreateTaskRequest, namespace: str) -> task_pb2.CreateTaskResponse:
        received_ns = time.time_ns()  # CreateTask received, wall clock (logged: bench/instance_start.py reads it)
        self._tracer.tag("container.id", req.id)
        self._check_ids(req.id)
        if req.id in self.tasks or req.id in self._pending:
            raise RpcError(Code.ALREADY_EXISTS, f"task {req.id!r} already exists")
        if req.checkpoint:
            raise RpcError(Code.UNIMPLEMENTED, "restoring from a checkpoint is not supported for wasm tasks")
        self._pending.add(req.id)
        try:
            # First on the loop, where every step answers from local files and memory (a module compiled before,
            # a regular image under no policy, a rootfs that needs no mount): the common Create, without a worker
            # hop (two thread hand-offs, a few hundred microseconds of the instance start). When a step would block
            # (a mount, containerd or a registry, the policy, a compile), everything is redone in ONE worker hop,
            # in this call's context, so the steps' spans (policy check, registry pulls) are children of Create's
            # (tracing.py).
            try:
                task = self._build_task(req, namespace, blocking=False)
            except WouldBlock as exc:
                log.debug("create %s: off the loop: %s", req.id, exc)
                task = await asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run,
                                                                        self._build_task, req, namespace)
        finally:
            self._pending.discard(req.id)
        self.tasks[req.id] = task
        self._stage(task)
        done_ns = time.time_ns()
        log.info("task created: %s, engine %s", task.spec.args[0], task.engine.name,
                 extra={**_context(req.id, namespace), "received_ns": received_ns, "done_ns": done_ns})
        self._events.publish(namespace, events_pb2.TaskCreate(
            container_id=req.id, bundle=req.bundle, rootfs=list(req.rootfs),
            io=events_pb2.TaskIO(stdin=req.stdin, stdout=req.stdout, stderr=req.stderr, terminal=req.terminal),
            checkpoint=req.checkpoint, pid=task.pid,
        ))
        return task_pb2.CreateTaskResponse(pid=task.pid)

    def _build_task(self, req: task_pb2.CreateTaskRequest, namespace: str, *, blocking: bool = True) -> Task:
        """Create's work: on any failure, undo what was done and raise RpcError. ``blocking`` False (on the loop):
        WouldBlock, before any step that would block has begun and with nothing left open, instead of mounting,
        asking containerd, a registry or the policy, or compiling; on a worker thread otherwise."""
        mounted = False
        io: TaskIO | None = None
        rootfs = ""
        if not blocking and req.stdout.startswith("binary://"):
            raise WouldBlock("stdout goes to a logging binary, which is started and waited for")
        try:
            bundle = bundles.load_bundle(req.bundle)
            rootfs = bundle.rootfs
            view = None
            if req.rootfs:
                specs = [mounts.MountSpec(m.type, m.source, m.target, tuple(m.options)) for m in req.rootfs]
                if ARTIFACT_ANNOTATION not in bundle.annotations:  # an artifact's layer is placed in the rootfs
                    view = self._views.view(specs, bundles.first_arg(bundle))
                if view is None:
                    if not blocking:
                        raise WouldBlock("the rootfs needs a mount")
                    mounts.mount_all(specs, rootfs)
                    mounted = True
            spec = bundles.guest_spec(req.id, bundle)  # the whole grant, from config.json (bundle.py)
            lookup = spec
            if view is not None:  # no mount: the guest's "/" is the view's directory (rootfs.py)
                spec = dataclasses.replace(spec, rootfs=view.root, root_readonly=spec.root_readonly or view.readonly)
                lookup = spec if view.layer is None else dataclasses.replace(spec, rootfs=view.layer)
            # Here the grant is known and nothing has been compiled or run: the entrypoint source finds args[0],
            # determines the image the container runs when it must (the policy needs it, or a wasm OCI artifact's
            # empty rootfs lacks args[0]), lets the policy decide on exactly that image, places its wasm layer, and
            # reads args[0] once (shim/image/source.py).
            with self._tracer.span("wasm_shim.entrypoint"):
                provided = self._entrypoints.provide(lookup, namespace, local_only=not blocking)
            engine = self._engine(provided.entry.kind, f"entrypoint {provided.entry.guest_path}")
            with self._tracer.span("wasm_shim.engine.prepare", {"wasm_shim.engine": engine.name}):
                # May compile (tens of ms) or load from the cache, unless asked to answer from memory.
                prepared = engine.prepare(spec, provided.entry, cached_only=not blocking)
            io = open_task_io(req.id, namespace, req.stdin, req.stdout, req.stderr, req.terminal)
        except BaseException as exc:
            if io is not None:
                io.close()
            if mounted:
                try:
                    mounts.unmount_all(rootfs)
                except OSError as undo:
                    log.error("create %s: cannot unmount %s after a failure: %s", req.id, rootfs, undo)
            if isinstance(exc, bundles.BundleError | EngineError | StdioError | mounts.MountError):
                raise RpcError(Code.FAILED_PRECONDITION, f"create {req.id}: {exc}") from None
            if isinstance(exc, RpcError | WouldBlock | KeyboardInterrupt | SystemExit):
                raise
            log.exception("create %s failed", req.id)
            raise RpcError(Code.INTERNAL, f"create {req.id}: {exc}") from None
        return Task(
            id=req.id, namespace=namespace, bundle=req.bundle, spec=spec, engine=engine, prepared=prepared,
            io=io, lifecycle=Lifecycle(req.id), stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
            rootfs_mounted=mounted, pid=os.getpid(),
        )

    def _stage(self, task: Task) -> None:
        """Ready the new task's guest once Create has answered (``Engine.stage``, on the loop, in this call's
        context), so that Start only launches it: what runc's create does, while containerd (or the kubelet) does
        its own work between the two calls.

        The staging is a callback scheduled now: it runs right after this call's step, in which the rpc layer
        writes Create's answer (shim/ttrpc/server.py), so it is never on Create's path, and on the loop's thread
        rather than a worker's (no hand-off; a thread woken after an idle spell ran it several times slower)."""
        loop = asyncio.get_running_loop()
        # A guest may exit before a start that runs off the loop returns: its exit waits for Start's answer.
        started = task.started = loop.create_future()
        staging: asyncio.Future[Staged] = loop.create_future()
        task.staging = staging

        def on_exit(status: int) -> None:  # called once, from the guest's thread
            loop.call_soon_threadsafe(self._exit_after_start, started, task, status)

        def stage() -> None:
            try:
                staging.set_result(task.engine.stage(task.prepared, task.io.guest, on_exit))
            except Exception as exc:  # EngineError: Start's error; anything else too, logged where it is met
                staging.set_exception(exc)

        loop.call_soon(stage, context=contextvars.copy_context())

    async def _discard_staged(self, task: Task) -> None:
        """The task will never start (killed or deleted before Start): free its staged guest, whose thread and fds
        (the stdio FIFOs' writers, the preopened rootfs) must be gone before its stdio drains or its rootfs is
        unmounted."""
        staging, task.staging = task.staging, None
        if staging is None:
            return
        try:
            staged = await staging
        except EngineError:
            return  # staging failed and released what it had opened: nothing is left
        except Exception:
            log.exception("staging the guest failed", extra=_context(task.id, task.namespace))
            return
        await asyncio.get_running_loop().run_in_executor(None, staged.discard)

    async def start(self, req: task_pb2.StartRequest, namespace: str | None = None) -> task_pb2.StartResponse:
        received_ns = time.time_ns()  # Start received, wall clock (logged: bench/instance_start.py reads it)
        self._tracer.tag("container.id", req.id)
        task = self._get(req.id, req.exec_id, namespace)
        self._transition(task, Action.START)
        staging, task.staging = task.staging, None
        started = task.started
        if staging is None or started is None:  # a kill came first and discarded the staged guest
            raise RpcError(Code.FAILED_PRECONDITION, f"start {task.id}: the task was killed before it started")
        try:
            staged = await staging  # done by now, unless Start came within a few hundred microseconds of Create
            task.guest = await self._engine_call(task, "start", staged.launch)
        except EngineError as exc:
            self._guest_exited(task, killed_status(signal.SIGKILL))
            raise RpcError(Code.FAILED_PRECONDITION, f"start {task.id}: {exc}") from None
        done_ns = time.time_ns()
        log.info("task started", extra={**_context(task.id, task.namespace), "received_ns": received_ns,
                                        "done_ns": done_ns})
        task.pid = task.guest.pid or task.pid  # a guest with a process of its own reports it (a container's init)
        self._events.publish(task.namespace, events_pb2.TaskStart(container_id=task.id, pid=task.pid))
        started.set_result(None)
        if task.killed_by:  # a Kill that came while an off-loop start was running
            try:
                await self.kill(task_pb2.KillRequest(id=task.id, signal=task.killed_by))
            except RpcError as exc:
                log.info("kill after start: %s", exc, extra=_context(task.id, task.namespace))
        return task_pb2.StartResponse(pid=task.pid)

    def _exit_after_start(self, started: asyncio.Future[None], task: Task, status: int) -> None:
        """A container may exit before its off-loop start returns; keep start < exit."""
        if started.done():
            self._guest_exited(task, status)
        else:
            started.add_done_callback(lambda _: self._guest_exited(task, status))

    def _guest_exited(self, task: Task, status: int) -> None:
        """The guest is gone (its thread released every fd it had). Drain stdio, then record the exit."""
        task.gone.set()
        if task.guest is not None and task.guest.oom:  # it ended at its memory limit
            log.info("task ran out of memory (limit %s bytes)", task.spec.memory_limit,
                     extra=_context(task.id, task.namespace))
            self._events.publish(task.namespace, events_pb2.TaskOOM(container_id=task.id))
        loop = asyncio.get_running_loop()
        drained = loop.run_in_executor(None, task.io.finish)
        drained.add_done_callback(lambda _: self._record_exit(task, status))

    def _record_exit(self, task: Task, status: int) -> None:
        if task.exited.is_set():
            return
        self._transition(task, Action.EXIT)
        task.exit_status = status
        task.exited_at_ns = self._clock()
        log.info("task exited with status %d", status, extra=_context(task.id, task.namespace))
        self._events.publish(task.namespace, events_pb2.TaskExit(
            container_id=task.id, id=task.id, pid=task.pid, exit_status=status,
            exited_at=_timestamp(task.exited_at_ns),
        ))
        task.exited.set()

    async def wait(self, req: task_pb2.WaitRequest, namespace: str | None = None) -> task_pb2.WaitResponse:
        task = self._get(req.id, req.exec_id, namespace)
        await task.exited.wait()
        return task_pb2.WaitResponse(exit_status=task.exit_status, exited_at=_timestamp(task.exited_at_ns))

    async def kill(self, req: task_pb2.KillRequest, namespace: str | None = None) -> empty_pb2.Empty:
        self._tracer.tag("container.id", req.id)
        task = self._get(req.id, req.exec_id, namespace)
        state = task.lifecycle.state
        self._transition(task, Action.KILL)
        if req.signal == 0:  # a liveness probe
            return empty_pb2.Empty()
        task.killed_by = task.killed_by or req.signal
        log.info("task killed with signal %d%s", req.signal, " (all processes)" if req.all else "",
                 extra=_context(task.id, task.namespace))
        if task.guest is not None:
            try:
                await self._engine_call(task, "kill", task.guest.kill, req.signal, req.all)
            except EngineError as exc:
                raise RpcError(Code.INVALID_ARGUMENT, f"kill {task.id}: {exc}") from None
            if not task.unblocking and task.guest.in_daemon:
                # A guest in a daemon thread blocked writing to an output FIFO whose reader is gone would never
                # see its kill.
                task.unblocking = True
                asyncio.get_running_loop().run_in_executor(None, task.io.unblock_writers, task.gone)
        elif state is TaskState.CREATED:
            # Never started: the staged guest is freed (nothing of it ran); the process "exits" killed right away.
            await self._discard_staged(task)
            self._guest_exited(task, killed_status(req.signal))
        return empty_pb2.Empty()

    async def delete(self, req: task_pb2.DeleteRequest, namespace: str | None = None) -> task_pb2.DeleteResponse:
        self._tracer.tag("container.id", req.id)
        task = self._get(req.id, req.exec_id, namespace)
        self._transition(task, Action.DELETE)
        if task.lifecycle.state is TaskState.CREATED:
            await self._discard_staged(task)
            task.io.close()
            task.exit_status, task.exited_at_ns = 0, self._clock()
        del self.tasks[task.id]
        if task.guest is not None:  # e.g. `runc delete --force`: before unmounting what the container used
            try:
                await self._engine_call(task, "delete", task.guest.delete)
            except (EngineError, RpcError) as exc:
                log.error("%s", exc, extra=_context(task.id, task.namespace))
        if task.rootfs_mounted:
            rootfs = task.spec.rootfs
            try:
                await asyncio.get_running_loop().run_in_executor(None, mounts.unmount_all, rootfs)
            except OSError as exc:
                log.error("cannot unmount %s: %s", rootfs, exc, extra=_context(task.id, task.namespace))
        self._events.publish(task.namespace, events_pb2.TaskDelete(
            container_id=task.id, id=task.id, pid=task.pid, exit_status=task.exit_status,
            exited_at=_timestamp(task.exited_at_ns),
        ))
        log.info("task deleted (exit status %d)", task.exit_status, extra=_context(task.id, task.namespace))
        if not self.tasks:
            self._on_empty()
        return task_pb2.DeleteResponse(
            pid=task.pid, exit_status=task.exit_status, exited_at=_timestamp(task.exited_at_ns)
        )

    async def state(self, req: task_pb2.StateRequest, namespace: str | None = None) -> task_pb2.StateResponse:
        task = self._get(req.id, req.exec_id, namespace)
        response = task_pb2.StateResponse(
            id=task.id, bundle=task.bundle, pid=task.pid, status=task_types_pb2.Status.Name(int(task.lifecycle.state)),
            stdin=task.stdin, stdout=task.stdout, stderr=task.stderr, terminal=False,
            exit_status=task.exit_status,
        )
        if task.exited.is_set():
            response.exited_at.CopyFrom(_timestamp(task.exited_at_ns))
        return response

    async def pause(self, req: task_pb2.PauseRequest, namespace: str | None = None) -> empty_pb2.Empty:
        """Freeze a running task (the engine parks its guest); publishes /tasks/paused."""
        return await self._freeze(req.id, "pause", Action.PAUSE, events_pb2.TaskPaused(container_id=req.id),
                                  namespace)

    async def resume(self, req: task_pb2.ResumeRequest, namespace: str | None = None) -> empty_pb2.Empty:
        """Thaw a paused task; publishes /tasks/resumed."""
        return await self._freeze(req.id, "resume", Action.RESUME, events_pb2.TaskResumed(container_id=req.id),
                                  namespace)

    async def _freeze(self, task_id: str, verb: str, action: Action, event: Message,
                      namespace: str | None) -> empty_pb2.Empty:
        task = self._get(task_id, "", namespace)
        self._transition(task, action)  # FAILED_PRECONDITION unless RUNNING (pause) / PAUSED (resume)
        guest = task.guest
        assert guest is not None  # RUNNING and PAUSED tasks have started
        try:
            await self._engine_call(task, verb, guest.pause if action is Action.PAUSE else guest.resume)
        except (EngineError, RpcError) as exc:
            task.lifecycle.apply(Action.RESUME if action is Action.PAUSE else Action.PAUSE)  # undo
            if isinstance(exc, RpcError):
                raise
            raise RpcError(Code.FAILED_PRECONDITION, f"{verb} {task.id}: {exc}") from None
        log.info("task %s", "paused" if action is Action.PAUSE else "resumed", extra=_context(task.id, task.namespace))
        self._events.publish(task.namespace, event)
        return empty_pb2.Empty()

    async def pids(self, req: task_pb2.PidsRequest, namespace: str | None = None) -> task_pb2.PidsResponse:
        task = self._get(req.id, "", namespace)
        pids = [task.pid] if task.guest is None else await self._engine_call(task, "pids", task.guest.pids)
        return task_pb2.PidsResponse(processes=[task_types_pb2.ProcessInfo(pid=pid) for pid in pids])

    async def connect(self, req: task_pb2.ConnectRequest, namespace: str | None = None) -> task_pb2.ConnectResponse:
        task = self.tasks.get(req.id)
        if task is not None and namespace is not None and task.namespace != namespace:
            task = None
        return task_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=task.pid if task else 0, version=VERSION)

    async def close_io(self, req: task_pb2.CloseIORequest, namespace: str | None = None) -> empty_pb2.Empty:
        self._get(req.id, req.exec_id, namespace)
        # The guest opens its stdin FIFO itself; closing the writer side is containerd's (ctr's) job.
        return empty_pb2.Empty()

    async def shutdown(self, req: task_pb2.ShutdownRequest) -> empty_pb2.Empty:
        # containerd sends Shutdown after every Delete to a v2 shim; this daemon serves a group of containers,
        # so it exits only when idle (see daemon.py), never because one container asked.
        if not self.tasks:
            self._on_empty()
        return empty_pb2.Empty()

    async def stats(self, req: task_pb2.StatsRequest, namespace: str | None = None) -> task_pb2.StatsResponse:
        from .stats import task_metrics

        task = self._get(req.id, "", namespace)
        memory, cpu_ns = (0, 0) if task.guest is None else await self._engine_call(task, "stats", task.guest.stats)
        return task_pb2.StatsResponse(stats=task_metrics(memory, cpu_ns))

    async def not_implemented(self, what: str) -> None:
        raise RpcError(Code.UNIMPLEMENTED, f"{what} is not implemented for wasm tasks")

    async def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Daemon shutdown: stop every live guest."""
        for task in list(self.tasks.values()):
            if task.lifecycle.live:
                await self.kill(task_pb2.KillRequest(id=task.id, signal=sig))
