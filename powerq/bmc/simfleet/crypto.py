"""RMCP+ cipher suites 3 and 17: key derivation, integrity codes and AES-CBC-128.

Cipher suite 3 is RAKP-HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128; suite 17 is
RAKP-HMAC-SHA256 / HMAC-SHA256-128 / AES-CBC-128 (IPMI v2.0 tables 22-19 and
13-17..13-19). These are the two suites ``ipmitool`` 1.8.19 prefers (17, then 3).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AES_BLOCK = 16
AUTH_SHA1, AUTH_SHA256 = 0x01, 0x03
INTEGRITY_SHA1_96, INTEGRITY_SHA256_128 = 0x01, 0x04
CONF_AES_CBC_128 = 0x01
_CONST_1 = b"\x01" * 20
_CONST_2 = b"\x02" * 20


class CryptoError(ValueError):
    """A payload failed to decrypt (bad length or padding)."""


@dataclass(frozen=True)
class CipherSuite:
    """One supported cipher suite and the sizes its algorithms imply."""

    suite_id: int
    auth_alg: int
    integrity_alg: int
    conf_alg: int
    digest: Callable[..., Any]
    code_len: int  # truncated HMAC length, packets and RAKP4

    def mac(self, key: bytes, data: bytes) -> bytes:
        """Full-length HMAC with this suite's hash."""
        return hmac.new(key, data, self.digest).digest()

    def record(self) -> bytes:
        """This suite as a Get Channel Cipher Suites record (standard, not OEM)."""
        return bytes(
            (0xC0, self.suite_id, self.auth_alg, 0x40 | self.integrity_alg, 0x80 | self.conf_alg)
        )


SUITE_3 = CipherSuite(3, AUTH_SHA1, INTEGRITY_SHA1_96, CONF_AES_CBC_128, hashlib.sha1, 12)
SUITE_17 = CipherSuite(17, AUTH_SHA256, INTEGRITY_SHA256_128, CONF_AES_CBC_128, hashlib.sha256, 16)
SUPPORTED_SUITES: tuple[CipherSuite, ...] = (SUITE_17, SUITE_3)  # order of preference


def match_suite(auth: int | None, integrity: int | None, conf: int | None) -> CipherSuite | None:
    """The supported suite matching a proposal; ``None`` in a slot means "any"."""
    for suite in SUPPORTED_SUITES:
        if all(
            want is None or want == have
            for want, have in (
                (auth, suite.auth_alg),
                (integrity, suite.integrity_alg),
                (conf, suite.conf_alg),
            )
        ):
            return suite
    return None


@dataclass(frozen=True)
class SessionKeys:
    """SIK, K1 (integrity) and the AES key (first 16 bytes of K2) of one session."""

    sik: bytes
    k1: bytes
    aes_key: bytes


def derive_keys(
    suite: CipherSuite, kg: bytes, rm: bytes, rc: bytes, role: int, username: bytes
) -> SessionKeys:
    """SIK = HMAC_KG(Rm | Rc | ROLEm | ULENGTHm | UNAMEm); K1, K2 = HMAC_SIK(const)."""
    sik = suite.mac(kg, rm + rc + bytes((role, len(username))) + username)
    return SessionKeys(sik, suite.mac(sik, _CONST_1), suite.mac(sik, _CONST_2)[:AES_BLOCK])


def integrity_code(suite: CipherSuite, k1: bytes, signed: bytes) -> bytes:
    """The truncated packet integrity code over ``signed`` (authtype .. next header)."""
    return suite.mac(k1, signed)[: suite.code_len]


def codes_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two codes."""
    return hmac.compare_digest(a, b)


def encrypt(aes_key: bytes, plaintext: bytes) -> bytes:
    """AES-CBC-128 with IPMI's pad (1, 2, 3, ... then the pad length); returns IV + data."""
    pad_len = -(len(plaintext) + 1) % AES_BLOCK
    padded = plaintext + bytes(range(1, pad_len + 1)) + bytes((pad_len,))
    iv = os.urandom(AES_BLOCK)
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def decrypt(aes_key: bytes, blob: bytes) -> bytes:
    """Inverse of :func:`encrypt`.

    :raises CryptoError: wrong length or malformed IPMI padding.
    """
    if len(blob) < 2 * AES_BLOCK or len(blob) % AES_BLOCK:
        raise CryptoError("encrypted payload has a bad length")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(blob[:AES_BLOCK])).decryptor()
    padded = decryptor.update(blob[AES_BLOCK:]) + decryptor.finalize()
    pad_len = padded[-1]
    body_len = len(padded) - pad_len - 1
    if body_len < 0 or padded[body_len:-1] != bytes(range(1, pad_len + 1)):
        raise CryptoError("encrypted payload has bad padding")
    return padded[:body_len]
