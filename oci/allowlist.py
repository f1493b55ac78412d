"""The registries a pod may name: the node's list for references the shim fetches because a pod asked it to.

Owns `RegistryAllowList` (pure: parsing the operator's entries and checking a reference against them, no I/O) and
`source_refusal`, the check the shim makes before it contacts anything a pod's `wasm.shim.io/artifact` names.

Entries (the shim option `artifact_registries`):
- `HOST[:PORT]`: every repository of that registry (`ghcr.io`, `registry.internal:5000`, `127.0.0.1:5000`).
- `HOST[:PORT]/PATH`: the repository PATH and every repository below it (`ghcr.io/team` allows `ghcr.io/team` and
  `ghcr.io/team/app`, not `ghcr.io/teamster/app`). On docker.io a one-component PATH is completed as references
  are (`docker.io/nginx` is `docker.io/library/nginx`); a trailing slash keeps it a namespace
  (`docker.io/bitnami/` allows `docker.io/bitnami/redis`).
- No scheme, tag, digest, wildcard or whitespace: an entry names a place, and a mistake is an error naming it.

Rules:
- Hosts and references are compared in canonical form (oci/reference.py `canonical_registry`): letter case, an
  explicit `:443` and docker.io's aliases (`index.docker.io`, `registry-1.docker.io`) make no difference. Any other
  port is another registry: `127.0.0.1:5000` does not allow `127.0.0.1:5001`.
- An empty list allows nothing: the annotation is refused on a node whose operator named no registry.
Invariant: `refusal` is pure and total: a reference is allowed (None) or refused with a reason naming the
reference and the allowed list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .reference import (
    Reference,
    ReferenceError,
    canonical_registry,
    is_registry_component,
    parse_reference,
)

OPTION = "artifact_registries"


class AllowListError(ValueError):
    """An entry of the list is not HOST[:PORT] or HOST[:PORT]/PATH; the message names it."""


@dataclass(frozen=True)
class AllowedSource:
    entry: str  # as the operator wrote it
    registry: str  # canonical
    path: str = ""  # repository prefix ("" = the whole registry)

    def allows(self, ref: Reference) -> bool:
        if canonical_registry(ref.registry) != self.registry:
            return False
        return not self.path or ref.repository == self.path or ref.repository.startswith(self.path + "/")


def parse_source(entry: str) -> AllowedSource:
    """One entry, checked and in canonical form; AllowListError naming it when it is not HOST[:PORT][/PATH]."""
    text = entry.strip()
    if not text or any(c.isspace() for c in text):
        raise AllowListError(f"{OPTION} entry {entry!r} is empty or contains whitespace")
    if "://" in text:
        raise AllowListError(f"{OPTION} entry {entry!r}: give HOST[:PORT] or HOST[:PORT]/PATH, without a scheme")
    host, _, path = text.partition("/")
    if "@" in text or any(c in host for c in "*?") or any(c in path for c in "*?[]"):
        raise AllowListError(f"{OPTION} entry {entry!r}: no wildcards, tags or digests; HOST[:PORT] allows every "
                             "repository of that registry, HOST[:PORT]/PATH every repository below PATH")
    if not is_registry_component(host):
        raise AllowListError(f"{OPTION} entry {entry!r}: {host!r} is not a registry host (a registry is a DNS name "
                             "with a dot, `localhost`, or has a port: docker.io, ghcr.io, 127.0.0.1:5000)")
    namespace = path.endswith("/")
    path = path.rstrip("/")
    # Parsed as a reference, so the entry's host and path follow the reference grammar exactly; a namespace gets a
    # placeholder component so that docker.io's `library/` completion does not apply to it.
    probe = f"{host}/x" if not path else f"{host}/{path}/x" if namespace else f"{host}/{path}"
    try:
        ref = parse_reference(probe, default_tag=False)
    except ReferenceError as exc:
        raise AllowListError(f"{OPTION} entry {entry!r}: {exc}") from None
    if ref.tag:
        raise AllowListError(f"{OPTION} entry {entry!r}: no tags; name a registry or a repository path")
    if not path:
        repository = ""
    else:
        repository = ref.repository.removesuffix("/x") if namespace else ref.repository
    return AllowedSource(entry, canonical_registry(ref.registry), repository)


@dataclass(frozen=True)
class RegistryAllowList:
    sources: tuple[AllowedSource, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> RegistryAllowList:
        return cls(tuple(parse_source(entry) for entry in entries))

    def describe(self) -> str:
        return ", ".join(s.entry for s in self.sources) if self.sources else "none"

    def refusal(self, ref: Reference) -> str | None:
        """None when `ref` may be fetched; otherwise why not, naming the reference and the list."""
        if any(source.allows(ref) for source in self.sources):
            return None
        if not self.sources:
            return (f"{ref} is not fetched: this node allows pods to name no registry (the shim option {OPTION} "
                    "is empty)")
        return (f"{ref} is not fetched: its registry and repository ({ref.canonical_name}) are not in the node's "
                f"allowed artifact registries ({OPTION}: {self.describe()})")


def source_refusal(ref: Reference, entries: Iterable[str]) -> str | None:
    """The check the shim makes before fetching what a pod named: None (allowed) or the refusal reason. An entry
    that does not parse refuses too, with its error: a broken list never allows more than a correct one."""
    try:
        allowed = RegistryAllowList.parse(entries)
    except AllowListError as exc:
        return f"{ref} is not fetched: {exc}"
    return allowed.refusal(ref)
