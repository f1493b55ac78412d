"""bundle.py, the one spec -> grant mapping: config.json in, GuestSpec out (real files, no guest runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wasm_shim.shim.daemon.bundle import BundleError, guest_spec, load_bundle
from wasm_shim.shim.engines.base import GuestMount
from wasm_shim.shim.engines.grant import Grant


def _spec(tmp_path: Path, **fields: Any) -> Any:
    config = {"process": {"args": ["/app.wasm"], "env": ["A=1"], "cwd": "/w"}, "root": {"path": "rootfs"}}
    config.update(fields)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return guest_spec("t", load_bundle(str(tmp_path)))


def test_the_grant_comes_from_config_json(tmp_path: Path) -> None:
    data, hosts = tmp_path / "data", tmp_path / "hosts"
    data.mkdir()
    hosts.write_text("127.0.0.1 localhost\n")
    spec = _spec(
        tmp_path,
        mounts=[{"destination": "/data", "source": str(data), "type": "bind", "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "source": str(hosts), "options": ["bind"]},
                {"destination": "/proc", "source": "proc", "type": "proc"}],  # kernel filesystems are dropped
        linux={"cgroupsPath": "kubepods.slice:cri-containerd:t",
               "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/pod"}],
               "resources": {"memory": {"limit": 1 << 24}, "cpu": {"quota": 50_000, "period": 100_000}}},
        annotations={"k": "v"},
    )
    assert spec.args == ("/app.wasm",) and spec.env == ("A=1",) and spec.cwd == "/w"
    assert spec.rootfs == str(tmp_path / "rootfs") and not spec.root_readonly
    assert spec.mounts == (GuestMount("/data", str(data), readonly=True, directory=True),
                           GuestMount("/etc/hosts", str(hosts), readonly=False, directory=False))
    assert (spec.memory_limit, spec.cpu_limit) == (1 << 24, 0.5)
    assert spec.network_namespace == "/var/run/netns/pod"
    assert spec.cgroups_path == "kubepods.slice:cri-containerd:t"
    assert spec.grant == Grant() and spec.bundle == str(tmp_path)  # "k" grants nothing


def test_a_network_namespace_without_a_path_is_a_new_one(tmp_path: Path) -> None:
    spec = _spec(tmp_path, linux={"namespaces": [{"type": "network"}]})
    assert spec.network_namespace is None and spec.cgroups_path == ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mounts": [{"destination": "/data", "source": "/nonexistent/absent", "type": "bind"}]},
         "mount source /nonexistent/absent \\(for /data\\) does not exist"),
        ({"mounts": [{"destination": "data", "source": "/", "type": "bind"}]},
         "mount 'data': the destination must be an absolute path"),
        ({"linux": {"namespaces": [{"type": "network", "path": "netns/pod"}]}},
         "config.json: linux.namespaces network path 'netns/pod' is not an absolute path"),
        ({"process": {"args": []}}, "no process.args"),
    ],
)
def test_refusals_name_the_field(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        _spec(tmp_path, **fields)
