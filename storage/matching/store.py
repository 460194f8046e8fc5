"""Runs and links in the registry: the ``algorithm_run`` row, ``link`` rows, earlier decisions.

Link statuses (what :mod:`storage.merge` and reviewers rely on):

* ``auto``     — the algorithm is confident (score ≥ auto threshold, no close rival);
* ``review``   — a person should decide;
* ``accepted`` — a person said "same place" (or relinked the unit to this one);
* ``rejected`` — a person said "not the same place".

``kind`` is ``one_to_one``, ``split`` (one left unit ↔ several right units) or
``merge`` (several left units ↔ one right unit).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

from storage.matching.engine import Decision, MatchResult
from storage.matching.side import Side

STATUSES = ("auto", "review", "accepted", "rejected")
KINDS = ("one_to_one", "split", "merge")
ALGORITHM = "georeg-fellegi-sunter/1"


def now_iso(conn: Connection) -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def earlier_decisions(conn: Connection, left: Side, right: Side
                      ) -> tuple[dict[tuple[int, int], Decision], int]:
    """Latest human decision per pair of units, from any run between the same two sources.

    Units are recognised by uuid (stable across versions).  Returns the decisions that
    apply to these two versions and how many could not (a unit no longer exists).
    """
    rows = conn.execute(
        text(
            "SELECT l.fid, l.left_unit_uuid, l.right_unit_uuid, l.status, l.kind, l.reviewer, "
            "l.reviewed_at, l.score FROM link l "
            "JOIN source_version lv ON lv.fid = l.left_version_id "
            "JOIN source_version rv ON rv.fid = l.right_version_id "
            "WHERE lv.source_id = :ls AND rv.source_id = :rs AND l.reviewed_at IS NOT NULL "
            "AND l.status IN ('accepted', 'rejected') ORDER BY l.reviewed_at, l.fid"
        ),
        {"ls": left.version.source_id, "rs": right.version.source_id},
    ).all()
    out: dict[tuple[int, int], Decision] = {}
    dropped = 0
    for r in rows:
        i = left.index_of_uuid.get(r.left_unit_uuid)
        j = right.index_of_uuid.get(r.right_unit_uuid)
        if i is None or j is None:
            dropped += 1
            continue
        out[(i, j)] = Decision(r.status, r.kind, r.reviewer, r.reviewed_at, r.fid, r.score)
    # an accepted pair overrides older accepted pairs of the same units only if one-to-one
    return out, dropped


def write_run(conn: Connection, left: Side, right: Side, result: MatchResult, *,
              parameters: dict[str, Any], metrics: dict[str, Any], author: str | None,
              started_at: str) -> int:
    run_id = int(conn.execute(
        text(
            "INSERT INTO algorithm_run (kind, left_version_id, right_version_id, parameters, "
            "metrics, status, launched_by, started_at, ended_at) VALUES ('match', :l, :r, :p, "
            ":m, 'done', :a, :s, :e) RETURNING fid"
        ),
        {"l": left.version.id, "r": right.version.id, "p": json.dumps(parameters),
         "m": json.dumps(metrics), "a": author, "s": started_at, "e": now_iso(conn)},
    ).scalar_one())
    rows = []
    for lk in result.links:
        ev = dict(lk.evidence)
        if lk.decision is not None:
            ev["decided_in_link"] = lk.decision.link_id
        rows.append({
            "run": run_id, "lv": left.version.id, "lu": left.uuid[lk.left],
            "rv": right.version.id, "ru": right.uuid[lk.right], "score": round(lk.score, 4),
            "status": lk.status, "kind": lk.kind, "ev": json.dumps(ev, ensure_ascii=False),
            "reviewer": lk.decision.reviewer if lk.decision else None,
            "reviewed_at": lk.decision.reviewed_at if lk.decision else None,
        })
    if rows:
        conn.execute(
            text(
                "INSERT INTO link (run_id, left_version_id, left_unit_uuid, right_version_id, "
                "right_unit_uuid, score, status, kind, evidence, reviewer, reviewed_at) VALUES "
                "(:run, :lv, :lu, :rv, :ru, :score, :status, :kind, :ev, :reviewer, :reviewed_at)"
            ),
            rows,
        )
    return run_id
