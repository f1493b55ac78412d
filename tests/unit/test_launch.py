"""The lean start/delete path: flags, what containerd sends on stdin, what we print, grouping and config."""

from __future__ import annotations

import json

import pytest
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from wasm_shim.shim.config import ConfigError, ShimConfig, load_config
from wasm_shim.shim.launch import contract as launch
from wasm_shim.shim.protos import bootstrap_pb2, introspection_pb2, runtimeoptions_pb2, task_pb2

ARGV = ["-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock", "-publish-binary",
        "/usr/bin/containerd", "-id", "abc", "-debug", "start"]


def test_parse_args_like_go_flag():
    args = launch.parse_args(ARGV)
    assert (args.action, args.namespace, args.id, args.debug) == ("start", "k8s.io", "abc", True)
    assert args.address == "/run/containerd/containerd.sock"
    args = launch.parse_args(["--id=x", "-bundle", "/b", "delete"])
    assert (args.action, args.id, args.bundle) == ("delete", "x", "/b")
    assert launch.parse_args(["-info"]).action == "info"
    assert launch.parse_args(["-v"]).action == "version"


@pytest.mark.parametrize("argv,message", [(["-id"], "needs a value"), (["-bogus", "x", "start"], "unknown flag")])
def test_parse_args_errors(argv, message):
    with pytest.raises(launch.UsageError, match=message):
        launch.parse_args(argv)


def _options_any(body: str = "", path: str = "") -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.type_url = "runtimeoptions.v1.Options"
    packed.value = runtimeoptions_pb2.Options(config_path=path, config_body=body.encode()).SerializeToString()
    return packed


def test_decode_empty_stdin_uses_environment():
    got = launch.decode_start_input(b"", {"NAMESPACE": "ns", "TTRPC_ADDRESS": "/t", "GRPC_ADDRESS": "/g"})
    assert (got.bootstrap, got.namespace, got.ttrpc_address, got.grpc_address) == (False, "ns", "/t", "/g")


def test_decode_options_any_containerd_16():
    data = _options_any(body='grouping = "pod"\n').SerializeToString()
    got = launch.decode_start_input(data, {})
    assert not got.bootstrap
    assert got.options_body == 'grouping = "pod"\n'


def test_decode_bootstrap_params_containerd_23():
    params = bootstrap_pb2.BootstrapParams(
        instance_id="abc", namespace="k8s.io", log_level=-4, containerd_version="v2.4.2",
        containerd_ttrpc_address="/run/c.sock.ttrpc", containerd_grpc_address="/run/c.sock", socket_dir="/run/s",
    )
    params.extensions.add().value.CopyFrom(_options_any(path="/etc/x.toml"))
    got = launch.decode_start_input(params.SerializeToString(), {})
    assert got.bootstrap
    assert (got.namespace, got.ttrpc_address, got.grpc_address) == ("k8s.io", "/run/c.sock.ttrpc", "/run/c.sock")
    assert (got.socket_dir, got.log_level, got.options_path) == ("/run/s", -4, "/etc/x.toml")


def test_foreign_options_type_is_reported():
    packed = any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"")
    assert launch.decode_start_input(packed.SerializeToString(), {}).options_type == "containerd.runc.v1.Options"


def test_start_output_per_containerd_version():
    address = "unix:///run/containerd/s/abc"
    assert launch.encode_start_output(address, launch.StartInput(), {}) == address.encode()
    as_json = json.loads(launch.encode_start_output(address, launch.StartInput(), {"MAX_SHIM_VERSION": "2"}))
    assert as_json == {"version": 2, "address": address, "protocol": "ttrpc"}
    result = bootstrap_pb2.BootstrapResult.FromString(
        launch.encode_start_output(address, launch.StartInput(bootstrap=True), {}))
    assert (result.version, result.address, result.protocol) == (3, address, "ttrpc")


def test_delete_response_decodes():
    response = task_pb2.DeleteResponse.FromString(launch.encode_delete_response(137, 1_700_000_000_123_456_789))
    assert response.exit_status == 137
    assert (response.exited_at.seconds, response.exited_at.nanos) == (1_700_000_000, 123_456_789)


