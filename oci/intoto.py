"""In-toto attestations in DSSE envelopes, as `cosign attest` makes them (pure: no I/O).

Owns the documents of a signed attestation and their checks: predicate type names (cosign's `--type` short names
and URIs), the in-toto Statement cosign writes (`_type` Statement v0.1, one subject naming the repository and the
manifest digest, the predicate type and the predicate), the DSSE envelope over it (the signature is ECDSA P-256
over the DSSE pre-authentication encoding, oci/signature.py `pae`), the sigstore bundle v0.3 that carries the same
envelope in cosign 3's default format, and conditions on a predicate (docs/protocol.md "Attestations").

Invariants:
- An attestation is `Attested` only if its DSSE signature verifies with one of the given keys, its payload is an
  in-toto Statement (v0.1 or v1), its predicate type is the one asked for, and one of its subjects names exactly
  the digest being verified; each failure is a SignatureError saying which of these failed.
- Conditions are checked only on a verified statement, and say which field had which value.
- Sizes: the caller bounds the bytes (oci/signature.py MAX_SIGNATURE_BLOB); nothing here reads more.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from .keys import key_hint
from .reference import check_digest
from .signature import (
    BUNDLE_MEDIA_TYPE,
    INTOTO_PAYLOAD_TYPE,
    SignatureError,
    bundle_version_ok,
    pae,
    sign_bytes,
    unb64,
    which_key,
)

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"  # a layer of cosign's `sha256-<hex>.att` manifest
PREDICATE_ANNOTATION = "predicateType"  # on that layer
STATEMENT_V01 = "https://in-toto.io/Statement/v0.1"  # what cosign 3.1 writes
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
STATEMENT_TYPES = (STATEMENT_V01, STATEMENT_V1)
CUSTOM_TYPE = "https://cosign.sigstore.dev/attestation/v1"

# cosign's `--type` short names (cosign's pkg/cosign/attestation) and the predicate type URI each stands for.
PREDICATE_TYPES = {
    "slsaprovenance": "https://slsa.dev/provenance/v0.2",
    "slsaprovenance02": "https://slsa.dev/provenance/v0.2",
    "slsaprovenance1": "https://slsa.dev/provenance/v1",
    "spdx": "https://spdx.dev/Document",
    "spdxjson": "https://spdx.dev/Document",
    "cyclonedx": "https://cyclonedx.org/bom",
    "link": "https://in-toto.io/Link/v1",
    "vuln": "https://cosign.sigstore.dev/attestation/vuln/v1",
    "openvex": "https://openvex.dev/ns",
    "custom": CUSTOM_TYPE,
}
# The top-level fields cosign requires of the predicate it is given for these types (it refuses one without them).
REQUIRED_FIELDS = {
    "https://slsa.dev/provenance/v1": ("buildDefinition", "runDetails"),
    "https://slsa.dev/provenance/v0.2": ("builder", "buildType"),
}


def predicate_type(name: str) -> str:
    """The predicate type URI for cosign's short name or a URI; ValueError naming the known names otherwise."""
    if name in PREDICATE_TYPES:
        return PREDICATE_TYPES[name]
    if "://" in name:
        return name
    raise ValueError(f"unknown predicate type {name!r}: use a URI or one of {', '.join(sorted(PREDICATE_TYPES))}")


@dataclass(frozen=True)
class Attested:
    """An attestation that checked out: its format, the key that signed it, and what it states."""

    digest: str
    format: str  # "bundle" or "legacy"
    key_hint: str
    predicate_type: str
    statement: Mapping[str, Any]

    @property
    def predicate(self) -> Any:
        return self.statement.get("predicate")


def make_statement(repository: str, digest: str, predicate_type_uri: str, predicate: Any) -> bytes:
    """The statement cosign attests with (field order of its Go structs, compact JSON)."""
    hex_digest = check_digest(digest).removeprefix("sha256:")
    doc = {"_type": STATEMENT_V01, "subject": [{"name": repository, "digest": {"sha256": hex_digest}}],
           "predicateType": predicate_type_uri, "predicate": predicate}
    return json.dumps(doc, separators=(",", ":")).encode()


def predicate_from(text: bytes, predicate_type_uri: str, timestamp: str) -> Any:
    """The predicate for `text` as cosign builds it: for `custom`, {Data, Timestamp} around the text; else the text
    must be a JSON object (with the fields cosign requires for the SLSA types). ValueError says what is wrong."""
    if predicate_type_uri == CUSTOM_TYPE:
        return {"Data": text.decode("utf-8", errors="replace"), "Timestamp": timestamp}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the predicate is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("the predicate must be a JSON object")
    missing = [name for name in REQUIRED_FIELDS.get(predicate_type_uri, ()) if name not in doc]
    if missing:
        raise ValueError(f"the predicate lacks {', '.join(missing)}, which a {predicate_type_uri} predicate must "
                         "have")
    return doc


