"""The node's signature policy: which images need signatures by which keys, and the decision for one image.

Owns `Policy` (parsed from the TOML file the shim's `policy` option names), `PolicyFile` (that file as a daemon
holds it: re-read when it or a key file it names changes) and `decide` (pure apart from the `verify` callable and
the cache it is given: rule matching, cache lookup, the verdict and its message). `VerificationCache` (verified
digests in memory and on disk, with a TTL) is oci/verification_cache.py's, re-exported here.

The file:
    default = "allow"                      # images no rule matches: "allow" or "deny"
    cache_ttl = 3600                       # seconds a verification is trusted without asking the registry again
    [[rule]]
    images = ["127.0.0.1:5000/team/*"]     # fnmatch globs on REGISTRY/REPOSITORY (docker.io/library/x for `x`)
    keys = ["/etc/wasm-shim/keys/team.pub"]
    mode = "enforce"                       # "enforce" refuses; "warn" runs and logs why it would refuse
    [[rule.attestations]]                  # optional, repeatable: a signed in-toto attestation the image must have
    type = "slsaprovenance1"               # cosign's short name or a predicate type URI
    keys = ["/etc/wasm-shim/keys/builder.pub"]
    conditions = { "runDetails.builder.id" = "https://ci.example/builder" }  # optional: predicate fields' values
    [registry]                             # optional: how the shim reaches registries to fetch signatures
    ca_bundle = "/etc/wasm-shim/ca.pem"
    insecure = ["registry.internal:5000"]  # plain HTTP allowed (loopback always is)
    docker_config = "/etc/wasm-shim/docker" # a directory holding config.json (credentials)
    timeout = 10

Rules:
- The first rule whose glob matches REGISTRY/REPOSITORY decides; then `default`. Both sides are compared in
  canonical form (oci/reference.py `canonical_name`): the registry in lower case, without `:443`, docker.io's
  aliases as `docker.io`, and docker.io's short names completed (`nginx`, `library/nginx`, `docker.io/nginx`,
  `index.docker.io/library/nginx` are all `docker.io/library/nginx`), so no spelling of a protected repository
  escapes its rule. A pattern without a registry part names docker.io, as `docker pull` reads it; a registry part
  holding glob characters (`*/team/*`) is only put in lower case without `:443`.
- A rule is satisfied when at least one signature of the image's manifest digest (either cosign format) verifies
  with one of its keys and names that digest (when it names `keys`), and, for each of its `attestations`, at least
  one attestation of that predicate type verifies with one of that entry's keys, names that digest and meets every
  condition (a field's value equals the one given, or one of a list given). A rule names keys, attestations or
  both. The digest is the one containerd resolved and will run.
- Anything wrong in the file (bad TOML, unknown keys, a missing or wrong-type key file, a bad mode) is a
  PolicyError naming the file and the field: a broken policy never means "allow everything".
- Cached verifications are keyed by (digest, the rule's requirements: its key fingerprints and a hash of each
  attestation's type, key fingerprints and conditions) and trusted for `cache_ttl`
  (oci/verification_cache.py: a record on disk is trusted only from a checked directory and with a valid HMAC).
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .reference import (
    DEFAULT_REGISTRY,
    HTTPS_DEFAULT_PORT,
    canonical_name,
    canonical_registry,
    is_registry_component,
)
from .verification_cache import VerificationCache

__all__ = ["AttestationRequirement", "Decision", "Policy", "PolicyError", "PolicyFile", "Rule", "VerificationCache",
           "decide", "load_policy",
           "parse_policy", "canonical_pattern"]

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# .keys (and so cryptography) is imported only where a rule's keys are read: a daemon whose policy has no rules
# (the installer's allow-all default) starts without loading it.

MODES = ("enforce", "warn")
DEFAULTS = ("allow", "deny")
DEFAULT_TTL = 3600.0
_TOP_KEYS = {"default", "cache_ttl", "rule", "registry"}
_RULE_KEYS = {"images", "keys", "mode", "attestations"}
_ATTESTATION_KEYS = {"type", "keys", "conditions"}
_REGISTRY_KEYS = {"ca_bundle", "insecure", "docker_config", "timeout"}


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, the field and what is wrong."""


