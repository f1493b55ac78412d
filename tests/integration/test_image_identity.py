"""Which manifest a container runs: one answer, used to place the module and by the signature policy.

Through real components: artifacts pushed by the real `oras push` that share one config file byte for byte (so
containerd's CRI, which keys images by their config digest, holds them as ONE image with several names and names a
container's image by the first of them), pulled with crictl into containerd 2.x, signed by the real `cosign`.
What a pod author controls (image names, configs, tags) must never make the shim run another image's module, nor
verify one manifest and run another. The same decisions on plain containerd (ctr) are in the second half.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lab.cri_tools import CrictlError, CriNode, LocalRegistry
from lab.registries import tool
from lab.shimtools import shim_log_text
from tests.integration.test_cri import (  # noqa: F401  (fixtures)
    CriNodeFactory,
    _wasm_pod,
    cri_node_factory,
    registry,
)

pytestmark = pytest.mark.integration

CONFIG_TYPE = "application/vnd.wasm.config.v0+json"
WASM_SHIM = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "wasm-shim")
PASSWORD = "correct horse"


def _node(cri_node_factory: CriNodeFactory, registry: LocalRegistry, tmp_path: Path,  # noqa: F811
          request: pytest.FixtureRequest, *options: str) -> CriNode:
    if request.node.callspec.params["containerd_factory"] == "1.6":
        pytest.skip("containerd 1.6.20 unpacks every layer as a tar: CRI pulls of wasm artifacts need 2.x")
    hosts = registry.hosts_config(tmp_path / "certs.d")
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    return cri_node_factory(runtime_options=[f"cache_dir={cache}", *options],
                            extra_config=f'[plugins."io.containerd.cri.v1.images".registry]\n'
                                         f'  config_path = "{hosts}"\n')


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"), "COSIGN_PASSWORD": PASSWORD,
            "COSIGN_YES": "true"}


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def oras_push(registry: LocalRegistry, repository: str,  # noqa: F811
               wasm: Path, config: Path, tmp_path: Path) -> str:
    """`oras push --config` of one module as `m.wasm`; returns REGISTRY/REPOSITORY@DIGEST."""
    work = tmp_path / f"push-{repository.replace('/', '-')}"
    work.mkdir()
    (work / "m.wasm").write_bytes(wasm.read_bytes())
    (work / "config.json").write_bytes(config.read_bytes())
    ref = f"{registry.address}/{repository}:v1"
    out = _run([tool("oras"), "push", "--plain-http", "--format", "json", ref,
                "--config", f"config.json:{CONFIG_TYPE}", "m.wasm:application/wasm"], _env(tmp_path), work)
    return f"{registry.address}/{repository}@{json.loads(out)['digest']}"


def shared_config(tmp_path: Path, doc: dict[str, object] | None = None) -> Path:
    """One config file for several artifacts: it names no layer, so their configs are byte-identical."""
    path = tmp_path / "shared-config.json"
    path.write_text(json.dumps(doc or {"architecture": "wasm", "os": "wasip1"}))
    return path


def run_container(node: CriNode, pod_id: str, pod: Path, name: str, image: str) -> str:
    cid = node.crictl.create(pod_id, node.container_config(name, image, command=["/m.wasm"]), pod)
    node.crictl.run("start", cid)
    node.crictl.wait_state(cid, "CONTAINER_EXITED")
    return node.crictl.logs(cid).stdout.strip()


def test_each_container_runs_its_own_image_when_configs_are_shared(
    cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    node = _node(cri_node_factory, registry, tmp_path, request)
    config = shared_config(tmp_path)
    first = oras_push(registry, "wasm/a-hello", guests / "hello.wasm", config, tmp_path)
    second = oras_push(registry, "wasm/b-args", guests / "args_env.wasm", config, tmp_path)
    for ref in (first, second):
        node.crictl.run("pull", ref, timeout=120)
    # CRI holds both as one image (one config digest) under two names: the precondition of this test.
    images = [i for i in node.crictl.json("images")["images"] if any("wasm/" in d for d in i.get("repoDigests", []))]
    assert len(images) == 1 and len(images[0]["repoDigests"]) == 2, images
    pod_id, pod = _wasm_pod(node, "identity")
    assert run_container(node, pod_id, pod, "b", second).startswith("argv[0]=/m.wasm")
    assert run_container(node, pod_id, pod, "a", first) == "hello from wasm"
    log = shim_log_text(node.containerd)
    assert f"of image {second} (manifest {second.split('@')[1]}) from containerd's content store" in log


def test_policy_verifies_the_manifest_that_runs(
    cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    env = _env(tmp_path)
    _run([tool("cosign"), "generate-key-pair"], env, tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'default = "deny"\n[[rule]]\nimages = ["{registry.address}/wasm/*"]\n'
                      f'keys = ["{tmp_path / "cosign.pub"}"]\nmode = "enforce"\n')
    node = _node(cri_node_factory, registry, tmp_path, request, f"policy={policy}")
    config = shared_config(tmp_path)
    unsigned = oras_push(registry, "wasm/a-unsigned", guests / "hello.wasm", config, tmp_path)  # sorts first
    signed = oras_push(registry, "wasm/b-signed", guests / "args_env.wasm", config, tmp_path)
    _run([tool("cosign"), "sign", "--key", str(tmp_path / "cosign.key"), "--tlog-upload=false",
          "--use-signing-config=false", "--allow-http-registry", "-y", signed], env, tmp_path)
    for ref in (unsigned, signed):
        node.crictl.run("pull", ref, timeout=120)
    pod_id, pod = _wasm_pod(node, "signed")
    # The signed image's container runs the signed image's module, and the log names what was verified and placed.
    assert run_container(node, pod_id, pod, "signed", signed).startswith("argv[0]=/m.wasm")
    signed_digest = signed.split("@")[1]
    log = shim_log_text(node.containerd)
    assert "allowed by rule 1" in log and signed_digest in log
    # The unsigned image's container is refused, though CRI holds both under one image ID.
    with pytest.raises(CrictlError) as refused:
        run_container(node, pod_id, pod, "unsigned", unsigned)
    assert "refused by the signature policy" in refused.value.stderr
    assert unsigned.split("@")[1] in refused.value.stderr


def test_config_that_lists_other_layers_is_refused(
    cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    node = _node(cri_node_factory, registry, tmp_path, request)
    other = "sha256:" + "ab" * 32
    config = shared_config(tmp_path, {"architecture": "wasm", "os": "wasip1", "layerDigests": [other]})
    ref = oras_push(registry, "wasm/liar", guests / "hello.wasm", config, tmp_path)
    node.crictl.run("pull", ref, timeout=120)
    pod_id, pod = _wasm_pod(node, "liar")
    with pytest.raises(CrictlError) as refused:
        run_container(node, pod_id, pod, "liar", ref)
    message = refused.value.stderr
    assert "layerDigests" in message and other in message and ref.split("@")[1] in message


def test_wasm_shim_push_binds_each_config_to_its_layer(
    cri_node_factory: CriNodeFactory, registry: LocalRegistry, guests: Path, tmp_path: Path,  # noqa: F811
    request: pytest.FixtureRequest,
) -> None:
    node = _node(cri_node_factory, registry, tmp_path, request)
    pushed = []
    for name, guest in (("a-hello", "hello.wasm"), ("b-args", "args_env.wasm")):
        ref = f"{registry.address}/wasm/{name}:v1"
        out = _run([WASM_SHIM, "push", "--insecure-registry", registry.address, str(guests / guest), ref],
                   _env(tmp_path), tmp_path)
        pushed.append(out.strip())
        node.crictl.run("pull", ref, timeout=120)
    # Two configs, each naming its own layer: CRI holds two images, and each container runs its own module.
    images = [i for i in node.crictl.json("images")["images"] if any("wasm/" in d for d in i.get("repoDigests", []))]
    assert len(images) == 2, images
    pod_id, pod = _wasm_pod(node, "bound")
    assert run_container(node, pod_id, pod, "b", pushed[1]).startswith("argv[0]=/m.wasm")
    assert run_container(node, pod_id, pod, "a", pushed[0]) == "hello from wasm"
