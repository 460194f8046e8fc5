"""What a registry remembers of each sync target (its ``sync_state`` rows)."""

from __future__ import annotations

import datetime as dt
import json
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from storage.registry import Registry, json_value
from sync.unit_snapshots import SYNC_ORIGIN

# --- local bookkeeping --------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class SyncState:
    """One ``sync_state`` row: what was pushed to / pulled from one target."""

    target: str
    kind: str = "postgis"
    last_change_id: int | None = None
    last_pull_marker: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    updated_at: str | None = None
    exists: bool = False

    @classmethod
    def load(cls, reg: Registry, target: str) -> SyncState:
        with reg.read() as conn:
            row = conn.execute(
                text(
                    "SELECT kind, last_change_id, last_pull_marker, details, updated_at "
                    "FROM sync_state WHERE target = :t"
                ),
                {"t": target},
            ).first()
        if row is None:
            return cls(target)
        return cls(target, row[0], row[1], row[2], json_value(row[3]) or {}, row[4], True)

    def save(self, reg: Registry) -> None:
        now = _now()
        params: dict[str, Any] = {
            "t": self.target,
            "k": self.kind,
            "c": self.last_change_id,
            "m": self.last_pull_marker,
            "d": json.dumps(self.details, ensure_ascii=False, default=str),
            "u": now,
        }
        with reg.write(origin=SYNC_ORIGIN, audit=False) as conn:
            if self.exists:
                conn.execute(
                    text(
                        "UPDATE sync_state SET kind = :k, last_change_id = :c, "
                        "last_pull_marker = :m, details = :d, updated_at = :u WHERE target = :t"
                    ),
                    params,
                )
            else:
                conn.execute(
                    text(
                        "INSERT INTO sync_state (target, kind, last_change_id, last_pull_marker, "
                        "details, updated_at) VALUES (:t, :k, :c, :m, :d, :u)"
                    ),
                    params,
                )
                self.exists = True
        self.updated_at = now

    @property
    def client_id(self) -> str:
        if "client_id" not in self.details:
            self.details["client_id"] = uuidlib.uuid4().hex[:16]
        return str(self.details["client_id"])

    @property
    def versions(self) -> dict[str, Any]:
        return self.details.setdefault("versions", {})  # type: ignore[no-any-return]

    @property
    def held(self) -> set[tuple[int, str]]:
        return {(int(v), str(u)) for v, u in self.details.get("held", [])}

    @held.setter
    def held(self, value: set[tuple[int, str]]) -> None:
        self.details["held"] = sorted([v, u] for v, u in value)


def sync_states(reg: Registry) -> list[dict[str, Any]]:
    with reg.read() as conn:
        rows = conn.execute(
            text(
                "SELECT target, kind, last_change_id, last_pull_marker, updated_at, details "
                "FROM sync_state ORDER BY target"
            )
        ).all()
    out = []
    for r in rows:
        details = json_value(r.details) or {}
        out.append(
            {
                "target": r.target,
                "kind": r.kind,
                "last_change_id": r.last_change_id,
                "last_pull_marker": r.last_pull_marker,
                "updated_at": r.updated_at,
                "held": len(details.get("held", [])),
                "resuming": details.get("cursor") is not None,
                "last_push": details.get("last_push"),
                "last_pull": details.get("last_pull"),
            }
        )
    return out
