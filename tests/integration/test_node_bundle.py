"""The node bundle, installed by its own `wasm-shim node install` into a fresh host root, runs guests in a private
containerd (1.6 and 2.x) with no .venv anywhere: not on containerd's PATH, not in any daemon's memory map; through
`ctr run` and through CRI (crictl, a pod with handler wasmtime), a module and a component each. And the
installer image built from it: imported with `ctr images import`, its installer run as the DaemonSet runs it
(a container with the host root mounted at /host), its /test/hello.wasm run through our runtime as `helm test`
does, and the image pushed to a registry on loopback with `ctr images push`.

The bundle is built once per module with `wasm-shim bundle build` (the real build: interpreter copy, packages,
component runner), from the floor toolchain when this clone has one (`scripts/setup.sh --with bundle-floor`: CPython
and wheels for glibc 2.28), so every test here then runs the bundle old nodes get; every ELF file in it is read
for the newest glibc symbol it needs, as `bundle build` does, and held to the floor BUNDLE.json reports.
containerd starts on the config the installer wrote into the host root (the harness's own config for that
instance, installed there as the node's original); `ctr run` runs a module and a component; the installer's CRI
wait answers against the real CRI plugin; uninstall gives back the original bytes exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.containerd import DEFAULT_KINDS, REPO_ROOT, Containerd, Kind, launch
from lab.cri_tools import (
    HANDLER,
    PAUSE_REF,
    CniNetwork,
    Crictl,
    CriNode,
    LocalRegistry,
    cni_config,
    sandbox_image_config,
)
from lab.shimtools import daemon_pids, wait_for
from wasm_shim.oci.layout import build_image_tar
from wasm_shim.shim.node.containerd_config import runc_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNTIME = "io.containerd.wasmtime.v1"
VENV = REPO_ROOT / ".venv"
#: The floor toolchain (scripts/setup.sh --with bundle-floor); the bundle is built from it when it is there.
FLOOR = REPO_ROOT / ".tools" / "bundle-floor"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def build_argv(out: Path) -> list[str]:
    floor = ["--floor", str(FLOOR)] if (FLOOR / "GLIBC").exists() else []
    return [str(VENV / "bin" / "wasm-shim"), "bundle", "build", str(out), *floor]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "wasm-shim"
    done = subprocess.run(build_argv(out), capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["id"].startswith(info["version"] + "-")
    return out


def without_venv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "WASM_SHIM_"))}
    env["PATH"] = SYSTEM_PATH
    return env


def bundle_cli(bundle: Path, *args: str, host: Path) -> subprocess.CompletedProcess[str]:
    argv = [str(bundle / "bin" / "wasm-shim"), "node", *args, "--host-root", str(host), "--node-root", str(host),
            "--no-report"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=without_venv_env(), check=False,
                          cwd="/")


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            out[rel] = os.readlink(path) if path.is_symlink() else (b"" if path.is_dir() else path.read_bytes())
    return out


def wasm_image(containerd: Containerd, workdir: Path, name: str, wasm: Path) -> str:
    ref = f"localhost/wasm-shim-test/{name}:latest"
    tar = workdir / f"{name}.tar"
    build_image_tar(tar, ref, {"/app.wasm": wasm}, entrypoint=["/app.wasm"])
    containerd.import_image(tar)
    return ref


@pytest.fixture
def host_root() -> Iterator[Path]:
    # Short: the launcher's #! line names the interpreter under it (Linux reads 255 bytes of it).
    root = Path(tempfile.mkdtemp(prefix="wsh-host-", dir="/tmp"))
    (root / "etc" / "containerd").mkdir(parents=True)
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("kind", DEFAULT_KINDS, ids=[f"containerd-{k}" for k in DEFAULT_KINDS])
def test_installed_bundle_runs_module_and_component_then_uninstall_restores(
    kind: Kind, bundle: Path, host_root: Path, tmp_path: Path, guests: Path
) -> None:
    config = host_root / "etc" / "containerd" / "config.toml"
    original: dict[str, bytes] = {}
    before: list[dict[str, bytes | str]] = []
    installed: list[subprocess.CompletedProcess[str]] = []

    def install_into_node(text: str) -> Path:
        # The harness's config for this instance (CRI with CNI, no runtime tables at all) is the node's original.
        config.write_text(text)
        original["config"] = config.read_bytes()
        before.append(snapshot(host_root))
        installed.append(bundle_cli(bundle, "install", "--no-restart", "--option", "grouping=pod", host=host_root))
        return config

    # A CRI node as lab/cri_tools.py makes one, except that the runtime tables come from the
    # installer (it must also add `runc`, which CRI needs once any runtime is declared).
    workdir = tmp_path / "cri"
    network = CniNetwork.fresh()
    conf_dir, ipam_dir = workdir / "cni" / "net.d", workdir / "cni" / "ipam"
    conf_dir.mkdir(parents=True)
    ipam_dir.mkdir(parents=True)
    (conf_dir / "10-wasm-shim-test.conflist").write_text(json.dumps(network.conflist(ipam_dir)))
    instance: Containerd | None = None
    node: CriNode | None = None
    try:
        instance = launch(kind, Path(tempfile.mkdtemp(prefix=f"wsh-{kind}-", dir="/tmp")), cri=True,
                          extra_config=sandbox_image_config(kind) + cni_config(kind, conf_dir),
                          prepare_config=install_into_node, env={"PATH": f"{host_root}/usr/local/bin:{SYSTEM_PATH}"})
        assert installed and installed[0].returncode == 0, installed[0].stderr if installed else "no install"
        assert config.read_bytes() != original["config"]
        assert ".venv" not in instance.env["PATH"] and str(REPO_ROOT) not in instance.env["PATH"]

        hello = wasm_image(instance, tmp_path, "hello", guests / "hello.wasm")
        out = instance.ctr("run", "--rm", "--runtime", RUNTIME, hello, "bundle-module")
        assert out.stdout.strip() == "hello from wasm"
        component = wasm_image(instance, tmp_path, "comp", guests / "hello.component.wasm")
        out = instance.ctr("run", "--rm", "--runtime", RUNTIME, component, "bundle-component")
        assert out.stdout.strip() == "hello from wasm"

        # The installer's wait for CRI, against this containerd's real CRI plugin (what a restart waits for).
        probe = subprocess.run(
            [str(bundle / "python" / "bin" / "python3"), "-c",
             "import sys; from wasm_shim.shim.node.installer import wait_for_cri; "
             "print(repr(wait_for_cri(sys.argv[1], 20)))", instance.address],
            capture_output=True, text=True, timeout=60, env=without_venv_env(), check=False)
        assert probe.stdout.strip() == "''", probe.stderr

        # The installed policy (the installer's allow-all default), and what a real one needs on a node: the
        # policy parser with a key, the registry client and cosign verification, all from the bundle alone.
        pem = subprocess.run([str(VENV / "bin" / "python"), "-c",
                              "from cryptography.hazmat.primitives import serialization as s;"
                              "from cryptography.hazmat.primitives.asymmetric import ec;"
                              "k = ec.generate_private_key(ec.SECP256R1()).public_key();"
                              "print(k.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo).decode())"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        (tmp_path / "team.pub").write_text(pem)
        (tmp_path / "policy.toml").write_text('[[rule]]\nimages = ["x/*"]\nkeys = ["team.pub"]\n')
        policy = subprocess.run(
            [str(bundle / "python" / "bin" / "python3"), "-c",
             "import sys; from wasm_shim.oci.policy import load_policy; from wasm_shim.oci import cosign, registry; "
             "print(load_policy(sys.argv[1]).default, load_policy(sys.argv[2]).rules[0].fingerprint != '')",
             str(host_root / "opt" / "wasm-shim" / "policy" / "policy.toml"), str(tmp_path / "policy.toml")],
            capture_output=True, text=True, timeout=60, env=without_venv_env(), check=False)
        assert policy.stdout.split() == ["allow", "True"], policy.stderr

        # crictl: a pod with handler wasmtime (its pause container delegated to runc), a module and a component.
        crictl_config = workdir / "crictl.yaml"
        crictl_config.write_text(f"runtime-endpoint: unix://{instance.address}\n"
                                 f"image-endpoint: unix://{instance.address}\ntimeout: 30\n")
        node = CriNode(containerd=instance, crictl=Crictl(instance, crictl_config), network=network, workdir=workdir)
        pause_tar = workdir / "pause.tar"
        build_image_tar(pause_tar, PAUSE_REF, {"/pause": guests / "pause"}, entrypoint=["/pause"])
        node.import_image(pause_tar)
        wait_for(node.crictl.network_ready, 30, "CRI to load the CNI config")
        pod = node.pod_config("bundle-pod")
        pod_id = node.crictl.runp(pod, runtime=HANDLER)
        for name, wasm in (("module", "hello.wasm"), ("component", "hello.component.wasm")):
            image = node.wasm_image(f"cri-{name}", guests / wasm)
            cid = node.crictl.create(pod_id, node.container_config(name, image), pod)
            node.crictl.run("start", cid)
            node.crictl.wait_state(cid, "CONTAINER_EXITED")
            assert node.crictl.logs(cid).stdout.strip() == "hello from wasm", name

        # Every daemon that ran them is the installed bundle's interpreter, with nothing of the .venv mapped.
        pids = daemon_pids(instance)
        assert pids
        for pid in pids:
            exe = os.readlink(f"/proc/{pid}/exe")
            assert exe.startswith(str(host_root / "opt" / "wasm-shim" / "versions")), exe
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert str(VENV) not in maps and "/.pyenv/" not in maps
            assert "/.cache/wasm-shim/" not in maps  # nothing of the floor toolchain's build either

        status = bundle_cli(bundle, "status", "--check", host=host_root)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        if node is not None:
            node.teardown()
        if instance is not None:
            instance.stop()
    gone = bundle_cli(bundle, "uninstall", "--no-restart", host=host_root)
    assert gone.returncode == 0, gone.stderr
    assert config.read_bytes() == original["config"]
    assert snapshot(host_root) == before[0]


OPERATOR_RUNTIME = {"1.6": 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes.operator-runc',
                    "2.x": 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes.operator-runc'}


@pytest.mark.parametrize("kind", DEFAULT_KINDS, ids=[f"containerd-{k}" for k in DEFAULT_KINDS])
def test_installed_bundle_keeps_an_operators_edit_through_reinstall_and_uninstall(
    kind: Kind, bundle: Path, host_root: Path, tmp_path: Path
) -> None:
    # The sequence of a node's life, by the bundle's own installer: install, the operator edits containerd's
    # config (a runtime of their own and a comment), the installer runs again (a pod restart), uninstall. Then
    # containerd starts on what uninstall left: its CRI loads (the runc table install added stays, since the
    # operator's runtime needs the default declared beside it), with the operator's runtime and not ours.
    config = host_root / "etc" / "containerd" / "config.toml"
    (host_root / "opt" / "vendor").mkdir(parents=True)
    (host_root / "opt" / "vendor" / "tool").write_text("an operator's file beside the prefix\n")
    edit = f"\n# the operator's own runtime, added after install\n[{OPERATOR_RUNTIME[kind]}]\n" \
           '  runtime_type = "io.containerd.runc.v2"\n'
    seen: dict[str, object] = {}

    def node_life(text: str) -> Path:
        config.write_text(text)
        seen["before"] = snapshot(host_root)
        # A system directory as prefix is refused before anything is written (it once meant: uninstall deletes
        # all of /opt).
        refused = bundle_cli(bundle, "install", "--no-restart", "--prefix", "/opt", host=host_root)
        seen["refused"] = refused
        seen["after refusal"] = snapshot(host_root)
        steps = [bundle_cli(bundle, "install", "--no-restart", host=host_root)]
        config.write_text(config.read_text() + edit)
        steps.append(bundle_cli(bundle, "install", "--no-restart", host=host_root))
        steps.append(bundle_cli(bundle, "uninstall", "--no-restart", host=host_root))
        seen["steps"] = steps
        seen["original"] = text
        return config

    workdir = tmp_path / "cri"
    instance = launch(kind, Path(tempfile.mkdtemp(prefix=f"wsh-{kind}-", dir="/tmp")), cri=True,
                      extra_config=sandbox_image_config(kind), prepare_config=node_life)
    try:
        refused = seen["refused"]
        assert isinstance(refused, subprocess.CompletedProcess) and refused.returncode == 1
        assert "--prefix /opt refused: it is a system directory" in refused.stderr
        assert seen["after refusal"] == seen["before"]
        for step in seen["steps"]:  # type: ignore[attr-defined]
            assert step.returncode == 0, step.stdout + step.stderr
        # Ours went; the runc table install added stays (the operator's runtime needs it), as written then.
        original = str(seen["original"])
        kept = ("" if original.endswith("\n") else "\n") + runc_table(2 if kind == "1.6" else 3)
        assert config.read_text() == original + kept + edit
        workdir.mkdir()
        (workdir / "crictl.yaml").write_text(f"runtime-endpoint: unix://{instance.address}\ntimeout: 30\n")
        info = json.loads(Crictl(instance, workdir / "crictl.yaml").run("info").stdout)
        runtimes = info["config"]["containerd"]["runtimes"]
        assert "operator-runc" in runtimes and "runc" in runtimes and "wasmtime" not in runtimes, sorted(runtimes)
    finally:
        instance.stop()
    expected = dict(seen["before"])  # type: ignore[call-overload]
    expected["etc/containerd/config.toml"] = config.read_bytes()
    assert snapshot(host_root) == expected


def test_bundle_build_is_reproducible(bundle: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    done = subprocess.run(build_argv(again), capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr
    first = json.loads((bundle / "BUNDLE.json").read_text())
    second = json.loads((again / "BUNDLE.json").read_text())
    assert first["content_sha256"] == second["content_sha256"]


def newest_glibc(path: Path) -> tuple[int, int] | None:
    """The newest GLIBC_x.y version among the symbols an ELF file imports (its dynamic symbol table)."""
    done = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0 and "not a dynamic object" in done.stderr:
        return None  # static (the fast start, the sandbox holder): no glibc of the node's is used
    done.check_returncode()
    out = done.stdout
    found = [(int(a), int(b)) for a, b in re.findall(r"\(GLIBC_(\d+)\.(\d+)\)", out)]
    return max(found, default=None)


def test_every_elf_file_needs_at_most_the_glibc_the_bundle_reports(bundle: Path) -> None:
    info = json.loads((bundle / "BUNDLE.json").read_text())
    needs: dict[str, tuple[int, int]] = {}
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if rel.startswith("installer/") or path.is_symlink() or not path.is_file():
            continue  # installer/ stays in the installer image, whose own C runtime comes with it
        with path.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        newest = newest_glibc(path)
        if newest:
            needs[rel] = newest
    # The interpreter, the stdlib's modules, the wheels' libraries, the runner (39 of the floor bundle's 62 ELF files
    # import versioned glibc symbols: its static stdlib modules reference none).
    assert len(needs) > 30
    floor = tuple(int(x) for x in info["glibc"].split("."))
    assert max(needs.values()) == floor, sorted(needs.items(), key=lambda kv: kv[1])[-5:]
    assert info["glibc_set_by"].split() == sorted(rel for rel, v in needs.items() if v == floor)
    if (FLOOR / "GLIBC").exists():
        # The floor bundle: every file, the interpreter, OpenSSL, every wheel and the runner, within its target.
        target = (FLOOR / "GLIBC").read_text().strip()
        assert info["glibc_target"] == target
        assert floor <= tuple(int(x) for x in target.split(".")), info["glibc_set_by"]
        assert info["libraries"] == ""  # nothing taken from this machine's /usr/lib
        assert "python/lib/libssl.so.3" in needs and "python/bin/wasm-shim-component-runner" in needs



#: What runs in the older root: the daemon's native modules (as preflight.py checks them on a node), then a WASI
#: module through wasmtime, its stdout the process's.
OLD_ROOT_SCRIPT = """
import ssl, ctypes, hashlib, lzma, bz2, zlib, grpc, google.protobuf, cryptography.hazmat.bindings._rust, wasmtime
import wasm_shim.shim.daemon.main
engine = wasmtime.Engine()
linker = wasmtime.Linker(engine)
linker.define_wasi()
wasi = wasmtime.WasiConfig()
wasi.inherit_stdout()
store = wasmtime.Store(engine)
store.set_wasi(wasi)
instance = linker.instantiate(store, wasmtime.Module.from_file(engine, "/hello.wasm"))
instance.exports(store)["_start"](store)
print(ssl.OPENSSL_VERSION, hashlib.sha256(b"").hexdigest()[:8])
"""


@pytest.mark.skipif(not (FLOOR / "old-root").exists(),
                    reason="no older Debian root (scripts/setup.sh --with bundle-floor makes one)")
def test_the_floor_bundle_runs_a_module_and_compiles_a_component_on_an_older_glibc(bundle: Path,
                                                                                   guests: Path) -> None:
    # A Debian root older than this machine, entered with chroot: its loader and C library, not this machine's. The
    # bundle's programs find their libraries by $ORIGIN, which the loader reads from /proc/self/exe: a private /proc
    # is mounted in the root, as a node's root has one.
    root = (FLOOR / "old-root").resolve()
    enter = ["unshare", "--mount", "--pid", "--fork", f"--root={root}", "--mount-proc"]
    glibc = subprocess.run(["chroot", str(root), "getconf", "GNU_LIBC_VERSION"], capture_output=True, text=True,
                           check=True).stdout.split()[1]
    assert tuple(int(x) for x in glibc.split(".")) < (2, 34), glibc  # below what the venv's bundle needs
    info = json.loads((bundle / "BUNDLE.json").read_text())
    assert tuple(int(x) for x in info["glibc"].split(".")) <= tuple(int(x) for x in glibc.split("."))
    inside = Path("/opt") / f"wasm-shim-floor-{os.getpid()}"
    try:
        shutil.copytree(bundle, root / inside.relative_to("/"), symlinks=True)
        shutil.copyfile(guests / "hello.wasm", root / "hello.wasm")
        shutil.copyfile(guests / "hello.component.wasm", root / "hello.component.wasm")
        env = {"PATH": SYSTEM_PATH, "LANG": "C"}
        ran = subprocess.run([*enter, str(inside / "python" / "bin" / "python3"), "-I", "-c",
                              OLD_ROOT_SCRIPT], capture_output=True, text=True, timeout=120, env=env, check=False)
        assert ran.returncode == 0, ran.stderr
        lines = ran.stdout.splitlines()
        assert lines[0] == "hello from wasm" and lines[1].startswith("OpenSSL 3."), ran.stdout
        assert lines[1].endswith(" e3b0c442")
        cache = Path("/tmp") / f"wasm-shim-floor-cache-{os.getpid()}"
        (root / cache.relative_to("/")).mkdir(parents=True, mode=0o700)
        compiled = subprocess.run([*enter, str(inside / "python" / "bin" / "wasm-shim-component-runner"),
                                   "--precompile", str(cache), "/hello.component.wasm"],
                                  capture_output=True, text=True, timeout=300, env=env, check=False)
        assert compiled.returncode == 0, compiled.stderr
        assert any((root / cache.relative_to("/")).iterdir()), compiled.stdout
    finally:
        shutil.rmtree(root / inside.relative_to("/"), ignore_errors=True)
        shutil.rmtree(root / "tmp" / f"wasm-shim-floor-cache-{os.getpid()}", ignore_errors=True)
        for name in ("hello.wasm", "hello.component.wasm"):
            (root / name).unlink(missing_ok=True)


def test_installer_image_imports_installs_runs_its_test_module_and_pushes(
    bundle: Path, host_root: Path, tmp_path: Path, guests: Path, containerd: Containerd
) -> None:
    image = tmp_path / "installer.tar"
    ref = "localhost/wasm-shim/installer:test"
    built = subprocess.run([str(bundle / "bin" / "wasm-shim"), "image", "build", str(image), "--bundle",
                            str(bundle), "--test-wasm", str(guests / "hello.wasm"), "--ref", ref],
                           capture_output=True, text=True, timeout=900, env=without_venv_env(), check=False)
    assert built.returncode == 0, built.stderr
    containerd.import_image(image, timeout=600)

    # The image's own interpreter runs in a container with nothing but the image (no distribution base).
    out = containerd.ctr("run", "--rm", ref, "image-version", "/bundle/bin/wasm-shim", "version")
    assert out.stdout.startswith("wasm-shim ")

    # The installer as the DaemonSet runs it: the node's / (here a fixture root) mounted at /host.
    config = host_root / "etc" / "containerd" / "config.toml"
    config.write_text("version = 2\n")
    before = snapshot(host_root)
    mount = f"type=bind,src={host_root},dst=/host,options=rbind:rw"
    out = containerd.ctr("run", "--rm", "--mount", mount, ref, "image-install", "/bundle/bin/wasm-shim", "node",
                         "install", "--host-root=/host", f"--node-root={host_root}", "--no-restart", "--no-report",
                         timeout=300)
    assert "installed" in out.stdout, out.stdout + out.stderr
    assert "io.containerd.wasmtime.v1" in config.read_text()
    link = host_root / "usr" / "local" / "bin" / "containerd-shim-wasmtime-v1"
    assert os.path.realpath(link).startswith(str(host_root / "opt" / "wasm-shim" / "versions"))
    assert not (host_root / "opt" / "wasm-shim" / "current" / "installer").exists()  # not copied onto nodes
    out = containerd.ctr("run", "--rm", "--mount", mount, ref, "image-uninstall", "/bundle/bin/wasm-shim", "node",
                         "uninstall", "--host-root=/host", f"--node-root={host_root}", "--no-restart", "--no-report",
                         timeout=300)
    assert snapshot(host_root) == before

    # What the chart's `helm test` pod runs: the image's module, through our runtime.
    out = containerd.ctr("run", "--rm", "--runtime", RUNTIME, ref, "image-test-wasm", "/test/hello.wasm")
    assert out.stdout.strip() == "hello from wasm"

    registry = LocalRegistry(tmp_path / "registry").start()
    try:
        remote = f"{registry.address}/wasm-shim/installer:test"
        containerd.ctr("images", "tag", ref, remote)
        containerd.ctr("images", "push", "--plain-http", remote, timeout=300)
        containerd.ctr("images", "rm", remote, ref)
        containerd.ctr("images", "pull", "--plain-http", remote, timeout=300)
        out = containerd.ctr("run", "--rm", remote, "image-pulled", "/bundle/bin/wasm-shim", "version")
        assert out.stdout.startswith("wasm-shim ")
    finally:
        registry.stop()
