"""Hostile guests, each contained to its own task, through a real containerd (2.x).

Every test runs a well-behaved *companion* task in the same daemon (``cat_file -`` fed over stdin by the test):
it must still be running when the hostile guest is done and then exit 0 with every line it was fed. Afterwards
the daemon's RSS, fds and threads (lab/soak.py ``sample``) are back near what they were before the
hostile guest ran (a warm-up run first, so one-time allocations such as compiled modules are not counted).

What each hostile guest meets (docs/reliability.md, "Hostile guests"):
- a memory bomb with a memory limit: malloc fails at the limit, the guest traps (134) and /tasks/oom is logged;
  without a limit: the bound is wasm32's own, 4 GiB of linear memory per guest (the shim sets no default), and
  the memory is returned when the guest ends;
- an infinite loop: Kill ends it (137) and its thread is gone;
- unbounded recursion: wasmtime's stack limit traps it: 134, ``wasm trap: call stack exhausted`` on its stderr
  and in the shim log;
- a flood of stdout: with a live reader every byte arrives (counted and checked line by line); with a reader that
  stops reading, the guest blocks in its write (the pipe, not the daemon, holds the data) until it is killed;
  with a reader that is gone, the same (the daemon holds the FIFO open until exit, like containerd's runc shim);
- thousands of files opened in its preopen: they are the guest's, closed with its store; the daemon's fd count
  comes back;
- a guest that traps, run again and again (what a restart policy does);
- symlinks in a mounted directory pointing at a host file or with ``..``: the guest cannot read through them.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from lab.shimtools import RUNTIME, daemon_pids, remove_task, shim_log_text, task_status, wait_for
from lab.soak import record, sample, size

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(600),
              pytest.mark.parametrize("containerd", ["2.x"], indirect=True)]

RSS_NOISE_KIB = 24 * 1024  # allocator slack and lazily grown arenas; a leak of the tested size is far above it


class Companion:
    """A well-behaved task beside the hostile one: ``cat_file -`` reading what the test feeds it."""

    def __init__(self, containerd, image: str, task_id: str) -> None:
        self.containerd = containerd
        self.task_id = task_id
        self.fed: list[str] = []
        self.proc = subprocess.Popen(
            containerd.ctr_argv("run", "--rm", "--runtime", RUNTIME, image, task_id, "/app.wasm", "-"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=containerd.ctr_env(),
        )
        wait_for(lambda: task_status(containerd, task_id) == "RUNNING", 20, f"{task_id} running")
        self.feed()

    def feed(self) -> None:
        assert self.proc.stdin is not None
        line = f"companion line {len(self.fed)}\n"
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        self.fed.append(line)

    def finish(self) -> None:
        """Still running; then end its stdin: it exits 0 having echoed every line."""
        assert task_status(self.containerd, self.task_id) == "RUNNING", "the companion task died"
        self.feed()
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        assert out == "".join(self.fed), (out[-300:], err)


def _image(wasm_image, guests: Path, name: str, **kw) -> str:
    return wasm_image(name, guests / f"{name}.wasm", **kw)


def _run(containerd, image: str, task_id: str, *args: str, flags: tuple[str, ...] = (), timeout: float = 120):
    return containerd.ctr("run", "--rm", "--runtime", RUNTIME, *flags, image, task_id, "/app.wasm", *args,
                          check=False, timeout=timeout)


def _daemon(containerd) -> int:
    (pid,) = daemon_pids(containerd)
    return pid


def _settled(pid: int, before: dict[str, int]) -> dict[str, int]:
    """The daemon's sample once its threads and fds are back to ``before`` (bounded wait), for the assertions."""
    try:
        wait_for(lambda: (s := sample(pid))["threads"] <= before["threads"] and s["fds"] <= before["fds"], 10,
                 "daemon threads and fds back to their baseline")
    except AssertionError:
        pass  # the caller's assertion shows the figures
    return sample(pid)


