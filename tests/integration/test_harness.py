"""The private-containerd harness itself, on containerd 1.6 and 2.x, with runc and a busybox image.

What must hold before any shim test can be trusted: a container runs and prints; a detached one can be
killed, listed as STOPPED and removed; and `stop()` leaves nothing behind (no mounts under tmp, no process
that names the instance, no cgroup or runc state of its namespace).
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from lab.containerd import (
    _RUNC_ROOT,
    CONFIG_V2_KINDS,
    Containerd,
    ContainerdFactory,
    HarnessError,
    _mount_points,
)

pytest_plugins = ["lab.fixtures"]

# The harness on every kind, containerd 1.7 included (lab/fixtures.py).
pytestmark = [pytest.mark.integration, pytest.mark.containerd_1_7]

RUNC = "io.containerd.runc.v2"


def task_status(containerd: Containerd, container_id: str) -> str:
    """STATUS column of `ctr task ls` for one task (columns: TASK PID STATUS)."""
    for line in containerd.ctr("task", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return fields[-1]
    raise AssertionError(f"task {container_id} not in `ctr task ls`")


def assert_left_clean(containerd: Containerd) -> None:
    prefixes = [str(containerd.tmp)] + ([str(containerd.socket_dir)] if containerd.socket_dir else [])
    left = [m for m in _mount_points() if any(m.startswith(p) for p in prefixes)]
    assert not left, f"still mounted after stop(): {left}"
    assert not containerd.tmp.exists()
    holders = [pid for pid in _all_pids() if pid != os.getpid() and containerd._belongs(pid)]
    assert not holders, f"processes of this instance still alive after stop(): {holders}"
    assert not containerd._cgroup_dirs(), "cgroups of the test namespace remain"
    assert not (_RUNC_ROOT / containerd.namespace).exists()


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def test_run_rm_prints_hello(containerd: Containerd, busybox_image: str) -> None:
    done = containerd.ctr("run", "--rm", "--runtime", RUNC, busybox_image, "hello-1", "echo", "hello")
    assert done.stdout.strip() == "hello"
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []


def test_detached_task_kill_ls_rm(containerd: Containerd, busybox_image: str) -> None:
    containerd.ctr("run", "-d", "--runtime", RUNC, busybox_image, "sleeper", "sleep", "1000")
    assert task_status(containerd, "sleeper") == "RUNNING"

    containerd.ctr("task", "kill", "-s", "KILL", "sleeper")
    # Kill is asynchronous: the exit reaches containerd through the shim's event a moment later.
    containerd.ctr("task", "wait", "sleeper", timeout=10, check=False)
    assert task_status(containerd, "sleeper") == "STOPPED"

    containerd.ctr("task", "rm", "sleeper")
    containerd.ctr("containers", "rm", "sleeper")
    assert containerd.ctr("task", "ls", "-q").stdout.split() == []
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []


def test_stop_cleans_up_after_a_test_that_failed_midway(containerd: Containerd, busybox_image: str) -> None:
    """A test that dies with a running container leaves mounts, a shim and a container process; stop() must
    remove all of them (the fixture calls stop() again at teardown: it is idempotent)."""
    containerd.ctr("run", "-d", "--runtime", RUNC, busybox_image, "abandoned", "sleep", "1000")
    shims = [pid for pid in _all_pids() if containerd._belongs(pid)]
    assert shims, "expected a shim process for the running container"
    assert any(m.startswith(str(containerd.tmp)) for m in _mount_points()), "expected the rootfs mount"

    containerd.stop()

    assert_left_clean(containerd)
    assert all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in shims)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_startup_time_and_config(containerd: Containerd) -> None:
    config = tomllib.loads(containerd.config_path.read_text())
    assert config["version"] == (2 if containerd.kind in CONFIG_V2_KINDS else 3)
    assert config["grpc"]["address"] == containerd.address
    assert containerd.snapshotter in ("overlayfs", "native")
    version = containerd.ctr("version").stdout
    assert {"1.6": "Version:  1.6", "1.7": "Version:  1.7"}.get(containerd.kind, "Version:  2.") in version, version
    # Not an assertion on speed: the number is reported so a slow start shows up in `pytest -rP` output.
    print(f"containerd {containerd.kind} answered after {containerd.startup_seconds:.3f} s "
          f"(snapshotter {containerd.snapshotter})")


def test_ctr_failure_shows_output_and_log(containerd: Containerd) -> None:
    with pytest.raises(HarnessError) as excinfo:
        containerd.ctr("task", "kill", "no-such-task")
    message = str(excinfo.value)
    assert "no-such-task" in message and "containerd log (tail)" in message


def test_cri_plugin_answers_crictl(containerd_factory: ContainerdFactory) -> None:
    crictl = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "crictl"
    if not os.access(crictl, os.X_OK):
        pytest.fail(f"{crictl} is missing; run `make setup`")
    instance = containerd_factory(cri=True)
    done = subprocess.run(
        [str(crictl), "--runtime-endpoint", f"unix://{instance.address}", "--timeout", "10s", "version"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr + instance.log_tail()
    assert "RuntimeName:  containerd" in done.stdout


def test_factory_passes_env_and_config_through(containerd_factory: ContainerdFactory) -> None:
    instance = containerd_factory(env={"WASM_SHIM_TEST_MARK": "1"}, extra_config="[debug]\nformat = 'json'\n")
    assert instance.env["WASM_SHIM_TEST_MARK"] == "1"
    assert instance.process is not None
    environ = Path(f"/proc/{instance.process.pid}/environ").read_bytes().split(b"\0")
    assert b"WASM_SHIM_TEST_MARK=1" in environ
    config = tomllib.loads(instance.config_path.read_text())
    assert config["debug"] == {"level": "debug", "format": "json"}  # deep-merged, not replaced


def test_bad_extra_config_is_a_clear_error(containerd_factory: ContainerdFactory) -> None:
    with pytest.raises(HarnessError, match="extra_config is not valid TOML"):
        containerd_factory(extra_config="[unclosed")


def test_ctr_argv_adds_fifo_dir_and_snapshotter(containerd: Containerd, busybox_image: str) -> None:
    argv = containerd.ctr_argv("run", "--rm", busybox_image, "argv-1", "true")
    c = containerd
    assert argv[:5] == [c.ctr_binary, "--address", c.address, "--namespace", c.namespace]
    assert argv[5:10] == ["run", "--fifo-dir", str(c.tmp / "fifo"), "--snapshotter", c.snapshotter]
    # Run without the harness's environment: the argv alone must be enough.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert containerd.ctr_argv("task", "ls")[5:] == ["task", "ls"]
