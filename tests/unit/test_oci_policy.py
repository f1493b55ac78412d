"""The signature policy: parsing, rule matching, the decision and the verification cache (oci/policy.py)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wasm_shim.oci.policy import (
    Policy,
    PolicyError,
    Rule,
    VerificationCache,
    canonical_pattern,
    decide,
    load_policy,
    parse_policy,
)

DIGEST = "sha256:" + "aa" * 32


def _pub(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    _pub(tmp_path / "team.pub")
    _pub(tmp_path / "other.pub")
    path = tmp_path / "policy.toml"
    path.write_text('default = "deny"\ncache_ttl = 60\n'
                    '[[rule]]\nimages = ["127.0.0.1:5000/team/*"]\nkeys = ["team.pub"]\nmode = "enforce"\n'
                    '[[rule]]\nimages = ["127.0.0.1:5000/*"]\nkeys = ["other.pub", "team.pub"]\nmode = "warn"\n'
                    '[registry]\ninsecure = ["reg.internal:5000"]\ntimeout = 5\n')
    return path


def test_rules_match_first_glob_on_registry_and_repository(policy_file: Path) -> None:
    policy = load_policy(str(policy_file))
    assert policy.default == "deny" and policy.cache_ttl == 60
    team = policy.rule_for("127.0.0.1:5000/team/app")
    assert team is not None and team.number == 1 and team.mode == "enforce" and len(team.keys) == 1
    rest = policy.rule_for("127.0.0.1:5000/tools/x")
    assert rest is not None and rest.number == 2 and rest.mode == "warn" and len(rest.keys) == 2
    assert policy.rule_for("127.0.0.1:5001/team/app") is None
    assert policy.registry.insecure == ("reg.internal:5000",) and policy.registry.timeout == 5


@pytest.mark.parametrize("text, message", [
    ("default = ", "not valid TOML"),
    ('default = "maybe"', 'default must be "allow" or "deny"'),
    ('defualt = "allow"', "unknown key.*defualt"),
    ('[[rule]]\nimages = ["x/*"]\nkeys = ["team.pub"]\nmode = "audit"', 'rule 1: mode must be "enforce" or "warn"'),
    ('[[rule]]\nimages = []\nkeys = ["team.pub"]', "rule 1: images must be a non-empty list"),
    ('[[rule]]\nimages = ["x/*"]\nkeys = ["missing.pub"]', "rule 1: cannot read key .*missing.pub"),
    ('[[rule]]\nimages = ["x/*"]\nkeys = ["team.pub"]\nkey = "x"', "rule 1: unknown key.*key"),
    ('[[rule]]\nimages = ["x/*"]\nkeys = ["policy.toml"]', "rule 1: .*no PEM block"),
    ('cache_ttl = -1', "cache_ttl must be a non-negative"),
    ('[registry]\nca_bundle = "rel.pem"', "ca_bundle must be an absolute path"),
])
def test_invalid_policies_are_errors_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    _pub(tmp_path / "team.pub")
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        load_policy(str(path))


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file .*nope.toml"):
        load_policy(str(tmp_path / "nope.toml"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_decision_verifies_once_then_uses_the_cache(policy_file: Path, tmp_path: Path) -> None:
    policy = load_policy(str(policy_file))
    clock = Clock()
    cache = VerificationCache(str(tmp_path / "verified"), policy.cache_ttl, clock)
    calls: list[Rule] = []
    decision = decide(policy, "127.0.0.1:5000/team/app", DIGEST, calls.append, cache)
    assert decision.allowed and not decision.cached and len(calls) == 1
    assert decide(policy, "127.0.0.1:5000/team/app", DIGEST, calls.append, cache).cached
    # A new daemon (fresh memory) trusts the disk entry; after the TTL it verifies again.
    fresh = VerificationCache(str(tmp_path / "verified"), policy.cache_ttl, clock)
    assert decide(policy, "127.0.0.1:5000/team/app", DIGEST, calls.append, fresh).cached
    clock.now += 61
    assert not decide(policy, "127.0.0.1:5000/team/app", DIGEST, calls.append, fresh).cached
    assert len(calls) == 2


def test_corrupt_cache_entry_is_verified_again(policy_file: Path, tmp_path: Path) -> None:
    policy = load_policy(str(policy_file))
    directory = tmp_path / "verified"
    VerificationCache(str(directory), 60).store(DIGEST, "k")
    for entry in directory.iterdir():
        entry.write_text("{junk")
    assert not VerificationCache(str(directory), 60).lookup(DIGEST, "k")
    assert policy.rules


def test_refusals_and_warnings_name_image_rule_and_reason(policy_file: Path) -> None:
    policy = load_policy(str(policy_file))
    cache = VerificationCache(None, 60)

    def fail(rule: Rule) -> None:
        raise RuntimeError("no valid signature: made by another key")

    refused = decide(policy, "127.0.0.1:5000/team/app", DIGEST, fail, cache)
    assert not refused.allowed
    assert refused.message() == (f"image 127.0.0.1:5000/team/app@{DIGEST} refused by the signature policy: rule 1 "
                                 "(images 127.0.0.1:5000/team/*; mode enforce): no valid signature: made by another "
                                 "key")
    warned = decide(policy, "127.0.0.1:5000/tools/x", DIGEST, fail, cache)
    assert warned.allowed and warned.warning and "would be refused (warn mode" in warned.message()
    denied = decide(policy, "ghcr.io/x/y", DIGEST, fail, cache)
    assert not denied.allowed and "no rule matches ghcr.io/x/y and the default is deny" in denied.message()
    # A failed verification is never cached.
    assert not cache.lookup(DIGEST, policy.rules[0].fingerprint)


def test_default_allow(tmp_path: Path) -> None:
    policy = parse_policy("", str(tmp_path / "p.toml"))
    decision = decide(policy, "any/thing", DIGEST, lambda rule: None, VerificationCache(None, 1))
    assert decision.allowed and decision.rule is None


def test_a_policy_file_is_re_read_when_it_or_a_key_it_names_changes(policy_file: Path) -> None:
    from wasm_shim.oci.policy import PolicyFile

    held = PolicyFile(str(policy_file))
    first = held.current()
    assert first.default == "deny" and held.current() is first  # unchanged: not parsed again
    _pub(policy_file.parent / "team.next.pub").replace(policy_file.parent / "team.pub")  # a key rotated
    rotated = held.current()
    assert rotated is not first and rotated.rules[0].fingerprint != first.rules[0].fingerprint
    policy_file.with_suffix(".new").write_text('default = "allow"\n')
    policy_file.with_suffix(".new").replace(policy_file)  # how the installer writes it: a new inode
    assert held.current().default == "allow" and held.current().checks_nothing


def test_a_policy_file_that_stops_parsing_refuses_until_it_parses_again(policy_file: Path) -> None:
    from wasm_shim.oci.policy import PolicyFile

    held = PolicyFile(str(policy_file))
    held.current()
    good = policy_file.read_text()
    policy_file.write_text('default = "maybe"\n')
    for _ in range(2):  # never the old policy, never "allow everything"
        with pytest.raises(PolicyError, match='default must be "allow" or "deny"'):
            held.current()
    policy_file.unlink()
    with pytest.raises(PolicyError, match="cannot read policy file"):
        held.current()
    policy_file.write_text(good)
    assert held.current().default == "deny"


@pytest.fixture(scope="module")
def team_pub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pub(tmp_path_factory.mktemp("keys") / "team.pub")


def _one_rule(key: Path, pattern: str) -> Policy:
    return parse_policy(f'[[rule]]\nimages = ["{pattern}"]\nkeys = ["{key}"]\n', str(key.parent / "p.toml"))


RULE_SPELLINGS = ["nginx", "library/nginx", "docker.io/nginx", "docker.io/library/nginx", "index.docker.io/nginx",
                  "INDEX.DOCKER.IO/library/nginx", "registry-1.docker.io/library/nginx", "docker.io:443/library/nginx",
                  "docker.io/library/ngin?", "docker.io/library/*"]
NAME_SPELLINGS = ["nginx", "library/nginx", "docker.io/nginx", "docker.io/library/nginx",
                  "index.docker.io/library/nginx", "registry-1.docker.io/library/nginx", "Docker.IO/nginx",
                  "docker.io:443/nginx", "nginx:1.27"]


@pytest.mark.parametrize("pattern, name", [  # pairs that match as written are left out: they always did
    (pattern, name) for pattern in RULE_SPELLINGS for name in NAME_SPELLINGS
    if not fnmatch.fnmatchcase(name, pattern)])
def test_every_spelling_of_a_protected_repository_meets_its_rule(team_pub: Path, pattern: str, name: str) -> None:
    policy = _one_rule(team_pub, pattern)
    rule = policy.rule_for(name)
    assert rule is not None and rule.number == 1
    # And so the decision is the rule's, not the default's: an unsigned image is refused.
    decision = decide(policy, name, DIGEST, _unsigned, VerificationCache(None, 60))
    assert not decision.allowed and decision.rule is rule


def _unsigned(rule: Rule) -> None:
    raise RuntimeError("no signature found")


@pytest.mark.parametrize("pattern, name", [
    ("GHCR.IO/team/*", "ghcr.io/team/app"),
    ("ghcr.io/team/*", "GHCR.io/team/app"),
    ("ghcr.io:443/team/*", "ghcr.io/team/app"),
    ("ghcr.io/team/*", "ghcr.io:443/team/app"),
    ("LocalHost:5000/team/*", "localhost:5000/team/app"),
    ("*.example/team/*", "REG.EXAMPLE:443/team/app"),  # a glob registry part: lower-cased, no :443, both sides
    ("*.EXAMPLE:443/team/*", "reg.example/team/app"),
])
def test_host_case_and_default_port_spellings_match(team_pub: Path, pattern: str, name: str) -> None:
    policy = _one_rule(team_pub, pattern)
    assert policy.rule_for(name) is not None


@pytest.mark.parametrize("pattern, same, other", [
    ("ghcr.io/team/*", "GHCR.IO:443/team/app", "ghcr.io:5000/team/app"),  # another port is another registry
    ("localhost:5000/team/*", "LOCALHOST:5000/team/app", "127.0.0.1:5000/team/app"),  # another host
    ("nginx", "docker.io/nginx", "docker.io/nginx/nginx"),
    ("team/*", "docker.io/team/app", "ghcr.io/team/app"),  # a pattern without a registry names docker.io
    ("docker.io/library/nginx", "nginx", "docker.io/library/nginx-evil"),
])
def test_a_spelling_matches_and_another_registry_or_repository_does_not(team_pub: Path, pattern: str, same: str,
                                                                        other: str) -> None:
    policy = _one_rule(team_pub, pattern)
    assert policy.rule_for(same) is not None
    assert policy.rule_for(other) is None


def test_canonical_patterns() -> None:
    assert canonical_pattern("nginx") == "docker.io/library/nginx"
    assert canonical_pattern("team/*") == "docker.io/team/*"
    assert canonical_pattern("docker.io/*") == "docker.io/*"  # every docker.io repository, as written
    assert canonical_pattern("GHCR.io:443/team/*") == "ghcr.io/team/*"
    assert canonical_pattern("*") == "*"


# -- attestations a rule requires ---------------------------------------------------------------------------------
ATTESTED = ('[[rule]]\nimages = ["127.0.0.1:5000/team/*"]\n'
            '[[rule.attestations]]\ntype = "slsaprovenance1"\nkeys = ["builder.pub"]\n'
            '[rule.attestations.conditions]\n"runDetails.builder.id" = "https://ci.example/builder"\n'
            '"buildDefinition.buildType" = ["https://a/v1", "https://b/v1"]\n')


def test_a_rule_may_require_attestations_with_conditions(tmp_path: Path) -> None:
    _pub(tmp_path / "builder.pub")
    path = tmp_path / "policy.toml"
    path.write_text(ATTESTED)
    rule = load_policy(str(path)).rules[0]
    assert rule.keys == () and len(rule.attestations) == 1
    required = rule.attestations[0]
    assert required.predicate_type == "https://slsa.dev/provenance/v1" and len(required.keys) == 1
    assert required.conditions == (("runDetails.builder.id", ("https://ci.example/builder",)),
                                   ("buildDefinition.buildType", ("https://a/v1", "https://b/v1")))
    assert rule.watched_files == (str(tmp_path / "builder.pub"),)
    assert rule.satisfied() == "attestation https://slsa.dev/provenance/v1 verified with builder.pub"
    # Another condition is another requirement: a verification cached under the old one does not count.
    path.write_text(ATTESTED.replace("ci.example/builder", "ci.example/other"))
    assert load_policy(str(path)).rules[0].fingerprint != rule.fingerprint


def test_a_cached_attestation_verification_is_named_as_such(tmp_path: Path) -> None:
    _pub(tmp_path / "builder.pub")
    path = tmp_path / "policy.toml"
    path.write_text(ATTESTED)
    policy = load_policy(str(path))
    cache = VerificationCache(None, 60)
    first = decide(policy, "127.0.0.1:5000/team/app", DIGEST, lambda rule: None, cache)
    assert first.reason == "attestation https://slsa.dev/provenance/v1 verified with builder.pub"
    assert decide(policy, "127.0.0.1:5000/team/app", DIGEST, lambda rule: None, cache).reason == \
        "attestations verified (cached)"


@pytest.mark.parametrize("text, message", [
    ('[[rule]]\nimages = ["x/*"]\nmode = "enforce"', "rule 1: needs keys .*, attestations, or both"),
    ('[[rule]]\nimages = ["x/*"]\nattestations = "slsa"', "rule 1: attestations must be an array of tables"),
    ('[[rule]]\nimages = ["x/*"]\n[[rule.attestations]]\nkeys = ["builder.pub"]', "rule 1: attestation 1: type "
     "must be a predicate type"),
    ('[[rule]]\nimages = ["x/*"]\n[[rule.attestations]]\ntype = "slsa"\nkeys = ["builder.pub"]',
     "rule 1: attestation 1: unknown predicate type 'slsa'"),
    ('[[rule]]\nimages = ["x/*"]\n[[rule.attestations]]\ntype = "slsaprovenance1"', "rule 1: attestation 1: keys "
     "must be a non-empty list"),
    ('[[rule]]\nimages = ["x/*"]\n[[rule.attestations]]\ntype = "slsaprovenance1"\nkeys = ["missing.pub"]',
     "rule 1: attestation 1: cannot read key .*missing.pub"),
    ('[[rule]]\nimages = ["x/*"]\n[[rule.attestations]]\ntype = "slsaprovenance1"\nkeys = ["builder.pub"]\n'
     'predicate = {}', "rule 1: attestation 1: unknown key.*predicate"),
    ('[[rule]]\nimages = ["x/*"]\n[[rule.attestations]]\ntype = "slsaprovenance1"\nkeys = ["builder.pub"]\n'
     'conditions = { "a.b" = {c = 1} }', "rule 1: attestation 1: condition a.b: the value must be"),
])
def test_invalid_attestation_requirements_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    _pub(tmp_path / "builder.pub")
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message):
        load_policy(str(path))


def test_a_policy_file_is_re_read_when_an_attestation_key_changes(tmp_path: Path) -> None:
    from wasm_shim.oci.policy import PolicyFile

    _pub(tmp_path / "builder.pub")
    path = tmp_path / "policy.toml"
    path.write_text(ATTESTED)
    held = PolicyFile(str(path))
    first = held.current()
    _pub(tmp_path / "builder.next.pub").replace(tmp_path / "builder.pub")
    assert held.current().rules[0].fingerprint != first.rules[0].fingerprint