def _assert_steady(before: dict[str, int], after: dict[str, int], rss_slack_kib: int = RSS_NOISE_KIB) -> None:
    assert after["threads"] <= before["threads"], (before, after)
    assert after["fds"] <= before["fds"], (before, after)
    assert after["rss_kib"] <= before["rss_kib"] + rss_slack_kib, (before, after)


@pytest.fixture
def companion(containerd, wasm_image, guests):
    image = _image(wasm_image, guests, "cat_file")
    mate = Companion(containerd, image, f"companion-{uuid.uuid4().hex[:6]}")
    try:
        yield mate
    finally:
        if mate.proc.poll() is None:
            remove_task(containerd, mate.task_id)
            mate.proc.kill()
            mate.proc.communicate()


def test_memory_bomb_with_a_limit(containerd, wasm_image, guests, companion):
    image = _image(wasm_image, guests, "alloc")
    limit = 64 << 20
    flags = ("--memory-limit", str(limit))
    _run(containerd, image, "bomb-warm", "1", flags=flags)
    pid = _daemon(containerd)
    before = sample(pid)
    rounds = size(3, 20)
    for n in range(rounds):
        out = _run(containerd, image, f"bomb-{n}", "0", "abort", flags=flags)
        assert out.returncode == 134, out.stderr  # malloc failed at the limit, then the guest aborted
        assert "malloc failed at" in out.stdout
        companion.feed()
    after = _settled(pid, before)
    _assert_steady(before, after)
    assert len(re.findall(r'msg="task ran out of memory[^"]*" task=bomb-\d+ ', shim_log_text(containerd))) == rounds
    companion.finish()
    record("hostile: memory bomb, 64 MiB limit", tried=f"{rounds} guests allocating until malloc fails",
           held="each exits 134 with an OOM log line; companion untouched; daemon steady",
           before=before, after=after)


def test_memory_bomb_without_a_limit_is_bounded_by_wasm32(containerd, wasm_image, guests, companion):
    """No limit in the spec: the shim sets no default; wasm32's 4 GiB of linear memory is the bound.

    Smoke size allocates 256 MiB (the machine is shared); full size allocates until malloc fails at 4 GiB.
    Either way the memory goes back when the guest ends.
    """
    image = _image(wasm_image, guests, "alloc")
    _run(containerd, image, "free-warm", "1")
    pid = _daemon(containerd)
    before = sample(pid)
    mib = size(256, 0)
    out = _run(containerd, image, "free-bomb", str(mib), timeout=300)
    assert out.returncode == 0, out.stderr
    if mib:
        assert f"reached {mib} MiB" in out.stdout
    else:
        reached = re.search(r"malloc failed at (\d+) MiB", out.stdout)
        assert reached and 3900 <= int(reached.group(1)) < 4096, out.stdout[-200:]
    companion.feed()
    after = _settled(pid, before)
    _assert_steady(before, after)
    companion.finish()
    amount = f"{mib} MiB" if mib else "until malloc fails (4 GiB)"
    record("hostile: memory bomb, no limit", tried=f"one guest allocating {amount}",
           held="bounded by wasm32 (4 GiB); memory returned after exit; companion untouched",
           before=before, after=after)


def test_infinite_loop_is_killed(containerd, wasm_image, guests, companion):
    image = _image(wasm_image, guests, "spin")

    def spin_and_kill(task_id: str, flags: tuple[str, ...]) -> None:
        containerd.ctr("run", "-d", "--runtime", RUNTIME, *flags, image, task_id)
        wait_for(lambda: task_status(containerd, task_id) == "RUNNING", 10, f"{task_id} running")
        containerd.ctr("task", "kill", "-s", "SIGKILL", task_id)
        wait_for(lambda: task_status(containerd, task_id) == "STOPPED", 5, f"{task_id} stopped")
        containerd.ctr("task", "rm", task_id)
        containerd.ctr("container", "rm", task_id)

    for n, flags in enumerate([(), ("--cpus", "0.2")]):  # warm-up: the epoch ticker and CPU accounting start once
        spin_and_kill(f"spin-warm-{n}", flags)
    pid = _daemon(containerd)
    before = sample(pid)
    rounds = size(4, 20)
    for n in range(rounds):
        spin_and_kill(f"spin-{n}", ("--cpus", "0.2") if n % 2 else ())
        companion.feed()
    after = _settled(pid, before)
    _assert_steady(before, after)
    companion.finish()
    record("hostile: infinite loop", tried=f"{rounds} spinning guests (half with a 0.2 CPU limit), each killed",
           held="each stops on Kill; threads and fds back; companion untouched", before=before, after=after)


