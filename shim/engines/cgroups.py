"""A container's cgroups, read: where its processes are, what they use (cgroup v1 and v2).

Owns parsing ``/proc/<pid>/cgroup`` and reading usage (memory, CPU) and members (``cgroup.procs``) of the
cgroup a process was placed in (by runc, for a native container). Read-only; what cannot be read (a cgroup
removed meanwhile) reads as zero or empty, never as an error.
"""

from __future__ import annotations

import os

from .base import EngineError

CGROUP_ROOT = "/sys/fs/cgroup"


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller -> path; the v2 unified entry (``0::/path``) has key ``""``.

    A v1 line names one or more controllers ("4:cpu,cpuacct:/ns/id"); each gets the path, and so does the
    joined name, which is also how such a hierarchy's mount directory is named.
    """
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        paths[controllers] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def read_cgroups(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as file:
            return parse_proc_cgroup(file.read())
    except OSError as exc:
        raise EngineError(f"cannot read the cgroups of pid {pid}: {exc.strerror}") from None


def cgroup_dir(cgroups: dict[str, str], controller: str, root: str = CGROUP_ROOT) -> str | None:
    """The host directory of ``controller``'s cgroup (v1), or of the unified cgroup (v2) when controller is ""."""
    if controller not in cgroups:
        return None
    path = cgroups[controller].lstrip("/")
    if controller == "":
        return os.path.join(root, path)
    for joined, joined_path in cgroups.items():  # the mount dir may be the joined name ("cpu,cpuacct")
        if controller in joined.split(",") and os.path.isdir(os.path.join(root, joined)):
            return os.path.join(root, joined, joined_path.lstrip("/"))
    return os.path.join(root, controller, path)


def _read_int(path: str | None) -> int:
    if path is None:
        return 0
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _read_keyed(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii") as file:
            for line in file:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_usage(cgroups: dict[str, str], root: str = CGROUP_ROOT) -> tuple[int, int]:
    """(memory bytes, cpu ns) of a cgroup: v1 memory.usage_in_bytes + cpuacct.usage, v2 memory.current +
    cpu.stat usage_usec. Zeros for what cannot be read (a deleted cgroup)."""
    memory_dir = cgroup_dir(cgroups, "memory", root)
    if memory_dir is not None:
        memory = _read_int(os.path.join(memory_dir, "memory.usage_in_bytes"))
        cpu_dir = cgroup_dir(cgroups, "cpuacct", root)
        return memory, _read_int(os.path.join(cpu_dir, "cpuacct.usage") if cpu_dir else None)
    unified = cgroup_dir(cgroups, "", root)
    if unified is None:
        return 0, 0
    return (_read_int(os.path.join(unified, "memory.current")),
            _read_keyed(os.path.join(unified, "cpu.stat"), "usage_usec") * 1000)


def cgroup_pids(cgroups: dict[str, str], root: str = CGROUP_ROOT) -> list[int]:
    """Every process in the cgroup (cgroup.procs of the pids, memory or unified hierarchy)."""
    for controller in ("pids", "memory", "cpu", ""):
        directory = cgroup_dir(cgroups, controller, root)
        if directory is None:
            continue
        try:
            with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as file:
                return sorted(int(line) for line in file if line.strip())
        except (OSError, ValueError):
            continue
    return []
