"""The node bundle: one directory that runs the shim on a node with no Python and nothing from this repository.

Layout (what `build` writes and the installer copies to `<prefix>/versions/<id>`):

    BUNDLE.json                      {"id", "version", "python", "glibc", ...}: id = version + digest of the content
    bin/containerd-shim-wasmtime-v1  what containerd execs (shim/launch/fast_start.c, static): `start` for a daemon
                                     already up from its hint, else the launcher beside it
    bin/containerd-shim-wasmtime-v1.py  launcher: `#!<root>/python/bin/python3.11 -IS` + the stdlib-only start path
    bin/wasm-shim                    launcher for the CLI (`wasm-shim node install` in the installer image)
    python/bin/python3.11            the interpreter, RUNPATH rewritten to $ORIGIN/../lib
    python/bin/wasm-shim-component-runner   beside the interpreter, where the daemon looks first
    python/bin/wasm-shim-sandbox-holder     likewise: holds each pod's namespaces on containerd 2.x (shim/sandbox/)
    python/lib/libpython3.11.so.1.0  and the stdlib (no test suites, tkinter, idle, ensurepip)
    python/lib/python3.11/site-packages/   the runtime closure of our dependencies + wasm_shim/{shim,oci}
    installer/site-packages/         the installer's own (kubernetes client closure); not copied onto nodes

Two sources for the interpreter and the packages (`Source`):
- this venv (the default): the interpreter the venv runs on, its stdlib, the packages installed in the venv, the
  Debian libraries they load; the bundle needs the glibc of the machine that built that interpreter;
- a floor toolchain (`--floor DIR`, made by `scripts/setup.sh --with bundle-floor`): DIR/python, CPython built with
  zig against an older glibc's symbols with its own OpenSSL (scripts/bundle-floor/build-python.sh); DIR/site-packages,
  the same distributions at the venv's versions from wheels for that glibc (cp311, manylinux_2_28 or older);
  DIR/wasm-shim-component-runner, linked for it too; DIR/GLIBC, the glibc version it was all built for.
Either way BUNDLE.json's `glibc` is measured on the files shipped, never taken from what a build asked for.

Chosen by measurement (docs/node-install.md): a relocatable copy of the interpreter starts exactly as the .venv's
does (same binary, same .pyc files), where a frozen PyInstaller executable unpacks/bootstraps first.

Invariants: the content (everything except the two launchers, whose shebang names the install location) is a
function of the venv and the clone: files are copied in sorted order, bytecode is hash-based (unchecked: the
bundle is immutable, so no stat of sources on import) and carries no timestamps; `id` is the digest of the content,
so installing the same bundle twice finds the same directory.
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.metadata as md
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

INFO = "BUNDLE.json"
LAUNCHERS = ("bin/containerd-shim-wasmtime-v1.py", "bin/wasm-shim")
FAST_START = "bin/containerd-shim-wasmtime-v1"
#: Our runtime dependencies, by distribution name: what the shim binary, the daemon and the CLI import. cryptography
#: is the daemon's signature policy (oci/cosign.py); the registry client is the standard library's sockets
#: (oci/transport.py); PyNaCl only decrypts private keys for `wasm-shim sign`, which nodes never do. The
#: OpenTelemetry SDK and exporters are the daemon's traces, imported only when an OTLP endpoint is configured.
ROOT_DISTS = ("wasmtime", "protobuf", "grpcio", "prometheus_client", "cryptography",
              # traces, when configured (shim/daemon/tracing.py)
              "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "opentelemetry-exporter-otlp-proto-grpc")
#: What only the installer imports (the Node label and events): kept in installer/, which is not copied to nodes.
INSTALLER_DISTS = ("kubernetes",)
INSTALLER_DIR = "installer"
#: Not needed on a node: test suites, GUI and teaching modules, pip's bootstrap, the static library for embedding
#: (config-3.11-<triplet>/, matched by its prefix in `_copy_tree`).
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "site-packages", "lib2to3", "__pycache__",
               "pydoc_data"}
CONFIG_DIR = f"config-{sys.version_info.major}.{sys.version_info.minor}"
SUBDIR_SKIP = {"__pycache__", "test", "tests", "idle_test"}
#: Extension modules that would pull GUI, terminal or NIS libraries onto nodes, and that nothing of ours imports.
DYNLOAD_SKIP = ("_tkinter", "_curses", "_curses_panel", "readline", "nis", "_dbm", "_gdbm", "_crypt")
#: What the node provides: glibc's own objects (the bundle's one real requirement of its host, the glibc version
#: `oldest_glibc` reports) and the GCC runtime, which the manylinux wheels we ship (grpcio) also expect from the
#: host (PEP 599's library policy); a vendored Debian 12 libstdc++ would raise the glibc floor to 2.36. Every
#: other shared library an ELF file here needs is copied in.
GLIBC = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2", "libutil.so.1",
         "ld-linux-x86-64.so.2", "linux-vdso.so.1", "libgcc_s.so.1", "libstdc++.so.6"}


class BuildError(RuntimeError):
    """The node bundle cannot be built or read; the message says which file or tool and why."""


#: The floor toolchain's entries (module docstring).
FLOOR_PYTHON, FLOOR_SITE, FLOOR_RUNNER, FLOOR_GLIBC = "python", "site-packages", "wasm-shim-component-runner", "GLIBC"


@dataclass(frozen=True)
class Source:
    """Where the interpreter, its stdlib and shared libraries, and the distributions come from."""

    prefix: Path                  # holds bin/python3.11, lib/python3.11/, lib/<the shared libraries>
    shared_libraries: tuple[Path, ...]  # copied into python/lib/ as they are (libpython, the prefix's OpenSSL)
    site: tuple[str, ...] | None  # where the distributions are found; None: this venv's sys.path
    python_version: str
    glibc_target: str = ""        # what a floor toolchain was built for ("" for the venv)
    runner: str = ""              # the toolchain's component runner ("" for the venv: the caller names it)


def venv_source() -> Source:
    """This venv: the interpreter it runs on and the packages installed in it."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib")
    ldlib = sysconfig.get_config_var("INSTSONAME") or ""
    libs = (libdir / ldlib,) if ldlib and (libdir / ldlib).exists() else ()
    return Source(Path(sys.base_prefix), libs, None, sys.version.split()[0])


