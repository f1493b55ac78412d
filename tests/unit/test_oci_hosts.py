"""containerd's registry host configuration as the shim reads it (oci/hosts.py, shim/image/hosts.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wasm_shim.oci.hosts import HostsError, RegistryHosts
from wasm_shim.shim.image.hosts import CONTAINERD_2_DEFAULT, config_file_of, config_path_of


def _write(directory: Path, registry: str, text: str) -> Path:
    (directory / registry).mkdir(parents=True, exist_ok=True)
    (directory / registry / "hosts.toml").write_text(text)
    return directory / registry


def test_mirrors_that_pull_and_resolve_come_first_then_the_server(tmp_path: Path) -> None:
    where = _write(tmp_path, "registry.example:5000", 'server = "http://registry.example:5000"\n'
                   '[host."https://mirror.example"]\n  capabilities = ["pull", "resolve"]\n  ca = "mirror-ca.crt"\n'
                   '  client = [["c.cert", "c.key"]]\n'
                   '[host."https://push-only.example"]\n  capabilities = ["push"]\n'
                   '[host."https://prefixed.example/v2/x"]\n  override_path = true\n')
    endpoints = RegistryHosts.from_config_path(f"/nonexistent:{tmp_path}").endpoints("registry.example:5000")
    assert [e.base for e in endpoints] == ["https://mirror.example", "http://registry.example:5000"]
    mirror = endpoints[0]
    assert mirror.ca_files == (str(where / "mirror-ca.crt"),)
    assert mirror.client_pairs == ((str(where / "c.cert"), str(where / "c.key")),)
    assert endpoints[1].scheme == "http" and endpoints[1].ca_files == ()


def test_default_dirs_docker_style_certs_and_unconfigured_registries(tmp_path: Path) -> None:
    _write(tmp_path, "_default", 'server = "https://fallback.example"\n')
    certs = tmp_path / "certs.example"
    certs.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "lonely.cert"):
        (certs / name).write_text("x")
    hosts = RegistryHosts.from_config_path(str(tmp_path))
    [docker_style] = hosts.endpoints("certs.example")
    assert docker_style.base == "https://certs.example" and docker_style.ca_files == (str(certs / "ca.crt"),)
    assert docker_style.client_pairs == ((str(certs / "client.cert"), str(certs / "client.key")),)
    assert [e.base for e in hosts.endpoints("other.example")] == ["https://fallback.example"]
    assert RegistryHosts.from_config_path(str(tmp_path / "none")).endpoints("other.example") == ()


def test_a_changed_hosts_toml_is_read_again(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.example", 'server = "https://r.example"\n') / "hosts.toml"
    hosts = RegistryHosts.from_config_path(str(tmp_path))
    assert hosts.endpoints("r.example")[0].scheme == "https"
    path.write_text('server = "http://r.example:80"\n')
    assert hosts.endpoints("r.example")[0].base == "http://r.example:80"


@pytest.mark.parametrize("text, message", [
    ("server = ", "hosts.toml is not valid TOML"),
    ('server = "ftp://r.example"', "server: 'ftp://r.example' is not an http:// or https:// URL"),
    ('[host."https://m.example"]\nskip_verify = "yes"', "skip_verify must be true or false"),
    ('[host."https://m.example"]\nca = 5', "ca must be a path or a list of paths"),
    ('[host."https://m.example"]\nclient = [["a"]]', "client must be a path or"),
])
def test_a_broken_hosts_toml_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, "r.example", text)
    with pytest.raises(HostsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RegistryHosts.from_config_path(str(tmp_path)).endpoints("r.example")


def test_containerd_configs_name_their_config_path() -> None:
    v3 = {"version": 3, "plugins": {"io.containerd.cri.v1.images": {"registry": {"config_path": "/a:/b"}}}}
    assert config_path_of(v3) == "/a:/b"
    assert config_path_of({"version": 3}) == CONTAINERD_2_DEFAULT
    v2 = {"version": 2, "plugins": {"io.containerd.grpc.v1.cri": {"registry": {"config_path": "/etc/c/certs.d"}}}}
    assert config_path_of(v2) == "/etc/c/certs.d"
    assert config_path_of({"version": 2}) == ""


def test_a_processs_config_file_is_read_from_its_command_line(tmp_path: Path) -> None:
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text("import time\ntime.sleep(30)\n")
    for argv, expected in ((["--config", str(tmp_path / "c.toml")], str(tmp_path / "c.toml")),
                           ([f"-c={tmp_path}/d.toml"], f"{tmp_path}/d.toml"),
                           (["--config", "rel.toml"], os.path.join(str(tmp_path), "rel.toml")),
                           ([], "/etc/containerd/config.toml")):
        process = subprocess.Popen([sys.executable, str(sleeper), *argv], cwd=tmp_path)
        try:
            while not Path(f"/proc/{process.pid}/cmdline").read_bytes():  # until the exec is done
                time.sleep(0.01)
            assert config_file_of(process.pid) == expected
        finally:
            process.kill()
            process.wait()
