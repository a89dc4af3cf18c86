"""RFC 8291 decryption, as the browser does it: one aes128gcm record (RFC 8188) for a subscription's keys.

Written here from the RFC with ``cryptography``'s primitives, not with http-ece, so that the adapter's use of
http-ece is checked by a second implementation (itself checked against RFC 8291's example in the tests).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class DecryptError(ValueError):
    """The body is not one aes128gcm record for this subscription."""


def decrypt_aes128gcm(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """The plaintext of a Web Push message (RFC 8291 section 3.4, RFC 8188 section 2), one record only."""
    if len(body) < 21:
        raise DecryptError("shorter than the aes128gcm header")
    salt, record_size, key_id_length = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    if key_id_length != 65:
        raise DecryptError(f"keyid must be the sender's 65-byte public key, got {key_id_length} bytes")
    sender_public = body[21:86]
    ciphertext = body[86:]
    if len(ciphertext) < 17:
        raise DecryptError("no record")
    if len(ciphertext) > record_size:
        raise DecryptError(f"more than one record (rs {record_size}, {len(ciphertext)} bytes): RFC 8291 allows one")
    try:
        sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_public)
    except ValueError as exc:
        raise DecryptError("keyid is not a P-256 point") from exc
    receiver_public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = private_key.exchange(ec.ECDH(), sender)
    key_info = b"WebPush: info\x00" + receiver_public + sender_public
    ikm = HKDF(hashes.SHA256(), 32, salt=auth_secret, info=key_info).derive(shared)
    cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
    try:
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None)  # record 0: the nonce as derived
    except Exception as exc:  # cryptography's InvalidTag
        raise DecryptError("authentication tag does not match (wrong keys or corrupted)") from exc
    end = len(padded.rstrip(b"\x00"))
    if end == 0 or padded[end - 1] != 2:
        raise DecryptError("the last record must end with the delimiter 0x02")
    return padded[: end - 1]
