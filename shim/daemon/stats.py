"""Task statistics in the shape CRI reads (`kubectl top`, `crictl stats`).

Owns the mapping of what a guest can report (linear-memory bytes, CPU time of its thread) onto
`io.containerd.cgroups.v1.Metrics` or `...v2.Metrics` — CRI decodes only those two (docs/protocol.md, "The task
service").
The version follows the host: v2 when /sys/fs/cgroup is the unified hierarchy, else v1.
A task without a started guest reports zeros rather than an error (Stats must not fail a healthy task).
"""

from __future__ import annotations

import os

from google.protobuf import any_pb2

from ..protos import cgroups_v1_pb2, cgroups_v2_pb2


def host_cgroup_v2() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def task_metrics(memory: int, cpu_ns: int, *, v2: bool | None = None) -> any_pb2.Any:
    """A guest's (memory bytes, CPU ns) as the host's cgroup Metrics message, packed in an Any."""
    memory, cpu_ns = int(memory), int(cpu_ns)
    packed = any_pb2.Any()
    if host_cgroup_v2() if v2 is None else v2:
        m2 = cgroups_v2_pb2.Metrics()
        m2.cpu.usage_usec = cpu_ns // 1000
        m2.memory.usage = memory
        m2.memory.anon = memory
        m2.pids.current = 1
        packed.type_url = m2.DESCRIPTOR.full_name
        packed.value = m2.SerializeToString()
    else:
        m1 = cgroups_v1_pb2.Metrics()
        m1.cpu.usage.total = cpu_ns
        m1.memory.usage.usage = memory
        m1.memory.total_rss = memory
        m1.memory.rss = memory
        m1.pids.current = 1
        packed.type_url = m1.DESCRIPTOR.full_name
        packed.value = m1.SerializeToString()
    return packed
