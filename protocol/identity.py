"""Ed25519 identity. One 32-byte seed is both our signing key and the libp2p host key,
so a node's id is its libp2p peer id."""
from __future__ import annotations

import functools
import os

import base58
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# libp2p's PublicKey protobuf for Ed25519 is field 1 (KeyType=Ed25519=1) then field 2 (32 bytes):
# 08 01 12 20 <key>. It is under 42 bytes, so the peer id is its *identity* multihash (00 24 ...),
# base58btc-encoded. Written out here so protocol/ needs no libp2p import.
_LIBP2P_ED25519_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, len(_LIBP2P_ED25519_PREFIX) + PUBLIC_KEY_SIZE])


def peer_id(public_key: bytes) -> str:
    return _peer_id(public_key if type(public_key) is bytes else bytes(public_key))


@functools.lru_cache(maxsize=1 << 16)  # every received message names its sender; base58 costs ~50 us
def _peer_id(public_key: bytes) -> str:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return base58.b58encode(_IDENTITY_MULTIHASH_PREFIX + _LIBP2P_ED25519_PREFIX + public_key).decode()


# Strict Ed25519, as libsodium's crypto_sign_verify_detached (docs/PROTOCOL.md §4). An encoded point
# is y (the low 255 bits, little-endian) and the sign of x (the top bit). OpenSSL accepts keys with
# y >= p and keys of small order, for which a forger needs no secret: refuse them first.
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the group order
_Y_MASK = (1 << 255) - 1
_Y_ORDER_8 = 0x5FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826  # and P - it
# y of the 8 points of order dividing 8: 1 (identity), P - 1 (order 2), 0 (order 4), and the two
# of order 8. Either sign bit: with x = 0 (y = 1 or P - 1) a set sign bit is not even an encoding.
SMALL_ORDER_Y = frozenset((0, 1, P - 1, _Y_ORDER_8, P - _Y_ORDER_8))


def strict_point(encoding: bytes) -> bool:
    """True for a canonical encoding (y < P) of a point not of small order."""
    y = int.from_bytes(encoding, "little") & _Y_MASK
    return y < P and y not in SMALL_ORDER_Y


def strict_public_key(public_key: bytes) -> bool:
    return len(public_key) == PUBLIC_KEY_SIZE and strict_point(public_key)


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Strict verification: a strict key, R = signature[:32] a strict point, S = signature[32:]
    below L, then the cofactorless equation [S]B = R + [H(R || A || M)]A. The equation is
    libsodium's (PyNaCl, which py-libp2p already brings), the reference of §4, which makes the
    same checks again: 55 us a signature here, where OpenSSL's (pyca/cryptography) takes 106. Both
    let go of the GIL. The checks are written out too, so that §4 does not rest on the version of
    libsodium a wheel bundles."""
    if (not strict_public_key(public_key) or len(signature) != SIGNATURE_SIZE or not strict_point(signature[:32])
            or int.from_bytes(signature[32:], "little") >= L):
        return False
    try:
        crypto_sign_open(bytes(signature) + bytes(data), bytes(public_key))
    except BadSignatureError:
        return False
    return True


class Identity:
    """A node's key pair. Build from a seed, a PEM file's bytes, or fresh randomness."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = bytes(seed)
        self.public_key = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = peer_id(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(SEED_SIZE))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, readable by `openssl pkey`."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the key file holds a key that is not Ed25519")
        return cls(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption()))

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"
