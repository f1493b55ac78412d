"""Cosign-compatible signatures, key-based and offline: the math and the documents (pure: no I/O).

Owns the two formats cosign writes and reads (docs/protocol.md "Cosign signatures", checked byte by byte against
cosign 3.1.3):
- legacy: a simple-signing payload (`{"critical":{identity, image, type},"optional":...}`) signed as is, the
  signature (ASN.1 DER ECDSA P-256 over SHA-256 of the payload bytes) in the layer annotation
  `dev.cosignproject.cosign/signature` of the `sha256-<hex>.sig` manifest;
- bundle: a sigstore bundle v0.3 whose DSSE envelope carries an in-toto Statement v1 naming the digest, signed over
  the DSSE pre-authentication encoding, attached as an OCI 1.1 referrer.

Invariants: a signature "verifies" only if the ECDSA signature checks against one of the given keys AND the signed
document names exactly the digest being verified (a valid signature over another digest is a failure that says
so). No transparency log, certificate or timestamp authority is consulted: verification is by public key only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .keys import key_hint
from .manifest import (
    ANNOTATION_CREATED,
    EMPTY_JSON,
    MEDIA_TYPE_EMPTY,
    MEDIA_TYPE_IMAGE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
)
from .reference import check_digest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle"
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sigstore.dev/cosign/sign/v1"
BUNDLE_PREDICATE_ANNOTATION = "dev.sigstore.bundle.predicateType"  # on a bundle referrer: what its statement is
BUNDLE_ANNOTATIONS = {"dev.sigstore.bundle.content": "dsse-envelope", BUNDLE_PREDICATE_ANNOTATION: PREDICATE_TYPE}
MAX_SIGNATURE_BLOB = 1 << 20  # payloads and bundles are a few KiB; a bigger one is junk
LEGACY_CREATED = "0001-01-01T00:00:00Z"  # Go's zero time, which cosign writes


class SignatureError(ValueError):
    """One signature does not verify; the message says why (wrong key, another digest, malformed)."""


@dataclass(frozen=True)
class Verified:
    """A signature that checked out: its format and which key made it."""

    digest: str
    format: str  # "bundle" or "legacy"
    key_hint: str


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError(f"{what} is missing or not a string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SignatureError(f"{what} is not valid base64") from None


def sign_bytes(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def which_key(keys: Sequence[ec.EllipticCurvePublicKey], signature: bytes, data: bytes) -> str | None:
    for key in keys:
        try:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            return key_hint(key)
        except InvalidSignature:
            continue
    return None


# -- legacy simple signing ------------------------------------------------------------------------------------
def simple_signing_payload(docker_reference: str, digest: str, annotations: Mapping[str, str] | None = None) -> bytes:
    """The exact payload cosign signs (field order of its Go structs, compact, no trailing newline)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": check_digest(digest)},
            "type": SIMPLE_SIGNING_TYPE,
        },
        "optional": dict(annotations) if annotations else None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def verify_simple_signing(payload: bytes, signature_b64: object, keys: Sequence[ec.EllipticCurvePublicKey],
                          digest: str) -> Verified:
    signature = unb64(signature_b64, f"annotation {SIGNATURE_ANNOTATION}")
    hint = which_key(keys, signature, payload)
    if hint is None:
        raise SignatureError("legacy signature: made by another key (it does not verify with any key of the rule)")
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError("legacy signature: the signed payload is not a cosign simple-signing document") \
            from None
    if kind != SIMPLE_SIGNING_TYPE:
        raise SignatureError(f"legacy signature: payload type {kind!r}, expected {SIMPLE_SIGNING_TYPE!r}")
    if signed_digest != digest:
        raise SignatureError(f"legacy signature: signed for another digest ({signed_digest}), not {digest}")
    return Verified(digest, "legacy", hint)


def legacy_signature_manifest(layers: Sequence[Descriptor]) -> tuple[bytes, bytes]:
    """(config, manifest) bytes of the `.sig` image that holds `layers` (one per signature)."""
    config = json.dumps({
        "architecture": "", "created": LEGACY_CREATED, "history": [{"created": LEGACY_CREATED}], "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]}, "config": {},
    }, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_IMAGE_CONFIG, "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": [layer.to_json() for layer in layers],
    }
    return config, json.dumps(manifest, separators=(",", ":")).encode()


