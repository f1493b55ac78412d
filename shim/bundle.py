"""Reading an OCI bundle into what a guest is granted.

Owns: loading `config.json` and mapping it onto `GuestSpec` — args, env, cwd, the bind mounts that become
preopens, `root.readonly`, annotations and limits (DESIGN.md principle 7: the spec is the whole grant).

Invariants: only bind mounts (type `bind` or a `bind`/`rbind` option) are granted to a guest; the kernel
filesystems containerd adds to every spec (proc, sysfs, devpts, mqueue, tmpfs on /dev, cgroup) have no meaning
for a wasm guest and are dropped. A bind mount whose source is missing is an error that names it.
Pure apart from reading the one file and stat-ing mount sources.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .engines.base import GuestMount, GuestSpec


class BundleError(Exception):
    """The bundle cannot describe a runnable guest; the message says which field and why."""


@dataclass(frozen=True)
class Bundle:
    path: str
    spec: dict[str, Any]

    @property
    def rootfs(self) -> str:
        root = (self.spec.get("root") or {}).get("path") or "rootfs"
        return root if os.path.isabs(root) else os.path.join(self.path, root)

    @property
    def annotations(self) -> dict[str, str]:
        value = self.spec.get("annotations") or {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def load_bundle(path: str) -> Bundle:
    config = os.path.join(path, "config.json")
    try:
        with open(config, "rb") as f:
            spec = json.load(f)
    except OSError as exc:
        raise BundleError(f"cannot read {config}: {exc.strerror}") from None
    except ValueError as exc:
        raise BundleError(f"{config} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise BundleError(f"{config} is not an OCI runtime spec (expected a JSON object)")
    return Bundle(path=path, spec=spec)


def _is_bind(mount: dict[str, Any]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def guest_mounts(spec: dict[str, Any]) -> tuple[GuestMount, ...]:
    mounts = []
    for m in spec.get("mounts") or []:
        if not isinstance(m, dict) or not _is_bind(m):
            continue
        destination, source = m.get("destination"), m.get("source")
        if not destination or not source:
            raise BundleError(f"mount {m!r} needs both a source and a destination")
        if not os.path.exists(source):
            raise BundleError(f"mount source {source} (for {destination}) does not exist")
        mounts.append(GuestMount(destination=destination, source=source, readonly="ro" in (m.get("options") or [])))
    return tuple(mounts)


def guest_spec(task_id: str, bundle: Bundle) -> GuestSpec:
    process = bundle.spec.get("process") or {}
    args = process.get("args") or []
    if not args:
        raise BundleError("the spec has no process.args: nothing to run (set an entrypoint or command)")
    limit = ((bundle.spec.get("linux") or {}).get("resources") or {}).get("memory", {}).get("limit")
    return GuestSpec(
        task_id=task_id,
        rootfs=bundle.rootfs,
        root_readonly=bool((bundle.spec.get("root") or {}).get("readonly")),
        args=tuple(str(a) for a in args),
        env=tuple(str(e) for e in process.get("env") or ()),
        cwd=str(process.get("cwd") or "/"),
        mounts=guest_mounts(bundle.spec),
        annotations=bundle.annotations,
        memory_limit=int(limit) if isinstance(limit, int) and limit > 0 else None,
        bundle=bundle.path,
        cpu_limit=cpu_limit(bundle.spec),  # issue 3 (engine2): CPU time slicing
    )


def cpu_limit(spec: dict) -> float | None:  # type: ignore[type-arg]
    """issue 3 (engine2): CPUs granted by linux.resources.cpu quota/period (runtime-spec config-linux.md "CPU").

    None = no cap. Shares are relative weights with no meaning for one guest alone: not enforced (see
    docs/annotations.md).
    """
    cpu = ((spec.get("linux") or {}).get("resources") or {}).get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period") or 100_000
    if isinstance(quota, int) and quota > 0 and isinstance(period, int) and period > 0:
        return quota / period
    return None
