"""An independent RFC 9180 base-mode sealer (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), test only.

Written from the RFC's text with HMAC, X25519 and the AEAD as primitives, not with the HPKE
the product uses: the round vectors' sealed seeds are made with a fixed ephemeral key here
(so they reproduce byte for byte), and the library must open them. It reproduces RFC 9180
appendix A.2.1 (tests/test_round_vectors.py).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEM_SUITE = b"KEM" + (0x0020).to_bytes(2, "big")
HPKE_SUITE = b"HPKE" + (0x0020).to_bytes(2, "big") + (0x0001).to_bytes(2, "big") + (0x0003).to_bytes(2, "big")
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + labeled + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def derive_private_key(ikm: bytes) -> bytes:
    """DeriveKeyPair(ikm)'s private key for X25519 (RFC 9180 section 7.1.3)."""
    return _expand(KEM_SUITE, _extract(KEM_SUITE, b"", b"dkp_prk", ikm), b"sk", b"", 32)


def seal(public_key: bytes, plaintext: bytes, info: bytes, aad: bytes, ikm_e: bytes) -> bytes:
    """enc || ciphertext of SealBase(pkR, info, aad, pt), the ephemeral key derived from `ikm_e`."""
    sk_e = X25519PrivateKey.from_private_bytes(derive_private_key(ikm_e))
    enc = sk_e.public_key().public_bytes(*RAW)
    dh = sk_e.exchange(X25519PublicKey.from_public_bytes(public_key))
    eae_prk = _extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared = _expand(KEM_SUITE, eae_prk, b"shared_secret", enc + public_key, 32)
    context = b"\x00" + _extract(HPKE_SUITE, b"", b"psk_id_hash", b"") + _extract(HPKE_SUITE, b"", b"info_hash", info)
    secret = _extract(HPKE_SUITE, shared, b"secret", b"")
    key = _expand(HPKE_SUITE, secret, b"key", context, 32)
    nonce = _expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
    return enc + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
