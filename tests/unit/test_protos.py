"""The generated protobuf modules speak containerd's wire format.

Golden bytes here are built from the field numbers in containerd's own .proto files (cited per test)
with a few lines of protobuf wire rules written out below (varint, tag = number << 3 | wire type),
independently of the protobuf library, so a wrong field number or type in our .proto fails here.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any as TypingAny

import pytest
from google.protobuf import any_pb2, descriptor, message_factory, timestamp_pb2
from google.protobuf.message import Message

from wasm_shim.shim import protos
from wasm_shim.shim.protos import (
    bootstrap_pb2,
    cgroups_v1_pb2,
    cgroups_v2_pb2,
    containers_pb2,
    content_pb2,
    cri_pod_pb2,
    events_pb2,
    images_pb2,
    introspection_pb2,
    leases_pb2,
    platform_pb2,
    runtimeoptions_pb2,
    sandbox_pb2,
    task_pb2,
    task_types_pb2,
    task_v3_pb2,
    ttrpc_events_pb2,
    types_pb2,
)

REPO = Path(__file__).resolve().parents[2]
PROTOS_DIR = REPO / "shim" / "protos"
MODULE_NAMES = sorted(p.name[: -len(".proto")] + "_pb2" for p in PROTOS_DIR.glob("*.proto"))
MODULES = [
    bootstrap_pb2,
    cgroups_v1_pb2,
    cgroups_v2_pb2,
    containers_pb2,
    content_pb2,
    cri_pod_pb2,
    events_pb2,
    images_pb2,
    introspection_pb2,
    leases_pb2,
    platform_pb2,
    runtimeoptions_pb2,
    sandbox_pb2,
    task_pb2,
    task_types_pb2,
    task_v3_pb2,
    ttrpc_events_pb2,
    types_pb2,
]

# --- protobuf wire rules, by hand (https://protobuf.dev/programming-guides/encoding/) -------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/enum values are sign-extended to 64 bits: ten bytes
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def vint(number: int, value: int) -> bytes:
    """A varint field (wire type 0): int32/uint32/uint64/bool/enum."""
    return varint(number << 3 | 0) + varint(value)


def ld(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): string, bytes, sub-message, packed repeated."""
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(data)) + data


def timestamp(seconds: int, nanos: int) -> bytes:
    # google/protobuf/timestamp.proto: seconds = 1 (int64), nanos = 2 (int32)
    return vint(1, seconds) + vint(2, nanos)


EXITED_AT = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)
EXITED_AT_BYTES = timestamp(1_700_000_000, 5)


# --- the modules ----------------------------------------------------------------------------------


def test_every_proto_has_a_generated_module_listed_here() -> None:
    assert MODULE_NAMES == sorted(m.__name__.rsplit(".", 1)[1] for m in MODULES)


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_imports_in_a_fresh_interpreter_without_warnings(name: str) -> None:
    # A fresh process: inside this one the module is already imported, and a gencode/runtime version
    # warning is only emitted at first import.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import wasm_shim.shim.protos.{name}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_package_import_pulls_in_no_protobuf() -> None:
    # The `start` subcommand pays for every import; the package itself must stay free.
    code = "import sys, wasm_shim.shim.protos; print(any(m.startswith('google') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_files_register_under_the_package_path(module: TypingAny) -> None:
    name = module.__name__.rsplit(".", 1)[1].removesuffix("_pb2")
    assert module.DESCRIPTOR.name == f"wasm_shim/shim/protos/{name}.proto"
    for dep in module.DESCRIPTOR.dependencies:
        assert dep.name.startswith(("wasm_shim/shim/protos/", "google/protobuf/")), dep.name


def test_pyproject_protobuf_floor_covers_the_gencode() -> None:
    # Generated code refuses a runtime older than the protoc that produced it (ImportError at start).
    versions = set()
    for path in PROTOS_DIR.glob("*_pb2.py"):
        found = re.search(r"^# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", path.read_text(), re.M)
        assert found, f"{path.name}: no gencode version header"
        versions.add(tuple(int(x) for x in found.groups()))
    gencode = max(versions)

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"protobuf\b", d))
    floor = re.search(r">=\s*(\d+)\.(\d+)(?:\.(\d+))?", spec)
    assert floor, spec
    floor_version = tuple(int(x or 0) for x in floor.groups())
    assert floor_version >= gencode, f"pyproject says {spec!r}; the generated code needs >= {gencode}"
    ceiling = re.search(r"<\s*(\d+)", spec)
    assert ceiling and int(ceiling.group(1)) == gencode[0] + 1, f"{spec!r}: pin below the next major"

    import google.protobuf

    runtime = tuple(int(x) for x in google.protobuf.__version__.split(".")[:3])
    assert runtime >= gencode