def _key_fingerprint(keys: Sequence[ec.EllipticCurvePublicKey]) -> str:
    from .keys import key_hint

    return ",".join(sorted(key_hint(k) for k in keys))


@dataclass(frozen=True)
class AttestationRequirement:
    """One `[[rule.attestations]]` entry: an attestation of `predicate_type` signed by one of `keys`, whose
    predicate meets `conditions` ((dotted path, allowed values) pairs; oci/intoto.py `condition_failures`)."""

    predicate_type: str  # the URI
    key_paths: tuple[str, ...]
    keys: tuple[ec.EllipticCurvePublicKey, ...] = field(compare=False)
    key_files: tuple[str, ...] = ()
    conditions: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def fingerprint(self) -> str:
        import hashlib
        import json

        doc = [self.predicate_type, _key_fingerprint(self.keys), [[p, list(v)] for p, v in self.conditions]]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def describe(self) -> str:
        return f"attestation {self.predicate_type} verified with {', '.join(self.key_paths)}"


@dataclass(frozen=True)
class Rule:
    number: int  # 1-based, as an operator counts [[rule]] tables
    images: tuple[str, ...]
    key_paths: tuple[str, ...]
    keys: tuple[ec.EllipticCurvePublicKey, ...] = field(compare=False)
    mode: str
    key_files: tuple[str, ...] = ()  # key_paths as read: relative ones joined to the policy file's directory
    attestations: tuple[AttestationRequirement, ...] = ()

    @property
    def fingerprint(self) -> str:
        """What a cached verification was checked against: a change of keys or attestations misses the cache."""
        fingerprint = _key_fingerprint(self.keys)
        if self.attestations:
            fingerprint += ";attestations=" + ",".join(a.fingerprint for a in self.attestations)
        return fingerprint

    @property
    def watched_files(self) -> tuple[str, ...]:
        """Every key file the rule read (its own and its attestations')."""
        return self.key_files + tuple(path for a in self.attestations for path in a.key_files)

    def satisfied(self) -> str:
        """What a verification that passed checked, for the log."""
        parts = [f"signature verified with {', '.join(self.key_paths)}"] if self.keys else []
        parts += [a.describe() for a in self.attestations]
        return "; ".join(parts)

    def describe(self) -> str:
        return f"rule {self.number} (images {', '.join(self.images)}; mode {self.mode})"


@dataclass(frozen=True)
class RegistrySettings:
    ca_bundle: str | None = None
    insecure: tuple[str, ...] = ()
    docker_config: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class Policy:
    source: str
    default: str
    rules: tuple[Rule, ...]
    cache_ttl: float = DEFAULT_TTL
    registry: RegistrySettings = RegistrySettings()

    @property
    def checks_nothing(self) -> bool:
        """No rule and default allow: every image is allowed without asking containerd or a registry anything."""
        return not self.rules and self.default == "allow"

    def rule_for(self, name: str) -> Rule | None:
        canonical = canonical_name(name)
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(canonical, canonical_pattern(pattern)) for pattern in rule.images):
                return rule
        return None


_GLOB = frozenset("*?[")


def canonical_pattern(pattern: str) -> str:
    """A rule's image glob in the canonical form names are compared in (see the module rules)."""
    first, slash, rest = pattern.partition("/")
    if _GLOB & set(first):
        if not slash:
            return pattern  # "*": every name
        return f"{_canonical_host_glob(first)}/{rest}"
    if slash and is_registry_component(first):
        registry, repository = canonical_registry(first), rest
    else:
        registry, repository = DEFAULT_REGISTRY, pattern
    if registry == DEFAULT_REGISTRY and "/" not in repository and not _GLOB & set(repository):
        repository = f"library/{repository}"
    return f"{registry}/{repository}"


def _canonical_host_glob(host: str) -> str:
    host = host.lower()
    return host[: -len(HTTPS_DEFAULT_PORT)] if host.endswith(HTTPS_DEFAULT_PORT) else host


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where} must be a non-empty list of strings, got {value!r}")
    return tuple(value)