def test_unbounded_recursion_traps(containerd, wasm_image, guests, companion):
    image = _image(wasm_image, guests, "recurse")
    pid = _daemon(containerd)
    _run(containerd, image, "recurse-warm")
    before = sample(pid)
    rounds = size(3, 20)
    for n in range(rounds):
        out = _run(containerd, image, f"recurse-{n}")
        assert out.returncode == 134, (out.stdout, out.stderr)
        assert out.stdout == "recursing\n"
        assert "wasm trap: call stack exhausted" in out.stderr, out.stderr
        companion.feed()
    after = _settled(pid, before)
    _assert_steady(before, after)
    log = shim_log_text(containerd)
    assert len(re.findall(r"task recurse-\d+: wasm trap: call stack exhausted", log)) == rounds
    companion.finish()
    record("hostile: unbounded recursion", tried=f"{rounds} guests recursing without end",
           held="each traps (134, 'call stack exhausted' on stderr and in the shim log); daemon steady",
           before=before, after=after)


def _check_flood(data: bytes, total: int) -> None:
    """Every byte arrived and in order: line i reads ``%012d flood 0...``."""
    assert len(data) == total, (len(data), total)
    lines = data.split(b"\n")
    full = len(data) // 64
    for i in (0, 1, full // 2, full - 1):
        assert lines[i] == b"%012d flood %044d" % (i, 0), lines[i]
    assert all(len(line) == 63 for line in lines[:full])
    assert [int(line[:12]) for line in lines[:full]] == list(range(full))


def test_stdout_flood_with_a_live_reader_loses_nothing(containerd, wasm_image, guests, companion):
    image = _image(wasm_image, guests, "flood")
    _run(containerd, image, "flood-warm", "4096")
    pid = _daemon(containerd)
    before = sample(pid)
    total = size(64 << 20, 1 << 30)
    peak = dict(before)
    proc = subprocess.Popen(
        containerd.ctr_argv("run", "--rm", "--runtime", RUNTIME, image, "flood", "/app.wasm", str(total)),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=containerd.ctr_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    chunks: list[bytes] = []
    received = 0
    began = time.monotonic()
    while time.monotonic() - began < 600:
        chunk = proc.stdout.read1(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
        if len(chunks) % 64 == 0:
            now = sample(pid)
            peak = {k: max(peak[k], now[k]) for k in peak}
    rest, err_bytes = proc.communicate(timeout=30)  # closes the pipes
    assert not rest
    err = err_bytes.decode()
    assert proc.returncode == 0, err
    assert f"flooded {total}" in err
    _check_flood(b"".join(chunks), total)
    companion.feed()
    after = _settled(pid, before)
    _assert_steady(before, after)
    assert peak["rss_kib"] <= before["rss_kib"] + RSS_NOISE_KIB, (before, peak)  # the daemon buffers nothing
    companion.finish()
    record("hostile: stdout flood, live reader", tried=f"{total} bytes of 64-byte lines through ctr's FIFO",
           held=f"every byte and line arrived in order; daemon peak RSS {peak['rss_kib']} KiB",
           before=before, after=after)


def test_stdout_flood_with_a_stalled_or_absent_reader(containerd, wasm_image, guests, companion):
    """A reader that stops reading: the guest blocks in write (back-pressure, no buffering in the daemon) and is
    still killable; a reader that is gone: the guest's write fails and it ends by itself."""
    image = _image(wasm_image, guests, "flood")
    _run(containerd, image, "stall-warm", "4096")
    pid = _daemon(containerd)
    before = sample(pid)
    total = size(256 << 20, 1 << 30)
    stalled = subprocess.Popen(
        containerd.ctr_argv("run", "--rm", "--runtime", RUNTIME, image, "stalled", "/app.wasm", str(total)),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=containerd.ctr_env(),
    )
    try:
        assert stalled.stdout is not None
        first = stalled.stdout.read(4096)  # then the test reads no more
        assert first.startswith(b"000000000000 flood")
        wait_for(lambda: task_status(containerd, "stalled") == "RUNNING", 10, "stalled running")
        time.sleep(1)  # let the guest fill every pipe between it and us
        during = sample(pid)
        assert task_status(containerd, "stalled") == "RUNNING"  # blocked in write, not finished
        assert during["rss_kib"] <= before["rss_kib"] + RSS_NOISE_KIB, (before, during)
        containerd.ctr("task", "kill", "-s", "SIGKILL", "stalled")
        wait_for(lambda: task_status(containerd, "stalled") in ("STOPPED", ""), 10, "stalled stopped")
    finally:
        stalled.kill()  # ctr (the FIFO's reader) goes away: the reader is now absent
        stalled.communicate(timeout=30)
    containerd.ctr("task", "rm", "stalled", check=False)
    containerd.ctr("container", "rm", "stalled", check=False)
    companion.feed()

    # The reader gone: ctr (the FIFO's only reader) is killed while the guest floods. The daemon holds the FIFO
    # open from Create to exit (shim/daemon/stdio.py, as containerd's runc shim does), so the guest blocks in its write
    # like a runc container would; the daemon buffers nothing, and Kill still ends it.
    gone = subprocess.Popen(
        containerd.ctr_argv("run", "--runtime", RUNTIME, image, "orphan", "/app.wasm", str(total)),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=containerd.ctr_env(),
    )
    assert gone.stdout is not None
    assert gone.stdout.read(4096).startswith(b"000000000000 flood")
    gone.kill()
    gone.communicate(timeout=30)
    time.sleep(1)  # the guest fills the FIFO and blocks
    orphaned = sample(pid)
    assert task_status(containerd, "orphan") == "RUNNING"
    assert orphaned["rss_kib"] <= before["rss_kib"] + RSS_NOISE_KIB, (before, orphaned)
    containerd.ctr("task", "kill", "-s", "SIGKILL", "orphan")
    wait_for(lambda: task_status(containerd, "orphan") == "STOPPED", 10, "orphan stopped")
    containerd.ctr("task", "rm", "orphan")
    containerd.ctr("container", "rm", "orphan")
    after = _settled(pid, before)
    _assert_steady(before, after)
    companion.finish()
    record("hostile: stdout flood, stalled/absent reader", tried=f"{total} bytes to a reader that stops, then to none",
           held=(f"the guest blocks in write (daemon RSS {during['rss_kib']} KiB stalled, {orphaned['rss_kib']} KiB "
                 "reader gone); Kill ends it; companion untouched"),
           before=before, after=after)


def test_thousands_of_open_files_in_a_preopen(containerd, wasm_image, guests, companion, tmp_path):
    image = _image(wasm_image, guests, "openfiles")
    shared = tmp_path / "files"
    shared.mkdir()
    mount = ("--mount", f"type=bind,src={shared},dst=/data,options=rbind:rw")
    _run(containerd, image, "files-warm", "/data", "10", flags=mount)
    pid = _daemon(containerd)
    before = sample(pid)
    count = size(2000, 20000)
    rounds = size(1, 5)
    outcomes = []
    for n in range(rounds):
        out = _run(containerd, image, f"files-{n}", "/data", str(count), flags=mount, timeout=300)
        outcomes.append(out.stdout.strip())
        # Either every open succeeded or the guest met the daemon's fd limit as an error of its own.
        assert (out.returncode == 0 and out.stdout.strip() == f"opened {count}") or (
            out.returncode == 2 and out.stdout.startswith("open failed at")), (out.stdout, out.stderr)
        companion.feed()
    after = _settled(pid, before)
    _assert_steady(before, after)
    companion.finish()
    record("hostile: open files", tried=f"{rounds} guests each opening {count} files in a rw mount",
           held=f"{outcomes[-1]}; fds back to baseline after each; companion untouched", before=before, after=after)


def test_trapping_guest_restarted_over_and_over(containerd, wasm_image, guests, companion):
    """What a restart policy does to a crash-looping guest: the same container run again and again, a component
    (in its own runner process) and a module alternately."""
    images = [_image(wasm_image, guests, "trap"), wasm_image("trap-c", guests / "trap.component.wasm")]
    for n in range(4):
        _run(containerd, images[n % 2], f"loop-warm-{n}")
    pid = _daemon(containerd)
    before = sample(pid)
    rounds = size(10, 300)
    statuses: dict[str, set[int]] = {"module": set(), "component": set()}
    for n in range(rounds):
        out = _run(containerd, images[n % 2], "crashloop")
        statuses["module" if n % 2 == 0 else "component"].add(out.returncode)
        if n % 10 == 0:
            companion.feed()
    after = _settled(pid, before)
    assert statuses == {"module": {134}, "component": {134}}, statuses
    _assert_steady(before, after)
    companion.finish()
    record("hostile: crash loop", tried=f"{rounds} runs of one trapping container (component and module in turn)",
           held="each exits 134; daemon steady", before=before, after=after)


def test_symlinks_in_a_mount_do_not_lead_out(containerd, wasm_image, guests, companion, tmp_path):
    marker = Path("/tmp") / f"wasm-shim-secret-{uuid.uuid4().hex}"
    marker.write_text("host secret\n")
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "ok.txt").write_text("granted\n")
    (shared / "abs").symlink_to(marker)
    (shared / "rel").symlink_to("../" * 12 + str(marker).lstrip("/"))
    (shared / "sub" / "up").symlink_to("../..")
    (shared / "root").symlink_to("/")
    try:
        cat = _image(wasm_image, guests, "cat_file")
        writer = _image(wasm_image, guests, "writer")
        mount = ("--mount", f"type=bind,src={shared},dst=/data,options=rbind:rw")
        ok = _run(containerd, cat, "mnt-ok", "/data/ok.txt", flags=mount)
        assert ok.stdout == "granted\n", ok.stderr
        tries = ["/data/abs", "/data/rel", f"/data/sub/up/{marker.name}", "/data/root" + str(marker),
                 "/data/../../../.." + str(marker), "/data/sub/up/../../etc/hostname"]
        for n, path in enumerate(tries):
            out = _run(containerd, cat, f"mnt-read-{n}", path, flags=mount)
            assert out.returncode == 1 and "host secret" not in out.stdout, (path, out.stdout)
            assert f"cat_file: {path}:" in out.stderr, out.stderr
        planted = Path("/tmp") / f"wasm-shim-planted-{uuid.uuid4().hex}"
        for n, path in enumerate([f"/data/sub/up/{planted.name}", "/data/root" + str(planted)]):
            out = _run(containerd, writer, f"mnt-write-{n}", path, "planted", flags=mount)
            assert out.returncode == 1, (path, out.stdout)
            assert not planted.exists()
        assert marker.read_text() == "host secret\n"
        companion.finish()
    finally:
        marker.unlink()
    record("hostile: symlinks in a mount", tried=f"{len(tries)} reads and 2 writes through symlinks and '..'",
           held="every one refused inside the guest; host files untouched")
