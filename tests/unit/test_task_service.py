"""TaskService called directly (no socket) with a fake engine: lifecycle, event order, the engine contract.

The engine is the one collaborator faked here (docs/design.md, rule 5: collaborators are passed in); everything else
is real: bundles on disk, null stdio, the lifecycle table, the event queue with a recording sink.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from wasm_shim.shim.daemon.events import Envelope, EventQueue
from wasm_shim.shim.daemon.task_service import TaskService
from wasm_shim.shim.engines.base import (
    EngineError,
    EntryKind,
    Entrypoint,
    Guest,
    GuestSpec,
    GuestStdio,
    StartLater,
    WouldBlock,
)
from wasm_shim.shim.protos import task_pb2, task_types_pb2
from wasm_shim.shim.ttrpc.status import Code, RpcError

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class FakeGuest(Guest):
    """Records what the task service asks; exits (through on_exit) when killed by a terminating signal."""

    engine_name: ClassVar[str] = "fake"

    def __init__(self, on_exit: Callable[[int], None], pid: int = 0, oom: bool = False):
        self.on_exit = on_exit
        self.pid = pid
        self.oom_at_exit = oom
        self.calls: list[tuple[str, Any, int]] = []  # (call, argument, thread ident)

    def kill(self, signal: int, all: bool = False) -> None:
        self.calls.append(("kill", (signal, all), threading.get_ident()))
        self.oom = self.oom_at_exit
        self.on_exit(128 + signal)

    def delete(self) -> None:
        self.calls.append(("delete", None, threading.get_ident()))


class PausableGuest(FakeGuest):
    def pause(self) -> None:
        self.calls.append(("pause", None, threading.get_ident()))

    def resume(self) -> None:
        self.calls.append(("resume", None, threading.get_ident()))

    def stats(self) -> tuple[int, int]:
        return 4096, 7_000

    def pids(self) -> list[int]:
        return [self.pid, 99]


class FakeEngine:
    name = "fake"
    accepts = frozenset({EntryKind.MODULE})

    def __init__(self, guest_type: type[FakeGuest] = FakeGuest, *, runs_off_loop: bool = False, pid: int = 0,
                 oom: bool = False, refuse: str = ""):
        self.runs_off_loop = runs_off_loop
        self.guest_type, self.pid, self.oom, self.refuse = guest_type, pid, oom, refuse
        self.guests: list[FakeGuest] = []
        self.start_threads: list[int] = []
        self.prepare_threads: list[tuple[int, bool]] = []  # (thread, cached_only) of every prepare
        self.cold = False  # prepare(cached_only=True) raises WouldBlock, as an engine that must compile first

    def prepare(self, spec: GuestSpec, entry: Entrypoint, *, cached_only: bool = False) -> GuestSpec:
        self.prepare_threads.append((threading.get_ident(), cached_only))
        if self.cold and cached_only:
            raise WouldBlock("not compiled yet")
        if self.refuse:
            raise EngineError(self.refuse)
        return spec

    def stage(self, prepared: Any, stdio: GuestStdio, on_exit: Callable[[int], None]) -> StartLater:
        return StartLater(self.start, prepared, stdio, on_exit)

    def start(self, prepared: Any, stdio: GuestStdio, on_exit: Callable[[int], None]) -> FakeGuest:
        self.start_threads.append(threading.get_ident())
        guest = self.guest_type(on_exit, self.pid, self.oom)
        self.guests.append(guest)
        return guest

    def close(self, timeout: float = 5.0) -> None:
        pass


class Recorder:
    def __init__(self) -> None:
        self.events: list[Envelope] = []

    async def __call__(self, event: Envelope) -> None:
        self.events.append(event)

    @property
    def topics(self) -> list[str]:
        return [event.topic for event in self.events]


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "app.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (tmp_path / "config.json").write_text(json.dumps({"process": {"args": ["/app.wasm"]}, "root": {"path": "rootfs"}}))
    return tmp_path


async def _service(engine: FakeEngine) -> tuple[TaskService, EventQueue, Recorder]:
    recorder = Recorder()
    events = EventQueue(recorder)
    events.start()
    return TaskService([engine], events), events, recorder


async def _create_and_start(service: TaskService, bundle: Path, task_id: str = "t1") -> tuple[int, int]:
    created = await service.create(task_pb2.CreateTaskRequest(id=task_id, bundle=str(bundle)), "ns")
    started = await service.start(task_pb2.StartRequest(id=task_id))
    return created.pid, started.pid


async def test_a_task_lives_and_publishes_its_events_in_order(bundle: Path) -> None:
    engine = FakeEngine(pid=4242)
    service, events, recorder = await _service(engine)
    created_pid, started_pid = await _create_and_start(service, bundle)
    assert created_pid == os.getpid() and started_pid == 4242  # a guest with a process of its own reports it
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGTERM, all=True))
    waited = await asyncio.wait_for(service.wait(task_pb2.WaitRequest(id="t1")), 5)
    assert waited.exit_status == 128 + signal.SIGTERM
    deleted = await service.delete(task_pb2.DeleteRequest(id="t1"))
    assert (deleted.pid, deleted.exit_status) == (4242, 143) and service.tasks == {}
    await events.close()
    assert recorder.topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert {event.namespace for event in recorder.events} == {"ns"}
    guest = engine.guests[0]
    assert [(call, arg) for call, arg, _ in guest.calls] == [("kill", (signal.SIGTERM, True)), ("delete", None)]


async def test_a_capability_the_engine_lacks_is_unimplemented_naming_it(bundle: Path) -> None:
    service, events, recorder = await _service(FakeEngine())
    await _create_and_start(service, bundle)
    for call, request, capability in [
        (service.pause, task_pb2.PauseRequest(id="t1"), "pause t1: the fake engine cannot pause tasks"),
        (service.stats, task_pb2.StatsRequest(id="t1"), "stats t1: the fake engine cannot report task statistics"),
        (service.pids, task_pb2.PidsRequest(id="t1"), "pids t1: the fake engine cannot list task processes"),
    ]:
        with pytest.raises(RpcError) as refused:
            await call(request)  # type: ignore[operator]
        assert (refused.value.code, refused.value.message) == (Code.UNIMPLEMENTED, capability)
    state = await service.state(task_pb2.StateRequest(id="t1"))
    assert state.status == task_types_pb2.Status.RUNNING  # the refused pause left the task as it was
    with pytest.raises(RpcError) as wrong:
        await service.resume(task_pb2.ResumeRequest(id="t1"))
    assert wrong.value.code is Code.FAILED_PRECONDITION  # the lifecycle answers first: it is not paused
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
    await events.close()
    assert "/tasks/paused" not in recorder.topics


async def test_pause_resume_stats_and_pids_reach_the_guest(bundle: Path) -> None:
    engine = FakeEngine(PausableGuest, pid=7)
    service, events, recorder = await _service(engine)
    await _create_and_start(service, bundle)
    await service.pause(task_pb2.PauseRequest(id="t1"))
    assert (await service.state(task_pb2.StateRequest(id="t1"))).status == task_types_pb2.Status.PAUSED
    await service.resume(task_pb2.ResumeRequest(id="t1"))
    pids = await service.pids(task_pb2.PidsRequest(id="t1"))
    assert [process.pid for process in pids.processes] == [7, 99]
    stats = await service.stats(task_pb2.StatsRequest(id="t1"))
    assert stats.stats.type_url.endswith(".Metrics") and stats.stats.value
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
    await service.wait(task_pb2.WaitRequest(id="t1"))
    await events.close()
    assert recorder.topics == ["/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed", "/tasks/exit"]


async def test_an_engine_that_runs_off_the_loop_is_called_on_a_worker_thread(bundle: Path) -> None:
    engine = FakeEngine(runs_off_loop=True)
    service, events, _ = await _service(engine)
    loop_thread = threading.get_ident()
    await _create_and_start(service, bundle)
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
    await service.wait(task_pb2.WaitRequest(id="t1"))
    await service.delete(task_pb2.DeleteRequest(id="t1"))
    await events.close()
    threads = [*engine.start_threads, *(thread for _, _, thread in engine.guests[0].calls)]
    assert len(threads) == 3 and loop_thread not in threads
    on_loop = FakeEngine()
    service, events, _ = await _service(on_loop)
    await _create_and_start(service, bundle, "t2")
    await service.kill(task_pb2.KillRequest(id="t2", signal=signal.SIGKILL))
    await events.close()
    assert on_loop.start_threads == [loop_thread] and on_loop.guests[0].calls[0][2] == loop_thread


async def test_an_oom_is_published_before_the_exit(bundle: Path) -> None:
    service, events, recorder = await _service(FakeEngine(oom=True))
    await _create_and_start(service, bundle)
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
    await service.wait(task_pb2.WaitRequest(id="t1"))
    await events.close()
    assert recorder.topics == ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]


async def test_a_refused_create_leaves_nothing_behind(bundle: Path) -> None:
    service, events, recorder = await _service(FakeEngine(refuse="entrypoint /app.wasm: not what we run"))
    with pytest.raises(RpcError) as refused:
        await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")
    assert refused.value.code is Code.FAILED_PRECONDITION
    assert refused.value.message == "create t1: entrypoint /app.wasm: not what we run"
    assert service.tasks == {}
    with pytest.raises(RpcError) as again:  # the id is free again: the same refusal, not ALREADY_EXISTS
        await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")
    assert again.value.code is Code.FAILED_PRECONDITION
    await events.close()
    assert recorder.topics == []


class StagedFake:
    """What a staging engine hands back: records launch/discard and the thread each ran on."""

    def __init__(self, engine: StagingEngine, on_exit: Callable[[int], None]) -> None:
        self.engine, self.on_exit = engine, on_exit
        self.calls: list[tuple[str, int]] = []

    def launch(self) -> FakeGuest:
        self.calls.append(("launch", threading.get_ident()))
        guest = FakeGuest(self.on_exit)
        self.engine.guests.append(guest)
        return guest

    def discard(self) -> None:
        self.calls.append(("discard", threading.get_ident()))


class StagingEngine(FakeEngine):
    """Stages at Create (off the loop), or fails to with ``stage_error``."""

    def __init__(self, stage_error: str = "") -> None:
        super().__init__()
        self.stage_error = stage_error
        self.staged: list[StagedFake] = []
        self.stage_threads: list[int] = []

    def stage(self, prepared: Any, stdio: GuestStdio, on_exit: Callable[[int], None]) -> StagedFake:  # type: ignore[override]
        self.stage_threads.append(threading.get_ident())
        if self.stage_error:
            raise EngineError(self.stage_error)
        staged = StagedFake(self, on_exit)
        self.staged.append(staged)
        return staged


async def test_create_answers_then_stages_and_start_only_launches(bundle: Path) -> None:
    engine = StagingEngine()
    service, events, recorder = await _service(engine)
    loop_thread = threading.get_ident()
    await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")
    assert engine.staged == []  # Create's answer comes first (the rpc layer writes it in the same step)
    await asyncio.sleep(0.05)  # containerd's work between the two calls: staging is done meanwhile
    assert len(engine.staged) == 1 and engine.staged[0].calls == [] and engine.stage_threads == [loop_thread]
    await service.start(task_pb2.StartRequest(id="t1"))
    assert engine.staged[0].calls == [("launch", loop_thread)]
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
    await service.wait(task_pb2.WaitRequest(id="t1"))
    await events.close()
    assert recorder.topics == ["/tasks/create", "/tasks/start", "/tasks/exit"]


async def test_start_right_after_create_waits_for_the_staging(bundle: Path) -> None:
    engine = StagingEngine()
    service, events, _ = await _service(engine)
    await _create_and_start(service, bundle)  # no pause between: Start awaits Create's staging
    assert [call for call, _ in engine.staged[0].calls] == ["launch"]
    await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
    await events.close()


@pytest.mark.parametrize("first", ["kill", "delete"])
async def test_a_task_killed_or_deleted_before_start_discards_its_staged_guest(bundle: Path, first: str) -> None:
    engine = StagingEngine()
    service, events, recorder = await _service(engine)
    await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")
    if first == "kill":
        await service.kill(task_pb2.KillRequest(id="t1", signal=signal.SIGKILL))
        waited = await asyncio.wait_for(service.wait(task_pb2.WaitRequest(id="t1")), 5)
        assert waited.exit_status == 137
        with pytest.raises(RpcError) as refused:
            await service.start(task_pb2.StartRequest(id="t1"))
        assert refused.value.code in (Code.FAILED_PRECONDITION, Code.NOT_FOUND)
    await service.delete(task_pb2.DeleteRequest(id="t1"))
    await events.close()
    assert [call for call, _ in engine.staged[0].calls] == ["discard"]  # once, and never launched
    assert engine.guests == [] and service.tasks == {}
    assert "/tasks/start" not in recorder.topics


async def test_a_guest_that_cannot_be_staged_fails_its_start_and_exits(bundle: Path) -> None:
    engine = StagingEngine(stage_error="stdout /gone/fifo: cannot open it for the guest")
    service, events, recorder = await _service(engine)
    await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")  # Create has answered
    with pytest.raises(RpcError) as refused:
        await service.start(task_pb2.StartRequest(id="t1"))
    assert refused.value.code is Code.FAILED_PRECONDITION
    assert refused.value.message == "start t1: stdout /gone/fifo: cannot open it for the guest"
    waited = await asyncio.wait_for(service.wait(task_pb2.WaitRequest(id="t1")), 5)
    assert waited.exit_status == 137
    await service.delete(task_pb2.DeleteRequest(id="t1"))
    await events.close()
    assert recorder.topics == ["/tasks/create", "/tasks/exit", "/tasks/delete"]


async def test_deleting_a_task_whose_staging_failed_is_quiet(bundle: Path) -> None:
    engine = StagingEngine(stage_error="preopen /: cannot open directory")
    service, events, recorder = await _service(engine)
    await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")
    deleted = await service.delete(task_pb2.DeleteRequest(id="t1"))
    assert deleted.exit_status == 0 and service.tasks == {}
    await events.close()
    assert recorder.topics == ["/tasks/create", "/tasks/delete"]


async def test_a_create_answered_from_memory_runs_on_the_loop_and_one_that_must_compile_off_it(bundle: Path) -> None:
    engine = FakeEngine()
    service, events, _ = await _service(engine)
    loop_thread = threading.get_ident()
    await service.create(task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle)), "ns")
    assert engine.prepare_threads == [(loop_thread, True)]  # no worker hop
    engine.cold = True
    await service.create(task_pb2.CreateTaskRequest(id="t2", bundle=str(bundle)), "ns")
    (first, at_once), (second, blocking) = engine.prepare_threads[1:]
    assert (first, at_once) == (loop_thread, True) and second != loop_thread and blocking is False
    assert set(service.tasks) == {"t1", "t2"}
    for task_id in ("t1", "t2"):
        await service.delete(task_pb2.DeleteRequest(id=task_id))
    await events.close()


async def test_a_create_that_needs_a_mount_mounts_once_off_the_loop(bundle: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from wasm_shim.shim.daemon import task_service
    from wasm_shim.shim.protos import types_pb2

    mounted: list[int] = []
    monkeypatch.setattr(task_service.mounts, "mount_all", lambda specs, target: mounted.append(threading.get_ident()))
    monkeypatch.setattr(task_service.mounts, "unmount_all", lambda target: None)
    engine = FakeEngine()
    service, events, _ = await _service(engine)
    request = task_pb2.CreateTaskRequest(id="t1", bundle=str(bundle),
                                         rootfs=[types_pb2.Mount(type="tmpfs", source="none", options=["size=1m"])])
    await service.create(request, "ns")
    assert len(mounted) == 1 and mounted[0] != threading.get_ident()
    assert engine.prepare_threads == [(mounted[0], False)]  # the loop gave up before its prepare
    await service.delete(task_pb2.DeleteRequest(id="t1"))
    await events.close()
