"""Pairing the Iaso app's two upload calls, whatever their order.

The app sends a submission as (a) ``POST /api/instances/`` — metadata: instance uuid,
form, org unit, GPS, times, and the XML's path on the phone — and (b)
``POST /sync/form_upload/`` — the XML and its files.  Either may come first (network
errors reorder them) and either may be repeated.  Both are keyed by the XML's base file
name, as Iaso does, in the ``iaso_upload`` table (migration 0003):

* (a) stores the metadata;
* (b) stores the submission through the server's submission storage and records its id;
* whichever call completes the pair applies the metadata to the submission (org unit,
  location), in the same write transaction that records it — so the result is the same
  in both orders, and repeating a call changes nothing.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Connection, text

from storage.errors import InvalidInput
from storage.registry import Registry, json_value

#: Iaso's metadata keys kept with the pair (the rest is ignored).
META_KEYS = ("id", "file", "name", "formId", "orgUnitId", "period", "created_at", "updated_at",
             "latitude", "longitude", "altitude", "accuracy", "entityUuid", "entityTypeId")


def file_key(path: str) -> str:
    """The base name of the XML as the phone names it (``/storage/…/x.xml`` → ``x.xml``)."""
    name = PurePosixPath(str(path).replace("\\", "/")).name
    if not name or len(name) > 255:
        raise InvalidInput(f"'file' must be the XML's path on the phone (got {path!r}).",
                           field="file")
    return name


def _json_param(reg: Registry, name: str) -> str:
    return f"CAST(:{name} AS jsonb)" if reg.backend.value == "postgis" else f":{name}"


def record_metadata(reg: Registry, user: str, app_id: str | None, item: dict[str, Any],
                    apply: Any) -> None:
    """Call (a). ``apply(conn, submission_id, metadata)`` runs when the pair is complete."""
    key = file_key(str(item.get("file") or ""))
    meta = {k: item.get(k) for k in META_KEYS if k in item}
    with reg.write(origin="iaso", author=user) as conn:
        row = _row(conn, key)
        if row is None:
            conn.execute(text(
                "INSERT INTO iaso_upload (file_name, instance_uuid, app_id, metadata, "
                f"received_by) VALUES (:f, :u, :a, {_json_param(reg, 'm')}, :by)"),
                {"f": key, "u": str(item.get("id") or ""), "a": app_id,
                 "m": json.dumps(meta), "by": user})
            return
        conn.execute(text(
            f"UPDATE iaso_upload SET metadata = {_json_param(reg, 'm')}, instance_uuid = :u, "
            "app_id = COALESCE(app_id, :a) WHERE fid = :fid"),
            {"m": json.dumps(meta), "u": str(item.get("id") or ""), "a": app_id,
             "fid": row.fid})
        if row.submission_id is not None:
            apply(conn, int(row.submission_id), meta)


def record_submission(reg: Registry, user: str, xml_name: str, submission_id: int,
                      apply: Any) -> None:
    """Call (b), after the submission is stored: pair it and apply waiting metadata."""
    key = file_key(xml_name)
    with reg.write(origin="iaso", author=user) as conn:
        row = _row(conn, key)
        if row is None:
            conn.execute(text(
                "INSERT INTO iaso_upload (file_name, submission_id, received_by) "
                "VALUES (:f, :s, :by)"), {"f": key, "s": submission_id, "by": user})
            return
        conn.execute(text("UPDATE iaso_upload SET submission_id = :s WHERE fid = :fid"),
                     {"s": submission_id, "fid": row.fid})
        meta = json_value(row.metadata)
        if meta:
            apply(conn, submission_id, meta)


def _row(conn: Connection, key: str) -> Any:
    return conn.execute(
        text("SELECT fid, submission_id, metadata FROM iaso_upload WHERE file_name = :f"),
        {"f": key}).first()