def floor_source(toolchain: str) -> Source:
    """A floor toolchain directory (module docstring), checked for every entry the build reads."""
    root = Path(toolchain)
    hint = "; make it with scripts/setup.sh --with bundle-floor"
    prefix, site = root / FLOOR_PYTHON, root / FLOOR_SITE
    exe = prefix / "bin" / _py()
    if not os.access(exe, os.X_OK):
        raise BuildError(f"the floor toolchain {toolchain} has no interpreter ({exe} is missing){hint}")
    if not site.is_dir():
        raise BuildError(f"the floor toolchain {toolchain} has no {FLOOR_SITE} directory{hint}")
    try:
        glibc = (root / FLOOR_GLIBC).read_text().strip()
    except OSError:
        raise BuildError(f"the floor toolchain {toolchain} has no {FLOOR_GLIBC} file (the glibc it was built for)"
                         f"{hint}") from None
    # What runs here shows the version (a glibc-2.28 build runs on any newer glibc); -I -S: nothing of this venv.
    done = subprocess.run([str(exe), "-I", "-S", "-c", "import sys; print(sys.version.split()[0])"],
                          capture_output=True, text=True, check=False)
    version = done.stdout.strip()
    if done.returncode != 0 or not version.startswith(f"{sys.version_info.major}.{sys.version_info.minor}."):
        raise BuildError(f"the floor toolchain's interpreter {exe} is not a working Python "
                         f"{sys.version_info.major}.{sys.version_info.minor} (the ABI of the venv's packages): "
                         f"{(done.stderr or done.stdout).strip()[-300:]}")
    # The prefix's own shared libraries (libpython, libssl, libcrypto): real files, not the linker's .so links.
    libs = tuple(p for p in sorted((prefix / "lib").glob("lib*.so.*")) if p.is_file() and not p.is_symlink())
    runner = root / FLOOR_RUNNER
    return Source(prefix, libs, (str(site),), version, glibc, str(runner) if runner.exists() else "")


def running_bundle() -> str:
    """The bundle this process runs from (its interpreter is <root>/python/bin/python3.x)."""
    root = Path(sys.executable).resolve().parent.parent.parent
    if not (root / INFO).exists():
        raise BuildError(f"this wasm-shim does not run from a bundle ({root / INFO} is missing); name one with "
                          "--bundle DIR (built by `wasm-shim bundle build DIR`)")
    return str(root)


