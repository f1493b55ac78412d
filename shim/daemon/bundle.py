"""Reading an OCI bundle into what a guest is granted: the one place that maps the spec onto a ``GuestSpec``.

Owns: loading `config.json` and mapping it onto `GuestSpec` — args, env, cwd, the bind mounts that become
preopens, `root.readonly`, annotations, limits (memory, CPU), the network namespace a pod's containers join and
the cgroups path (docs/design.md, rule 7: the spec is the whole grant). Engines read the grant from the
`GuestSpec` and never read `config.json` again (runc does, for native containers: it is runc's input).

Invariants: only bind mounts (type `bind` or a `bind`/`rbind` option) are granted to a guest; the kernel
filesystems containerd adds to every spec (proc, sysfs, devpts, mqueue, tmpfs on /dev, cgroup) have no meaning
for a wasm guest and are dropped. A bind mount whose source is missing, or whose destination is not absolute,
is an error that names it; each mount says whether it is a directory (a WASI guest can be granted only those).
Pure apart from reading the one file and stat-ing mount sources.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ..engines.base import GuestMount, GuestSpec
from ..engines.grant import parse_grant


class BundleError(Exception):
    """The bundle cannot describe a runnable guest; the message says which field and why."""


@dataclass(frozen=True)
class Bundle:
    path: str
    spec: dict[str, Any]

    @property
    def config(self) -> str:
        return os.path.join(self.path, "config.json")

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
        if not str(destination).startswith("/"):
            raise BundleError(f"mount {destination!r}: the destination must be an absolute path")
        if not os.path.exists(source):
            raise BundleError(f"mount source {source} (for {destination}) does not exist")
        mounts.append(GuestMount(destination=destination, source=source, readonly="ro" in (m.get("options") or []),
                                 directory=os.path.isdir(source)))
    return tuple(mounts)


def first_arg(bundle: Bundle) -> str:
    """process.args[0] as written ("" when there is none: guest_spec says what is wrong)."""
    args = (bundle.spec.get("process") or {}).get("args") or []
    return str(args[0]) if args else ""


def guest_spec(task_id: str, bundle: Bundle) -> GuestSpec:
    process = bundle.spec.get("process") or {}
    args = process.get("args") or []
    if not args:
        raise BundleError("the spec has no process.args: nothing to run (set an entrypoint or command)")
    linux = bundle.spec.get("linux") or {}
    limit = (linux.get("resources") or {}).get("memory", {}).get("limit")
    return GuestSpec(
        task_id=task_id,
        rootfs=bundle.rootfs,
        root_readonly=bool((bundle.spec.get("root") or {}).get("readonly")),
        args=tuple(str(a) for a in args),
        env=tuple(str(e) for e in process.get("env") or ()),
        cwd=str(process.get("cwd") or "/"),
        mounts=guest_mounts(bundle.spec),
        grant=parse_grant(bundle.annotations),
        memory_limit=int(limit) if isinstance(limit, int) and limit > 0 else None,
        bundle=bundle.path,
        cpu_limit=cpu_limit(bundle.spec),
        network_namespace=network_namespace(bundle.spec, bundle.config),
        cgroups_path=str(linux.get("cgroupsPath") or "") if isinstance(linux, dict) else "",
    )


def cpu_limit(spec: dict) -> float | None:  # type: ignore[type-arg]
    """CPUs granted by linux.resources.cpu quota/period (runtime-spec config-linux.md "CPU").

    None = no cap. Shares are relative weights with no meaning for one guest alone: not enforced (see
    docs/annotations.md).
    """
    cpu = ((spec.get("linux") or {}).get("resources") or {}).get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period") or 100_000
    if isinstance(quota, int) and quota > 0 and isinstance(period, int) and period > 0:
        return quota / period
    return None


def network_namespace(spec: dict[str, Any], config: str = "config.json") -> str | None:
    """The path of the network namespace the spec joins (``linux.namespaces[type=network].path``), or None.

    OCI runtime-spec config-linux.md "Namespaces": an entry without ``path`` asks the runtime to create a new
    namespace; only an entry with a path names an existing one (the pod sandbox's, under CRI). Raises
    BundleError, naming ``config``, when the entry is malformed.
    """
    linux = spec.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    for entry in namespaces if isinstance(namespaces, list) else ():
        if isinstance(entry, dict) and entry.get("type") == "network":
            path = entry.get("path")
            if path is None or path == "":
                return None
            if not isinstance(path, str) or not path.startswith("/"):
                raise BundleError(f"{config}: linux.namespaces network path {path!r} is not an absolute path")
            return path
    return None
