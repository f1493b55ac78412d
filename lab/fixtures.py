"""pytest plugin: private containerd instances and a busybox image, as fixtures.

Load it with ``pytest_plugins = ["lab.fixtures"]`` (in a test module or the top-level conftest).

Fixtures
- ``containerd``: a fresh private containerd per test, parametrized over Debian's 1.6 and the 2.x build
  (ids ``containerd-1.6`` / ``containerd-2.x``), and the 1.7 build (``containerd-1.7``) for tests marked
  ``containerd_1_7`` (the CRI and artifact tests and a smoke set: the suite's time stays in check), with
  ``.venv/bin`` first on its PATH so that `containerd-shim-wasmtime-v1` is ours. Function-scoped: a start takes
  about 0.1 s here, and a fresh instance keeps tests independent.
- ``containerd_factory``: ``factory(kind=None, *, cri=False, extra_config="", env=None) -> Containerd`` for
  tests that need CRI, their own config or environment (``env`` reaches the shims). Parametrized over the
  kinds like ``containerd``; ``kind=None`` means the parameter's. All instances it made stop at teardown.
- ``busybox_image_tar`` (session): an OCI image tarball of Debian's static /bin/busybox with applet symlinks.
- ``busybox_image``: that image imported into ``containerd``; returns its ref.

Invariant: teardown always stops what the fixture started, also when the test failed; on failure the tail of
containerd's log is printed, so it lands in the test report ("Captured stdout teardown").
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

import pytest

from wasm_shim.oci.layout import Symlink, build_image_tar

from .containerd import DEFAULT_KINDS, KINDS, VENV_BIN, ComponentMissing, Containerd, ContainerdFactory, Kind, launch

BUSYBOX = Path("/bin/busybox")  # Debian busybox-static: one static binary, runs in an empty rootfs
BUSYBOX_REF = "localhost/wasm-shim-test/busybox:latest"
BUSYBOX_APPLETS = ("sh", "echo", "sleep", "cat", "true", "false", "ls")

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()

@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    report = yield
    if isinstance(report, pytest.TestReport):
        item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


def _start(
    kind: Kind, *, cri: bool = False, extra_config: str = "", env: Mapping[str, str] | None = None
) -> Containerd:
    tmp = Path(tempfile.mkdtemp(prefix=f"wsh-{kind}-", dir="/tmp"))  # short: sockets fit right inside it
    try:
        return launch(
            kind, tmp, path_prepend=[VENV_BIN], cri=cri, extra_config=extra_config, env=env
        )
    except ComponentMissing as exc:
        pytest.skip(str(exc))
    finally:
        if not (tmp / "config.toml").exists():  # launch gave up before using it (and so did not remove it)
            shutil.rmtree(tmp, ignore_errors=True)


def _stop(instance: Containerd, node: pytest.Item) -> None:
    if _failed(node):
        print(f"--- containerd {instance.kind} log tail ({instance.log_path}, removed at teardown)")
        print(instance.log_tail(80))
    instance.stop()


_KIND_FIXTURES = ("containerd", "containerd_factory")
#: A test (or module) with this marker runs on containerd 1.7 too; others on DEFAULT_KINDS (1.6 and 2.x).
CONTAINERD_17_MARK = "containerd_1_7"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{CONTAINERD_17_MARK}: also run this test on containerd 1.7 (lab/fixtures.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``containerd`` / ``containerd_factory`` over the kinds (unless the test names its own kinds with
    ``@pytest.mark.parametrize(FIXTURE, [...], indirect=True)``): 1.6 and 2.x, plus 1.7 when marked."""
    named = {name.strip() for mark in metafunc.definition.iter_markers("parametrize")
             for name in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
    kinds = KINDS if metafunc.definition.get_closest_marker(CONTAINERD_17_MARK) else DEFAULT_KINDS
    for fixture in _KIND_FIXTURES:
        if fixture in metafunc.fixturenames and fixture not in named:
            metafunc.parametrize(fixture, kinds, indirect=True, ids=[f"containerd-{k}" for k in kinds])


@pytest.fixture
def containerd(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    instance = _start(request.param)
    try:
        yield instance
    finally:
        _stop(instance, request.node)


@pytest.fixture
def containerd_factory(request: pytest.FixtureRequest) -> Iterator[ContainerdFactory]:
    started: list[Containerd] = []

    def factory(
        kind: Kind | None = None,
        *,
        cri: bool = False,
        extra_config: str = "",
        env: Mapping[str, str] | None = None,
    ) -> Containerd:
        instance = _start(kind or request.param, cri=cri, extra_config=extra_config, env=env)
        started.append(instance)
        return instance

    try:
        yield factory
    finally:
        errors = []
        for instance in reversed(started):
            try:
                _stop(instance, request.node)
            except Exception as exc:  # stop the others before reporting
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def busybox_image_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    files: dict[str, bytes | Path | Symlink] = {"/bin/busybox": BUSYBOX}
    files.update({f"/bin/{applet}": Symlink("busybox") for applet in BUSYBOX_APPLETS})
    out = tmp_path_factory.mktemp("images") / "busybox.tar"
    build_image_tar(out, BUSYBOX_REF, files, entrypoint=["/bin/sh"], env=["PATH=/bin"])
    return out


@pytest.fixture
def busybox_image(containerd: Containerd, busybox_image_tar: Path) -> str:
    containerd.import_image(busybox_image_tar)
    return BUSYBOX_REF