def test_runtime_info_decodes():
    info = introspection_pb2.RuntimeInfo.FromString(launch.encode_runtime_info("io.containerd.wasmtime.v1", "1.2"))
    assert (info.name, info.version.version) == ("io.containerd.wasmtime.v1", "1.2")


def test_group_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"annotations": {"io.kubernetes.cri.sandbox-id": "pod1"}}))
    assert launch.group_key("namespace", "c1", str(tmp_path)) == "namespace"
    assert launch.group_key("pod", "c1", str(tmp_path)) == "pod:pod1"
    assert launch.group_key("container", "c1", str(tmp_path)) == "container:c1"
    assert launch.group_key("pod", "c1", str(tmp_path / "missing")) == "container:c1"
    # A pod's sandbox on containerd 2.x (sandboxer = "shim"): a bundle without config.json, the sandbox's id.
    sandbox = tmp_path / "sandbox-bundle"
    sandbox.mkdir()
    assert launch.group_key("pod", "pod1", str(sandbox)) == "pod:pod1"


def test_socket_path_is_stable_and_short():
    a = launch.socket_path("/run/containerd/s", "/run/containerd/containerd.sock", "k8s.io", "namespace")
    assert a == launch.socket_path("/run/containerd/s", "/run/containerd/containerd.sock", "k8s.io", "namespace")
    assert a != launch.socket_path("/run/containerd/s", "/run/containerd/containerd.sock", "default", "namespace")
    assert len(a) < 100
    # A different effective config: another daemon (a running one keeps the config it started with).
    assert a != launch.socket_path("/run/containerd/s", "/run/containerd/containerd.sock", "k8s.io", "namespace",
                                   "ShimConfig(policy='/opt/wasm-shim/policy/policy.toml')")


def test_config_sources_and_errors(tmp_path):
    node = tmp_path / "node.toml"
    node.write_text('grouping = "pod"\nidle_timeout = 5\n')
    config = load_config(options_body='log_level = "DEBUG"', environ={"WASM_SHIM_CONFIG": str(node),
                                                                     "WASM_SHIM_IDLE_TIMEOUT": "7"})
    assert config == ShimConfig(grouping="pod", idle_timeout=7.0, log_level="debug")
    with pytest.raises(ConfigError, match="unknown option 'groupin'"):
        load_config(options_body='groupin = "pod"', environ={"WASM_SHIM_CONFIG": ""})
    with pytest.raises(ConfigError, match="grouping must be one of"):
        load_config(environ={"WASM_SHIM_CONFIG": "", "WASM_SHIM_GROUPING": "cluster"})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(options_body="grouping = ", environ={"WASM_SHIM_CONFIG": ""})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(options_path=str(tmp_path / "nope.toml"), environ={"WASM_SHIM_CONFIG": ""})



def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + (_varint(len(payload)) + payload if wire == 2 else payload)


_FIELDS = st.one_of(
    st.tuples(st.integers(1, 20), st.just(0), st.integers(0, 2**64 - 1).map(_varint)),
    st.tuples(st.integers(1, 20), st.just(2), st.binary(max_size=80)),
    st.tuples(st.integers(1, 20), st.just(1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.integers(1, 20), st.just(5), st.binary(min_size=4, max_size=4)),
)


@given(st.lists(_FIELDS, max_size=8))
def test_the_hint_key_leaves_out_exactly_field_1_of_a_well_formed_start_input(fields) -> None:
    encoded = [_field(number, wire, payload) for number, wire, payload in fields]
    expected = b"".join(e for (number, wire, _), e in zip(fields, encoded, strict=True)
                        if not (number == 1 and wire == 2))
    assert launch.without_id(b"".join(encoded)) == expected


@given(st.binary(max_size=200))
def test_any_start_input_is_keyed_without_error(data: bytes) -> None:
    kept = launch.without_id(data)
    assert kept == data or len(kept) < len(data)
