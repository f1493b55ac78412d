"""A containerd gRPC client for tests: containers and tasks driven through containerd's API, as kubelet's CRI
plugin or any Go client does, without `ctr` (load and soak; faults).

Owns: generating the message classes of protos/containerd_api.proto (grpcio-tools' protoc, once per proto
digest, into a private temp dir) and one ``grpc.Channel`` per client. Method paths are containerd's
(``/containerd.services.tasks.v1.Tasks/Create`` ...); the namespace travels as the ``containerd-namespace``
metadata. Every call has a deadline. Starts no process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

PROTO = Path(__file__).resolve().parent / "protos" / "containerd_api.proto"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
_CONTAINERS = "/containerd.services.containers.v1.Containers/"
_TASKS = "/containerd.services.tasks.v1.Tasks/"
_lock = threading.Lock()
_module: ModuleType | None = None


def messages() -> ModuleType:
    """The generated ``containerd_api_pb2`` module (generated on first use, then cached in this process)."""
    global _module
    with _lock:
        if _module is not None:
            return _module
        from grpc_tools import protoc

        digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
        out = Path(tempfile.gettempdir()) / f"wasm-shim-test-protos-{digest}"
        target = out / "containerd_api_pb2.py"
        if not target.exists():
            # Generated into a fresh dir, then renamed into place: a concurrent test process never sees half a file.
            fresh = Path(tempfile.mkdtemp(prefix="wasm-shim-test-protos-"))
            include = str(Path(protoc.__file__).parent / "_proto")
            code = protoc.main(["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={fresh}", str(PROTO)])
            if code != 0 or not (fresh / target.name).exists():
                raise RuntimeError(f"protoc failed ({code}) generating {target.name} from {PROTO}")
            try:
                fresh.rename(out)
            except OSError:  # another process got there first: use its copy
                shutil.rmtree(fresh, ignore_errors=True)
        spec = importlib.util.spec_from_file_location("wasm_shim_test_containerd_api_pb2", target)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _module = module
        return module


def wasm_spec(args: list[str], env: list[str] | None = None) -> dict[str, Any]:
    """A minimal OCI runtime spec for a wasm guest whose rootfs holds it (what `ctr run` would write)."""
    return {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": env or ["PATH=/"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {},
    }


@dataclass
class ContainerdAPI:
    """One gRPC channel to containerd at ``address`` (a socket path), in ``namespace``."""

    address: str
    namespace: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.pb = messages()
        self._channel = grpc.insecure_channel(f"unix://{self.address}")
        self._metadata = (("containerd-namespace", self.namespace),)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ContainerdAPI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, path: str, request: Any, response_type: Any, timeout: float | None = None) -> Any:
        method = self._channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response_type.FromString)
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)

    def create_container(self, container_id: str, runtime: str, spec: dict[str, Any]) -> None:
        pb = self.pb
        container = pb.Container(id=container_id, runtime=pb.Container.Runtime(name=runtime))
        container.spec.type_url = SPEC_TYPE_URL
        container.spec.value = json.dumps(spec).encode()
        self._call(_CONTAINERS + "Create", pb.CreateContainerRequest(container=container), pb.CreateContainerResponse)

    def delete_container(self, container_id: str) -> None:
        self._call(_CONTAINERS + "Delete", self.pb.DeleteContainerRequest(id=container_id), _Empty)

    def create_task(self, container_id: str, rootfs: str, *, stdout: str = "", stderr: str = "") -> int:
        """Create the task with ``rootfs`` (a host dir) bind-mounted read-only as its root; its pid."""
        pb = self.pb
        mount = pb.Mount(type="bind", source=rootfs, options=["rbind", "ro"])
        request = pb.CreateTaskRequest(container_id=container_id, rootfs=[mount], stdout=stdout, stderr=stderr)
        return int(self._call(_TASKS + "Create", request, pb.CreateTaskResponse).pid)

    def start(self, container_id: str) -> int:
        return int(self._call(_TASKS + "Start", self.pb.StartRequest(container_id=container_id),
                              self.pb.StartResponse).pid)

    def wait(self, container_id: str, timeout: float = 60.0) -> int:
        """Block until the task exits (bounded by ``timeout``); its exit status."""
        return int(self._call(_TASKS + "Wait", self.pb.WaitRequest(container_id=container_id),
                              self.pb.WaitResponse, timeout=timeout).exit_status)

    def get(self, container_id: str) -> Any:
        """The task's Process (status, exit_status)."""
        return self._call(_TASKS + "Get", self.pb.GetRequest(container_id=container_id), self.pb.GetResponse).process

    def kill(self, container_id: str, signal: int = 9) -> None:
        self._call(_TASKS + "Kill", self.pb.KillRequest(container_id=container_id, signal=signal, all=True), _Empty)

    def delete_task(self, container_id: str) -> int:
        """Delete the (stopped) task; its exit status as containerd reports it."""
        return int(self._call(_TASKS + "Delete", self.pb.DeleteTaskRequest(container_id=container_id),
                              self.pb.DeleteResponse).exit_status)


class _Empty:
    """Google.protobuf.Empty's decoder (its bytes are ignored)."""

    @staticmethod
    def FromString(_data: bytes) -> _Empty:  # noqa: N802 (protobuf's name; grpc takes None for a failure)
        return _Empty()
