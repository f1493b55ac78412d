"""cosign key files and both signature formats, the math alone (oci/keys.py, oci/signature.py).

Interop with the real cosign CLI is in tests/integration/test_supply_chain.py; here the formats are checked
against docs/protocol.md's byte-level facts and every bad input gets its named error.
"""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from wasm_shim.oci import keys as keyfiles
from wasm_shim.oci.keys import KeyFileError, load_private_key, load_public_key
from wasm_shim.oci.signature import (
    SignatureError,
    build_bundle,
    pae,
    sign_bytes,
    simple_signing_payload,
    verify_bundle,
    verify_simple_signing,
)

DIGEST = "sha256:" + "12" * 32
OTHER = "sha256:" + "34" * 32


@pytest.fixture(scope="module")
def pair() -> keyfiles.KeyPair:
    return keyfiles.generate_key_pair(b"secret")


@pytest.fixture(scope="module")
def key(pair: keyfiles.KeyPair) -> ec.EllipticCurvePrivateKey:
    return load_private_key(pair.private_pem, b"secret")


def test_private_key_envelope_matches_cosigns_format(pair: keyfiles.KeyPair) -> None:
    text = pair.private_pem.decode()
    assert text.startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    body = "".join(text.splitlines()[1:-1])
    envelope = json.loads(base64.b64decode(body))
    assert list(envelope) == ["kdf", "cipher", "ciphertext"]
    assert envelope["kdf"]["name"] == "scrypt" and envelope["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    assert len(base64.b64decode(envelope["kdf"]["salt"])) == 32
    assert envelope["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(envelope["cipher"]["nonce"])) == 24
    assert pair.public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")


def test_key_round_trip_and_cosign_label(pair: keyfiles.KeyPair, key: ec.EllipticCurvePrivateKey) -> None:
    public = load_public_key(pair.public_pem)
    assert public.public_numbers() == key.public_key().public_numbers()
    legacy_label = pair.private_pem.replace(b"SIGSTORE", b"COSIGN")
    assert load_private_key(legacy_label, b"secret").private_numbers() == key.private_numbers()


def test_wrong_password_is_named(pair: keyfiles.KeyPair) -> None:
    with pytest.raises(KeyFileError, match="cosign.key: wrong password"):
        load_private_key(pair.private_pem, b"not it", "cosign.key")


def test_encrypted_pkcs8_and_plain_pem_are_read(key: ec.EllipticCurvePrivateKey) -> None:
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw"))
    assert load_private_key(encrypted, b"pw").private_numbers() == key.private_numbers()
    with pytest.raises(KeyFileError, match="wrong password"):
        load_private_key(encrypted, b"other")
    plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    assert load_private_key(plain, b"").private_numbers() == key.private_numbers()


@pytest.mark.parametrize("data, message", [
    (b"garbage", "no PEM block"),
    (b"\xff\xfe", "not a PEM file"),
    (b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nbm90IGpzb24=\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
     "not cosign's JSON envelope"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a private key"),
    (b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n", "no END line"),
])
def test_malformed_private_keys(data: bytes, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        load_private_key(data, b"x")


def test_public_key_given_as_private_and_vice_versa(pair: keyfiles.KeyPair) -> None:
    with pytest.raises(KeyFileError, match="this is a public key"):
        load_private_key(pair.public_pem, b"secret")
    with pytest.raises(KeyFileError, match="that is the private key"):
        load_public_key(pair.private_pem)


def test_wrong_type_keys_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match="secp384r1; only P-256"):
        load_public_key(pem)
    edwards = ed25519.Ed25519PrivateKey.generate()
    pem = edwards.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match="Ed25519PublicKey key; only ECDSA P-256"):
        load_public_key(pem)
    with pytest.raises(KeyFileError, match="only P-256"):
        keyfiles.encrypt_private_key(p384, b"x")


def test_scrypt_parameters_outside_cosigns_range_are_refused(pair: keyfiles.KeyPair) -> None:
    lines = pair.private_pem.decode().splitlines()
    envelope = json.loads(base64.b64decode("".join(lines[1:-1])))
    envelope["kdf"]["params"]["N"] = 1 << 20
    body = base64.b64encode(json.dumps(envelope).encode()).decode()
    pem = f"{lines[0]}\n{body}\n{lines[-1]}\n".encode()
    with pytest.raises(KeyFileError, match="N=1048576"):
        load_private_key(pem, b"secret")


def test_dsse_pae_matches_the_spec_example() -> None:
    # DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world")
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_simple_signing_payload_is_cosigns_exact_bytes() -> None:
    payload = simple_signing_payload("127.0.0.1:5000/team/app", DIGEST)
    assert payload == (b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/team/app"},"image":'
                       b'{"docker-manifest-digest":"' + DIGEST.encode() + b'"},"type":"cosign container image '
                       b'signature"},"optional":null}')


def test_legacy_signature_verifies_and_names_failures(key: ec.EllipticCurvePrivateKey) -> None:
    public = key.public_key()
    payload = simple_signing_payload("r/x", DIGEST)
    signature = base64.b64encode(sign_bytes(key, payload)).decode()
    verified = verify_simple_signing(payload, signature, [public], DIGEST)
    assert verified.format == "legacy" and verified.digest == DIGEST
    with pytest.raises(SignatureError, match="signed for another digest"):
        verify_simple_signing(payload, signature, [public], OTHER)
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SignatureError, match="made by another key"):
        verify_simple_signing(payload, signature, [other_key], DIGEST)
    with pytest.raises(SignatureError, match="made by another key"):
        verify_simple_signing(payload.replace(b"r/x", b"r/y"), signature, [public], DIGEST)
    with pytest.raises(SignatureError, match="not valid base64"):
        verify_simple_signing(payload, "!!", [public], DIGEST)
    with pytest.raises(SignatureError, match="missing"):
        verify_simple_signing(payload, None, [public], DIGEST)


def test_bundle_has_protocols_shape(key: ec.EllipticCurvePrivateKey) -> None:
    bundle = json.loads(build_bundle(key, DIGEST))
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": base64.b64encode(
        hashlib.sha256(der).digest()).decode()}}
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert set(envelope["signatures"][0]) == {"sig"}
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["subject"] == [{"digest": {"sha256": DIGEST[7:]}}]
    assert statement["predicateType"] == "https://sigstore.dev/cosign/sign/v1" and statement["predicate"] == {}


