"""Unit uuids are RFC 9562 version 7: unique, and increasing within a process."""

from __future__ import annotations

import uuid

from storage.ids import uuid7


def test_uuid7_is_valid_unique_and_ordered() -> None:
    made = [uuid7() for _ in range(20_000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    parsed = uuid.UUID(made[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == made[0]
