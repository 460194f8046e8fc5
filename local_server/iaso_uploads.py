"""Pairing the Iaso app's two upload calls, whatever their order.

The app sends a submission as (a) ``POST /api/instances/`` — metadata: instance uuid,
form, org unit, GPS, times, and the XML's path on the phone — and (b)
``POST /sync/form_upload/`` — the XML and its files.  Either may come first (network
errors reorder them) and either may be repeated.  Both are keyed by **the uploading user
and** the XML's base file name in the ``iaso_upload`` table (migration 0003):

* (a) stores the metadata;
* (b) stores the submission through the server's submission storage and records its id;
* whichever call completes the pair applies the metadata to the submission (org unit,
  location), in the same write transaction that records it — so the result is the same
  in both orders, and repeating a call changes nothing.

Why per user: phones name the XML ``<form>_<timestamp>.xml``, so two phones can send the
same name, and a key of the name alone let one user's metadata land on another user's
submission — by accident (each got the other's unit and GPS) or on purpose (a collector
re-tagged someone else's submission into their own area, where they could read it).  The
table's ``file_name`` column is UNIQUE, so the per-user key is stored in it as
``<user>/<base name>`` (a base name never holds ``/``, so the key is unambiguous; no
schema change).  Rows written before this keyed by the base name alone are still found
for the user who wrote them.

Metadata whose ``id`` is the instance id of a submission another user sent is refused
(403); in every case metadata only ever applies to the caller's own submission.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import Connection, text

from local_server.auth import Forbidden
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


def pair_key(user: str, name: str) -> str:
    """The ``file_name`` a user's upload of ``name`` is kept under: ``<user>/<name>``."""
    return f"{user}/{name}"


def _json_param(reg: Registry, name: str) -> str:
    return f"CAST(:{name} AS jsonb)" if reg.backend.value == "postgis" else f":{name}"


def record_metadata(reg: Registry, user: str, app_id: str | None, item: dict[str, Any],
                    apply: Any, *, admin: bool = False) -> None:
    """Call (a). ``apply(conn, submission_id, metadata)`` runs when the pair is complete.

    Raises Forbidden when ``item['id']`` names an instance another user sent — unless
    ``admin``: an admin may send again what a collector's phone sent (as they may resend
    its XML)."""
    name = file_key(str(item.get("file") or ""))
    meta = {k: item.get(k) for k in META_KEYS if k in item}
    instance = str(item.get("id") or "")
    with reg.write(origin="iaso", author=user) as conn:
        if instance and not admin:
            _refuse_others_instance(conn, user, instance)
        row = _row(conn, user, name)
        if row is None:
            conn.execute(text(
                "INSERT INTO iaso_upload (file_name, instance_uuid, app_id, metadata, "
                f"received_by) VALUES (:f, :u, :a, {_json_param(reg, 'm')}, :by)"),
                {"f": pair_key(user, name), "u": instance, "a": app_id,
                 "m": json.dumps(meta), "by": user})
            return
        conn.execute(text(
            f"UPDATE iaso_upload SET metadata = {_json_param(reg, 'm')}, instance_uuid = :u, "
            "app_id = COALESCE(app_id, :a) WHERE fid = :fid"),
            {"m": json.dumps(meta), "u": instance, "a": app_id, "fid": row.fid})
        if row.submission_id is not None:
            apply(conn, int(row.submission_id), meta)


def record_submission(reg: Registry, user: str, xml_name: str, submission_id: int,
                      apply: Any, *, admin: bool = False) -> None:
    """Call (b), after the submission is stored: pair it and apply waiting metadata.

    A submission another user sent is not paired — the caller's metadata never lands on
    someone else's submission — unless the caller is an ``admin`` sending again what a
    collector's phone sent (the metadata call may have been lost)."""
    name = file_key(xml_name)
    with reg.write(origin="iaso", author=user) as conn:
        if _sender(conn, submission_id) != user and not admin:
            return
        row = _row(conn, user, name)
        if row is None:
            conn.execute(text(
                "INSERT INTO iaso_upload (file_name, submission_id, received_by) "
                "VALUES (:f, :s, :by)"), {"f": pair_key(user, name), "s": submission_id,
                                          "by": user})
            return
        conn.execute(text("UPDATE iaso_upload SET submission_id = :s WHERE fid = :fid"),
                     {"s": submission_id, "fid": row.fid})
        meta = json_value(row.metadata)
        if meta:
            apply(conn, submission_id, meta)


def _sender(conn: Connection, submission_id: int) -> str | None:
    value = conn.execute(text("SELECT submitted_by FROM submission WHERE fid = :s"),
                         {"s": submission_id}).scalar()
    return None if value is None else str(value)


def _refuse_others_instance(conn: Connection, user: str, instance: str) -> None:
    """Instance ids are random uuids: another user's submission with this one (the XML's
    ``instanceID``, with or without ``uuid:``) means the metadata is aimed at their data.

    (An Iaso app id that differs from the XML's instanceID and was recorded for another
    user is not looked up: ``iaso_upload.instance_uuid`` has no index, so that would scan
    the table on every call — and such metadata is harmless anyway, as it can only pair
    with the caller's own upload.)"""
    other = conn.execute(text(
        "SELECT 1 FROM submission WHERE instance_id IN (:u, :uu) AND "
        "(submitted_by IS NULL OR submitted_by <> :by) LIMIT 1"),
        {"u": instance, "uu": f"uuid:{instance}", "by": user}).first()
    if other is not None:
        raise Forbidden(f"instance {instance}: it was sent by another user; the app can only "
                        "send the metadata of its own user's submissions.")


def _row(conn: Connection, user: str, name: str) -> Any:
    """The user's pair row for ``name``: keyed ``<user>/<name>``, or a row from before the
    per-user key that the user wrote — unless that old row was since paired with another
    user's submission (the old bug): then the user starts a row of their own."""
    return conn.execute(
        text("SELECT fid, submission_id, metadata FROM iaso_upload WHERE file_name = :k OR "
             "(file_name = :f AND received_by = :by AND (submission_id IS NULL OR "
             "EXISTS (SELECT 1 FROM submission s WHERE s.fid = iaso_upload.submission_id "
             "AND s.submitted_by = :by))) "
             "ORDER BY CASE WHEN file_name = :k THEN 0 ELSE 1 END LIMIT 1"),
        {"k": pair_key(user, name), "f": name, "by": user}).first()