def envelope(key: ec.EllipticCurvePrivateKey, payload: bytes) -> dict[str, Any]:
    """A DSSE envelope over `payload` (an in-toto statement), signed by `key`."""
    signature = sign_bytes(key, pae(INTOTO_PAYLOAD_TYPE, payload))
    return {"payloadType": INTOTO_PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}]}


def bundle(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    """A sigstore bundle v0.3 carrying the DSSE envelope (key-based: a public key hint, no certificate)."""
    dsse = envelope(key, payload)
    dsse["signatures"] = [{"sig": s["sig"]} for s in dsse["signatures"]]
    doc = {"mediaType": BUNDLE_MEDIA_TYPE, "verificationMaterial": {"publicKey": {"hint": key_hint(key.public_key())}},
           "dsseEnvelope": dsse}
    return json.dumps(doc, separators=(",", ":")).encode()


def envelope_of_bundle(data: bytes) -> Mapping[str, Any]:
    """The DSSE envelope inside a sigstore bundle (>= v0.3); SignatureError when it is not one."""
    try:
        doc = json.loads(data)
        dsse = doc["dsseEnvelope"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError("bundle: not a sigstore bundle with a DSSE envelope") from None
    if not bundle_version_ok(doc.get("mediaType")):
        raise SignatureError(f"bundle: media type {doc.get('mediaType')!r} is not a sigstore bundle >= v0.3")
    if not isinstance(dsse, dict):
        raise SignatureError("bundle: the DSSE envelope is not an object")
    return dsse


def parse_envelope(data: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise SignatureError("the DSSE envelope is not JSON") from None
    if not isinstance(doc, dict):
        raise SignatureError("the DSSE envelope is not a JSON object")
    return doc


def verify_envelope(dsse: Mapping[str, Any], keys: Sequence[ec.EllipticCurvePublicKey], digest: str,
                    wanted_type: str, fmt: str) -> Attested:
    """The attestation in `dsse` if it verifies (see the module invariants); SignatureError with the reason."""
    payload_type = dsse.get("payloadType")
    if payload_type != INTOTO_PAYLOAD_TYPE:
        raise SignatureError(f"DSSE payload type {payload_type!r}, expected {INTOTO_PAYLOAD_TYPE}")
    payload = unb64(dsse.get("payload"), "the DSSE payload")
    signatures = dsse.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("the DSSE envelope has no signatures")
    message = pae(INTOTO_PAYLOAD_TYPE, payload)
    hint = None
    for entry in signatures:
        hint = which_key(keys, unb64(entry.get("sig") if isinstance(entry, dict) else None, "a DSSE signature"),
                         message)
        if hint:
            break
    if hint is None:
        raise SignatureError("made by another key (the DSSE signature does not verify with any key of the rule)")
    try:
        statement = json.loads(payload)
        statement_type = statement["_type"]
        found_type = statement["predicateType"]
        subjects = statement["subject"]
    except (ValueError, KeyError, TypeError):
        raise SignatureError("the signed payload is not an in-toto statement") from None
    if statement_type not in STATEMENT_TYPES:
        raise SignatureError(f"statement type {statement_type!r} is not an in-toto Statement (v0.1 or v1)")
    if found_type != wanted_type:
        raise SignatureError(f"an attestation of predicate type {found_type!r}, not {wanted_type!r}")
    hexes = [s["digest"].get("sha256") for s in subjects if isinstance(s, dict) and isinstance(s.get("digest"), dict)] \
        if isinstance(subjects, list) else []
    if digest.removeprefix("sha256:") not in hexes:
        named = ", ".join(f"sha256:{h}" for h in hexes if isinstance(h, str)) or "nothing"
        raise SignatureError(f"attests another digest ({named}), not {digest}")
    return Attested(digest, fmt, hint, found_type, statement)


# -- conditions on the predicate ------------------------------------------------------------------------------
Condition = tuple[str, tuple[Any, ...]]  # (dotted path, the values allowed there)


def parse_condition(text: str) -> Condition:
    """`PATH=VALUE` from a command line (one allowed value, a string)."""
    path, sep, value = text.partition("=")
    if not sep or not path:
        raise ValueError(f"a condition is PATH=VALUE (e.g. runDetails.builder.id=https://...), got {text!r}")
    return path, (value,)


def field_at(document: Any, path: str) -> tuple[bool, Any]:
    """(found, value) of dotted `path` in `document`: object keys, or list indices given as numbers."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def condition_failures(predicate: Any, conditions: Sequence[Condition]) -> list[str]:
    """Why the predicate fails each condition it fails (empty: it meets them all)."""
    failures = []
    for path, allowed in conditions:
        found, value = field_at(predicate, path)
        wanted = allowed[0] if len(allowed) == 1 else list(allowed)
        if not found:
            failures.append(f"the predicate has no {path} (the rule requires {json.dumps(wanted)})")
        elif value not in allowed:
            failures.append(f"the predicate's {path} is {json.dumps(value)}, the rule requires "
                            f"{'one of ' if len(allowed) > 1 else ''}{json.dumps(wanted)}")
    return failures
