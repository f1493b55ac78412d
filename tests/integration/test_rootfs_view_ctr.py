"""A wasm task whose image is nothing but its module runs without a rootfs mount (shim/daemon/rootfs.py), through
`ctr` on containerd 1.6 and 2.x: what the guest then sees, and that an image with more is still mounted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lab.containerd import Containerd
from lab.shimtools import RUNTIME, remove_task, task_status, wait_for

pytestmark = pytest.mark.integration


def _rootfs(containerd: Containerd, task_id: str) -> str:
    return os.path.realpath(Path(containerd.state) / "io.containerd.runtime.v2.task" / containerd.namespace /
                            task_id / "rootfs")


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == path for line in mountinfo)


def test_only_an_image_with_more_than_its_module_is_mounted(containerd: Containerd, wasm_image, guests: Path) -> None:
    bare = wasm_image("sleep-bare", guests / "sleep.wasm")
    more = wasm_image("sleep-more", guests / "sleep.wasm", extra={"/data.txt": b"more than the module\n"})
    for image, task_id in ((bare, "bare"), (more, "more")):
        containerd.ctr("run", "-d", "--runtime", RUNTIME, image, task_id, "/app.wasm", "60")
        wait_for(lambda: task_status(containerd, task_id) == "RUNNING", 10, f"{task_id} running")  # noqa: B023
    try:
        assert not _mounted(_rootfs(containerd, "bare")), "the module-only image's rootfs is not mounted"
        assert _mounted(_rootfs(containerd, "more")), "an image with more than its module is mounted as before"
    finally:
        remove_task(containerd, "bare")
        remove_task(containerd, "more")


def test_without_a_mount_the_guest_writes_its_root_but_does_not_see_its_module(containerd: Containerd, wasm_image,
                                                                               guests: Path) -> None:
    writer = wasm_image("writer-bare", guests / "writer.wasm")
    wrote = containerd.ctr("run", "--rm", "--runtime", RUNTIME, writer, "w1", "/app.wasm", "/made.txt", "x",
                           check=False)
    assert wrote.returncode == 0 and wrote.stdout == "wrote /made.txt\n", wrote.stderr
    cat = wasm_image("cat-bare", guests / "cat_file.wasm")
    own = containerd.ctr("run", "--rm", "--runtime", RUNTIME, cat, "c1", "/app.wasm", "/app.wasm", check=False)
    # The one thing the image holds is read by the shim from its layer, not shown at the guest's "/".
    assert own.returncode == 1 and "cat_file: /app.wasm: No such file or directory" in own.stderr, own.stdout
    readonly = containerd.ctr("run", "--rm", "--read-only", "--runtime", RUNTIME, writer, "w2", "/app.wasm",
                              "/made.txt", "x", check=False)
    assert readonly.returncode == 1 and "writer: /made.txt:" in readonly.stderr, readonly.stdout
