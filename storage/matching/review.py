"""Reading a run's links and recording a reviewer's decisions (accept, reject, relink)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.matching.store import STATUSES
from storage.registry import Registry, json_value
from storage.versions import version_by_id

CSV_COLUMNS = ["left_ref", "right_ref", "score", "status", "evidence"]
UNMATCHED_COLUMNS = ["ref", "uuid", "name", "parent", "type"]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _run(conn: Connection, run_id: int | None) -> Any:
    if run_id is None:
        row = conn.execute(text("SELECT * FROM algorithm_run WHERE kind = 'match' "
                                "ORDER BY fid DESC LIMIT 1")).first()
        if row is None:
            raise NotFound("No matching run yet. Run 'georeg match REG LEFT RIGHT' first.")
        return row
    row = conn.execute(text("SELECT * FROM algorithm_run WHERE fid = :r AND kind = 'match'"),
                       {"r": run_id}).first()
    if row is None:
        raise NotFound(f"No matching run {run_id}. 'georeg links REG' shows the latest run.")
    return row


_LINK_SQL = (
    "SELECT l.fid, l.run_id, l.score, l.status, l.kind, l.evidence, l.reviewer, l.reviewed_at, "
    "l.left_unit_uuid, l.right_unit_uuid, lu.source_ref AS left_ref, lu.name AS left_name, "
    "ru.source_ref AS right_ref, ru.name AS right_name FROM link l "
    "LEFT JOIN org_unit lu ON lu.version_id = l.left_version_id AND lu.uuid = l.left_unit_uuid "
    "LEFT JOIN org_unit ru ON ru.version_id = l.right_version_id "
    "AND ru.uuid = l.right_unit_uuid "
)


def _link_dict(r: Any) -> dict[str, Any]:
    return {
        "id": r.fid, "run": r.run_id, "left_ref": r.left_ref or r.left_unit_uuid,
        "left_uuid": r.left_unit_uuid, "left_name": r.left_name,
        "right_ref": r.right_ref or r.right_unit_uuid, "right_uuid": r.right_unit_uuid,
        "right_name": r.right_name, "score": r.score, "status": r.status, "kind": r.kind,
        "reviewer": r.reviewer, "reviewed_at": r.reviewed_at,
        "evidence": json_value(r.evidence) or {},
    }


def list_links(reg: Registry, run_id: int | None = None, *, status: str | None = None,
               kind: str | None = None, limit: int | None = None) -> dict[str, Any]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"--status is {status!r}; expected one of {', '.join(STATUSES)}.")
    with reg.read() as conn:
        run = _run(conn, run_id)
        sql = _LINK_SQL + "WHERE l.run_id = :r"
        params: dict[str, Any] = {"r": run.fid}
        if status:
            sql += " AND l.status = :s"
            params["s"] = status
        if kind:
            sql += " AND l.kind = :k"
            params["k"] = kind
        sql += " ORDER BY l.score DESC, l.fid"
        if limit:
            sql += f" LIMIT {int(limit)}"
        links = [_link_dict(r) for r in conn.execute(text(sql), params)]
        lv = version_by_id(conn, run.left_version_id)
        rv = version_by_id(conn, run.right_version_id)
    return {"run": run.fid, "left": lv.to_dict(), "right": rv.to_dict(),
            "metrics": json_value(run.metrics), "links": links}


def unmatched(reg: Registry, run_id: int | None, side: str) -> list[dict[str, Any]]:
    """Units of one side with no link in the run other than rejected ones."""
    if side not in ("left", "right"):
        raise InvalidInput("side must be 'left' or 'right'.")
    with reg.read() as conn:
        run = _run(conn, run_id)
        version = run.left_version_id if side == "left" else run.right_version_id
        rows = conn.execute(
            text(
                "SELECT u.source_ref, u.uuid, u.name, p.name AS parent, t.name AS type "
                "FROM org_unit u LEFT JOIN org_unit p ON p.version_id = u.version_id "
                "AND p.unit_key = u.parent_key LEFT JOIN org_unit_type t ON t.fid = u.type_id "
                f"WHERE u.version_id = :v AND u.uuid NOT IN (SELECT l.{side}_unit_uuid FROM link l "
                f"WHERE l.run_id = :r AND l.status <> 'rejected' AND l.{side}_unit_uuid IS NOT NULL) "
                "ORDER BY u.depth, u.name"
            ),
            {"v": version, "r": run.fid},
        ).all()
    return [{"ref": r.source_ref or r.uuid, "uuid": r.uuid, "name": r.name, "parent": r.parent,
             "type": r.type} for r in rows]


def write_csv(reg: Registry, run_id: int | None, out: str | Path) -> dict[str, str]:
    """``out``: left_ref,right_ref,score,status,evidence (one row per link); beside it
    ``<stem>.unmatched-left.csv`` and ``<stem>.unmatched-right.csv``."""
    data = list_links(reg, run_id)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for lk in data["links"]:
            ev = {"kind": lk["kind"], "link_id": lk["id"], **lk["evidence"]}
            w.writerow([lk["left_ref"], lk["right_ref"], lk["score"], lk["status"],
                        json.dumps(ev, ensure_ascii=False)])
    files = {"links": str(path)}
    for side in ("left", "right"):
        p = path.with_name(f"{path.stem}.unmatched-{side}{path.suffix or '.csv'}")
        with p.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(UNMATCHED_COLUMNS)
            for u in unmatched(reg, data["run"], side):
                w.writerow([u[c] for c in UNMATCHED_COLUMNS])
        files[f"unmatched_{side}"] = str(p)
    return files


def _get_link(conn: Connection, link_id: int) -> Any:
    row = conn.execute(text(_LINK_SQL + "WHERE l.fid = :f"), {"f": link_id}).first()
    if row is None:
        raise NotFound(f"No link {link_id}. List them with 'georeg links REG --run ID'.")
    return row


def _rival(conn: Connection, run_id: int | None, fid: int, left_uuid: str,
           right_uuid: str, kind: str) -> Any:
    """Another link of the run the merge uses (accepted, or auto) that already pairs one
    of these two units with another partner, so that accepting this one gives a unit two
    partners (the merge then uses one, and takes the other unit as the same place:
    neither updated nor added — which no reviewer asked for).  Accepted links are ordered first.
    Several left units may share a right unit only through ``merge`` links, several right
    units a left unit only through ``split`` links."""
    return conn.execute(text(
        _LINK_SQL + "WHERE (l.run_id = :run OR (l.run_id IS NULL AND CAST(:run AS bigint) IS "
        "NULL)) AND l.status IN ('accepted', 'auto') AND l.fid <> :f AND ("
        "(l.right_unit_uuid = :ru AND l.left_unit_uuid <> :lu AND NOT "
        "(l.kind = 'merge' AND CAST(:k AS text) = 'merge')) OR "
        "(l.left_unit_uuid = :lu AND l.right_unit_uuid <> :ru AND NOT "
        "(l.kind = 'split' AND CAST(:k AS text) = 'split'))) "
        "ORDER BY CASE WHEN l.status = 'accepted' THEN 0 ELSE 1 END, l.fid LIMIT 1"),
        {"run": run_id, "f": fid, "lu": left_uuid, "ru": right_uuid, "k": kind}).first()


def _refuse_rival(rival: Any, what: str) -> None:
    how = (f"accepted by {rival.reviewer or 'someone'}" if rival.status == "accepted"
           else "paired automatically" + (f" (score {rival.score:.2f})"
                                          if rival.score is not None else ""))
    raise ConflictError(
        f"{what} would give a unit two partners: link #{rival.fid} already pairs "
        f"{rival.left_name!r} ({rival.left_ref or rival.left_unit_uuid}) with "
        f"{rival.right_name!r} ({rival.right_ref or rival.right_unit_uuid}), {how}; a merge "
        f"would use only one of the two links, the other unit taken as the same place "
        f"(neither updated nor added). Reject link "
        f"#{rival.fid} first (georeg link reject REG {rival.fid}), or pass --force to accept "
        "both anyway.")


def decide(reg: Registry, link_ids: list[int], decision: str, *, reviewer: str | None,
           origin: str = "api", force: bool = False) -> list[dict[str, Any]]:
    """Mark links accepted or rejected, with who and when.  Accepting a link that gives a
    unit a second accepted partner is refused (:func:`_rival`) unless ``force``."""
    if decision not in ("accepted", "rejected"):
        raise InvalidInput("A decision is 'accepted' or 'rejected'.")
    if not link_ids:
        raise InvalidInput("Name at least one link id.")
    out = []
    with reg.write(origin=origin, author=reviewer) as conn:
        at = _now()
        for fid in link_ids:
            link = _get_link(conn, fid)
            if decision == "accepted" and not force:
                rival = _rival(conn, link.run_id, fid, link.left_unit_uuid,
                               link.right_unit_uuid, link.kind)
                if rival is not None:
                    _refuse_rival(rival, f"Accepting link #{fid} "
                                  f"({link.left_name!r} ↔ {link.right_name!r})")
            conn.execute(text("UPDATE link SET status = :s, reviewer = :r, reviewed_at = :t "
                              "WHERE fid = :f"),
                         {"s": decision, "r": reviewer, "t": at, "f": fid})
            out.append(_link_dict(_get_link(conn, fid)))
    return out


def relink(reg: Registry, link_id: int, right_unit: str, *, reviewer: str | None,
           origin: str = "api", force: bool = False) -> dict[str, Any]:
    """The left unit of ``link_id`` is really ``right_unit`` (uuid or ref in the right version):
    the old link is rejected and a new accepted link is added to the same run — refused when
    ``right_unit`` already has another accepted partner (:func:`_rival`), unless ``force``."""
    with reg.write(origin=origin, author=reviewer) as conn:
        old = conn.execute(text("SELECT * FROM link WHERE fid = :f"), {"f": link_id}).first()
        if old is None:
            raise NotFound(f"No link {link_id}. List them with 'georeg links REG --run ID'.")
        target = conn.execute(
            text("SELECT uuid, name FROM org_unit WHERE version_id = :v AND (uuid = :u OR "
                 "source_ref = :u)"),
            {"v": old.right_version_id, "u": right_unit},
        ).first()
        if target is None:
            rv = version_by_id(conn, old.right_version_id)
            raise NotFound(f"No unit {right_unit!r} (uuid or ref) in {rv.label}, the right side "
                           f"of link {link_id}.")
        if not force:
            rival = _rival(conn, old.run_id, link_id, old.left_unit_uuid, target.uuid,
                           "one_to_one")
            if rival is not None:
                _refuse_rival(rival, f"Relinking link #{link_id} to {target.name!r}")
        at = _now()
        conn.execute(text("UPDATE link SET status = 'rejected', reviewer = :r, reviewed_at = :t "
                          "WHERE fid = :f"), {"r": reviewer, "t": at, "f": link_id})
        evidence = {"relinked_from": link_id, "right_name": target.name,
                    "note": "set by a reviewer"}
        fid = conn.execute(
            text("INSERT INTO link (run_id, left_version_id, left_unit_uuid, right_version_id, "
                 "right_unit_uuid, score, status, kind, evidence, reviewer, reviewed_at) VALUES "
                 "(:run, :lv, :lu, :rv, :ru, NULL, 'accepted', 'one_to_one', :ev, :r, :t) "
                 "RETURNING fid"),
            {"run": old.run_id, "lv": old.left_version_id, "lu": old.left_unit_uuid,
             "rv": old.right_version_id, "ru": target.uuid, "ev": json.dumps(evidence),
             "r": reviewer, "t": at},
        ).scalar_one()
        return _link_dict(_get_link(conn, int(fid)))
