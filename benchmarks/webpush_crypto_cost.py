"""CPU per Web Push send of the candidate crypto libraries: encryption (RFC 8291 aes128gcm) plus VAPID (RFC 8292).

`python benchmarks/webpush_crypto_cost.py [--sends 2000] [--rounds 5] [--payload-bytes 200]` measures, with
time.process_time over --sends messages per round and --rounds rounds interleaved (each round runs every
candidate once, in a rotating order, so that drift and warm-up spread evenly), the CPU microseconds per send of:

* ``http-ece + py-vapid, VAPID cached``: what pushsvc.providers.webpush does: http_ece.encrypt with a fresh
  P-256 key per message, and py-vapid's ES256 token signed once per origin and reused (VapidSigner);
* ``http-ece + py-vapid, VAPID per send``: the same with a new token signed for every message;
* ``pywebpush, VAPID per send``: what pywebpush's ``webpush``/``webpush_async`` do per message before the
  HTTP call: ``Vapid.sign`` of the claims and ``WebPusher(subscription_info).encode(data)`` (which copies
  the subscription, decodes its keys and calls http_ece.encrypt);
* ``pywebpush encode, VAPID cached``: ``WebPusher(...).encode`` alone, to separate its own overhead.

pywebpush is not a pushsvc dependency: its two rows appear when it is installed (pip install pywebpush).

Each candidate's first message is decrypted by the Web Push simulator's independent RFC 8291 implementation
(pushsvc/simulators/webpush/decryption.py) before anything is timed, so every number is for a working send.
It prints the median and the spread (min-max over the rounds) per candidate. Nothing here is pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import orjson  # noqa: E402
from py_vapid import Vapid02  # noqa: E402

try:  # not a pushsvc dependency: installed by hand to compare (pip install pywebpush)
    from pywebpush import WebPusher
except ImportError:
    WebPusher = None

from pushsvc.model import WebSubscription  # noqa: E402
from pushsvc.providers.webpush import VapidSigner, encrypt  # noqa: E402
from pushsvc.simulators.webpush import (  # noqa: E402
    PeerSubscription,
    b64url_decode,
    decrypt_aes128gcm,
    make_subscription,
    make_vapid_key,
)

ORIGIN = "https://push.example.com"
SUBJECT = "mailto:ops@example.com"

Send = Callable[[], bytes]  # one message's work; returns the encrypted body (for the correctness check)


def payload(size: int) -> bytes:
    """A JSON document of the adapter's shape, padded to about `size` bytes with a data value."""
    doc = {"notification_id": "n-1", "type": "alert", "title": "Hello", "body": "there", "data": {"k": ""}}
    doc["data"]["k"] = "x" * max(0, size - len(orjson.dumps(doc)))
    return orjson.dumps(doc)


def candidates(key_file: Path, subscription: WebSubscription, plaintext: bytes) -> dict[str, Send]:
    signer = VapidSigner(str(key_file), SUBJECT, time.time)
    vapid = Vapid02.from_file(str(key_file))
    info = {"endpoint": subscription.endpoint, "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}}

    def ece_cached() -> bytes:
        signer.authorization(ORIGIN)
        return encrypt(plaintext, subscription)

    def ece_per_send() -> bytes:
        vapid.sign({"aud": ORIGIN, "exp": int(time.time()) + 12 * 3600, "sub": SUBJECT})
        return encrypt(plaintext, subscription)

    def pywebpush_per_send() -> bytes:
        vapid.sign({"aud": ORIGIN, "exp": int(time.time()) + 12 * 3600, "sub": SUBJECT})
        return WebPusher(info).encode(plaintext, "aes128gcm")["body"]

    def pywebpush_encode() -> bytes:
        return WebPusher(info).encode(plaintext, "aes128gcm")["body"]

    sends: dict[str, Send] = {
        "http-ece + py-vapid, VAPID cached": ece_cached,
        "http-ece + py-vapid, VAPID per send": ece_per_send,
    }
    if WebPusher is not None:
        sends["pywebpush, VAPID per send"] = pywebpush_per_send
        sends["pywebpush encode, VAPID cached"] = pywebpush_encode
    return sends


def check(name: str, send: Send, peer_subscription: PeerSubscription, plaintext: bytes) -> None:
    body = send()
    opened = decrypt_aes128gcm(body, peer_subscription.private_key, b64url_decode(peer_subscription.auth))
    if opened != plaintext:
        raise SystemExit(f"{name}: the peer decrypted something else")


def run(sends: int, rounds: int, payload_bytes: int) -> dict[str, list[float]]:
    directory = Path(tempfile.mkdtemp(prefix="webpush-bench-"))
    key = make_vapid_key(directory)
    # A subscription as the test peer hands out (with the private key to check with); no server is started.
    peer_subscription = make_subscription("push.example.com")
    subscription = peer_subscription.web_subscription
    plaintext = payload(payload_bytes)
    sends_by_name = candidates(key.private_key_file, subscription, plaintext)
    for name, send in sends_by_name.items():
        check(name, send, peer_subscription, plaintext)
        for _ in range(50):  # warm-up
            send()
    per_send: dict[str, list[float]] = {name: [] for name in sends_by_name}
    names = list(sends_by_name)
    for round_number in range(rounds):
        order = names[round_number % len(names):] + names[: round_number % len(names)]
        for name in order:
            send = sends_by_name[name]
            start = time.process_time()
            for _ in range(sends):
                send()
            per_send[name].append((time.process_time() - start) / sends * 1e6)
    return per_send


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=2000, help="messages per candidate per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--payload-bytes", type=int, default=200, help="plaintext JSON size")
    args = parser.parse_args()
    per_send = run(args.sends, args.rounds, args.payload_bytes)
    names = ["http-ece", "py-vapid", "cryptography"] + (["pywebpush"] if WebPusher is not None else [])
    libraries = ", ".join(f"{name} {version(name)}" for name in names)
    print(f"CPU per send (us, time.process_time), {args.sends} sends x {args.rounds} interleaved rounds, "
          f"{len(payload(args.payload_bytes))}-byte payload; {libraries}; Python {sys.version.split()[0]}")
    width = max(map(len, per_send))
    if WebPusher is None:
        print("  (pywebpush is not installed: pip install pywebpush to measure it too)")
    for name, samples in per_send.items():
        print(f"  {name:<{width}}  median {statistics.median(samples):7.1f}   "
              f"spread {min(samples):7.1f} - {max(samples):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

