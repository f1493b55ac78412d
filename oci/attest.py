"""Attestations in a registry, in both cosign storage formats (key-based, offline): attach and verify.

Owns `attest_image` (a sigstore bundle referrer whose DSSE envelope carries the in-toto statement, cosign 3's
default; or a layer of the `sha256-<hex>.att` manifest, cosign's `--new-bundle-format=false`) and
`verify_attestations` (every attestation of one predicate type cosign's `verify-attestation` would consider: bundle
referrers, then the `.att` layers). Documents and math are in oci/intoto.py; transport in oci/registry.py.

Invariants (as oci/cosign.py's for signatures):
- Verification is against the digest: a tag is resolved once and every attestation must name that digest.
- Every document read is digest-checked and size-capped by the client; a candidate that is missing or junk is one
  failed candidate with its reason, and the others are still tried. `AttestationFailed` lists why each candidate
  failed, or says that none of the predicate type was found (and which types were).
- Conditions on the predicate are checked only on attestations whose signature and subject verified.
- Attaching never rewrites the attested image; the `.att` manifest and the fallback index are read and extended.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .cosign import FORMATS, MAX_CANDIDATES, created_now
from .digest import DigestMismatch, sha256_digest
from .intoto import (
    DSSE_MEDIA_TYPE,
    PREDICATE_ANNOTATION,
    Attested,
    Condition,
    bundle,
    condition_failures,
    envelope,
    envelope_of_bundle,
    make_statement,
    parse_envelope,
    verify_envelope,
)
from .manifest import (
    EMPTY_JSON,
    MEDIA_TYPE_EMPTY,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ManifestError,
    descriptors_of,
)
from .reference import Reference
from .registry import NotFoundError, RegistryClient, RegistryError
from .signature import (
    BUNDLE_MEDIA_TYPE,
    BUNDLE_PREDICATE_ANNOTATION,
    BUNDLE_PREFIX,
    MAX_SIGNATURE_BLOB,
    PREDICATE_TYPE,
    SIGNATURE_ANNOTATION,
    SignatureError,
    bundle_referrer_manifest,
    legacy_signature_manifest,
)


class AttestationFailed(Exception):
    """No attestation of the predicate type verifies (and meets the conditions); `reasons` says why per candidate."""

    def __init__(self, ref: str, digest: str, predicate_type: str, reasons: Sequence[str]) -> None:
        self.ref, self.digest, self.predicate_type, self.reasons = ref, digest, predicate_type, list(reasons)
        image = ref if ref.endswith(f"@{digest}") else f"{ref}@{digest}"
        super().__init__(f"{image}: no valid attestation of predicate type {predicate_type}: "
                         + "; ".join(self.reasons))


@dataclass
class AttestationVerification:
    digest: str
    predicate_type: str
    attestations: list[Attested] = field(default_factory=list)


def attestation_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".att"


def attest_image(client: RegistryClient, ref: Reference, key: ec.EllipticCurvePrivateKey, predicate_type: str,
                 predicate: Any, *, format: str = "bundle") -> str:
    """Attest the manifest `ref` names (a tag resolved once) with `predicate`; returns the attested digest."""
    if format not in FORMATS:
        raise ValueError(f"attestation format must be one of {', '.join(FORMATS)}, got {format!r}")
    subject = client.resolve(ref)
    payload = make_statement(ref.name, subject.digest, predicate_type, predicate)
    if format == "bundle":
        data = bundle(key, payload)
        bundle_desc = Descriptor(BUNDLE_MEDIA_TYPE, sha256_digest(data), len(data))
        empty = Descriptor(MEDIA_TYPE_EMPTY, sha256_digest(EMPTY_JSON), len(EMPTY_JSON))
        client.push_blob(ref, empty, lambda: EMPTY_JSON)
        client.push_blob(ref, bundle_desc, lambda: data)
        manifest = bundle_referrer_manifest(bundle_desc, subject, created_now(), predicate_type)
        digest, has_subject_api = client.put_manifest(ref, sha256_digest(manifest), manifest, MEDIA_TYPE_MANIFEST)
        if not has_subject_api:
            client.add_fallback_referrer(ref, subject.digest, Descriptor(
                MEDIA_TYPE_MANIFEST, digest, len(manifest), artifact_type=BUNDLE_MEDIA_TYPE,
                annotations={BUNDLE_PREDICATE_ANNOTATION: predicate_type}))
        return subject.digest
    data = json.dumps(envelope(key, payload), separators=(",", ":")).encode()
    layer = Descriptor(DSSE_MEDIA_TYPE, sha256_digest(data), len(data),
                       annotations={SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION: predicate_type})
    tag_ref = ref.with_tag(attestation_tag(subject.digest))
    layers: list[Descriptor] = []
    try:
        layers = descriptors_of(client.get_manifest(tag_ref).json(str(tag_ref)), "layers", str(tag_ref))
    except NotFoundError:
        pass
    layers.append(layer)
    config, manifest = legacy_signature_manifest(layers)
    client.push_blob(ref, layer, lambda: data)
    client.push_blob(ref, Descriptor(MEDIA_TYPE_IMAGE_CONFIG, sha256_digest(config), len(config)), lambda: config)
    client.put_manifest(ref, tag_ref.tag, manifest, MEDIA_TYPE_MANIFEST)
    return subject.digest


def verify_attestations(client: RegistryClient, ref: Reference, keys: Sequence[ec.EllipticCurvePublicKey],
                        predicate_type: str, conditions: Sequence[Condition] = ()) -> AttestationVerification:
    """Every attestation of `predicate_type` on the manifest `ref` names that verifies with one of `keys` and meets
    `conditions`; AttestationFailed if none does. RegistryError when the registry cannot be asked at all."""
    digest = ref.digest or client.resolve(ref).digest
    pinned = ref.with_digest(digest)
    result = AttestationVerification(digest, predicate_type)
    reasons: list[str] = []
    other_types: set[str] = set()
    candidates = 0

    def consider(where: str, fmt: str, read_envelope: Any) -> None:
        try:
            attested = verify_envelope(read_envelope(), keys, digest, predicate_type, fmt)
        except (SignatureError, ManifestError, DigestMismatch, NotFoundError, RegistryError) as exc:
            reasons.append(f"{where}: {exc}")
            return
        failures = condition_failures(attested.predicate, conditions)
        if failures:
            reasons.append(f"{where} (signed by key {attested.key_hint}): " + "; ".join(failures))
        else:
            result.attestations.append(attested)

    for descriptor in client.referrers(pinned, digest):
        if descriptor.artifact_type not in ("", MEDIA_TYPE_EMPTY) and \
                not descriptor.artifact_type.startswith(BUNDLE_PREFIX):
            continue
        if candidates >= MAX_CANDIDATES:
            break
        listed = descriptor.annotations.get(BUNDLE_PREDICATE_ANNOTATION, "")
        if listed == PREDICATE_TYPE or (listed and listed != predicate_type):
            if listed != PREDICATE_TYPE:
                other_types.add(listed)
            continue  # a signature (cosign sign), or an attestation of another type: not fetched
        where = f"referrer {descriptor.digest}"
        try:
            doc = client.get_manifest(pinned.with_digest(descriptor.digest)).json(where)
            annotations = doc.get("annotations")
            found_type = annotations.get(BUNDLE_PREDICATE_ANNOTATION, "") if isinstance(annotations, dict) else ""
            if found_type == PREDICATE_TYPE:
                continue  # a signature (cosign sign), not an attestation
            if found_type and found_type != predicate_type:
                other_types.add(str(found_type))
                continue
            layers = [d for d in descriptors_of(doc, "layers", where) if d.media_type.startswith(BUNDLE_PREFIX)]
        except (ManifestError, DigestMismatch, NotFoundError, RegistryError) as exc:
            candidates += 1
            reasons.append(f"{where}: {exc}")
            continue
        if len(layers) != 1:
            continue  # not a sigstore bundle referrer
        candidates += 1
        consider(where, "bundle", lambda layer=layers[0]: envelope_of_bundle(
            client.fetch_blob_bytes(pinned, layer, MAX_SIGNATURE_BLOB)))
    tag = attestation_tag(digest)
    try:
        att = client.get_manifest(pinned.with_tag(tag))
        layers = descriptors_of(att.json(tag), "layers", tag)
    except NotFoundError:
        layers = []
    except ManifestError as exc:
        reasons.append(str(exc))
        layers = []
    for layer in layers[:MAX_CANDIDATES]:
        if layer.media_type != DSSE_MEDIA_TYPE:
            continue
        found_type = layer.annotations.get(PREDICATE_ANNOTATION, "")
        if found_type and found_type != predicate_type:
            other_types.add(found_type)
            continue
        candidates += 1
        consider(f"{tag} layer {layer.digest[:19]}", "legacy", lambda layer=layer: parse_envelope(
            client.fetch_blob_bytes(pinned, layer, MAX_SIGNATURE_BLOB)))
    if not result.attestations:
        if not candidates:
            found = f"; found attestations of predicate type {', '.join(sorted(other_types))}" if other_types else ""
            reasons.append(f"no attestation found (no sigstore bundle referrer of {digest} and no {tag} layer with "
                           f"that predicate type{found})")
        raise AttestationFailed(str(ref), digest, predicate_type, reasons)
    return result


def envelope_json(attested: Attested) -> str:
    """The statement of a verified attestation as compact JSON (what `verify-attestation --format json` prints)."""
    return json.dumps(attested.statement, separators=(",", ":"))
