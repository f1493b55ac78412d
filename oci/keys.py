"""Cosign key files, both ways: ECDSA P-256 keys in cosign's encrypted envelope, and public keys.

Owns generating, encrypting, decrypting and loading keys (docs/protocol.md "Cosign signatures", keys). Formats:
- `cosign.pub`: PEM `PUBLIC KEY` (SubjectPublicKeyInfo DER).
- `cosign.key`: PEM `ENCRYPTED SIGSTORE PRIVATE KEY` (read also as `ENCRYPTED COSIGN PRIVATE KEY`) whose body is
  base64 of compact JSON {kdf: scrypt N=2^16 r=8 p=1 with a 32-byte salt, cipher: nacl/secretbox with a 24-byte
  nonce, ciphertext: tag || XSalsa20 ciphertext} over the PKCS#8 DER private key. The scrypt output (32 bytes)
  is the secretbox key. N in {2^15, 2^16, 2^17} and r=8, p=1 are accepted on reading, as cosign accepts.
- Also read: a PKCS#8 `ENCRYPTED PRIVATE KEY` (openssl's), and unencrypted `PRIVATE KEY` / `EC PRIVATE KEY`.

Invariants: only ECDSA over P-256 is accepted (what cosign generates; anything else is KeyFileError naming the
type); a wrong password is a KeyFileError saying so, never a partial key; key files are written through a temporary
file and a rename (the private key 0600), and an existing file is never overwritten unless asked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .files import removed_on_failure

PEM_SIGSTORE = "ENCRYPTED SIGSTORE PRIVATE KEY"
PEM_COSIGN = "ENCRYPTED COSIGN PRIVATE KEY"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 16, 8, 1
ACCEPTED_N = (1 << 15, 1 << 16, 1 << 17)
_SCRYPT_MAXMEM = 256 << 20  # 128 * N * r bytes: 128 MiB at N=2^17 (hashlib's default cap is 32 MiB)


class KeyFileError(ValueError):
    """A key file is malformed, of the wrong type, or its password is wrong; the message says which file and why."""



def _pem_blocks(text: str) -> list[tuple[str, bytes]]:
    blocks: list[tuple[str, bytes]] = []
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        if not (line.startswith("-----BEGIN ") and line.endswith("-----")):
            continue
        label = line[len("-----BEGIN "):-5]
        body: list[str] = []
        for inner in lines:
            inner = inner.strip()
            if inner == f"-----END {label}-----":
                break
            if ":" in inner:  # RFC 1421 headers (Proc-Type ...) are not part of the body
                continue
            body.append(inner)
        else:
            raise KeyFileError(f"PEM block {label!r} has no END line")
        try:
            blocks.append((label, base64.b64decode("".join(body), validate=True)))
        except ValueError:
            raise KeyFileError(f"PEM block {label!r} is not valid base64") from None
    return blocks


def _pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)


def _require_p256(key: object, where: str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return
        raise KeyFileError(f"{where}: an ECDSA key on {key.curve.name}; only P-256 (what cosign generates) is "
                           "supported")
    raise KeyFileError(f"{where}: a {type(key).__name__.lstrip('_')} key; only ECDSA P-256 (what cosign generates) "
                       "is supported")


def encrypt_private_key(key: ec.EllipticCurvePrivateKey, password: bytes) -> bytes:
    """The PEM text of `cosign.key` (scrypt + secretbox envelope over PKCS#8 DER)."""
    from nacl.secret import SecretBox

    _require_p256(key, "private key")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt, nonce = os.urandom(32), os.urandom(24)
    box = SecretBox(_scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    ciphertext = box.encrypt(der, nonce).ciphertext  # PyNaCl: the 16-byte tag, then the XSalsa20 stream
    # Field order of cosign's Go structs (encrypted.Envelope): kdf, cipher, ciphertext.
    envelope = {
        "kdf": {"name": "scrypt", "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P},
                "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return _pem(PEM_SIGSTORE, json.dumps(envelope, separators=(",", ":")).encode())


def _decrypt_envelope(body: bytes, password: bytes, where: str) -> bytes:
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    try:
        envelope = json.loads(body)
        kdf, cipher = envelope["kdf"], envelope["cipher"]
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        ciphertext = base64.b64decode(envelope["ciphertext"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"{where}: the encrypted key is not cosign's JSON envelope {{kdf, cipher, ciphertext}}") \
            from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise KeyFileError(f"{where}: unsupported key encryption {kdf.get('name')}/{cipher.get('name')} "
                           "(cosign uses scrypt + nacl/secretbox)")
    if n not in ACCEPTED_N or r != 8 or p != 1 or len(nonce) != 24:
        raise KeyFileError(f"{where}: scrypt parameters N={n} r={r} p={p} are outside what cosign accepts "
                           "(N 2^15..2^17, r 8, p 1)")
    try:
        return bytes(SecretBox(_scrypt(password, salt, n, r, p)).decrypt(ciphertext, nonce))
    except CryptoError:
        raise KeyFileError(f"{where}: wrong password (the key did not decrypt)") from None


def load_private_key(data: bytes, password: bytes, where: str = "private key") -> ec.EllipticCurvePrivateKey:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{where}: not a PEM file") from None
    blocks = _pem_blocks(text)
    if not blocks:
        raise KeyFileError(f"{where}: no PEM block found (expected {PEM_SIGSTORE})")
    label, body = blocks[0]
    if label in (PEM_SIGSTORE, PEM_COSIGN):
        der = _decrypt_envelope(body, password, where)
        try:
            key = serialization.load_der_private_key(der, None)
        except ValueError:
            raise KeyFileError(f"{where}: the decrypted key is not PKCS#8 DER") from None
    elif label in ("ENCRYPTED PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"):
        try:
            key = serialization.load_pem_private_key(data, password if label == "ENCRYPTED PRIVATE KEY" else None)
        except (ValueError, TypeError) as exc:
            reason = "wrong password" if label == "ENCRYPTED PRIVATE KEY" else "malformed"
            raise KeyFileError(f"{where}: {reason} ({label}: {exc})") from None
    elif label == "PUBLIC KEY":
        raise KeyFileError(f"{where}: this is a public key; signing needs the private key (cosign.key)")
    else:
        raise KeyFileError(f"{where}: PEM type {label!r} is not a private key cosign reads")
    _require_p256(key, where)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public_key(data: bytes, where: str = "public key") -> ec.EllipticCurvePublicKey:
    try:
        blocks = _pem_blocks(data.decode("ascii"))
    except UnicodeDecodeError:
        raise KeyFileError(f"{where}: not a PEM file") from None
    if not blocks:
        raise KeyFileError(f"{where}: no PEM block found (expected PUBLIC KEY)")
    label, body = blocks[0]
    if label != "PUBLIC KEY":
        hint = " (that is the private key: verify with cosign.pub)" if "PRIVATE" in label else ""
        raise KeyFileError(f"{where}: PEM type {label!r}, expected PUBLIC KEY{hint}")
    try:
        key = serialization.load_der_public_key(body)
    except ValueError:
        raise KeyFileError(f"{where}: the PUBLIC KEY block is not a valid SubjectPublicKeyInfo") from None
    _require_p256(key, where)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def public_key_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """Sigstore bundle `publicKey.hint`: base64 of the sha256 of the SPKI DER."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes


def generate_key_pair(password: bytes) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return KeyPair(encrypt_private_key(key, password), public_key_pem(key.public_key()))


def write_file_atomically(path: str, data: bytes, mode: int, *, overwrite: bool = False) -> None:
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(path)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with removed_on_failure(temporary):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
