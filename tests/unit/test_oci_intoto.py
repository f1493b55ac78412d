"""In-toto attestations in DSSE envelopes (oci/intoto.py): cosign's statement, the checks, conditions."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from wasm_shim.oci.intoto import (
    CUSTOM_TYPE,
    bundle,
    condition_failures,
    envelope,
    envelope_of_bundle,
    make_statement,
    parse_condition,
    predicate_from,
    predicate_type,
    verify_envelope,
)
from wasm_shim.oci.signature import SignatureError

SLSA1 = "https://slsa.dev/provenance/v1"
DIGEST = "sha256:5d517ecbf4db7cd0ccbfc7a59abed7059a5ec59c0bd73b28b9d4c54810540f5f"
PREDICATE = {"buildDefinition": {"buildType": "https://example.com/build/v1", "externalParameters": {"repo": "x"}},
             "runDetails": {"builder": {"id": "https://github.com/actions/runner"}}}
# The payload `cosign attest --type slsaprovenance1` (3.1.3) signed for this digest, name and predicate.
COSIGN_PAYLOAD = (
    '{"_type":"https://in-toto.io/Statement/v0.1","subject":[{"name":"127.0.0.1:5077/team/app","digest":{"sha256":'
    '"5d517ecbf4db7cd0ccbfc7a59abed7059a5ec59c0bd73b28b9d4c54810540f5f"}}],"predicateType":'
    '"https://slsa.dev/provenance/v1","predicate":{"buildDefinition":{"buildType":"https://example.com/build/v1",'
    '"externalParameters":{"repo":"x"}},"runDetails":{"builder":{"id":"https://github.com/actions/runner"}}}}')


def test_the_statement_is_byte_for_byte_cosigns() -> None:
    assert make_statement("127.0.0.1:5077/team/app", DIGEST, SLSA1, PREDICATE).decode() == COSIGN_PAYLOAD


def test_predicate_types_are_cosigns_names_or_uris() -> None:
    assert predicate_type("slsaprovenance1") == SLSA1
    assert predicate_type("slsaprovenance") == "https://slsa.dev/provenance/v0.2"
    assert predicate_type("custom") == CUSTOM_TYPE
    assert predicate_type("https://example.com/p/v1") == "https://example.com/p/v1"
    with pytest.raises(ValueError, match="unknown predicate type 'slsa': use a URI or one of "):
        predicate_type("slsa")


def test_predicates_are_checked_like_cosign_does() -> None:
    assert predicate_from(json.dumps(PREDICATE).encode(), SLSA1, "t") == PREDICATE
    with pytest.raises(ValueError, match="lacks runDetails"):
        predicate_from(b'{"buildDefinition": {}}', SLSA1, "t")
    with pytest.raises(ValueError, match="not JSON"):
        predicate_from(b"{", SLSA1, "t")
    assert predicate_from(b"free text", CUSTOM_TYPE, "2026-01-01T00:00:00Z") == \
        {"Data": "free text", "Timestamp": "2026-01-01T00:00:00Z"}


def _keys() -> tuple[ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    return ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())


def test_an_envelope_verifies_with_its_key_for_its_digest_and_type() -> None:
    key, other = _keys()
    dsse = envelope(key, COSIGN_PAYLOAD.encode())
    attested = verify_envelope(dsse, [other.public_key(), key.public_key()], DIGEST, SLSA1, "legacy")
    assert attested.predicate == PREDICATE and attested.format == "legacy"
    from_bundle = envelope_of_bundle(bundle(key, COSIGN_PAYLOAD.encode()))
    assert verify_envelope(from_bundle, [key.public_key()], DIGEST, SLSA1, "bundle").predicate_type == SLSA1


@pytest.mark.parametrize("case, message", [
    ("other key", "made by another key"),
    ("other digest", f"attests another digest (sha256:{'ab' * 32}), not {DIGEST}"),
    ("other type", "an attestation of predicate type 'https://slsa.dev/provenance/v1', not 'https://cyclonedx"),
    ("payload type", "DSSE payload type 'text/plain'"),
    ("tampered", "made by another key"),
    ("not a statement", "not an in-toto statement"),
])
def test_an_envelope_that_does_not_verify_says_why(case: str, message: str) -> None:
    key, other = _keys()
    payload = COSIGN_PAYLOAD
    if case == "other digest":
        payload = payload.replace(DIGEST.removeprefix("sha256:"), "ab" * 32)
    if case == "not a statement":
        payload = '["x"]'
    dsse = envelope(other if case == "other key" else key, payload.encode())
    if case == "payload type":
        dsse["payloadType"] = "text/plain"
    if case == "tampered":
        dsse["payload"] = base64.b64encode(payload.replace("runner", "runnes").encode()).decode()
    wanted = "https://cyclonedx.org/bom" if case == "other type" else SLSA1
    with pytest.raises(SignatureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verify_envelope(dsse, [key.public_key()], DIGEST, wanted, "legacy")


def test_conditions_name_the_field_and_both_values() -> None:
    assert condition_failures(PREDICATE, [("runDetails.builder.id", ("https://github.com/actions/runner",))]) == []
    assert condition_failures(PREDICATE, [("runDetails.builder.id", ("a", "https://github.com/actions/runner"))]) \
        == []
    assert condition_failures(PREDICATE, [("runDetails.builder.id", ("https://ci.example/b",))]) == [
        'the predicate\'s runDetails.builder.id is "https://github.com/actions/runner", the rule requires '
        '"https://ci.example/b"']
    assert condition_failures(PREDICATE, [("runDetails.builder.version", ("1",))]) == [
        'the predicate has no runDetails.builder.version (the rule requires "1")']
    assert condition_failures({"a": [{"b": 1}]}, [("a.0.b", (1,))]) == []
    assert parse_condition("runDetails.builder.id=https://x/y=z") == ("runDetails.builder.id", ("https://x/y=z",))
    with pytest.raises(ValueError, match="PATH=VALUE"):
        parse_condition("runDetails.builder.id")