def parse_policy(text: str, source: str, read: Callable[[str], bytes] | None = None) -> Policy:
    """Parse and validate a policy; key files are read (relative paths from the policy's directory) and checked."""
    import tomllib

    def read_file(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    reader = read or read_file
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        known = ", ".join(sorted(_TOP_KEYS))
        raise PolicyError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (known: {known})")
    default = doc.get("default", "allow")
    if default not in DEFAULTS:
        raise PolicyError(f"{source}: default must be \"allow\" or \"deny\", got {default!r}")
    ttl = doc.get("cache_ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl < 0:
        raise PolicyError(f"{source}: cache_ttl must be a non-negative number of seconds, got {ttl!r}")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise PolicyError(f"{source}: `rule` must be an array of tables ([[rule]])")
    base = os.path.dirname(os.path.abspath(source))
    rules = []
    for number, raw in enumerate(raw_rules, start=1):
        where = f"{source}: rule {number}"
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: must be a table")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: "
                              f"{', '.join(sorted(_RULE_KEYS))})")
        images = _strings(raw.get("images"), f"{where}: images")
        attestations = _attestations(raw.get("attestations", []), where, base, reader)
        if "keys" not in raw and not attestations:
            raise PolicyError(f"{where}: needs keys (signatures to require), attestations, or both")
        paths = _strings(raw.get("keys"), f"{where}: keys") if "keys" in raw else ()
        mode = raw.get("mode", "enforce")
        if mode not in MODES:
            raise PolicyError(f"{where}: mode must be \"enforce\" or \"warn\", got {mode!r}")
        files, keys = _read_keys(paths, where, base, reader)
        rules.append(Rule(number, images, tuple(paths), keys, mode, files, attestations))
    registry = _registry_settings(doc.get("registry", {}), f"{source}: [registry]")
    return Policy(source, default, tuple(rules), float(ttl), registry)


def _read_keys(paths: Sequence[str], where: str, base: str,
               reader: Callable[[str], bytes]) -> tuple[tuple[str, ...], tuple[ec.EllipticCurvePublicKey, ...]]:
    """(the key files as read, the keys): relative paths are from the policy file's directory."""
    from .keys import KeyFileError, load_public_key

    keys = []
    files = tuple(path if os.path.isabs(path) else os.path.join(base, path) for path in paths)
    for full in files:
        try:
            keys.append(load_public_key(reader(full), full))
        except OSError as exc:
            raise PolicyError(f"{where}: cannot read key {full}: {exc.strerror}") from None
        except KeyFileError as exc:
            raise PolicyError(f"{where}: {exc}") from None
    return files, tuple(keys)


def _attestations(raw: object, where: str, base: str,
                  reader: Callable[[str], bytes]) -> tuple[AttestationRequirement, ...]:
    from .intoto import predicate_type

    if not isinstance(raw, list):
        raise PolicyError(f"{where}: attestations must be an array of tables ([[rule.attestations]])")
    found = []
    for index, entry in enumerate(raw, start=1):
        at = f"{where}: attestation {index}"
        if not isinstance(entry, dict):
            raise PolicyError(f"{at}: must be a table")
        unknown = set(entry) - _ATTESTATION_KEYS
        if unknown:
            raise PolicyError(f"{at}: unknown key(s) {', '.join(sorted(unknown))} (known: "
                              f"{', '.join(sorted(_ATTESTATION_KEYS))})")
        kind = entry.get("type")
        if not isinstance(kind, str) or not kind:
            raise PolicyError(f"{at}: type must be a predicate type (a URI or cosign's name, e.g. "
                              f"\"slsaprovenance1\"), got {kind!r}")
        try:
            uri = predicate_type(kind)
        except ValueError as exc:
            raise PolicyError(f"{at}: {exc}") from None
        paths = _strings(entry.get("keys"), f"{at}: keys")
        files, keys = _read_keys(paths, at, base, reader)
        raw_conditions = entry.get("conditions", {})
        if not isinstance(raw_conditions, dict):
            raise PolicyError(f"{at}: conditions must be a table of \"dotted.path\" = value")
        conditions = []
        for path, value in raw_conditions.items():
            allowed = tuple(value) if isinstance(value, list) else (value,)
            if not allowed or not all(isinstance(v, str | int | float | bool) for v in allowed):
                raise PolicyError(f"{at}: condition {path}: the value must be a string, number or boolean, or a "
                                  f"non-empty list of them, got {value!r}")
            conditions.append((path, allowed))
        found.append(AttestationRequirement(uri, paths, keys, files, tuple(conditions)))
    return tuple(found)


def _registry_settings(raw: object, where: str) -> RegistrySettings:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    unknown = set(raw) - _REGISTRY_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("ca_bundle", "docker_config"):
        if key in raw and not (isinstance(raw[key], str) and os.path.isabs(raw[key])):
            raise PolicyError(f"{where}: {key} must be an absolute path, got {raw[key]!r}")
    insecure = raw.get("insecure", [])
    if not isinstance(insecure, list) or not all(isinstance(h, str) for h in insecure):
        raise PolicyError(f"{where}: insecure must be a list of HOST[:PORT] strings")
    timeout = raw.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise PolicyError(f"{where}: timeout must be a positive number of seconds, got {timeout!r}")
    return RegistrySettings(raw.get("ca_bundle"), tuple(insecure), raw.get("docker_config"), float(timeout))


def load_policy(path: str) -> Policy:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not UTF-8 text") from None
    return parse_policy(text, path)


class PolicyFile:
    """The policy at `path` as a long-lived daemon holds it: `current()` re-reads the file when it, or a key file
    one of its rules names, has changed since the last read (inode, size or mtime), so a node's new policy (the
    chart's installer rewriting it) applies from the next Create without restarting the daemon.

    Invariant: `current()` never returns a policy older than the files it last saw; when the files changed and no
    longer parse, it raises PolicyError (every check refuses) until they do again. Thread-safe: Creates run on the
    daemon's worker threads.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._policy: Policy | None = None
        self._error: PolicyError | None = None

    def _files(self) -> list[str]:
        rules = self._policy.rules if self._policy else ()
        return [self.path] + [path for rule in rules for path in rule.watched_files]

    def _read_stamp(self) -> tuple[object, ...]:
        stamp: list[object] = []
        for path in self._files():
            try:
                st = os.stat(path)
                stamp.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError as exc:
                stamp.append((path, exc.errno))
        return tuple(stamp)

    def current(self) -> Policy:
        with self._lock:
            stamp = self._read_stamp()
            if stamp != self._stamp:
                try:
                    self._policy, self._error = load_policy(self.path), None
                except PolicyError as exc:
                    self._error = exc
                # The stamp of what was read: with the new policy's key files when it parsed.
                self._stamp = self._read_stamp() if self._error is None else stamp
            if self._error is not None:
                raise self._error
            assert self._policy is not None
            return self._policy


@dataclass(frozen=True)
class Decision:
    allowed: bool
    image: str
    digest: str
    rule: Rule | None
    reason: str
    warning: bool = False  # allowed only because the rule is in warn mode
    cached: bool = False

    def message(self) -> str:
        where = self.rule.describe() if self.rule else "the policy's default"
        if self.allowed and not self.warning:
            return f"image {self.image}@{self.digest} allowed by {where}: {self.reason}"
        verdict = "would be refused (warn mode, running it)" if self.warning else "refused by the signature policy"
        return f"image {self.image}@{self.digest} {verdict}: {where}: {self.reason}"


Verify = Callable[[Rule], Any]


def decide(policy: Policy, name: str, digest: str, verify: Verify, cache: VerificationCache,
           failures: Sequence[type[BaseException]] = (Exception,)) -> Decision:
    """The verdict for image `name` (REGISTRY/REPOSITORY) at manifest `digest`.

    `verify(rule)` checks the signatures (network) and raises one of `failures` with the reason when none verifies
    or the registry cannot be asked; it is called only on a cache miss."""
    rule = policy.rule_for(name)
    if rule is None:
        if policy.default == "allow":
            return Decision(True, name, digest, None, "no rule matches and the default is allow")
        return Decision(False, name, digest, None, f"no rule matches {name} and the default is deny")
    fingerprint = rule.fingerprint
    if cache.lookup(digest, fingerprint):
        what = "signature and attestations" if rule.keys and rule.attestations else \
            "attestations" if rule.attestations else "signature"
        return Decision(True, name, digest, rule, f"{what} verified (cached)", cached=True)
    try:
        verify(rule)
    except tuple(failures) as exc:
        reason = str(exc)
        return Decision(rule.mode == "warn", name, digest, rule, reason, warning=rule.mode == "warn")
    cache.store(digest, fingerprint)
    return Decision(True, name, digest, rule, rule.satisfied())

