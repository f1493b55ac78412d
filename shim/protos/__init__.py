"""Protobuf messages the shim exchanges with containerd, and the one rule for packing them into ``Any``.

Owns: the ``.proto`` files in this folder and the ``*_pb2.py`` / ``*_pb2.pyi`` modules generated from
them. The generated modules are not edited by hand; regenerate them with::

    scripts/gen-protos.sh           # after changing a .proto
    scripts/gen-protos.sh --check   # CI: fail if the checked-in modules are stale

Modules (each ``.proto`` header names the upstream file it mirrors and the versions it was checked
against):

- ``task_pb2`` (``containerd.task.v2``): task service v2, its requests and responses.
- ``task_v3_pb2`` (``containerd.task.v3``): task service v3; it reuses the v2 messages (same wire).
- ``task_types_pb2`` (``containerd.v1.types``): the ``Status`` enum, ``Process``, ``ProcessInfo``.
- ``types_pb2`` (``containerd.types``): ``Mount``, ``Envelope``, ``Metric``.
- ``events_pb2`` (``containerd.events``): ``TaskCreate``, ``TaskStart``, ``TaskExit``, ... events.
- ``ttrpc_events_pb2`` (``containerd.services.events.ttrpc.v1``): ``ForwardRequest`` to publish events.
- ``runtimeoptions_pb2`` (``runtimeoptions.v1``): CRI runtime ``Options``.
- ``bootstrap_pb2`` (``containerd.runtime.bootstrap.v1``): the ``start`` handshake of containerd 2.3+.
- ``sandbox_pb2`` (``containerd.runtime.sandbox.v1``): the sandbox API (containerd 2.x, ``sandboxer = "shim"``);
  ``platform_pb2`` (``containerd.types``): its ``Platform``.
- ``cri_pod_pb2`` (``runtime.v1``): the fields of CRI's ``PodSandboxConfig`` the sandbox reads.
- ``cgroups_v1_pb2`` / ``cgroups_v2_pb2`` (``io.containerd.cgroups.v1`` / ``.v2``): ``Metrics`` for
  ``StatsResponse.stats``.

Invariants:

- Wire format equals containerd's: package, message names, field numbers and types are those upstream
  (``tests/unit/test_protos.py`` pins the key ones with hand-derived bytes).
- Every file is registered in protobuf's process-wide descriptor pool as
  ``wasm_shim/shim/protos/<name>.proto``, so the names cannot clash with another package's protos.
- ``google.protobuf.Any`` values we send carry the BARE full message name as ``type_url``
  (``"containerd.events.TaskExit"``, ``"io.containerd.cgroups.v2.Metrics"``), which is what containerd's
  ``typeurl`` writes and what its exact-match checks (``typeurl.Is``) compare against. ``Any.Pack()``
  would write ``"type.googleapis.com/containerd.events.TaskExit"``; use :func:`pack_any` instead.
- Anys we receive (``CreateTaskRequest.options``, ``BootstrapParams`` extensions) are read with
  :func:`unpack_any`, which accepts the bare and the prefixed form (as Go's ``FindMessageByURL`` does).
  protobuf's ``Any.Is()`` / ``Any.Unpack()`` return False for a bare type_url (upb runtime, 7.x).

This ``__init__`` imports nothing at module level: the ``start`` path pays for every import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from google.protobuf.any_pb2 import Any
    from google.protobuf.message import Message

__all__ = ["pack_any", "type_url", "unpack_any"]

M = TypeVar("M", bound="Message")


def type_url(message: Message | type[Message]) -> str:
    """The type URL containerd uses for ``message`` (an instance or a class): its bare full name."""
    return str(message.DESCRIPTOR.full_name)


def pack_any(message: Message) -> Any:
    """Wrap ``message`` in an ``Any`` the way containerd does: ``type_url`` is the bare full name."""
    from google.protobuf.any_pb2 import Any

    return Any(type_url=type_url(message), value=message.SerializeToString())


def unpack_any(value: Any, message_type: type[M]) -> M:
    """Decode ``value`` as ``message_type``.

    Accepts a bare type URL (``containerd.events.TaskExit``) or one with any prefix ending in ``/``
    (``type.googleapis.com/...``, ``types.containerd.io/...``). Raises ``ValueError`` naming both types
    when the Any holds something else, or naming the type when its bytes do not decode.
    """
    from google.protobuf.message import DecodeError

    expected = type_url(message_type)
    held = value.type_url.rsplit("/", 1)[-1]
    if held != expected:
        raise ValueError(f"expected a protobuf Any holding {expected}, got type_url {value.type_url!r}")
    try:
        return message_type.FromString(value.value)
    except DecodeError as err:
        raise ValueError(f"protobuf Any with type_url {value.type_url!r} does not decode: {err}") from err