def read_info(root: str) -> dict[str, str]:
    try:
        info = json.loads(Path(root, INFO).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{root} is not a wasm-shim bundle ({INFO}: {exc})") from None
    if not isinstance(info, dict) or not re.fullmatch(r"[A-Za-z0-9._-]+", str(info.get("id", ""))):
        raise BuildError(f"{root}/{INFO} has no valid id")
    return info


def _py() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def launcher_texts(node_root: str) -> dict[str, str]:
    """The launchers for a bundle that the node's processes see at `node_root`."""
    py = _py()
    interpreter = f"{node_root}/python/bin/{py}"
    site = f"{node_root}/python/lib/{py}/site-packages"
    # -I -S: the start path needs only the stdlib and our stdlib-only modules (shim/launch/binary.py's docstring), so it
    # skips `site` and every .pth; the daemon it spawns runs `sys.executable` with site, so site-packages is there.
    shim = (f"#!{interpreter} -IS\n# containerd-shim-wasmtime-v1 of the wasm-shim bundle at {node_root}\n"
            f"import sys\nsys.path.insert(0, {site!r})\n"
            "from wasm_shim.shim.launch.binary import main\nsys.exit(main())\n")
    # The installer's own packages (kubernetes) come after everything else, and only where installer/ exists (the
    # installer image; a node's copy has none).
    installer = f"{node_root}/{INSTALLER_DIR}/site-packages"
    cli = (f"#!{interpreter} -I\n# wasm-shim of the bundle at {node_root}\n"
           f"import sys\nsys.path.append({installer!r})\nfrom wasm_shim.shim.cli.main import main\nsys.exit(main())\n")
    return {LAUNCHERS[0]: shim, LAUNCHERS[1]: cli}


def write_launchers(real_root: str, node_root: str) -> None:
    if len(f"#!{node_root}/python/bin/python3.11 -IS") > 250:  # Linux reads 256 bytes of a #! line (binfmt_script)
        raise BuildError(f"the bundle path {node_root} is too long for a #! line")
    for rel, text in launcher_texts(node_root).items():
        path = os.path.join(real_root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".partial"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)


def _find_dist(name: str, site: tuple[str, ...] | None) -> md.Distribution:
    if site is None:
        try:
            return md.distribution(name)
        except md.PackageNotFoundError:
            raise BuildError(f"{name} is not installed in {sys.prefix}; run scripts/setup.sh") from None
    found = list(md.distributions(name=name, path=list(site)))
    if not found:
        raise BuildError(f"{name} is not in {':'.join(site)}; rerun scripts/setup.sh --with bundle-floor (it installs "
                         "the venv's versions there)")
    return found[0]


def _dist_closure(roots: Iterable[str], have: Iterable[str] = (), site: tuple[str, ...] | None = None
                  ) -> list[md.Distribution]:
    """The distributions `roots` need (their Requires-Dist without extras, transitively), minus `have`: the ones
    installed in this venv, or those under `site`."""
    seen: dict[str, md.Distribution] = {}
    skip = {re.sub(r"[-_.]+", "-", name).lower() for name in have}
    todo = list(roots)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].strip()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if not key or key in seen or key in skip:
            continue
        dist = _find_dist(name, site)
        seen[key] = dist
        for req in dist.requires or []:
            if ";" in req and "extra" in req.split(";", 1)[1]:
                continue  # optional extras are not ours to ship
            if ";" in req:
                marker = req.split(";", 1)[1]
                try:
                    from packaging.markers import Marker  # pip vendors it; setuptools ships it

                    if not Marker(marker).evaluate():
                        continue
                except ImportError:
                    pass
            todo.append(req)
    return sorted(seen.values(), key=lambda d: str(d.metadata["Name"]).lower())


def _copy_dists(dists: Iterable[md.Distribution], site: Path) -> None:
    for dist in dists:
        for file in dist.files or []:
            rel = Path(str(file))
            if rel.parts[0] == ".." or rel.suffix == ".pyc" or "__pycache__" in rel.parts:
                continue  # scripts in bin/ are not ours to ship; bytecode is compiled after
            src = Path(str(dist.locate_file(file)))
            if src.is_file():
                _copy_file(src, site / rel)