def test_generated_modules_match_the_proto_files() -> None:
    pytest.importorskip("grpc_tools")
    result = subprocess.run(
        ["sh", str(REPO / "scripts" / "gen-protos.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr


# --- names, as they appear in Any type URLs and ttrpc service names --------------------------------


@pytest.mark.parametrize(
    ("message", "name"),
    [
        (events_pb2.TaskCreate, "containerd.events.TaskCreate"),
        (events_pb2.TaskStart, "containerd.events.TaskStart"),
        (events_pb2.TaskExit, "containerd.events.TaskExit"),
        (events_pb2.TaskDelete, "containerd.events.TaskDelete"),
        (events_pb2.TaskOOM, "containerd.events.TaskOOM"),
        (events_pb2.TaskPaused, "containerd.events.TaskPaused"),
        (events_pb2.TaskResumed, "containerd.events.TaskResumed"),
        (events_pb2.TaskExecAdded, "containerd.events.TaskExecAdded"),
        (events_pb2.TaskExecStarted, "containerd.events.TaskExecStarted"),
        (events_pb2.TaskIO, "containerd.events.TaskIO"),
        (cgroups_v1_pb2.Metrics, "io.containerd.cgroups.v1.Metrics"),
        (cgroups_v2_pb2.Metrics, "io.containerd.cgroups.v2.Metrics"),
        (runtimeoptions_pb2.Options, "runtimeoptions.v1.Options"),
        (types_pb2.Mount, "containerd.types.Mount"),
        (types_pb2.Envelope, "containerd.types.Envelope"),
        (task_types_pb2.ProcessInfo, "containerd.v1.types.ProcessInfo"),
        (ttrpc_events_pb2.ForwardRequest, "containerd.services.events.ttrpc.v1.ForwardRequest"),
        (bootstrap_pb2.BootstrapParams, "containerd.runtime.bootstrap.v1.BootstrapParams"),
        (bootstrap_pb2.BootstrapResult, "containerd.runtime.bootstrap.v1.BootstrapResult"),
        (task_pb2.CreateTaskRequest, "containerd.task.v2.CreateTaskRequest"),
    ],
)
def test_full_names_match_containerd(message: type[Message], name: str) -> None:
    assert message.DESCRIPTOR.full_name == name
    assert protos.type_url(message) == name
    assert protos.type_url(message()) == name


TASK_METHODS = {
    # docs/protocol.md / containerd api/runtime/task/v2/shim.proto `service Task`: method -> (request, response)
    "State": ("StateRequest", "StateResponse"),
    "Create": ("CreateTaskRequest", "CreateTaskResponse"),
    "Start": ("StartRequest", "StartResponse"),
    "Delete": ("DeleteRequest", "DeleteResponse"),
    "Pids": ("PidsRequest", "PidsResponse"),
    "Pause": ("PauseRequest", "google.protobuf.Empty"),
    "Resume": ("ResumeRequest", "google.protobuf.Empty"),
    "Checkpoint": ("CheckpointTaskRequest", "google.protobuf.Empty"),
    "Kill": ("KillRequest", "google.protobuf.Empty"),
    "Exec": ("ExecProcessRequest", "google.protobuf.Empty"),
    "ResizePty": ("ResizePtyRequest", "google.protobuf.Empty"),
    "CloseIO": ("CloseIORequest", "google.protobuf.Empty"),
    "Update": ("UpdateTaskRequest", "google.protobuf.Empty"),
    "Wait": ("WaitRequest", "WaitResponse"),
    "Stats": ("StatsRequest", "StatsResponse"),
    "Connect": ("ConnectRequest", "ConnectResponse"),
    "Shutdown": ("ShutdownRequest", "google.protobuf.Empty"),
}


def _qualified(name: str) -> str:
    return name if "." in name else f"containerd.task.v2.{name}"


@pytest.mark.parametrize(
    ("module", "service"), [(task_pb2, "containerd.task.v2.Task"), (task_v3_pb2, "containerd.task.v3.Task")]
)
def test_task_services_list_every_method_with_v2_messages(module: TypingAny, service: str) -> None:
    svc = module.DESCRIPTOR.services_by_name["Task"]
    assert svc.full_name == service
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods}
    assert methods == {k: (_qualified(a), _qualified(b)) for k, (a, b) in TASK_METHODS.items()}


def test_events_service_forward() -> None:
    svc = ttrpc_events_pb2.DESCRIPTOR.services_by_name["Events"]
    assert svc.full_name == "containerd.services.events.ttrpc.v1.Events"
    forward = svc.methods_by_name["Forward"]
    assert forward.input_type.full_name == "containerd.services.events.ttrpc.v1.ForwardRequest"
    assert forward.output_type.full_name == "google.protobuf.Empty"


def test_status_enum_values() -> None:
    # api/types/task/task.proto
    assert dict(task_types_pb2.Status.items()) == {
        "UNKNOWN": 0,
        "CREATED": 1,
        "RUNNING": 2,
        "STOPPED": 3,
        "PAUSED": 4,
        "PAUSING": 5,
    }


def test_log_level_enum_values() -> None:
    # api/runtime/bootstrap/v1/bootstrap.proto: INFO 0, more verbose negative, more critical positive
    assert dict(bootstrap_pb2.LogLevel.items()) == {
        "LOG_LEVEL_INFO": 0,
        "LOG_LEVEL_TRACE": -8,
        "LOG_LEVEL_DEBUG": -4,
        "LOG_LEVEL_WARN": 4,
        "LOG_LEVEL_ERROR": 8,
        "LOG_LEVEL_FATAL": 10,
        "LOG_LEVEL_PANIC": 12,
    }


# --- field numbers, as docs/protocol.md states them ------------------------------------------------------

FIELD_NUMBERS: dict[type[Message], dict[str, int]] = {
    task_pb2.CreateTaskRequest: {
        "id": 1,
        "bundle": 2,
        "rootfs": 3,
        "terminal": 4,
        "stdin": 5,
        "stdout": 6,
        "stderr": 7,
        "checkpoint": 8,
        "parent_checkpoint": 9,
        "options": 10,
    },
    task_pb2.CreateTaskResponse: {"pid": 1},
    task_pb2.StartRequest: {"id": 1, "exec_id": 2},
    task_pb2.StartResponse: {"pid": 1},
    task_pb2.DeleteRequest: {"id": 1, "exec_id": 2},
    task_pb2.DeleteResponse: {"pid": 1, "exit_status": 2, "exited_at": 3},
    task_pb2.WaitRequest: {"id": 1, "exec_id": 2},
    task_pb2.WaitResponse: {"exit_status": 1, "exited_at": 2},
    task_pb2.StateRequest: {"id": 1, "exec_id": 2},
    task_pb2.StateResponse: {
        "id": 1,
        "bundle": 2,
        "pid": 3,
        "status": 4,
        "stdin": 5,
        "stdout": 6,
        "stderr": 7,
        "terminal": 8,
        "exit_status": 9,
        "exited_at": 10,
        "exec_id": 11,
    },
    task_pb2.KillRequest: {"id": 1, "exec_id": 2, "signal": 3, "all": 4},
    task_pb2.ExecProcessRequest: {
        "id": 1,
        "exec_id": 2,
        "terminal": 3,
        "stdin": 4,
        "stdout": 5,
        "stderr": 6,
        "spec": 7,
    },
    task_pb2.ResizePtyRequest: {"id": 1, "exec_id": 2, "width": 3, "height": 4},
    task_pb2.CloseIORequest: {"id": 1, "exec_id": 2, "stdin": 3},
    task_pb2.PauseRequest: {"id": 1},
    task_pb2.ResumeRequest: {"id": 1},
    task_pb2.PidsRequest: {"id": 1},
    task_pb2.PidsResponse: {"processes": 1},
    task_pb2.CheckpointTaskRequest: {"id": 1, "path": 2, "options": 3},
    task_pb2.UpdateTaskRequest: {"id": 1, "resources": 2, "annotations": 3},
    task_pb2.ConnectRequest: {"id": 1},
    task_pb2.ConnectResponse: {"shim_pid": 1, "task_pid": 2, "version": 3},
    task_pb2.ShutdownRequest: {"id": 1, "now": 2},
    task_pb2.StatsRequest: {"id": 1},
    task_pb2.StatsResponse: {"stats": 1},
    task_types_pb2.ProcessInfo: {"pid": 1, "info": 2},
    types_pb2.Mount: {"type": 1, "source": 2, "target": 3, "options": 4},
    types_pb2.Envelope: {"timestamp": 1, "namespace": 2, "topic": 3, "event": 4},
    ttrpc_events_pb2.ForwardRequest: {"envelope": 1},
    events_pb2.TaskCreate: {
        "container_id": 1,
        "bundle": 2,
        "rootfs": 3,
        "io": 4,
        "checkpoint": 5,
        "pid": 6,
    },
    events_pb2.TaskIO: {"stdin": 1, "stdout": 2, "stderr": 3, "terminal": 4},
    events_pb2.TaskStart: {"container_id": 1, "pid": 2},
    events_pb2.TaskExit: {"container_id": 1, "id": 2, "pid": 3, "exit_status": 4, "exited_at": 5},
    events_pb2.TaskDelete: {"container_id": 1, "pid": 2, "exit_status": 3, "exited_at": 4, "id": 5},
    events_pb2.TaskOOM: {"container_id": 1},
    events_pb2.TaskPaused: {"container_id": 1},
    events_pb2.TaskResumed: {"container_id": 1},
    events_pb2.TaskExecAdded: {"container_id": 1, "exec_id": 2},
    events_pb2.TaskExecStarted: {"container_id": 1, "exec_id": 2, "pid": 3},
    runtimeoptions_pb2.Options: {"type_url": 1, "config_path": 2, "config_body": 3},
    bootstrap_pb2.BootstrapParams: {
        "instance_id": 1,
        "namespace": 2,
        "log_level": 3,
        "containerd_version": 4,
        "containerd_ttrpc_address": 5,
        "containerd_grpc_address": 6,
        "containerd_binary": 7,
        "extensions": 8,
        "socket_dir": 9,
    },
    bootstrap_pb2.Extension: {"value": 1},
    bootstrap_pb2.BootstrapResult: {
        "version": 1,
        "address": 2,
        "protocol": 3,
        "capabilities": 4,
        "metadata": 5,
    },
}


@pytest.mark.parametrize("message", FIELD_NUMBERS, ids=lambda m: m.DESCRIPTOR.full_name)
def test_field_numbers(message: type[Message]) -> None:
    assert {f.name: f.number for f in message.DESCRIPTOR.fields} == FIELD_NUMBERS[message]


# --- golden bytes -------------------------------------------------------------------------------------


def test_task_exit_golden() -> None:
    # api/events/task.proto TaskExit{container_id=1, id=2, pid=3, exit_status=4, exited_at=5}
    event = events_pb2.TaskExit(container_id="c1", id="c1", pid=42, exit_status=137, exited_at=EXITED_AT)
    literal = bytes.fromhex(
        "0a026331"  # 1: len 2 "c1"
        "12026331"  # 2: len 2 "c1"
        "182a"  # 3: 42
        "208901"  # 4: 137 = 0x89 0x01
        "2a08"  # 5: len 8 Timestamp{
        "0880e2cfaa06"  # 1: 1700000000 (0x6553f100 in 7-bit groups, low first)
        "1005"  # 2: 5 }
    )
    assert event.SerializeToString() == literal
    assert literal == ld(1, "c1") + ld(2, "c1") + vint(3, 42) + vint(4, 137) + ld(5, EXITED_AT_BYTES)
    assert events_pb2.TaskExit.FromString(literal) == event


def test_create_task_request_with_mount_golden() -> None:
    # api/runtime/task/v2/shim.proto CreateTaskRequest; api/types/mount.proto Mount
    opts = runtimeoptions_pb2.Options(config_body=b'config = "x"\n')
    request = task_pb2.CreateTaskRequest(
        id="web",
        bundle="/run/containerd/io.containerd.runtime.v2.task/k8s.io/web",
        rootfs=[
            types_pb2.Mount(type="overlay", source="overlay", options=["index=off", "lowerdir=/l", "ro"]),
        ],
        stdout="/run/fifo/out",
        options=protos.pack_any(opts),
    )
    mount = ld(1, "overlay") + ld(2, "overlay") + ld(4, "index=off") + ld(4, "lowerdir=/l") + ld(4, "ro")
    any_bytes = ld(1, "runtimeoptions.v1.Options") + ld(2, ld(3, b'config = "x"\n'))
    expected = (
        ld(1, "web")
        + ld(2, "/run/containerd/io.containerd.runtime.v2.task/k8s.io/web")
        + ld(3, mount)
        + ld(6, "/run/fifo/out")
        + ld(10, any_bytes)
    )
    assert request.SerializeToString() == expected
    parsed = task_pb2.CreateTaskRequest.FromString(expected)
    assert parsed == request
    assert protos.unpack_any(parsed.options, runtimeoptions_pb2.Options) == opts


def test_forward_request_envelope_golden() -> None:
    # api/services/ttrpc/events/v1/events.proto ForwardRequest{envelope=1};
    # api/types/event.proto Envelope{timestamp=1, namespace=2, topic=3, event=4}
    exit_event = events_pb2.TaskExit(container_id="c1", id="c1", pid=7, exit_status=0, exited_at=EXITED_AT)
    forward = ttrpc_events_pb2.ForwardRequest(
        envelope=types_pb2.Envelope(
            timestamp=EXITED_AT, namespace="k8s.io", topic="/tasks/exit", event=protos.pack_any(exit_event)
        )
    )
    event_any = ld(1, "containerd.events.TaskExit") + ld(
        2,
        ld(1, "c1") + ld(2, "c1") + vint(3, 7) + ld(5, EXITED_AT_BYTES),  # exit_status 0 is omitted
    )
    envelope = ld(1, EXITED_AT_BYTES) + ld(2, "k8s.io") + ld(3, "/tasks/exit") + ld(4, event_any)
    assert forward.SerializeToString() == ld(1, envelope)


def test_state_response_golden() -> None:
    response = task_pb2.StateResponse(
        id="c1",
        bundle="/b",
        pid=0,
        status=task_types_pb2.STOPPED,
        stdout="/o",
        terminal=True,
        exit_status=1,
        exited_at=EXITED_AT,
        exec_id="e",
    )
    expected = (
        ld(1, "c1")
        + ld(2, "/b")
        + vint(4, 3)
        + ld(6, "/o")
        + vint(8, 1)
        + vint(9, 1)
        + ld(10, EXITED_AT_BYTES)
        + ld(11, "e")
    )
    assert response.SerializeToString() == expected


def test_delete_response_golden() -> None:
    # What the `delete` subcommand prints on stdout.
    response = task_pb2.DeleteResponse(pid=4242, exit_status=137, exited_at=EXITED_AT)
    assert response.SerializeToString() == vint(1, 4242) + vint(2, 137) + ld(3, EXITED_AT_BYTES)


def test_kill_wait_connect_golden() -> None:
    kill = task_pb2.KillRequest(id="c1", signal=9, all=True)
    assert kill.SerializeToString() == ld(1, "c1") + vint(3, 9) + vint(4, 1)
    wait = task_pb2.WaitResponse(exit_status=2, exited_at=EXITED_AT)
    assert wait.SerializeToString() == vint(1, 2) + ld(2, EXITED_AT_BYTES)
    connect = task_pb2.ConnectResponse(shim_pid=10, task_pid=11, version="2")
    assert connect.SerializeToString() == vint(1, 10) + vint(2, 11) + ld(3, "2")


def test_task_create_event_golden() -> None:
    event = events_pb2.TaskCreate(
        container_id="c1",
        bundle="/b",
        rootfs=[types_pb2.Mount(type="bind", source="/s", options=["rbind"])],
        io=events_pb2.TaskIO(stdin="/i", stdout="/o", stderr="/e", terminal=False),
        pid=1,
    )
    expected = (
        ld(1, "c1")
        + ld(2, "/b")
        + ld(3, ld(1, "bind") + ld(2, "/s") + ld(4, "rbind"))
        + ld(4, ld(1, "/i") + ld(2, "/o") + ld(3, "/e"))
        + vint(6, 1)
    )
    assert event.SerializeToString() == expected


def test_bootstrap_params_decode_from_hand_built_stdin() -> None:
    # What containerd 2.3+ writes on `start`'s stdin (pkg/shim/util.go Command): debug level (-4, ten
    # bytes on the wire), socket_dir present, the CRI runtime options as an extension.
    options_any = ld(1, "runtimeoptions.v1.Options") + ld(2, ld(2, "/etc/wasm-shim.toml"))
    stdin = (
        ld(1, "sandbox-1")
        + ld(2, "k8s.io")
        + vint(3, -4)
        + ld(4, "v2.4.2")
        + ld(5, "/run/containerd/containerd.sock.ttrpc")
        + ld(6, "/run/containerd/containerd.sock")
        + ld(7, "/usr/bin/containerd")
        + ld(8, ld(1, options_any))
        + ld(9, "/run/containerd/s")
    )
    assert len(varint(-4)) == 10
    params = bootstrap_pb2.BootstrapParams.FromString(stdin)
    assert params.instance_id == "sandbox-1"
    assert params.namespace == "k8s.io"
    assert params.log_level == bootstrap_pb2.LOG_LEVEL_DEBUG
    assert params.containerd_version == "v2.4.2"
    assert params.containerd_ttrpc_address == "/run/containerd/containerd.sock.ttrpc"
    assert params.containerd_grpc_address == "/run/containerd/containerd.sock"
    assert params.containerd_binary == "/usr/bin/containerd"
    assert params.HasField("socket_dir") and params.socket_dir == "/run/containerd/s"
    (extension,) = params.extensions
    options = protos.unpack_any(extension.value, runtimeoptions_pb2.Options)
    assert options.config_path == "/etc/wasm-shim.toml"
    assert params.SerializeToString() == stdin

    # socket_dir is `optional`: absent and empty are different things.
    assert not bootstrap_pb2.BootstrapParams.FromString(ld(1, "x")).HasField("socket_dir")
    assert bootstrap_pb2.BootstrapParams.FromString(ld(9, "")).HasField("socket_dir")


def test_bootstrap_log_level_is_an_open_enum() -> None:
    # "shims should treat unrecognized values by mapping to the nearest known level": keep the number.
    assert bootstrap_pb2.BootstrapParams.FromString(vint(3, -6)).log_level == -6
    assert bootstrap_pb2.BootstrapParams.FromString(vint(3, 6)).log_level == 6


def test_bootstrap_result_golden() -> None:
    result = bootstrap_pb2.BootstrapResult(
        version=3, address="unix:///run/containerd/s/abc", protocol="ttrpc", metadata={"k": "v"}
    )
    assert result.SerializeToString() == (
        vint(1, 3) + ld(2, "unix:///run/containerd/s/abc") + ld(3, "ttrpc") + ld(5, ld(1, "k") + ld(2, "v"))
    )


def test_cgroups_v1_metrics_golden() -> None:
    # containerd/cgroups cgroup1/stats/metrics.proto: Metrics{pids=2, cpu=3, memory=4};
    # CPUStat{usage=1}; CPUUsage{total=1, kernel=2, user=3}; MemoryStat{total_inactive_file=30, usage=33}
    metrics = cgroups_v1_pb2.Metrics(
        pids=cgroups_v1_pb2.PidsStat(current=1, limit=64),
        cpu=cgroups_v1_pb2.CPUStat(usage=cgroups_v1_pb2.CPUUsage(total=3000, kernel=1000, user=2000)),
        memory=cgroups_v1_pb2.MemoryStat(
            total_inactive_file=5, usage=cgroups_v1_pb2.MemoryEntry(limit=1 << 20, usage=4096)
        ),
    )
    expected = (
        ld(2, vint(1, 1) + vint(2, 64))
        + ld(3, ld(1, vint(1, 3000) + vint(2, 1000) + vint(3, 2000)))
        + ld(4, vint(30, 5) + ld(33, vint(1, 1 << 20) + vint(2, 4096)))
    )
    assert varint(33 << 3 | 2) == b"\x8a\x02"  # field numbers >= 16 take a two-byte tag
    assert metrics.SerializeToString() == expected


def test_cgroups_v2_metrics_golden() -> None:
    # containerd/cgroups cgroup2/stats/metrics.proto: Metrics{pids=1, cpu=2, memory=4} (3 unused);
    # CPUStat{usage_usec=1, user_usec=2, system_usec=3};
    # MemoryStat{inactive_file=13, usage=32, usage_limit=33}
    metrics = cgroups_v2_pb2.Metrics(
        pids=cgroups_v2_pb2.PidsStat(current=1, limit=64),
        cpu=cgroups_v2_pb2.CPUStat(usage_usec=300, user_usec=200, system_usec=100),
        memory=cgroups_v2_pb2.MemoryStat(inactive_file=5, usage=4096, usage_limit=1 << 20),
    )
    expected = (
        ld(1, vint(1, 1) + vint(2, 64))
        + ld(2, vint(1, 300) + vint(2, 200) + vint(3, 100))
        + ld(4, vint(13, 5) + vint(32, 4096) + vint(33, 1 << 20))
    )
    assert metrics.SerializeToString() == expected
    stats = task_pb2.StatsResponse(stats=protos.pack_any(metrics))
    assert stats.stats.type_url == "io.containerd.cgroups.v2.Metrics"
    assert stats.SerializeToString() == ld(1, ld(1, "io.containerd.cgroups.v2.Metrics") + ld(2, expected))


def test_runtime_options_golden() -> None:
    opts = runtimeoptions_pb2.Options(type_url="t", config_path="/p", config_body=b"\x00\x01")
    assert opts.SerializeToString() == ld(1, "t") + ld(2, "/p") + ld(3, b"\x00\x01")


def test_unknown_fields_from_a_newer_containerd_are_skipped() -> None:
    # A future containerd may add fields; decoding must not fail and known fields must survive.
    data = ld(1, "c1") + vint(99, 5) + ld(100, "new") + vint(3, 9)
    kill = task_pb2.KillRequest.FromString(data)
    assert (kill.id, kill.signal) == ("c1", 9)


# --- Any ----------------------------------------------------------------------------------------------


def test_any_pack_adds_a_prefix_containerd_does_not_use() -> None:
    # Documented pitfall: protobuf's Any.Pack writes "type.googleapis.com/<name>", containerd's typeurl
    # writes the bare name. Our code builds Any with protos.pack_any (type_url = full name).
    packed = any_pb2.Any()
    packed.Pack(events_pb2.TaskExit(container_id="c1"))
    assert packed.type_url == "type.googleapis.com/containerd.events.TaskExit"

    ours = protos.pack_any(events_pb2.TaskExit(container_id="c1"))
    assert ours.type_url == "containerd.events.TaskExit"
    assert ours.value == packed.value
    # The other half of the pitfall: protobuf's own Is/Unpack (upb runtime) need a "/" in type_url and
    # return False for the bare names containerd sends us. Read containerd's Anys with unpack_any.
    assert not ours.Is(events_pb2.TaskExit.DESCRIPTOR)
    assert not ours.Unpack(events_pb2.TaskExit())
    assert protos.unpack_any(ours, events_pb2.TaskExit).container_id == "c1"


@pytest.mark.parametrize(
    "url",
    [
        "containerd.events.TaskOOM",
        "type.googleapis.com/containerd.events.TaskOOM",
        "x.io/a/containerd.events.TaskOOM",
    ],
)
def test_unpack_any_accepts_bare_and_prefixed_urls(url: str) -> None:
    value = any_pb2.Any(type_url=url, value=events_pb2.TaskOOM(container_id="c9").SerializeToString())
    assert protos.unpack_any(value, events_pb2.TaskOOM).container_id == "c9"


def test_unpack_any_rejects_another_type_clearly() -> None:
    value = protos.pack_any(events_pb2.TaskOOM(container_id="c9"))
    with pytest.raises(
        ValueError, match=r"expected .*containerd\.events\.TaskExit.*containerd\.events\.TaskOOM"
    ):
        protos.unpack_any(value, events_pb2.TaskExit)
    with pytest.raises(ValueError, match="runtimeoptions.v1.Options"):
        protos.unpack_any(any_pb2.Any(), runtimeoptions_pb2.Options)  # empty Any: type_url ""


def test_unpack_any_rejects_undecodable_bytes_clearly() -> None:
    value = any_pb2.Any(type_url="runtimeoptions.v1.Options", value=b"\x0a\x05ab")  # length 5, 2 bytes
    with pytest.raises(ValueError, match="does not decode"):
        protos.unpack_any(value, runtimeoptions_pb2.Options)


# --- round trips of every message, every field set ----------------------------------------------------


def _fill(message: Message, depth: int = 0) -> None:
    """Set every field of ``message`` to a non-default value (recursing into sub-messages)."""
    fd = descriptor.FieldDescriptor
    scalar_values: dict[int, TypingAny] = {
        fd.TYPE_STRING: "s-é",
        fd.TYPE_BYTES: b"\x00\xff",
        fd.TYPE_BOOL: True,
        fd.TYPE_DOUBLE: 1.5,
        fd.TYPE_FLOAT: 2.5,
        fd.TYPE_INT32: -7,
        fd.TYPE_INT64: -(1 << 40),
        fd.TYPE_UINT32: (1 << 32) - 1,
        fd.TYPE_UINT64: (1 << 64) - 1,
    }
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:  # map<string, Any>
                getattr(message, field.name)["k"].CopyFrom(protos.pack_any(events_pb2.TaskOOM(container_id="x")))
            else:
                getattr(message, field.name)["k"] = "v"
        elif field.message_type is not None:
            if depth > 4:
                continue
            if field.message_type.full_name == "google.protobuf.Any":
                sub = protos.pack_any(events_pb2.TaskOOM(container_id="x"))
            else:
                sub = message_factory.GetMessageClass(field.message_type)()
                _fill(sub, depth + 1)
            if field.is_repeated:
                getattr(message, field.name).extend([sub, sub])
            else:
                getattr(message, field.name).CopyFrom(sub)
        else:
            if field.enum_type is not None:
                value = field.enum_type.values[-1].number or 1
            else:
                value = scalar_values[field.type]
            if field.is_repeated:
                getattr(message, field.name).extend([value, value])
            else:
                setattr(message, field.name, value)


def _all_messages() -> list[type[Message]]:
    out = []
    for module in MODULES:
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            out.append(getattr(module, desc.name))
    return out


@pytest.mark.parametrize("message", _all_messages(), ids=lambda m: m.DESCRIPTOR.full_name)
def test_round_trip_with_every_field_set(message: type[Message]) -> None:
    original = message()
    _fill(original)
    data = original.SerializeToString()
    parsed = message.FromString(data)
    assert parsed == original
    assert parsed.SerializeToString() == data
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            assert len(getattr(parsed, field.name)) > 0, field.name
        elif field.message_type is not None or field.has_presence:
            assert parsed.HasField(field.name), field.name
        else:
            assert getattr(parsed, field.name), field.name


def test_every_module_imports_by_name_from_its_own_proto() -> None:
    # Each generated module is its .proto file's, in a package of containerd's wire (the names containerd and
    # ttrpc put in type URLs and method paths), not a package of our own.
    for name in MODULE_NAMES:
        descriptor = importlib.import_module(f"wasm_shim.shim.protos.{name}").DESCRIPTOR
        assert descriptor.name == f"wasm_shim/shim/protos/{name.removesuffix('_pb2')}.proto", name
        # "runtime": CRI's runtime.v1, whose PodSandboxConfig containerd hands the sandbox API (cri_pod.proto).
        assert descriptor.package.split(".")[0] in ("containerd", "io", "runtimeoptions", "runtime"), \
            descriptor.package


# --- the sandbox API (containerd api/runtime/sandbox/v1/sandbox.proto) and CRI's PodSandboxConfig --------------

SANDBOX_METHODS = {
    "CreateSandbox": ("CreateSandboxRequest", "CreateSandboxResponse"),
    "StartSandbox": ("StartSandboxRequest", "StartSandboxResponse"),
    "Platform": ("PlatformRequest", "PlatformResponse"),
    "StopSandbox": ("StopSandboxRequest", "StopSandboxResponse"),
    "WaitSandbox": ("WaitSandboxRequest", "WaitSandboxResponse"),
    "SandboxStatus": ("SandboxStatusRequest", "SandboxStatusResponse"),
    "PingSandbox": ("PingRequest", "PingResponse"),
    "ShutdownSandbox": ("ShutdownSandboxRequest", "ShutdownSandboxResponse"),
    "SandboxMetrics": ("SandboxMetricsRequest", "SandboxMetricsResponse"),
    "UpdateSandbox": ("UpdateSandboxRequest", "UpdateSandboxResponse"),
}


def test_sandbox_service_lists_every_method() -> None:
    svc = sandbox_pb2.DESCRIPTOR.services_by_name["Sandbox"]
    assert svc.full_name == "containerd.runtime.sandbox.v1.Sandbox"
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods}
    prefix = "containerd.runtime.sandbox.v1."
    assert methods == {k: (prefix + a, prefix + b) for k, (a, b) in SANDBOX_METHODS.items()}


def test_create_sandbox_request_decodes_hand_built_bytes() -> None:
    # CreateSandboxRequest{sandbox_id=1, bundle_path=2, options=4 Any{type_url=1, value=2}, netns_path=5}
    config = ld(2, "web-0") + ld(8, ld(1, "/kubepods/pod1"))  # PodSandboxConfig{hostname=2, linux=8{cgroup_parent=1}}
    wire = (ld(1, "sb1") + ld(2, "/run/b/sb1") + ld(4, ld(1, "runtime.v1.PodSandboxConfig") + ld(2, config))
            + ld(5, "/var/run/netns/cni-1"))
    request = sandbox_pb2.CreateSandboxRequest.FromString(wire)
    assert (request.sandbox_id, request.bundle_path, request.netns_path) == ("sb1", "/run/b/sb1",
                                                                            "/var/run/netns/cni-1")
    pod = protos.unpack_any(request.options, cri_pod_pb2.PodSandboxConfig)
    assert (pod.hostname, pod.linux.cgroup_parent) == ("web-0", "/kubepods/pod1")


def test_pod_sandbox_config_namespace_modes_and_sysctls_golden() -> None:
    # cri-api runtime/v1 api.proto: LinuxPodSandboxConfig{security_context=2{namespace_options=1{network=1, pid=2,
    # ipc=3}, run_as_user=3{value=1}}, sysctls=3 map entry{key=1, value=2}}; NamespaceMode NODE = 2
    security = ld(1, vint(1, 2) + vint(2, 2) + vint(3, 2)) + ld(3, vint(1, 1000))
    linux = ld(2, security) + ld(3, ld(1, "net.core.somaxconn") + ld(2, "1024"))
    dns = ld(1, "10.96.0.10") + ld(2, "svc.cluster.local") + ld(3, "ndots:5")
    pod = cri_pod_pb2.PodSandboxConfig.FromString(ld(4, dns) + ld(8, linux))
    modes = pod.linux.security_context.namespace_options
    assert (modes.network, modes.pid, modes.ipc) == (cri_pod_pb2.NODE, cri_pod_pb2.NODE, cri_pod_pb2.NODE)
    assert pod.linux.security_context.run_as_user.value == 1000
    assert dict(pod.linux.sysctls) == {"net.core.somaxconn": "1024"}
    assert (list(pod.dns_config.servers), list(pod.dns_config.options)) == (["10.96.0.10"], ["ndots:5"])


def test_start_sandbox_response_and_status_golden() -> None:
    # StartSandboxResponse{pid=1, created_at=2}; SandboxStatusResponse{sandbox_id=1, pid=2, state=3}
    start = sandbox_pb2.StartSandboxResponse(pid=4242, created_at=EXITED_AT)
    assert start.SerializeToString() == vint(1, 4242) + ld(2, EXITED_AT_BYTES)
    status = sandbox_pb2.SandboxStatusResponse(sandbox_id="sb1", pid=7, state="SANDBOX_READY")
    assert status.SerializeToString() == ld(1, "sb1") + vint(2, 7) + ld(3, "SANDBOX_READY")
    platform = sandbox_pb2.PlatformResponse(platform=platform_pb2.Platform(os="linux", architecture="amd64"))
    assert platform.SerializeToString() == ld(1, ld(1, "linux") + ld(2, "amd64"))