def test_bundle_verifies_and_names_failures(key: ec.EllipticCurvePrivateKey) -> None:
    public = key.public_key()
    data = build_bundle(key, DIGEST)
    assert verify_bundle(data, [public], DIGEST).format == "bundle"
    with pytest.raises(SignatureError, match=f"signed for another digest \\({DIGEST}\\), not {OTHER}"):
        verify_bundle(data, [public], OTHER)
    with pytest.raises(SignatureError, match="made by another key"):
        verify_bundle(data, [ec.generate_private_key(ec.SECP256R1()).public_key()], DIGEST)
    # A statement naming another digest, re-signed by the right key, still fails on the digest.
    forged = json.loads(build_bundle(key, OTHER))
    with pytest.raises(SignatureError, match="another digest"):
        verify_bundle(json.dumps(forged).encode(), [public], DIGEST)
    # The payload swapped under a valid signature: the signature no longer verifies.
    tampered = json.loads(data)
    tampered["dsseEnvelope"]["payload"] = forged["dsseEnvelope"]["payload"]
    with pytest.raises(SignatureError, match="another key"):
        verify_bundle(json.dumps(tampered).encode(), [public], DIGEST)
    old = json.loads(data)
    old["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2"
    with pytest.raises(SignatureError, match=">= v0.3"):
        verify_bundle(json.dumps(old).encode(), [public], DIGEST)
    with pytest.raises(SignatureError, match="not a sigstore bundle"):
        verify_bundle(b"junk", [public], DIGEST)


def test_verification_failure_names_a_pinned_image_once() -> None:
    from wasm_shim.oci.cosign import VerificationFailed

    digest = "sha256:" + "ab" * 32
    pinned = str(VerificationFailed(f"127.0.0.1:5000/team/app:v1@{digest}", digest, ["no signature found"]))
    tagged = str(VerificationFailed("127.0.0.1:5000/team/app:v1", digest, ["no signature found"]))
    assert pinned == tagged == f"127.0.0.1:5000/team/app:v1@{digest}: no valid signature: no signature found"
