"""The pod's /etc files CRI mounts into its containers: hostname, hosts, resolv.conf.

In shim mode CRI mounts `<CRI root>/sandboxes/<id>/{hostname,hosts,resolv.conf}` into each container when they
exist, leaving their making to the sandbox controller (containerd internal/cri/server/container_create.go,
linuxContainerMounts: "could be delegated to remote sandbox controller"). A WASI guest is granted directories
only, so these matter to a pod's native containers (a sidecar resolving a Service name). They are written as
containerd's own pause path writes them (internal/cri/server/podsandbox/sandbox_run_linux.go,
setupSandboxFiles): the pod's hostname (else the node's); a copy of the node's /etc/hosts; resolv.conf from the
pod's DNS config, or a copy of the node's when it has none.

Where CRI's root is: containerd gives a shim-mode sandbox a bundle whose `work` link points into the sandbox
controller's own root, `<containerd root>/io.containerd.sandbox.controller.v1.shim/<namespace>/<id>`
(core/runtime/v2/bundle.go NewBundle); CRI's root is `<containerd root>/io.containerd.grpc.v1.cri`. When the link
is not there or not of that shape, no files are written and a warning says so: the pod still runs, its
containers see their image's own files.

Invariants: files are written whole (a temporary name, then rename) with mode 0644; ``remove`` deletes exactly
the directory ``write`` made, and only when ``write`` made it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket

from .pod import PodPlan

log = logging.getLogger(__name__)

CONTROLLER_ROOT = "io.containerd.sandbox.controller.v1.shim"
CRI_ROOT = "io.containerd.grpc.v1.cri"


def cri_sandbox_dir(bundle: str, sandbox_id: str) -> str | None:
    """CRI's directory for this sandbox's files, derived from the bundle's `work` link; None if unknown."""
    try:
        work = os.readlink(os.path.join(bundle, "work"))
    except OSError:
        return None
    parts = os.path.normpath(work).split(os.sep)
    if len(parts) < 4 or parts[-1] != sandbox_id or parts[-3] != CONTROLLER_ROOT:
        return None
    root = os.sep.join(parts[:-3]) or os.sep
    return os.path.join(root, CRI_ROOT, "sandboxes", sandbox_id)


def resolv_conf(plan: PodPlan) -> str | None:
    """resolv.conf for the pod's DNS config (containerd's parseDNSOptions), None to copy the node's."""
    if not plan.has_dns:
        return None
    text = ""
    if plan.dns_searches:
        text += "search " + " ".join(plan.dns_searches) + "\n"
    if plan.dns_servers:
        text += "".join(f"nameserver {server}\n" for server in plan.dns_servers)
    if plan.dns_options:
        text += "options " + " ".join(plan.dns_options) + "\n"
    return text


def write(directory: str, plan: PodPlan, etc: str = "/etc") -> bool:
    """Write the pod's files into ``directory``; True if this call created the directory."""
    created = not os.path.isdir(directory)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _write(os.path.join(directory, "hostname"), (plan.hostname or socket.gethostname()) + "\n")
    _copy(os.path.join(etc, "hosts"), os.path.join(directory, "hosts"))
    resolv = resolv_conf(plan)
    if resolv is None:
        _copy(os.path.join(etc, "resolv.conf"), os.path.join(directory, "resolv.conf"))
    else:
        _write(os.path.join(directory, "resolv.conf"), resolv)
    return created


def remove(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _write(path: str, text: str) -> None:
    partial = path + ".partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(partial, 0o644)
    os.rename(partial, path)


def _copy(source: str, path: str) -> None:
    try:
        with open(source, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError as exc:
        log.warning("sandbox files: cannot read the node's %s (%s): the pod's copy is empty", source, exc.strerror)
        text = ""
    _write(path, text)
