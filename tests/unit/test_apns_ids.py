"""apns-id: every request's is a canonical version-4 UUID (what APNs requires of the header), and they differ."""

from __future__ import annotations

import os
import re
import uuid

from pushsvc.providers.apns import new_apns_id

CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_apns_ids_are_canonical_version_4_uuids_and_never_repeat() -> None:
    ids = [new_apns_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert CANONICAL.fullmatch(value), value
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)
    # Every random digit varies (a stuck bit would show as a position with one value only).
    for position in (n for n in range(36) if n not in (8, 13, 14, 18, 23)):
        assert len({value[position] for value in ids[:2000]}) > 1, position


def test_a_forked_child_draws_ids_of_its_own() -> None:
    """The generator is seeded once: without a reseed at fork, a forked worker would repeat its parent's ids."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        os.write(write, ",".join(new_apns_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    parent = [new_apns_id() for _ in range(3)]
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split(",")
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child) == 3 and not set(child) & set(parent)
