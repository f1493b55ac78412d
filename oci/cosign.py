"""Signing images and verifying their signatures in a registry, in both cosign formats (key-based, offline).

Owns `sign_image` (attach a bundle referrer, or add a layer to the `sha256-<hex>.sig` manifest) and
`verify_image` (every signature cosign would consider, in cosign's order: bundles among the referrers, then the
`.sig` manifest). Documents and math are in oci/signature.py; transport in oci/registry.py.

Invariants:
- Verification is against the digest, never the tag: a tag is resolved once, and every signature found must name
  that digest. The result says which digest was verified, and callers run exactly that digest.
- Every document read (referrer manifests, bundles, payloads) is digest-checked and size-capped by the client;
  a referrer that is missing or junk is one failed candidate with its reason, not a crash, and other candidates
  are still tried. `VerificationFailed` lists why each candidate failed, or says that none was found.
- Signing never rewrites the signed image; for the fallback tag schema the index is read, extended and written.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from .digest import DigestMismatch, sha256_digest
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
    SIMPLE_SIGNING,
    SignatureError,
    Verified,
    build_bundle,
    bundle_referrer_manifest,
    legacy_signature_manifest,
    sign_bytes,
    simple_signing_payload,
    verify_bundle,
    verify_simple_signing,
)

MAX_CANDIDATES = 32  # signatures examined per image; a registry cannot make verification unbounded
FORMATS = ("bundle", "legacy")


class VerificationFailed(Exception):
    """No signature of the image verifies; `reasons` says why for each candidate (or that there was none)."""

    def __init__(self, ref: str, digest: str, reasons: Sequence[str], none_found: bool = False,
                 only_legacy: bool = False) -> None:
        self.ref, self.digest, self.reasons = ref, digest, list(reasons)
        self.none_found = none_found  # no signature at all (cosign's "no signatures found"), not a bad one
        self.only_legacy = only_legacy  # every candidate was a `.sig` layer (cosign's "no matching signatures")
        # A reference the caller already pinned ends in the digest: name the image once.
        image = ref if ref.endswith(f"@{digest}") else f"{ref}@{digest}"
        super().__init__(f"{image}: no valid signature: " + "; ".join(self.reasons))


@dataclass
class Verification:
    digest: str
    signatures: list[Verified] = field(default_factory=list)


def signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def created_now() -> str:
    """The `org.opencontainers.image.created` of a referrer made now (cosign writes the second, in UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_image(client: RegistryClient, ref: Reference, key: ec.EllipticCurvePrivateKey, *,
               format: str = "bundle") -> str:
    """Sign the manifest `ref` names (resolving a tag once); returns the signed digest."""
    if format not in FORMATS:
        raise ValueError(f"signature format must be one of {', '.join(FORMATS)}, got {format!r}")
    subject = client.resolve(ref)
    if format == "bundle":
        _attach_bundle(client, ref, subject, key)
    else:
        _attach_legacy(client, ref, subject.digest, key)
    return subject.digest


def _attach_bundle(client: RegistryClient, ref: Reference, subject: Descriptor,
                   key: ec.EllipticCurvePrivateKey) -> None:
    bundle = build_bundle(key, subject.digest)
    bundle_desc = Descriptor(BUNDLE_MEDIA_TYPE, sha256_digest(bundle), len(bundle))
    empty = Descriptor(MEDIA_TYPE_EMPTY, sha256_digest(EMPTY_JSON), len(EMPTY_JSON))
    client.push_blob(ref, empty, lambda: EMPTY_JSON)
    client.push_blob(ref, bundle_desc, lambda: bundle)
    manifest = bundle_referrer_manifest(bundle_desc, subject, created_now())
    digest, has_subject_api = client.put_manifest(ref, sha256_digest(manifest), manifest, MEDIA_TYPE_MANIFEST)
    if not has_subject_api:
        # No OCI-Subject header: the registry keeps no referrers index, so maintain the fallback tag.
        client.add_fallback_referrer(ref, subject.digest, Descriptor(MEDIA_TYPE_MANIFEST, digest, len(manifest),
                                                                     artifact_type=BUNDLE_MEDIA_TYPE))


def _attach_legacy(client: RegistryClient, ref: Reference, digest: str, key: ec.EllipticCurvePrivateKey) -> None:
    payload = simple_signing_payload(ref.name, digest)
    signature = sign_bytes(key, payload)
    layer = Descriptor(SIMPLE_SIGNING, sha256_digest(payload), len(payload),
                       annotations={SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()})
    tag_ref = ref.with_tag(signature_tag(digest))
    layers: list[Descriptor] = []
    try:
        existing = client.get_manifest(tag_ref)
        layers = descriptors_of(existing.json(str(tag_ref)), "layers", str(tag_ref))
    except NotFoundError:
        pass
    layers.append(layer)
    config, manifest = legacy_signature_manifest(layers)
    client.push_blob(ref, layer, lambda: payload)
    client.push_blob(ref, Descriptor(MEDIA_TYPE_IMAGE_CONFIG, sha256_digest(config), len(config)), lambda: config)
    client.put_manifest(ref, tag_ref.tag, manifest, MEDIA_TYPE_MANIFEST)




def verify_image(client: RegistryClient, ref: Reference, keys: Sequence[ec.EllipticCurvePublicKey]) -> Verification:
    """Every signature of the manifest `ref` names that verifies with one of `keys`; VerificationFailed if none.

    RegistryError when the registry cannot be asked at all (unreachable, refused credentials): the caller decides
    what an unverifiable image means (the policy refuses it under enforce)."""
    digest = ref.digest or client.resolve(ref).digest
    pinned = ref.with_digest(digest)
    verification = Verification(digest)
    reasons: list[str] = []
    candidates = legacy_candidates = 0
    for descriptor in client.referrers(pinned, digest):
        # Registries that predate OCI 1.1's final text report the config's media type as artifactType (the
        # go-containerregistry registry does): for cosign's bundle referrer that is the empty descriptor's type.
        if descriptor.artifact_type not in ("", MEDIA_TYPE_EMPTY) and \
                not descriptor.artifact_type.startswith(BUNDLE_PREFIX):
            continue
        candidates += 1
        if candidates > MAX_CANDIDATES:
            break
        where = f"referrer {descriptor.digest}"
        try:
            verification.signatures.append(_verify_referrer(client, pinned, descriptor, keys, digest))
        except _NotASignature:
            candidates -= 1
        except (SignatureError, ManifestError, DigestMismatch, NotFoundError) as exc:
            reasons.append(f"{where}: {exc}")
    try:
        sig_manifest = client.get_manifest(pinned.with_tag(signature_tag(digest)))
    except NotFoundError:
        sig_manifest = None
    if sig_manifest is not None:
        where = f"{signature_tag(digest)}"
        try:
            layers = descriptors_of(sig_manifest.json(where), "layers", where)
        except ManifestError as exc:
            reasons.append(str(exc))
            layers = []
        for layer in layers[:MAX_CANDIDATES]:
            if layer.media_type != SIMPLE_SIGNING:
                continue
            candidates += 1
            legacy_candidates += 1
            try:
                payload = client.fetch_blob_bytes(pinned, layer, MAX_SIGNATURE_BLOB)
                verification.signatures.append(verify_simple_signing(
                    payload, layer.annotations.get(SIGNATURE_ANNOTATION), keys, digest))
            except (SignatureError, DigestMismatch, NotFoundError, RegistryError) as exc:
                reasons.append(f"{where} layer {layer.digest[:19]}: {exc}")
    if not verification.signatures:
        if not candidates:
            reasons.append(f"no signature found (no sigstore bundle among the referrers of {digest} and no "
                           f"{signature_tag(digest)} tag)")
        raise VerificationFailed(str(ref), digest, reasons, none_found=not candidates,
                                 only_legacy=bool(candidates) and candidates == legacy_candidates)
    return verification


class _NotASignature(Exception):
    pass


def _verify_referrer(client: RegistryClient, ref: Reference, descriptor: Descriptor,
                     keys: Sequence[ec.EllipticCurvePublicKey], digest: str) -> Verified:
    manifest = client.get_manifest(ref.with_digest(descriptor.digest))
    doc = manifest.json(f"referrer {descriptor.digest}")
    layers = descriptors_of(doc, "layers", f"referrer {descriptor.digest}")
    artifact_type = doc.get("artifactType") or descriptor.artifact_type
    annotations = doc.get("annotations")
    if isinstance(annotations, dict) and annotations.get(BUNDLE_PREDICATE_ANNOTATION, PREDICATE_TYPE) != PREDICATE_TYPE:
        raise _NotASignature  # an attestation (cosign attest): a bundle of another predicate type
    bundle_layers = [layer for layer in layers if layer.media_type.startswith(BUNDLE_PREFIX)]
    if not str(artifact_type).startswith(BUNDLE_PREFIX) and not bundle_layers:
        raise _NotASignature  # another kind of referrer (an SBOM, an attestation of another tool)
    if len(layers) != 1 or len(bundle_layers) != 1:
        raise SignatureError(f"a bundle referrer must have exactly one sigstore bundle layer, it has {len(layers)} "
                             "layer(s)")
    subject = doc.get("subject") or {}
    if isinstance(subject, dict) and subject.get("digest") not in (None, digest):
        raise SignatureError(f"the referrer's subject is {subject.get('digest')}, not {digest}")
    data = client.fetch_blob_bytes(ref, bundle_layers[0], MAX_SIGNATURE_BLOB)
    return verify_bundle(data, keys, digest)

