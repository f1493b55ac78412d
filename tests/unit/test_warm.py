"""Warming before the first pod, the pure parts: the options (`idle_timeout = "never"`, `warm_images`), which file
an image config names, and that file read out of stacked tar layers (shim/daemon/warm.py); the CRI requests the
installer's warm-up sends (shim/node/warmup.py), checked against the cri-api field numbers."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from wasm_shim.shim.config import ConfigError, ShimConfig
from wasm_shim.shim.daemon.warm import WarmError, entry_of, file_from_layers
from wasm_shim.shim.node import warmup
from wasm_shim.shim.protos import cri_pod_pb2

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"


def _layer(files: dict[str, bytes | None], *, compress: bool = True) -> tuple[str, Callable[[IO[bytes]], None]]:
    """A layer holding `files` (None: a directory), as (media type, writer)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    blob = gzip.compress(raw.getvalue()) if compress else raw.getvalue()
    return (GZIP if compress else TAR), lambda sink: sink.write(blob)


def test_never_keeps_the_daemon_and_warm_images_is_a_list() -> None:
    config = ShimConfig().merged({"idle_timeout": "never", "warm_images": "reg.io/a:1, reg.io/b@sha256:00"}, "x")
    assert config.idle_timeout == float("inf")
    assert config.warm_images == ("reg.io/a:1", "reg.io/b@sha256:00")
    assert ShimConfig().merged({"warm_images": ["reg.io/a:1"]}, "x").warm_images == ("reg.io/a:1",)
    assert ShimConfig().warm_images == ()


@pytest.mark.parametrize(("values", "message"), [
    ({"idle_timeout": "forever"}, 'a number of seconds or "never"'),
    ({"warm_images": "reg.io/a:1,with space"}, "'with space' is not an image reference"),
    ({"warm_images": 7}, "must be a list of image references"),
])
def test_bad_warm_options_are_refused(values: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        ShimConfig().merged(values, "x")


@pytest.mark.parametrize(("config", "entry"), [
    ({"config": {"Entrypoint": ["/app.wasm"], "Cmd": ["x"]}}, "/app.wasm"),
    ({"config": {"Cmd": ["/bin/m.wasm#run"]}}, "/bin/m.wasm"),
    ({"config": {"Entrypoint": ["m.wasm"], "WorkingDir": "/srv"}}, "/srv/m.wasm"),
])
def test_the_entry_is_args0_of_the_image_config(config: dict, entry: str) -> None:  # type: ignore[type-arg]
    assert entry_of(config) == entry


def test_an_image_config_without_a_command_names_nothing() -> None:
    with pytest.raises(WarmError, match="no Entrypoint or Cmd"):
        entry_of({"config": {}})


def test_the_topmost_layer_holding_the_file_wins(tmp_path: Path) -> None:
    out = tmp_path / "out.wasm"
    layers = [_layer({"app.wasm": b"old"}), _layer({"./etc": None, "./app.wasm": b"new"}, compress=False),
              _layer({"other": b"x"})]
    file_from_layers(layers, "/app.wasm", str(out))
    assert out.read_bytes() == b"new"


@pytest.mark.parametrize(("layers", "message"), [
    ([_layer({"app.wasm": b"x"}), _layer({".wh.app.wasm": b""})], "deleted by a layer"),
    ([_layer({"app.wasm": None})], "not a regular file"),
    ([_layer({"other.wasm": b"x"})], "in none of the image's layers"),
    ([("application/vnd.oci.image.layer.v1.tar+zstd", lambda sink: None)], "cannot read ahead of time"),
])
def test_a_file_that_cannot_be_read_out_says_why(tmp_path: Path, layers: list, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(WarmError, match=message):
        file_from_layers(layers, "/app.wasm", str(tmp_path / "out.wasm"))


def test_the_warm_up_sandbox_is_a_host_network_pod_of_the_handler() -> None:
    # RunPodSandboxRequest{config=1, runtime_handler=2}: decoded with our cri_pod.proto (cri-api field numbers).
    from wasm_shim.shim.ttrpc.wire import iter_fields

    fields = {num: bytes(value) for num, _, value in iter_fields(warmup.run_sandbox_request("wasmtime", "u1"))}
    assert fields[2] == b"wasmtime"
    config = cri_pod_pb2.PodSandboxConfig.FromString(fields[1])
    assert (config.metadata.name, config.metadata.uid) == (warmup.WARMUP_POD, "u1")
    modes = config.linux.security_context.namespace_options
    assert (modes.network, modes.pid, modes.ipc) == (cri_pod_pb2.NODE,) * 3
    assert warmup.pull_request("reg.io/a:1") == b"\x0a\x0c\x0a\x0areg.io/a:1"  # PullImageRequest{image{image}}
