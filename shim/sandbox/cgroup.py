"""The cgroup a pod's holder lives in: where it is, putting the holder there, removing it again.

Owns the path rule and the writes. The kubelet makes each pod a cgroup (PodSandboxConfig.linux.cgroup_parent)
and CRI puts the pause container in a leaf below it named by the sandbox id (containerd
internal/cri/server/podsandbox: getCgroupsPath); the holder takes that place, so the pod's processes are all
below the pod's cgroup, as with runc. Two spellings of the parent (the kubelet's cgroup driver):
- cgroupfs: an absolute path, "/kubepods/burstable/pod<uid>"; the leaf is "<parent>/<sandbox id>";
- systemd: a slice name, "kubepods-burstable-pod<uid>.slice", whose directory nests every prefix
  (systemd.slice(5): "foo-bar.slice" is "foo.slice/foo-bar.slice"); the leaf is
  "<that directory>/wasm-shim-sandbox-<sandbox id>.scope" (created directly, as runc's cgroupfs manager would;
  systemd leaves scopes it did not create alone).
cgroup v2 has one hierarchy; v1 has one per controller (and the named systemd one), each mounted under
/sys/fs/cgroup/<name>: the leaf is made in every hierarchy where the pod's cgroup exists (v1 cpuset: with the
parent's cpus and mems, without which no process may join).

Invariants: nothing is created outside the pod's own cgroup; a failure to place the holder in one hierarchy is
a warning naming it (the pod runs, its holder is accounted to the daemon's cgroup there), never a failed pod;
``remove`` removes exactly the directories ``place`` made.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"


class CgroupError(ValueError):
    """A cgroup parent that is neither a cgroupfs path nor a systemd slice name; the message says why."""


def leaf_path(parent: str, sandbox_id: str) -> str:
    """The holder's cgroup, relative to a hierarchy's root, for the pod's ``cgroup_parent``."""
    if parent.endswith(".slice") and "/" not in parent:
        return os.path.join(slice_path(parent), f"wasm-shim-sandbox-{sandbox_id}.scope")
    if not parent.startswith("/") or ".." in parent.split("/"):
        raise CgroupError(f"cgroup parent {parent!r} is neither an absolute cgroupfs path nor a systemd slice name")
    return os.path.join(parent.strip("/"), sandbox_id)


def slice_path(name: str) -> str:
    """systemd.slice(5): "a-b-c.slice" lives at "a.slice/a-b.slice/a-b-c.slice"; "-.slice" is the root."""
    stem = name.removesuffix(".slice")
    if stem == "-":
        return ""
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise CgroupError(f"systemd slice {name!r} is not a valid slice name")
    parts = stem.split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def hierarchies(root: str = CGROUP_ROOT) -> list[str]:
    """The hierarchy roots: ``root`` itself on cgroup v2, else each mounted v1 hierarchy below it."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return [root]
    found = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        path = os.path.join(root, name)
        # cgroup v1 mounts "cpu,cpuacct" with "cpu" and "cpuacct" as links to it; "unified" is v2's hybrid mount.
        if name == "unified" or os.path.islink(path) or not os.path.isfile(os.path.join(path, "cgroup.procs")):
            continue
        found.append(path)
    return found


def place(pid: int, relative: str, root: str = CGROUP_ROOT) -> list[str]:
    """Make the leaf ``relative`` where its parent exists and move ``pid`` into it; the directories made."""
    made: list[str] = []
    for hierarchy in hierarchies(root):
        leaf = os.path.join(hierarchy, relative)
        parent = os.path.dirname(leaf)
        if not os.path.isdir(parent):
            continue  # the kubelet made no pod cgroup in this hierarchy
        try:
            try:
                os.mkdir(leaf, 0o755)
                made.append(leaf)
            except FileExistsError:
                pass
            if os.path.exists(os.path.join(leaf, "cpuset.cpus")):
                _inherit_cpuset(leaf)
            with open(os.path.join(leaf, "cgroup.procs"), "w") as procs:
                procs.write(str(pid))
        except OSError as exc:
            log.warning("sandbox holder %d: cannot place it in cgroup %s: %s", pid, leaf, exc.strerror)
    return made


def remove(directories: list[str]) -> None:
    """Remove what ``place`` made (empty once the holder is gone); a failure is logged."""
    for directory in directories:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", directory, exc.strerror)


def _inherit_cpuset(leaf: str) -> None:
    """cgroup v1 cpuset: a new cgroup starts with no cpus and mems, and nothing may join it until it has some."""
    parent = os.path.dirname(leaf)
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(leaf, name)) as current:
            if current.read().strip():
                continue
        with open(os.path.join(parent, name)) as source:
            value = source.read().strip()
        with open(os.path.join(leaf, name), "w") as target:
            target.write(value)