# -- sigstore bundle v0.3 with a DSSE envelope ----------------------------------------------------------------
def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: "DSSEv1 SP len(type) SP type SP len(payload) SP payload"."""
    encoded_type = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(encoded_type), encoded_type, len(payload), payload)


def statement(digest: str) -> bytes:
    hex_digest = check_digest(digest).removeprefix("sha256:")
    return json.dumps({"_type": STATEMENT_TYPE, "subject": [{"digest": {"sha256": hex_digest}}],
                       "predicateType": PREDICATE_TYPE, "predicate": {}}, separators=(",", ":")).encode()


def build_bundle(key: ec.EllipticCurvePrivateKey, digest: str) -> bytes:
    payload = statement(digest)
    signature = sign_bytes(key, pae(INTOTO_PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(key.public_key())}},
        "dsseEnvelope": {"payload": _b64(payload), "payloadType": INTOTO_PAYLOAD_TYPE,
                         "signatures": [{"sig": _b64(signature)}]},
    }
    return json.dumps(bundle, separators=(",", ":")).encode()


def bundle_version_ok(media_type: object) -> bool:
    # "application/vnd.dev.sigstore.bundle.v0.3+json" or "...bundle+json;version=0.3"; cosign needs >= 0.3.
    if not isinstance(media_type, str) or not media_type.startswith(BUNDLE_PREFIX):
        return False
    version = media_type.split("version=")[-1] if "version=" in media_type else \
        media_type.removeprefix(BUNDLE_PREFIX + ".v").split("+")[0]
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (0, 3)


def verify_bundle(data: bytes, keys: Sequence[ec.EllipticCurvePublicKey], digest: str) -> Verified:
    try:
        bundle = json.loads(data)
        envelope = bundle["dsseEnvelope"]
        signatures = envelope["signatures"]
        payload_type = envelope["payloadType"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError("bundle: not a sigstore bundle with a DSSE envelope") from None
    if not bundle_version_ok(bundle.get("mediaType")):
        raise SignatureError(f"bundle: media type {bundle.get('mediaType')!r} is not a sigstore bundle >= v0.3")
    if payload_type != INTOTO_PAYLOAD_TYPE:
        raise SignatureError(f"bundle: DSSE payload type {payload_type!r}, expected {INTOTO_PAYLOAD_TYPE}")
    payload = unb64(envelope.get("payload"), "bundle: DSSE payload")
    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("bundle: the DSSE envelope has no signatures")
    message = pae(payload_type, payload)
    hint = None
    for entry in signatures:
        sig = unb64(entry.get("sig") if isinstance(entry, dict) else None, "bundle: DSSE signature")
        hint = which_key(keys, sig, message)
        if hint:
            break
    if hint is None:
        raise SignatureError("bundle: made by another key (the DSSE signature does not verify with any key of "
                             "the rule)")
    try:
        doc: Any = json.loads(payload)
        subjects = doc["subject"]
        predicate_type = doc["predicateType"]
        statement_type = doc["_type"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError("bundle: the signed payload is not an in-toto statement") from None
    if statement_type != STATEMENT_TYPE or predicate_type != PREDICATE_TYPE:
        raise SignatureError(f"bundle: statement {statement_type!r} with predicate {predicate_type!r} is not a "
                             f"cosign signature ({PREDICATE_TYPE})")
    hexes = [s.get("digest", {}).get("sha256") for s in subjects if isinstance(s, dict)] \
        if isinstance(subjects, list) else []
    if digest.removeprefix("sha256:") not in hexes:
        named = ", ".join(f"sha256:{h}" for h in hexes if isinstance(h, str)) or "nothing"
        raise SignatureError(f"bundle: signed for another digest ({named}), not {digest}")
    return Verified(digest, "bundle", hint)


def bundle_referrer_manifest(bundle: Descriptor, subject: Descriptor, created: str,
                             predicate_type: str = PREDICATE_TYPE) -> bytes:
    """The OCI 1.1 referrer manifest cosign 3 attaches a bundle with (a signature's, or an attestation's of
    `predicate_type`)."""
    empty = Descriptor(MEDIA_TYPE_EMPTY, "sha256:" + hashlib.sha256(EMPTY_JSON).hexdigest(), len(EMPTY_JSON))
    manifest = {
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "artifactType": BUNDLE_MEDIA_TYPE,
        "config": empty.to_json(), "layers": [bundle.to_json()],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
        "annotations": {**BUNDLE_ANNOTATIONS, BUNDLE_PREDICATE_ANNOTATION: predicate_type,
                        ANNOTATION_CREATED: created},
    }
    return json.dumps(manifest, separators=(",", ":")).encode()
