"""`wasm-shim node uninstall` removes exactly what the installs added, on fixture host roots, through the real CLI.

The sequences an operator's node goes through: install, the operator edits containerd's config (a registry mirror,
a comment, a value of their own), the installer runs again (a pod restart, `helm upgrade` with a new bundle), then
uninstall. Afterwards the config is the operator's file as they left it, minus our block, byte for byte; every
other file is as before the first install. And what uninstall must leave: a table of ours someone changed, the
default runtime other runtimes now rely on, a table we had replaced, files somebody put in the prefix.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from tests.unit.test_node_installer import (
    CONTAINERD_2,
    CONTAINERD_16,
    LAYOUT_ROOTS,
    make_bundle,
    make_root,
    node,
    snapshot,
)

V2_RUNTIMES = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
V3_RUNTIMES = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes"
TOP_COMMENT = "# edited by the operator after the install\n"
MIRROR = {
    2: ('\n# the operator\'s mirror\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.example.com"]\n'
        '  endpoint = ["https://mirror.example.com"]\n'),
    3: "\n# the operator's registry hosts\n[plugins.'io.containerd.cri.v1.images'.registry]\n"
       "  config_path = '/etc/containerd/certs.d'\n",
}
#: The text each layout's config file starts from: the file itself, or what install creates it from.
SOURCES = {"k3s": "var/lib/rancher/k3s/agent/etc/containerd/config.toml",
           "k3s-containerd-2": "var/lib/rancher/k3s/agent/etc/containerd/config.toml"}


def operator_edit(text: str, version: int) -> str:
    """What an operator does to the file after install: a comment on top, a mirror at the end."""
    return TOP_COMMENT + text + MIRROR[version]


def source_text(name: str) -> str:
    files, config_rel, version = LAYOUT_ROOTS[name]
    if config_rel in files:
        return files[config_rel]
    if name in SOURCES:
        return files[SOURCES[name]]
    return f"version = {version}\n"  # k0s: our own drop-in


@pytest.mark.parametrize("name", sorted(LAYOUT_ROOTS))
def test_operator_edit_survives_reinstall_upgrade_and_uninstall(tmp_path: Path, name: str) -> None:
    files, config_rel, version = LAYOUT_ROOTS[name]
    root = make_root(tmp_path, files)
    before = snapshot(root)
    config = root / config_rel
    first = make_bundle(tmp_path, "0.1.0-aaaa")
    assert node(root, "install", "--no-restart", bundle=first).returncode == 0
    config.write_text(operator_edit(config.read_text(), version))
    edited = config.read_text()

    # The DaemonSet's pod restarts (same bundle), then `helm upgrade` brings a new one: both find our table.
    again = node(root, "install", "--no-restart", bundle=first)
    assert again.returncode == 0, again.stderr
    upgrade = node(root, "install", "--no-restart", bundle=make_bundle(tmp_path, "0.1.0-bbbb"))
    assert upgrade.returncode == 0, upgrade.stderr
    assert config.read_text() == edited  # nothing to change: the table is there

    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    expected = dict(before)
    mode = before[config_rel][1] if config_rel in before else 0o644
    expected[config_rel] = ("file", mode, operator_edit(source_text(name), version).encode())
    assert snapshot(root) == expected
    assert "wasmtime" not in config.read_text()
    if config_rel not in files:
        assert "the install created the file, but it holds changes made since: kept" in gone.stdout


def test_the_daemonset_stays_ready_after_an_operators_edit(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    config = root / "etc/containerd/config.toml"
    config.write_text(operator_edit(config.read_text(), 2))
    status = node(root, "status", "--check")  # the DaemonSet's readiness probe
    assert status.returncode == 0, status.stdout
    report = json.loads(status.stdout)
    assert report["config_as_installed"] is True and report["config_unchanged"] is False
    config.write_text(config.read_text().replace('"wasm.shim.io/*"]', '"other/*"]'))
    assert node(root, "status", "--check").returncode == 1  # our table itself changed: not Ready


@pytest.mark.parametrize("version", [2, 3])
def test_a_file_without_a_final_newline_keeps_its_last_line_and_the_operators_edit(tmp_path: Path,
                                                                                    version: int) -> None:
    original = (CONTAINERD_16 if version == 2 else CONTAINERD_2).rstrip("\n")
    root = make_root(tmp_path, {"etc/containerd/config.toml": original})
    before = snapshot(root)
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    config = root / "etc/containerd/config.toml"
    config.write_text(TOP_COMMENT + config.read_text())
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path, "0.1.0-next")).returncode == 0
    assert node(root, "uninstall", "--no-restart").returncode == 0
    expected = dict(before)
    expected["etc/containerd/config.toml"] = ("file", before["etc/containerd/config.toml"][1],
                                              (TOP_COMMENT + original).encode())
    assert snapshot(root) == expected


def test_a_table_of_ours_someone_changed_is_left_and_named(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_2})
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    config = root / "etc/containerd/config.toml"
    changed = config.read_text().replace('pod_annotations = ["wasm.shim.io/*"]',
                                         'pod_annotations = ["wasm.shim.io/*", "team.example.com/*"]')
    config.write_text(changed)
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    assert config.read_text() == changed  # their table, their edit: untouched
    assert ".containerd.runtimes.wasmtime] was changed since install: left as it is" in gone.stderr
    assert not (root / "opt").exists() and not (root / "usr/local/bin/containerd-shim-wasmtime-v1").exists()


def test_the_runc_table_install_added_stays_while_other_runtimes_need_it(tmp_path: Path) -> None:
    # The file declared no runtime, so the merge added runc beside ours (CRI needs the default declared once any
    # runtime is). The operator then adds a runtime of their own: without runc, CRI would no longer load.
    original = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n'
    root = make_root(tmp_path, {"etc/containerd/config.toml": original})
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    config = root / "etc/containerd/config.toml"
    assert "runtimes.runc]" in config.read_text()
    gvisor = f'\n[{V2_RUNTIMES}.gvisor]\n  runtime_type = "io.containerd.runsc.v1"\n'
    config.write_text(config.read_text() + gvisor)
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    runtimes = tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert sorted(runtimes) == ["gvisor", "runc"]
    assert "which need the default runtime declared beside them" in gone.stdout


def test_a_foreign_wasmtime_table_is_refused_and_another_handler_installs_beside_it(tmp_path: Path) -> None:
    # Another installer's shim for handler wasmtime (runwasi's binary name and runtime type): a first install
    # refuses it, naming the table, and changes nothing; a second handler, runtime type and binary live beside
    # it, and their uninstall (after an operator's edit) leaves the foreign table and the edit.
    theirs = (f'# our own wasm runtime, before the chart\n[{V2_RUNTIMES}.wasmtime]\n'
              '  runtime_type = "io.containerd.wasmtime.v1"\n'
              f'  [{V2_RUNTIMES}.wasmtime.options]\n    BinaryName = "/usr/local/bin/other-shim"\n')
    cni = '\n[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/opt/cni/bin"\n'
    original = CONTAINERD_16 + "\n" + theirs + cni
    root = make_root(tmp_path, {"etc/containerd/config.toml": original})
    before = snapshot(root)
    bundle = make_bundle(tmp_path)
    refused = node(root, "install", "--no-restart", bundle=bundle)
    assert refused.returncode == 1
    assert f"/etc/containerd/config.toml: [{V2_RUNTIMES}.wasmtime] (runtime_type 'io.containerd.wasmtime.v1') is " \
           "a runtime for handler wasmtime that this installer did not write. Refusing to take it over; nothing " \
           "was changed." in refused.stderr
    assert "runtimeClass.handler, node.runtimeType, node.shimBinary" in refused.stderr
    assert snapshot(root) == before

    beside = ("--handler", "wasm-b", "--runtime-type", "io.containerd.wasmb.v1")
    assert node(root, "install", "--no-restart", *beside, bundle=bundle).returncode == 0
    config = root / "etc/containerd/config.toml"
    runtimes = tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["wasmtime"]["options"] == {"BinaryName": "/usr/local/bin/other-shim"}
    assert runtimes["wasm-b"]["runtime_type"] == "io.containerd.wasmb.v1"
    assert os.readlink(root / "usr/local/bin/containerd-shim-wasmb-v1") == \
        str(root / "opt/wasm-shim/current/bin/containerd-shim-wasmtime-v1")
    config.write_text(operator_edit(config.read_text(), 2))
    assert node(root, "install", "--no-restart", *beside, bundle=bundle).returncode == 0
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    expected = dict(before)
    expected["etc/containerd/config.toml"] = ("file", before["etc/containerd/config.toml"][1],
                                              operator_edit(original, 2).encode())
    assert snapshot(root) == expected


def test_files_someone_put_in_the_prefix_stay(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    before = snapshot(root)
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    notes = root / "opt/wasm-shim/NOTES-by-the-operator.txt"
    notes.write_text("keep me\n")
    (root / "opt/wasm-shim/policy/extra.pub").write_text("a key the operator copied in\n")
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    assert "/opt/wasm-shim: left, it holds files the installer did not put there (NOTES-by-the-operator.txt, " \
           "policy)" in gone.stderr
    left = {k: v for k, v in snapshot(root).items() if k not in before}
    assert left == {"opt": ("dir", 0o755, b""), "opt/wasm-shim": ("dir", 0o755, b""),
                    "opt/wasm-shim/NOTES-by-the-operator.txt": ("file", 0o644, b"keep me\n"),
                    "opt/wasm-shim/policy": ("dir", 0o755, b""),
                    "opt/wasm-shim/policy/extra.pub": ("file", 0o644, b"a key the operator copied in\n")}
    assert {k: v for k, v in snapshot(root).items() if k in before} == before


def test_a_config_that_no_longer_parses_stops_uninstall_before_anything_goes(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    config = root / "etc/containerd/config.toml"
    config.write_text(config.read_text() + "\n[broken\n")
    installed = snapshot(root)
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 1
    assert "/etc/containerd/config.toml: does not parse as TOML now; nothing of ours was removed from it" \
        in gone.stderr
    assert snapshot(root) == installed  # the runtime keeps working; fix the file, uninstall again
    config.write_text(config.read_text().replace("\n[broken\n", ""))
    assert node(root, "uninstall", "--no-restart").returncode == 0
    assert config.read_text() == CONTAINERD_16


def test_an_older_installers_record_is_uninstalled_by_name_not_by_directory(tmp_path: Path) -> None:
    # A node installed by the installer before the install record listed its files: its state.json had only
    # the original-bytes backup and no file list, and its uninstall removed the whole prefix.
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16, "var/lib/.keep": ""})
    before = snapshot(root)
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    state_path = root / "opt/wasm-shim/state.json"
    state = json.loads(state_path.read_text())
    legacy = {"version": state["version"], "layout": state["layout"], "config_path": state["config_path"],
              "config_version": state["config_version"], "options_path": state["options_path"],
              "installed_sha256": state["installed_sha256"], "original": "backup/original",
              "added_runc": False, "bin_link": state["bin_link"], "created_dirs": state["created_dirs"],
              "shim_data": "/var/lib/wasm-shim"}
    state_path.write_text(json.dumps(legacy))
    config = root / "etc/containerd/config.toml"
    config.write_text(operator_edit(config.read_text(), 2))
    (root / "opt/wasm-shim/mine.txt").write_text("the operator's\n")
    (root / "var/lib/wasm-shim/cache").mkdir(parents=True)  # what the daemon made
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    assert config.read_text() == operator_edit(CONTAINERD_16, 2)
    assert (root / "opt/wasm-shim/mine.txt").read_text() == "the operator's\n"
    left = {k for k in snapshot(root) if k not in before}
    assert left == {"opt", "opt/wasm-shim", "opt/wasm-shim/mine.txt"}
    assert not os.path.lexists(root / "usr/local/bin/containerd-shim-wasmtime-v1")


def test_config_edited_after_install_loses_only_our_tables(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_2})
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    config = root / "etc/containerd/config.toml"
    config.write_text(config.read_text() + "\n[debug]\n  level = 'debug'\n")
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    assert "removed [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime] (added by install)" \
        in gone.stdout
    # Our block went, blank line, marker and all; the blank line the operator wrote before [debug] stays.
    assert config.read_text() == CONTAINERD_2 + "\n[debug]\n  level = 'debug'\n"
    assert not (root / "opt").exists()


def test_uninstall_removes_the_cache_the_daemon_made(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16, "var/lib/.keep": ""})
    before = snapshot(root)
    assert node(root, "install", "--no-restart", "--option", "cache_dir=/var/lib/wasm-shim/cache",
                bundle=make_bundle(tmp_path)).returncode == 0
    # What a daemon leaves after running pods (shim/engines/wasmtime_engine.py: <cache_dir>/<fingerprint>/...).
    (root / "var/lib/wasm-shim/cache/fp").mkdir(parents=True)
    (root / "var/lib/wasm-shim/cache/fp/abc.cwasm").write_bytes(b"compiled")
    assert node(root, "uninstall", "--no-restart").returncode == 0
    assert snapshot(root) == before


def test_the_daemons_data_goes_but_a_file_someone_put_beside_it_stays(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16, "var/lib/.keep": ""})
    before = snapshot(root)
    assert node(root, "install", "--no-restart", bundle=make_bundle(tmp_path)).returncode == 0
    # The daemon's compiled-module and artifact caches (the defaults, shim/config.py), and an operator's file.
    (root / "var/lib/wasm-shim/cache/fp").mkdir(parents=True)
    (root / "var/lib/wasm-shim/artifacts/sha256").mkdir(parents=True)
    (root / "var/lib/wasm-shim/README.operator").write_text("ours, not the shim's\n")
    gone = node(root, "uninstall", "--no-restart")
    assert gone.returncode == 0, gone.stderr
    assert "/var/lib/wasm-shim: left, the daemon's data went, but other files are in it (README.operator)" \
        in gone.stderr
    assert {k: v for k, v in snapshot(root).items() if k not in before} == {
        "var/lib/wasm-shim": ("dir", 0o755, b""),
        "var/lib/wasm-shim/README.operator": ("file", 0o644, b"ours, not the shim's\n")}
