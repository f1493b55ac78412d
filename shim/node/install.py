"""`wasm-shim node install`, the steps: bundle copy, `current` switch, options file, policy, bin link, config merge,
install record, restart.

Each step is an edit through the session's undo log (changes.Changes); the caller (installer.Node) replays the log
when a step fails, so a failed install leaves the node as it found it, its previous install included.

Invariants:
- Running daemons keep working across an upgrade: the bundle goes to `versions/<id>` (same id = same bytes,
  bundle.read_info), `current` switches atomically, and the previous version stays until the next upgrade.
- The install record (record.Record) is written last, naming everything the installs put on the node; the
  config edit it keeps is the merge's own record (layout.ConfigEdit), carried over from the first install, so a
  reinstall (a pod restart, `helm upgrade`) after an operator's edit records nothing of theirs as ours.
- Bad input stops before the first write: the prefix (prefix.py; its name and parts are checked before the lock
  is taken in it), the layout, the config (another installer's runtime for our handler or type), the shim
  options, a foreign shim binary on containerd's PATH, the bundle. A bundle that cannot start on the node (its
  CPU, its glibc: preflight.py) stops the install after the copy, before containerd's config changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping

from ..config import ShimConfig
from . import build, preflight
from .containerd_config import ConfigMergeError, validate_options
from .distributions import CONTAINERD_PATH, LAYOUT_BIN_DIRS, InstallError, Layout, detect, plan_install, runtime_table
from .host import PARTIAL_SUFFIX
from .policy_files import POLICY_DIR, POLICY_FILE, install_policy, remove_stale_policy
from .prefix import check_own
from .record import BACKUP, OPTIONS_FILE, SHIM_BINARY, STATE_FILE, Record, daemon_dir
from .restart import say
from .session import Session

#: The daemon's data directories (shim/config.py): it creates them on first use.
DAEMON_DIR_KEYS = ("cache_dir", "artifact_dir")


def install(s: Session, previous: Record | None, created: list[str]) -> tuple[str, Layout]:
    """Install onto the node; returns (version, layout). `created` collects the directories this run makes."""
    check_own(s.host, s.prefix, recorded=previous is not None)
    probe = s.host.probe()
    layout = detect(probe, layout=s.o.layout, containerd_config=s.o.containerd_config,
                    config_version=s.o.config_version, handler=s.o.handler)
    if previous is not None and (previous.handler, previous.runtime_type) != (s.o.handler, s.o.runtime_type):
        raise InstallError(
            f"{s.prefix} holds the install for handler {previous.handler} (runtime type {previous.runtime_type}), "
            f"not {s.o.handler} ({s.o.runtime_type}): a second install on this node needs a prefix of its own "
            "(chart: node.prefix); to change the handler or runtime type of this one, uninstall it first")
    if previous is not None and previous.config_path != layout.config_path:
        raise InstallError(f"already installed into {previous.config_path}, but this node now looks like "
                           f"{layout.describe()}; uninstall first")
    say(f"layout: {layout.describe()}")
    shim_options = validate_or_fail(s.o.shim_options)
    if "policy" in shim_options and s.o.policy_dir:
        raise InstallError("--policy-dir and --option policy=... both name a signature policy: choose one")
    table = runtime_table(layout, s.node_view(s.p(OPTIONS_FILE)), s.o.handler, s.o.runtime_type)
    plan = plan_install(layout, probe, table, previous.config_edit if previous else None)

    source = os.path.abspath(s.o.bundle or build.running_bundle())
    info = build.read_info(source)
    version = info["id"]
    bin_link = os.path.join(s.o.bin_dir, s.shim_binary)
    link_target = s.node_view(s.p("current", "bin", SHIM_BINARY))
    real_link = s.host.path(bin_link)
    if os.path.lexists(real_link) and not s.host.is_link_to(bin_link, link_target):
        raise InstallError(f"{bin_link} exists and is not ours (a link to {link_target}); remove it or choose "
                           "another --bin-dir")
    refuse_foreign_binaries(s, layout, bin_link, link_target)

    # Nothing has changed yet: wait here for a restart slot when this run will restart containerd.
    if plan.new is not None:
        s.before_restarting_changes()
    # Files: versioned bundle directory, then the switch, then the options file and the link.
    changes = s.changes
    changes.mkdirs(s.p("versions"), created)
    changes.mkdirs(s.p(os.path.dirname(BACKUP)), created)
    changes.mkdirs(s.o.bin_dir, created)
    copy_bundle(s, source, version)
    # Before containerd's config changes: does the bundle start here at all (CPU, glibc)? preflight.py
    preflight.check(s.host, s.o.node_root, s.p("versions", version), str(info.get("glibc", "")))
    current_real = s.host.path(s.p("current"))
    kept_version = os.path.basename(os.readlink(current_real)) if os.path.islink(current_real) else version
    changes.symlink(s.p("current"), os.path.join("versions", version))
    recorded = previous.files if previous else []
    files = [OPTIONS_FILE]
    if "policy" not in shim_options:
        files += install_policy(s, created, recorded)
        shim_options["policy"] = s.node_view(s.p(POLICY_DIR, POLICY_FILE))
    else:
        remove_stale_policy(s, recorded)  # the operator's own policy now: ours goes
    changes.write(s.p(OPTIONS_FILE), options_toml(shim_options))
    changes.symlink(bin_link, link_target)

    # The containerd config: back up the original once (the first install's: for the operator, by hand), then
    # write the merge.
    original = previous.original if previous else None
    if previous is None and plan.original is not None:
        original = BACKUP
        changes.write(s.p(BACKUP), plan.original, mode=0o600)
    if original is not None:
        files.append(original)
    if plan.new is not None:
        if plan.original is None:
            changes.mkdirs(os.path.dirname(layout.config_path), created)
        changes.write(layout.config_path, plan.new)
    for note in plan.notes:
        say(f"{layout.config_path}: {note}")
    installed = plan.new if plan.new is not None else (plan.original or b"")
    daemon_dirs = list(previous.daemon_dirs) if previous else []
    for key in DAEMON_DIR_KEYS:
        entry = daemon_dir(s.host, shim_options.get(key, ShimConfig.DEFAULTS[key]))
        if entry is not None and entry["path"] not in {d["path"] for d in daemon_dirs}:
            daemon_dirs.append(entry)
    record = Record(
        version=version, layout=layout.name, config_path=layout.config_path, config_version=layout.config_version,
        options_path=s.node_view(s.p(OPTIONS_FILE)), installed_sha256=hashlib.sha256(installed).hexdigest(),
        config_edit=plan.edit, bin_link=bin_link, bin_link_target=link_target, original=original,
        files=sorted(set(files)), versions=sorted({version, kept_version}),
        created_dirs=(previous.created_dirs if previous else []) + created, daemon_dirs=daemon_dirs,
        handler=s.o.handler, runtime_type=s.o.runtime_type,
    )
    changes.write(s.p(STATE_FILE), record.dump())
    if s.o.restart and plan.new is not None:
        s.restarter.restart(layout)
    elif plan.new is None:
        say("containerd's config already has the wasmtime runtime: no restart needed")
    else:
        say("--no-restart: restart containerd to load the wasmtime runtime")
    # The previous version stays: a running daemon may still import modules from it.
    prune_versions(s, keep=set(record.versions), recorded=previous.versions if previous else [])
    say(f"installed {version} ({layout.describe()})")
    return version, layout


def refuse_foreign_binaries(s: Session, layout: Layout, bin_link: str, link_target: str) -> None:
    """Another binary of our shim's name where containerd looks for it (its PATH, the distribution's own bin
    directory): containerd would run whichever it finds first for our runtime type, so we refuse to install
    beside it rather than take it over (or be taken over)."""
    seen: set[str] = set()
    for directory in (*CONTAINERD_PATH, *LAYOUT_BIN_DIRS.get(layout.name, ())):
        path = os.path.join(directory, s.shim_binary)
        real = os.path.realpath(s.host.path(path))
        if real in seen or not os.path.lexists(s.host.path(path)) or path == bin_link:
            continue
        seen.add(real)
        if s.host.is_link_to(path, link_target) or real == os.path.realpath(s.host.path(bin_link)):
            continue  # our own link, seen through another directory of the PATH (/bin -> usr/bin)
        raise InstallError(
            f"{path} is a {s.shim_binary} this installer did not put there (runwasi's, or another installer's): "
            f"containerd would run either it or ours for runtime type {s.o.runtime_type}. Refusing to take it "
            "over; nothing was changed. To run beside it, give this install another handler, runtime type and "
            "binary (chart values runtimeClass.handler, node.runtimeType, node.shimBinary)")


def copy_bundle(s: Session, source: str, version: str) -> None:
    target = s.p("versions", version)
    if s.host.exists(target):
        return  # same id = same bytes (bundle.read_info: the id is a digest of the content)
    partial = s.host.path(s.p("versions", f".{version}{PARTIAL_SUFFIX}"))
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(source, partial, symlinks=True,
                        ignore=lambda d, names: [build.INSTALLER_DIR] if d == source else [])
        build.write_launchers(partial, s.node_view(target))
        os.rename(partial, s.host.path(target))
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise InstallError(f"cannot copy the bundle to {target}: {exc.strerror or exc}") from None
    s.changes.undo.add(f"bundle {target}", lambda: shutil.rmtree(s.host.path(target)))


def prune_versions(s: Session, keep: set[str], recorded: list[str]) -> None:
    """Remove the bundle versions earlier installs copied that are neither current nor the one before."""
    for name in recorded:
        if name not in keep and "/" not in name and name not in ("", ".", ".."):
            shutil.rmtree(s.host.path(s.p("versions", name)), ignore_errors=True)


def validate_or_fail(options: Mapping[str, str]) -> dict[str, str]:
    try:
        return validate_options(options)
    except ConfigMergeError as exc:
        raise InstallError(f"shim option: {exc}") from None


def options_toml(options: Mapping[str, str]) -> bytes:
    """The shim's options file (ConfigPath): one `key = "value"` line per option, in the order given."""
    lines = ["# wasm-shim options, written by `wasm-shim node install` (keys: shim/config.py)"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return ("\n".join(lines) + "\n").encode("utf-8")

