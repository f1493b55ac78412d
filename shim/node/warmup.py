"""Warm a node before its first wasm pod: the installer's last step (`wasm-shim node install --warm-timeout S`).

Owns three CRI calls and a wait, over containerd's CRI socket (gRPC, hand-encoded: runtime.v1 of cri-api):
1. PullImage of each image the shim option `warm_images` names (as the kubelet would pull it for a pod), so the
   daemon finds it in containerd's image store;
2. RunPodSandbox of a host-network pod with the wasm handler, then StopPodSandbox and RemovePodSandbox: containerd
   starts the node's shim daemon exactly as it does for a real pod (its `start` with containerd's own arguments,
   so the daemon is the one every later pod finds), and with the options file's `idle_timeout = "never"` it stays;
3. waiting for the daemon's `<cache_dir>/warm-status.json` (shim/daemon/warm.py) to report every image, so the
   node is labelled ready once the first pod of each is as fast as the hundredth.

Best effort by design: a node whose warm-up fails (an image that cannot be pulled or compiled, a slow compile past
the timeout) still runs wasm, so each problem is a warning in the installer's log, never a failed install.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Sequence

from ..ttrpc.wire import field_bytes, field_string, field_varint

HOST_NETWORK = 2  # runtime.v1 NamespaceMode NODE
WARMUP_POD = "wasm-shim-warmup"
STATUS_FILE = "warm-status.json"


def _cri(socket_path: str, method: str, payload: bytes, timeout: float) -> bytes:
    import grpc

    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        call = channel.unary_unary(method)
        return bytes(call(payload, timeout=timeout))
    finally:
        channel.close()


def _string_field(data: bytes, number: int) -> str:
    from ..ttrpc.wire import iter_fields

    for num, _, value in iter_fields(data):
        if num == number:
            return bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
    return ""


def pull_request(image: str) -> bytes:
    """PullImageRequest{image=1 ImageSpec{image=1}}."""
    return field_bytes(1, field_string(1, image))


def sandbox_config(uid: str) -> bytes:
    """PodSandboxConfig of the warm-up pod: metadata{name=1, uid=2, namespace=3, attempt=4}, linux=8
    {security_context=2 {namespace_options=1 {network=1, pid=2, ipc=3}}}: every namespace the node's, so nothing
    (no CNI, no netns) is made for it."""
    metadata = field_string(1, WARMUP_POD) + field_string(2, uid) + field_string(3, WARMUP_POD)
    modes = field_varint(1, HOST_NETWORK) + field_varint(2, HOST_NETWORK) + field_varint(3, HOST_NETWORK)
    linux = field_bytes(2, field_bytes(1, modes))
    return field_bytes(1, metadata) + field_bytes(8, linux)


def run_sandbox_request(handler: str, uid: str) -> bytes:
    """RunPodSandboxRequest{config=1, runtime_handler=2}."""
    return field_bytes(1, sandbox_config(uid)) + field_string(2, handler)


def warm_up(socket_path: str, handler: str, images: Sequence[str], status_path: str, timeout: float,
            say: Callable[[str], None], *, pull: bool = True,
            cri: Callable[[str, str, bytes, float], bytes] = _cri) -> list[str]:
    """Do the three steps of the module docstring (``pull`` False: the images are on the node already, as a
    preloaded cluster's are); the warnings (empty: all warm)."""
    warnings: list[str] = []
    deadline = time.monotonic() + timeout
    for image in images if pull else ():
        try:
            cri(socket_path, "/runtime.v1.ImageService/PullImage", pull_request(image),
                max(1.0, deadline - time.monotonic()))
            say(f"warm: pulled {image}")
        except Exception as exc:  # grpc.RpcError and friends: the image's warning, not the install's failure
            warnings.append(f"cannot pull {image}: {_describe(exc)}")
    try:
        response = cri(socket_path, "/runtime.v1.RuntimeService/RunPodSandbox",
                       run_sandbox_request(handler, f"{WARMUP_POD}-{secrets.token_hex(6)}"),
                       max(1.0, deadline - time.monotonic()))
        sandbox = _string_field(response, 1)
        for method in ("StopPodSandbox", "RemovePodSandbox"):
            cri(socket_path, f"/runtime.v1.RuntimeService/{method}", field_string(1, sandbox), 30.0)
        say(f"warm: the shim daemon is up (started by containerd for a warm-up sandbox, {sandbox[:12]}, removed)")
    except Exception as exc:
        warnings.append(f"cannot start the shim daemon through a warm-up sandbox: {_describe(exc)}")
        return warnings
    pending = [image for image in images if not any(image in w for w in warnings)]
    outcomes = _wait_for_status(status_path, pending, deadline)
    if pending and outcomes is None:
        return [*warnings, f"the daemon reports no warm-up in {status_path}: its warm_images option is empty"]
    for image in pending:
        outcome = (outcomes or {}).get(image)
        if outcome is None:
            warnings.append(f"{image} was not compiled within {timeout:g} s (it goes on in the daemon)")
        elif outcome.get("state") == "compiled":
            say(f"warm: {image}: {outcome.get('detail', '')} in {outcome.get('seconds', '?')} s")
        else:
            warnings.append(f"cannot compile {image}: {outcome.get('detail', 'unknown reason')}")
    return warnings


STATUS_GRACE = 10.0  # seconds for a daemon with warm_images to write its first status


def _wait_for_status(path: str, images: Sequence[str], deadline: float) -> dict[str, dict[str, str]] | None:
    """The daemon's outcomes for ``images``, once it reported all of them (or what it had at the deadline); None
    when it wrote no status at all within STATUS_GRACE seconds (it was given nothing to warm)."""
    outcomes: dict[str, dict[str, str]] = {}
    seen = False
    grace = time.monotonic() + STATUS_GRACE
    while True:
        try:
            with open(path, encoding="utf-8") as file:
                status = json.load(file)
            seen = True
            alive = os.path.exists(f"/proc/{int(status.get('pid', 0))}")
            if alive or status.get("done"):
                outcomes = {k: v for k, v in (status.get("outcomes") or {}).items() if k in images}
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        if all(image in outcomes for image in images) or time.monotonic() >= deadline:
            return outcomes
        if not seen and time.monotonic() >= grace:
            return None
        time.sleep(0.5)


def _describe(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):
        return f"{code().name} {details() or ''}".strip()
    return str(exc)