def elf_files(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def needed_libraries(path: Path) -> dict[str, str]:
    """soname -> resolved file of every shared library `path` loads (ldd: the build host's resolution)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"\s*(\S+) => (/\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
        else:
            match = re.match(r"\s*(/\S+/(ld-linux[^ /]*))", line)
            if match:
                found[match.group(2)] = match.group(1)
    return found


def _set_runpath(path: Path, directory: Path) -> None:
    rel = os.path.relpath(directory, path.parent)
    runpath = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
    old = subprocess.run(["patchelf", "--print-rpath", str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    if runpath not in old.split(":"):
        subprocess.run(["patchelf", "--set-rpath", ":".join(p for p in (old, runpath) if p), str(path)], check=True)


def _vendor_libraries(root: Path, libdir: Path) -> list[str]:
    """Copy every non-glibc library the bundle's ELF files need into `libdir`; point their RUNPATHs at it.

    Libraries a wheel already carries (resolved inside `root`, e.g. through the wheel's own RUNPATH) stay as
    they are.
    """
    vendored: list[str] = []
    needs: dict[Path, set[str]] = {}
    pending = True
    while pending:  # a copied library may need others (libssl -> libcrypto): until nothing new is found
        pending = False
        for elf in elf_files(root):
            outside = {name: where for name, where in needed_libraries(elf).items()
                       if name not in GLIBC and not os.path.realpath(where).startswith(str(root) + os.sep)}
            needs[elf] = set(outside)
            for name, where in outside.items():
                if not (libdir / name).exists():
                    shutil.copyfile(os.path.realpath(where), libdir / name)
                    os.chmod(libdir / name, 0o755)
                    vendored.append(name)
                    pending = True
    for elf, names in sorted(needs.items()):
        if names:
            _set_runpath(elf, libdir)
    return sorted(vendored)


def _strip_debug(root: Path) -> None:
    """Drop DWARF debug sections (pyenv builds libpython with them: 23 of its 29 MB); symbols stay."""
    files = [str(p) for p in elf_files(root)]
    if files:
        subprocess.run(["strip", "--strip-debug", *files], check=True)


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)


def _copy_tree(src: Path, dst: Path, skip: set[str]) -> None:
    for entry in sorted(src.iterdir()):
        if entry.name in skip or entry.suffix == ".pyc" or (skip is STDLIB_SKIP and entry.name.startswith(CONFIG_DIR)):
            continue
        if entry.is_symlink():
            continue  # the stdlib has none we need; site-packages comes from RECORDs
        if entry.is_dir():
            _copy_tree(entry, dst / entry.name, SUBDIR_SKIP)
        else:
            _copy_file(entry, dst / entry.name)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel in LAUNCHERS or rel == INFO or rel.startswith(INSTALLER_DIR + "/"):
            continue  # the id names what lands on a node
        h.update(rel.encode() + b"\0")
        if path.is_symlink():
            h.update(b"L" + os.readlink(path).encode())
        else:
            h.update(b"X" if os.access(path, os.X_OK) else b"F")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def glibc_needs(root: Path) -> dict[str, tuple[int, int]]:
    """Each ELF file here (relative path) -> the newest GLIBC_x.y symbol version it needs (objdump -T)."""
    needs = {}
    for path in elf_files(root):
        out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=False).stdout
        versions = [(int(major), int(minor)) for major, minor in re.findall(r"GLIBC_(\d+)\.(\d+)", out)]
        if versions:
            needs[path.relative_to(root).as_posix()] = max(versions)
    return needs


def oldest_glibc(root: Path) -> str:
    """The newest GLIBC_x.y symbol version any ELF file here needs (objdump -T): the oldest glibc it runs on."""
    best = max(glibc_needs(root).values(), default=(0, 0))
    return f"{best[0]}.{best[1]}"


def pins() -> list[str]:
    """`name==version` of every distribution a bundle ships (the nodes' and the installer's), as installed in this
    venv: what a floor toolchain installs from wheels for its glibc, so both bundles run the same versions."""
    runtime = _dist_closure(ROOT_DISTS)
    installer = _dist_closure(INSTALLER_DISTS, have=[str(d.metadata["Name"]) for d in runtime])
    return sorted(f"{d.metadata['Name']}=={d.version}" for d in (*runtime, *installer))


def build(out: str, *, repo: str, runner: str, holder: str = "", fast_start: str = "", glibc: bool = True,
          source: Source | None = None) -> dict[str, str]:
    """Build the bundle into `out` (must not exist) from `source` (default: this venv) and `repo`."""
    src = source or venv_source()
    runner = runner or src.runner
    out_path = Path(out).resolve()
    if out_path.exists():
        raise BuildError(f"{out} exists; choose a new directory (the bundle is built whole, never patched)")
    if not runner or not os.access(runner, os.X_OK):
        raise BuildError(f"the component runner {runner or '(none)'} is missing: run scripts/setup.sh")
    if not holder or not os.access(holder, os.X_OK):
        raise BuildError(f"the pod sandbox holder {holder or 'wasm-shim-sandbox-holder'} is missing: run "
                         "scripts/setup.sh")
    if not fast_start or not os.access(fast_start, os.X_OK):
        raise BuildError(f"the shim binary's fast start {fast_start or FAST_START} is missing: run "
                         "scripts/setup.sh")
    if shutil.which("patchelf") is None:
        raise BuildError("patchelf is needed to make the interpreter relocatable (apt-get install patchelf)")
    py = _py()
    partial = out_path.with_name(out_path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pyroot = partial / "python"
    # The interpreter and its shared libraries; RUNPATH from the build's absolute prefix to $ORIGIN-relative.
    real_exe = Path(os.path.realpath(src.prefix / "bin" / py))
    _copy_file(real_exe, pyroot / "bin" / py)
    os.symlink(py, pyroot / "bin" / "python3")
    for lib in src.shared_libraries:
        _copy_file(lib, pyroot / "lib" / lib.name)
    _copy_tree(src.prefix / "lib" / py, pyroot / "lib" / py, STDLIB_SKIP)
    for module in (pyroot / "lib" / py / "lib-dynload").iterdir():
        if module.name.split(".")[0] in DYNLOAD_SKIP:
            module.unlink()
    site = pyroot / "lib" / py / "site-packages"
    runtime = _dist_closure(ROOT_DISTS, site=src.site)
    _copy_dists(runtime, site)
    names = [str(d.metadata["Name"]) for d in runtime]
    _copy_dists(_dist_closure(INSTALLER_DISTS, have=names, site=src.site), partial / INSTALLER_DIR / "site-packages")
    for package in ("shim", "oci"):
        _copy_tree(Path(repo) / package, site / "wasm_shim" / package, {"__pycache__"})
    shutil.copyfile(runner, pyroot / "bin" / "wasm-shim-component-runner")
    os.chmod(pyroot / "bin" / "wasm-shim-component-runner", 0o755)
    shutil.copyfile(holder, pyroot / "bin" / "wasm-shim-sandbox-holder")  # static: no library to vendor
    os.chmod(pyroot / "bin" / "wasm-shim-sandbox-holder", 0o755)
    _copy_file(Path(fast_start), partial / FAST_START)  # static too; the launcher it runs is written below
    # Bytecode: hash-based and unchecked, so the content does not depend on file times and imports skip the stat.
    # ddir: co_filename names the file relative to the bundle, not the build directory (the import system puts
    # the real path back when it loads a .pyc: importlib._bootstrap_external, _fix_up_module / _fix_co_filename).
    # The bytecode is this interpreter's; a floor interpreter is the same minor version, whose magic number is fixed.
    for tree in (pyroot / "lib", partial / INSTALLER_DIR):
        compileall.compile_dir(str(tree), ddir="/" + tree.relative_to(partial).as_posix(), quiet=1, workers=1,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    _strip_debug(partial)
    # After strip: patchelf rewrites the dynamic section strip would otherwise lay out again.
    if src.shared_libraries:
        subprocess.run(["patchelf", "--set-rpath", "$ORIGIN/../lib", str(pyroot / "bin" / py)], check=True)
    vendored = _vendor_libraries(partial, pyroot / "lib")
    from ..launch.binary import VERSION

    digest = _digest(partial)
    info = {"id": f"{VERSION}-{digest[:16]}", "version": VERSION, "content_sha256": digest,
            "python": src.python_version}
    info["libraries"] = " ".join(vendored)
    if src.glibc_target:
        info["glibc_target"] = src.glibc_target
    if glibc:
        # The floor, and which files set it (the ones a build on an older glibc would have to replace).
        needs = {rel: v for rel, v in glibc_needs(partial).items() if not rel.startswith(INSTALLER_DIR + "/")}
        floor = max(needs.values(), default=(0, 0))
        info["glibc"] = f"{floor[0]}.{floor[1]}"
        info["glibc_set_by"] = " ".join(sorted(rel for rel, v in needs.items() if v == floor))
    (partial / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    write_launchers(str(partial), str(out_path))
    os.rename(partial, out_path)
    return info
