"""The node's signature policy as the installer owns it: `<prefix>/policy/`, the policy file and the keys it names.

Unless an explicit `--option policy=...` names the operator's own file, install writes the policy and keys of
`--policy-dir` (a mounted ConfigMap), or an allow-all policy without one, and points the shim's `policy` option
there. Running daemons re-read the file at their next Create (oci.policy.PolicyFile), so a new policy needs no
restart of anything.

Beside them, the chart's registry files (`config.json`, a docker config with credentials, written 0600;
`registry-ca.pem`), which the shim options registry_docker_config and registry_ca_bundle name.

Invariants: the directory holds exactly the files given (a key no longer given is removed, but only one the
install record says we wrote); the policy is checked as the shim will read it (oci.policy.parse_policy, keys
read) before anything is restarted, and a bad one fails the install with the reason; every write and removal is
undoable.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from .distributions import InstallError
from .restart import say
from .session import Session

POLICY_DIR = "policy"
POLICY_FILE = "policy.toml"
REGISTRY_CREDENTIALS = "config.json"  # registry credentials beside the policy (the shim option registry_docker_config)
ALLOW_ALL_POLICY = (b"# Written by `wasm-shim node install` without --policy-dir: no signature checks.\n"
                    b"# docs/supply-chain.md \"The node's policy\"; the chart's signaturePolicy values set one.\n"
                    b'default = "allow"\n')


def read_policy_dir(directory: str) -> dict[str, bytes]:
    """The files of a policy directory (a mounted ConfigMap: `policy.toml` and key files, each a link into
    `..data/`): name -> bytes. Hidden entries are the ConfigMap's own; anything else must be a regular file
    with a plain name."""
    files: dict[str, bytes] = {}
    try:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except OSError as exc:
        raise InstallError(f"--policy-dir {directory}: {exc.strerror}") from None
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise InstallError(f"--policy-dir {directory}: {name} is not a regular file")
        with open(path, "rb") as f:
            files[name] = f.read()
    if POLICY_FILE not in files:
        raise InstallError(f"--policy-dir {directory} has no {POLICY_FILE}")
    return files


def install_policy(s: Session, created: list[str], recorded: Collection[str]) -> list[str]:
    """Make `<prefix>/policy/` hold exactly the policy and keys to install, then check it; returns the files
    written, relative to the prefix. `recorded`: prefix-relative files earlier installs wrote."""
    files = read_policy_dir(s.o.policy_dir) if s.o.policy_dir else {POLICY_FILE: ALLOW_ALL_POLICY}
    directory = s.p(POLICY_DIR)
    s.changes.mkdirs(directory, created)
    remove_stale_policy(s, recorded, keep=files)
    for name in sorted(files, key=lambda n: n == POLICY_FILE):  # the keys first, the policy that names them last
        # A docker config (the chart's registryAccess.dockerConfigSecret) holds credentials: root's only.
        secret = name == REGISTRY_CREDENTIALS
        if s.host.read(os.path.join(directory, name)) != files[name] or secret:
            s.changes.write(os.path.join(directory, name), files[name], mode=0o600 if secret else 0o644,
                            keep_mode=not secret)
    from wasm_shim.oci.policy import PolicyError, parse_policy

    def read(node_path: str) -> bytes:
        data = s.host.read(node_path)
        if data is None:
            raise FileNotFoundError(2, "No such file or directory")
        return data

    source = s.p(POLICY_DIR, POLICY_FILE)
    try:
        policy = parse_policy(files[POLICY_FILE].decode("utf-8", errors="replace"), source, read)
    except PolicyError as exc:
        raise InstallError(f"signature policy: {exc}") from None
    say(f"signature policy {source}: default {policy.default}, {len(policy.rules)} rule(s)")
    return [f"{POLICY_DIR}/{name}" for name in sorted(files)]


def remove_stale_policy(s: Session, recorded: Collection[str], keep: Collection[str] = ()) -> None:
    """Remove the policy files earlier installs wrote that are not in `keep` (names in the policy directory)."""
    for name in sorted(recorded):
        head, _, base = name.partition("/")
        if head == POLICY_DIR and base not in keep:
            s.changes.remove(s.p(name))
