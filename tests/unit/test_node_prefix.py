"""`--prefix` must be a directory of the installer's own (shim/node/prefix.py): fixture host roots, the real CLI.

A refused prefix stops the install with a message naming the prefix and the rule, and the node is byte for byte
as before; an operator's files in or beside an accepted prefix survive the uninstall.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_node_installer import CONTAINERD_16, make_bundle, make_root, node, snapshot

REFUSED = {
    "/": "--prefix / refused: the installer needs a directory of its own",
    "/opt": "--prefix /opt refused: it is a system directory",
    "/usr": "--prefix /usr refused: it is a system directory",
    "/usr/local": "--prefix /usr/local refused: it is a system directory",
    "/etc": "--prefix /etc refused: it is a system directory",
    "/var": "--prefix /var refused: it is a system directory",
    "/var/lib": "--prefix /var/lib refused: it is a system directory",
    "/bin": "--prefix /bin refused: it is a system directory",
    "/tmp/wasm-shim": "--prefix /tmp/wasm-shim refused: /tmp is emptied at reboot or writable by every user",
    "/run/wasm-shim": "--prefix /run/wasm-shim refused: /run is emptied at reboot",
    "opt/wasm-shim": "--prefix 'opt/wasm-shim' must be a plain absolute path",
    "/opt/../etc/wasm": "--prefix '/opt/../etc/wasm' must be a plain absolute path",
}


@pytest.mark.parametrize("prefix", sorted(REFUSED))
def test_a_system_or_malformed_prefix_is_refused_and_nothing_changes(tmp_path: Path, prefix: str) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16, "opt/vendor/tool": "#!/bin/sh\n",
                                "var/lib/app/data": "data\n"})
    before = snapshot(root)
    done = node(root, "install", "--no-restart", "--prefix", prefix, bundle=make_bundle(tmp_path))
    assert done.returncode != 0, done.stdout
    assert REFUSED[prefix] in done.stderr
    assert snapshot(root) == before
    # uninstall with such a prefix removes nothing either
    gone = node(root, "uninstall", "--no-restart", "--prefix", prefix)
    assert snapshot(root) == before, gone.stdout + gone.stderr


def test_a_prefix_holding_an_operators_files_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16,
                                "srv/tools/wasm/README": "the team's notes\n"})
    before = snapshot(root)
    done = node(root, "install", "--no-restart", "--prefix", "/srv/tools/wasm", bundle=make_bundle(tmp_path))
    assert done.returncode == 1
    assert ("--prefix /srv/tools/wasm refused: it already holds files that are not the installer's (README) and no "
            "install record") in done.stderr
    assert snapshot(root) == before


def test_a_prefix_through_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16, "data/.keep": ""})
    (root / "opt").mkdir()
    (root / "opt/wasm-shim").symlink_to("/data")  # absolute: resolved in the installer's container, not the node
    before = snapshot(root)
    done = node(root, "install", "--no-restart", bundle=make_bundle(tmp_path))
    assert done.returncode == 1
    assert "--prefix /opt/wasm-shim refused: /opt/wasm-shim is a symbolic link (to /data)" in done.stderr
    assert snapshot(root) == before


def test_a_prefix_every_user_may_write_to_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o1777)
    before = snapshot(root)
    done = node(root, "install", "--no-restart", "--prefix", "/shared/wasm-shim", bundle=make_bundle(tmp_path))
    assert done.returncode == 1
    assert "--prefix /shared/wasm-shim refused: /shared is writable by every user (mode 1777)" in done.stderr
    assert snapshot(root) == before


def test_an_empty_prefix_of_the_operators_stays_after_uninstall(tmp_path: Path) -> None:
    # A directory made for us beforehand (empty): install uses it; uninstall empties it and leaves it, as found.
    root = make_root(tmp_path, {"etc/containerd/config.toml": CONTAINERD_16})
    (root / "srv/wasm").mkdir(parents=True)
    (root / "srv/other").mkdir()
    (root / "srv/other/file").write_text("beside the prefix\n")
    before = snapshot(root)
    done = node(root, "install", "--no-restart", "--prefix", "/srv/wasm", bundle=make_bundle(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (root / "srv/wasm/state.json").is_file()
    gone = node(root, "uninstall", "--no-restart", "--prefix", "/srv/wasm")
    assert gone.returncode == 0, gone.stderr
    assert snapshot(root) == before
