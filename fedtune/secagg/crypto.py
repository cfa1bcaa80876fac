"""The primitives SecAgg+ needs: X25519 key agreement, HKDF, AES-256-GCM and Shamir sharing.

Shamir sharing works over the prime field p = 2^521 - 1 with Python integers rather than
pycryptodome's GF(2^128) ``_Element``: that class multiplies in constant-time pure Python at
about 0.6 ms per product (160 times slower than a 521-bit modular product), which would make the
server's reconstruction take minutes with a hundred clients, and it is private API. A 32-byte
secret is one field element (2^256 < p), so it needs no chunking.

Every share also carries a 16-byte SHA-256 check of the secret, so that a share altered in a
small way (which can shift the result by a small multiple and still look in range) makes
reconstruction fail instead of silently yielding a wrong secret; the secrets here are 256-bit
uniform keys, so their hash reveals nothing usable.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecAggError(ValueError):
    """A protocol violation or bad input; the message says what, in one sentence."""


KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
PRIME = 2**521 - 1
MAX_POINT = 65535

_PAIR = struct.Struct(">II")
_LEN = struct.Struct(">H")
_SHARE_TAG = 0x50  # "P": a share over the prime field PRIME
_SHARE_HEADER = struct.Struct(">BBH")  # tag, secret length, evaluation point
_VALUE_BYTES = (PRIME.bit_length() + 7) // 8  # 66
_CHECK_BYTES = 16
SHARE_BYTES = _SHARE_HEADER.size + _VALUE_BYTES + _CHECK_BYTES


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes (private, public), 32 bytes each."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_from_private(private: bytes) -> bytes:
    """The raw X25519 public key of a raw private key: checks a reconstructed secret key."""
    try:
        return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    except (ValueError, TypeError) as exc:
        raise SecAggError(f"malformed X25519 private key ({exc}).") from None


def agree(private: bytes, peer_public: bytes, context: bytes) -> bytes:
    """A 32-byte key both parties derive: HKDF-SHA256(X25519(private, peer), info=context)."""
    if not isinstance(context, bytes):
        raise SecAggError("the key-agreement context must be bytes.")
    try:
        mine = X25519PrivateKey.from_private_bytes(private)
        peer = X25519PublicKey.from_public_bytes(peer_public)
        shared = mine.exchange(peer)  # ValueError on a small-order (all-zero result) peer key
    except (ValueError, TypeError) as exc:
        raise SecAggError(f"malformed X25519 key in key agreement ({exc}).") from None
    kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context)
    return kdf.derive(shared)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random 12-byte nonce, which is prefixed to the ciphertext."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise SecAggError(f"an encryption key must be {KEY_BYTES} bytes.")
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`encrypt`; any failure (tampering, wrong key or AAD) is a SecAggError."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise SecAggError(f"a decryption key must be {KEY_BYTES} bytes.")
    if not isinstance(ciphertext, bytes) or len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise SecAggError("the ciphertext is too short to hold a nonce and a tag.")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError, TypeError):
        raise SecAggError(
            "the ciphertext failed authentication (tampered, wrong key or AAD)."
        ) from None


def is_point(x: object) -> bool:
    """Whether ``x`` is a valid node index / Shamir evaluation point (an int in 1..65535)."""
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= MAX_POINT


def is_key(x: object) -> bool:
    """Whether ``x`` looks like a raw X25519 key (32 bytes)."""
    return isinstance(x, bytes) and len(x) == KEY_BYTES


def _check_points(points: list[int]) -> None:
    if len(set(points)) != len(points):
        raise SecAggError("Shamir evaluation points must be distinct.")
    for x in points:
        if not is_point(x):
            raise SecAggError(f"Shamir evaluation point {x!r} is not an integer in 1..{MAX_POINT}.")


def share_secret(secret: bytes, threshold: int, points: list[int]) -> dict[int, bytes]:
    """Shamir ``threshold``-of-n shares of ``secret``, one per evaluation point (over 2^521-1).

    Each share is ``tag, secret length, point, value, check of the secret`` so that
    :func:`combine_secret` can check both the shares and its result.
    """
    if not isinstance(secret, bytes) or not 1 <= len(secret) <= 64:
        raise SecAggError("a Shamir secret must be 1 to 64 bytes.")
    _check_points(list(points))
    if not 1 <= threshold <= len(points):
        raise SecAggError(f"threshold {threshold} must be between 1 and {len(points)} points.")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares, check = {}, _check(secret)
    for x in points:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        header = _SHARE_HEADER.pack(_SHARE_TAG, len(secret), x)
        shares[x] = header + y.to_bytes(_VALUE_BYTES, "big") + check
    return shares


def _check(secret: bytes) -> bytes:
    return hashlib.sha256(b"fedtune-secagg/shamir-check\x00" + secret).digest()[:_CHECK_BYTES]


def decode_share(point: int, share: bytes) -> tuple[int, int, bytes]:
    """(secret length, value, check) of one share, checking its form and its ``point``."""
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise SecAggError(f"a Shamir share must be {SHARE_BYTES} bytes.")
    tag, length, x = _SHARE_HEADER.unpack_from(share)
    value = int.from_bytes(share[_SHARE_HEADER.size : -_CHECK_BYTES], "big")
    if tag != _SHARE_TAG or not 1 <= length <= 64 or x != point or value >= PRIME:
        raise SecAggError(f"the Shamir share for point {point!r} is malformed.")
    return length, value, share[-_CHECK_BYTES:]


def combine_secret(shares: dict[int, bytes], threshold: int) -> bytes:
    """The secret from exactly ``threshold`` of ``shares`` (the lowest points): Lagrange at 0."""
    if not isinstance(threshold, int) or threshold < 1:
        raise SecAggError(f"threshold {threshold!r} must be a positive integer.")
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} Shamir shares are fewer than threshold {threshold}.")
    _check_points(list(shares))
    points = sorted(shares)[:threshold]
    decoded = [decode_share(x, shares[x]) for x in points]
    if len({(length, check) for length, _, check in decoded}) != 1:
        raise SecAggError("the Shamir shares disagree on the secret's length or check.")
    secret = 0
    for i, (xi, (_, yi, _)) in enumerate(zip(points, decoded, strict=True)):
        num, den = 1, 1
        for m, xm in enumerate(points):
            if m != i:
                num = num * xm % PRIME
                den = den * (xm - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    length, _, check = decoded[0]
    if secret >= 1 << (8 * length) or _check(out := secret.to_bytes(length, "big")) != check:
        raise SecAggError("the Shamir shares are inconsistent (the result fails its check).")
    return out


def pack_shares(sender: int, recipient: int, share_b: bytes, share_sk: bytes) -> bytes:
    """The plaintext of one share message: who sends it to whom, then both shares."""
    parts = [_PAIR.pack(sender, recipient)]
    for share in (share_b, share_sk):
        parts += [_LEN.pack(len(share)), share]
    return b"".join(parts)


def unpack_shares(blob: bytes, sender: int, recipient: int) -> tuple[bytes, bytes]:
    """Inverse of :func:`pack_shares`, checking that it really goes from sender to recipient."""
    try:
        pos, shares = _PAIR.size, []
        for _ in range(2):
            (n,) = _LEN.unpack_from(blob, pos)
            shares.append(blob[pos + _LEN.size : pos + _LEN.size + n])
            pos += _LEN.size + n
        ok = _PAIR.unpack_from(blob) == (sender, recipient) and pos == len(blob)
    except struct.error:
        ok = False
    if not ok:
        raise SecAggError(f"the shares from node {sender} to node {recipient} are mispacked.")
    return shares[0], shares[1]
