"""Submissions: store (durably, idempotently), read, list and export.

One row per ``instanceID`` (UNIQUE in the table), written in one transaction with its
attachments, so a submission the server acknowledged is on disk and retries never make a
second row:

* same instanceID, identical XML (byte for byte) → no new row; attachments not yet held
  are added (the ``*isIncomplete*`` continuation of ODK Collect) → ``duplicate``;
* same instanceID, other XML → :class:`~storage.errors.ConflictError` (409);
* a ``deprecatedID`` (an edit made on the phone) → a new row; the edited submission is
  marked ``superseded`` and its attachments not sent again are carried over;
* a resend or an edit of a submission is only taken from its sender or an admin
  (anyone else → 403, nothing changes): otherwise an identical XML would let another
  collector replace its photos and signatures.

Restricted users (a subtree) list the submissions whose unit is in their area, and
among those with no unit only their own.

The XML is parsed with defusedxml and any DOCTYPE is refused (so no entity declarations,
no external references, no XXE and no entity expansion); nesting is capped at
:data:`MAX_DEPTH` levels.  Its JSON reading keeps repeats as lists (the XForm's
``<repeat nodeset>`` paths), finds the org unit (the form's ``org_unit_field`` question,
holding a unit uuid or source ref) and the first geopoint answer.  Encrypted submissions
(``encrypted="yes"``) are stored as they came: the manifest XML and the ``.enc`` files.

Attachments live **inside the registry** (table ``attachment``, BLOB/BYTEA): one file to
back up, and the submission with its files commits atomically.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from sqlalchemy import Connection, exc, text

from local_server.forms import XFORMS_NS, current_version
from storage.backends import Backend
from storage.errors import ConflictError, InvalidInput, NotFound
from storage.registry import Registry, json_value

ORX_NS = "http://openrosa.org/xforms"
_ODD = re.compile(r"[^A-Za-z0-9._ ()+-]")


@dataclass
class Stored:
    """What happened to a posted submission."""

    outcome: str  # created | duplicate | updated (new attachments / completed) | edited
    fid: int
    instance_id: str
    form_id: str
    attachments_added: list[str] = field(default_factory=list)


def safe_filename(name: str) -> str:
    """An attachment name reduced to its last path part, odd characters replaced."""
    base = name.replace("\\", "/").split("/")[-1]
    base = "".join(ch for ch in base if ch.isprintable())
    base = _ODD.sub("_", base).strip(" .")
    return base[:200] or "attachment"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


#: Deepest element nesting a submission may have.  XForms nest groups and repeats a few
#: levels (tens at most); reading the instance (``to_json``) recurses once per level, so a
#: hostile ``<a>`` × 100,000 must be refused before it reaches Python's recursion limit.
MAX_DEPTH = 200


def parse_xml(xml: bytes) -> Element:
    """The submission's root element.  Any DOCTYPE is refused — ODK Collect and the Iaso
    app never send one, and with none there are no entities, no external DTD and no
    expansion to worry about — and so is nesting deeper than :data:`MAX_DEPTH`."""
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as error:
        raise InvalidInput(f"The submission XML was refused: it has a DOCTYPE (a DTD, entities "
                           f"or external references), which submissions never carry "
                           f"({type(error).__name__}).") from error
    except SafeET.ParseError as error:
        raise InvalidInput(f"The submission XML is not well-formed ({error}).") from error
    _check_depth(root)
    return root  # type: ignore[no-any-return]


def _check_depth(root: Element) -> None:
    """Refuse nesting deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"The submission XML nests elements more than {MAX_DEPTH} "
                               "levels deep; no form has that many nested groups.")
        stack.extend((child, depth + 1) for child in el)


def _meta_value(root: Element, name: str) -> str | None:
    for meta in root:
        if _local(meta.tag) == "meta":
            for child in meta:
                if _local(child.tag) == name and (child.text or "").strip():
                    return (child.text or "").strip()
    return None


@dataclass(frozen=True)
class FormShape:
    repeats: frozenset[str]
    geopoints: tuple[str, ...]


_shapes: dict[str, FormShape] = {}
_shapes_lock = threading.Lock()


def form_shape(md5: str, xform: bytes) -> FormShape:
    """Repeat and geopoint paths of an XForm (``/data/group/question``), cached by md5."""
    with _shapes_lock:
        if md5 in _shapes:
            return _shapes[md5]
    root = SafeET.fromstring(xform)
    repeats = frozenset(el.get("nodeset", "") for el in root.iter(f"{{{XFORMS_NS}}}repeat"))
    geos = tuple(el.get("nodeset", "") for el in root.iter(f"{{{XFORMS_NS}}}bind")
                 if (el.get("type") or "").split(":")[-1] == "geopoint")
    shape = FormShape(repeats, geos)
    with _shapes_lock:
        _shapes[md5] = shape
    return shape


def to_json(el: Element, repeats: frozenset[str] = frozenset(), path: str = "") -> Any:
    """An instance element → JSON: groups are objects, repeats lists, answers strings."""
    path = f"{path}/{_local(el.tag)}"
    if len(el) == 0:
        return el.text or ""
    out: dict[str, Any] = {}
    for child in el:
        name = _local(child.tag)
        cpath = f"{path}/{name}"
        value = to_json(child, repeats, path)
        if cpath in repeats:
            out.setdefault(name, []).append(value)
        elif name in out:
            if not isinstance(out[name], list):
                out[name] = [out[name]]
            out[name].append(value)
        else:
            out[name] = value
    return out


def _find(el: Element, name: str) -> str | None:
    for node in el.iter():
        if _local(node.tag) == name and len(node) == 0 and (node.text or "").strip():
            return (node.text or "").strip()
    return None


def _by_path(root: Element, path: str) -> str | None:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != _local(root.tag):
        return None
    nodes = [root]
    for part in parts[1:]:
        nodes = [c for n in nodes for c in n if _local(c.tag) == part]
    for node in nodes:
        if (node.text or "").strip():
            return (node.text or "").strip()
    return None


def parse_geopoint(value: str | None) -> tuple[float, float, float | None, float | None] | None:
    """``"lat lon alt acc"`` → (lon, lat, alt, acc), or None when it is not a point."""
    if not value:
        return None
    parts = value.strip().split()
    try:
        nums = [float(p) for p in parts[:4]]
    except ValueError:
        return None
    if len(nums) < 2 or not (-90 <= nums[0] <= 90 and -180 <= nums[1] <= 180):
        return None
    return (nums[1], nums[0], nums[2] if len(nums) > 2 else None,
            nums[3] if len(nums) > 3 else None)


def resolve_unit(conn: Connection, value: str | None) -> str | None:
    if not value:
        return None
    row = conn.execute(text(
        "SELECT uuid FROM org_unit WHERE uuid = :r OR source_ref = :r "
        "ORDER BY CASE WHEN uuid = :r THEN 0 ELSE 1 END, version_id DESC LIMIT 1"),
        {"r": value}).first()
    return None if row is None else str(row[0])


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def store_submission(reg: Registry, xml: bytes,
                     attachments: dict[str, tuple[bytes, str]] | None = None, *,
                     user: Any = None, device_id: str | None = None, incomplete: bool = False,
                     source: str = "openrosa", org_unit_uuid: str | None = None) -> Stored:
    """Store one posted submission (see the module docstring for duplicates and edits).

    Raises InvalidInput (bad XML, no instanceID), NotFound (unknown form), ConflictError
    (same instanceID, other XML) and auth.Forbidden (unit outside the user's area).
    """
    files = {safe_filename(k): v for k, v in (attachments or {}).items()}
    root = parse_xml(xml)
    form_id = root.get("id") or root.get("xmlns") or ""
    if not form_id:
        raise InvalidInput("The submission's root element has no id attribute (the form id).")
    instance_id = _meta_value(root, "instanceID")
    if not instance_id:
        raise InvalidInput("The submission has no meta/instanceID.")
    if len(instance_id) > 1000:
        raise InvalidInput("The instanceID is longer than 1000 characters.")
    deprecated_id = _meta_value(root, "deprecatedID")
    encrypted = (root.get("encrypted") or "").lower() in ("yes", "true")
    version = root.get("version") or root.get(f"{{{ORX_NS}}}version")
    for attempt in range(3):
        try:
            return _store(reg, xml, root, files, form_id=form_id, instance_id=instance_id,
                          deprecated_id=deprecated_id, encrypted=encrypted, version=version,
                          user=user, device_id=device_id, incomplete=incomplete,
                          source=source, org_unit_uuid=org_unit_uuid)
        except ConflictError as error:
            # two identical posts raced past the lookup (PostgreSQL): look again
            if attempt == 2 or not isinstance(error.__cause__, exc.IntegrityError):
                raise
    raise AssertionError("unreachable")


def _store(reg: Registry, xml: bytes, root: Element, files: dict[str, tuple[bytes, str]], *,
           form_id: str, instance_id: str, deprecated_id: str | None, encrypted: bool,
           version: str | None, user: Any, device_id: str | None, incomplete: bool,
           source: str, org_unit_uuid: str | None) -> Stored:
    from local_server import users as users_mod
    from local_server.auth import Forbidden

    author = getattr(user, "name", None)
    # read and parse first, outside the write lock
    with reg.read() as conn:
        fv = current_version(conn, form_id)
        data: Any = None
        point = None
        if not encrypted:
            shape = _shapes.get(fv.md5) or form_shape(fv.md5, bytes(conn.execute(
                text("SELECT xform FROM form_version WHERE fid = :v"),
                {"v": fv.version_fid}).scalar_one()))
            data = to_json(root, shape.repeats)
            for gpath in shape.geopoints:
                point = parse_geopoint(_by_path(root, gpath))
                if point is not None:
                    break
            if org_unit_uuid is None and fv.org_unit_field:
                ref = _find(root, fv.org_unit_field)
                org_unit_uuid = resolve_unit(conn, ref)
                if ref and org_unit_uuid is None:
                    raise InvalidInput(f"The answer to {fv.org_unit_field!r} ({ref!r}) is not "
                                       "an org unit of this registry.")
        if user is not None and org_unit_uuid is not None and not users_mod.unit_visible(
                conn, user, org_unit_uuid):
            raise Forbidden(f"The org unit of this submission is outside {user.name!r}'s area.")
        entity_xform = None
        if not encrypted and conn.execute(text("SELECT entity_dataset FROM form WHERE fid = :f"),
                                          {"f": fv.form_fid}).scalar():
            entity_xform = bytes(conn.execute(text(
                "SELECT xform FROM form_version WHERE fid = :v"),
                {"v": fv.version_fid}).scalar_one())
    data_json = json.dumps(data, ensure_ascii=False) if data is not None else None
    with _write_lock(reg), reg.write(origin="server", author=author,
                                     operation="submission") as conn:
        existing = conn.execute(text(
            "SELECT fid, xml, status, form_id, submitted_by FROM submission "
            "WHERE instance_id = :i"), {"i": instance_id}).first()
        if existing is not None:
            if bytes(existing[1]) != xml:
                raise ConflictError(
                    f"A submission with instanceID {instance_id} already exists, with other "
                    "content. Edit it on the phone (a new instanceID with deprecatedID) "
                    "instead of sending a changed copy.")
            if not _may_change(user, existing[4]):
                raise Forbidden(f"The submission {instance_id} was sent by another user: only "
                                "its sender (or an admin) can send it again or add files to it.")
            added = _add_files(conn, int(existing[0]), files)
            outcome = "updated" if added else "duplicate"
            if existing[2] == "incomplete" and not incomplete:
                conn.execute(text("UPDATE submission SET status = 'complete', updated_at = :n "
                                  "WHERE fid = :f"), {"n": _now(), "f": existing[0]})
                outcome = "updated"
            elif added:
                conn.execute(text("UPDATE submission SET updated_at = :n WHERE fid = :f"),
                             {"n": _now(), "f": existing[0]})
            return Stored(outcome, int(existing[0]), instance_id, str(existing[3]), added)
        old = None
        if deprecated_id:
            old = conn.execute(text("SELECT fid, status, submitted_by FROM submission "
                                    "WHERE instance_id = :i"), {"i": deprecated_id}).first()
            if old is not None and not _may_change(user, old[2]):
                raise Forbidden(f"The submission {deprecated_id} was sent by another user: only "
                                "its sender (or an admin) can send an edit of it.")
            if old is not None and old[1] == "superseded":
                raise ConflictError(f"The submission {deprecated_id} was already edited; edit "
                                    "its newest version.")
        fid = int(conn.execute(text(
            "INSERT INTO submission (instance_id, form_fid, form_id, form_version, "
            "org_unit_uuid, xml, xml_md5, data, longitude, latitude, altitude, accuracy, "
            "status, encrypted, deprecated_id, device_id, submitted_by, source) VALUES "
            "(:i, :ff, :f, :v, :ou, :x, :m, :d, :lon, :lat, :alt, :acc, :st, :enc, :dep, "
            ":dev, :by, :src) RETURNING fid"),
            {"i": instance_id, "ff": fv.form_fid, "f": form_id, "v": version,
             "ou": org_unit_uuid, "x": xml, "m": hashlib.md5(xml).hexdigest(),
             "d": data_json,
             "lon": point[0] if point else None, "lat": point[1] if point else None,
             "alt": point[2] if point else None, "acc": point[3] if point else None,
             "st": "incomplete" if incomplete else "complete", "enc": encrypted,
             "dep": deprecated_id, "dev": device_id, "by": author, "src": source,
             }).scalar_one())
        added = _add_files(conn, fid, files)
        outcome = "created"
        if entity_xform is not None:
            from local_server.entities import apply_submission

            apply_submission(conn, root, entity_xform, fid)
        if old is not None:
            conn.execute(text(
                "INSERT INTO attachment (submission_fid, filename, content_type, size, md5, "
                "content) SELECT :new, filename, content_type, size, md5, content FROM "
                "attachment a WHERE a.submission_fid = :old AND NOT EXISTS (SELECT 1 FROM "
                "attachment b WHERE b.submission_fid = :new AND b.filename = a.filename)"),
                {"new": fid, "old": old[0]})
            conn.execute(text("UPDATE submission SET status = 'superseded', updated_at = :n "
                              "WHERE fid = :f"), {"n": _now(), "f": old[0]})
            outcome = "edited"
    return Stored(outcome, fid, instance_id, form_id, added)


def _may_change(user: Any, submitted_by: str | None) -> bool:
    """May ``user`` resend, add files to or edit a submission ``submitted_by`` sent?  Its
    sender and admins may; anyone else could otherwise replace the sender's photos and
    signatures (an identical XML is enough) or supersede their submission.  ``user`` None
    is the server's own code (command line, tests), which may."""
    if user is None or getattr(user, "role", None) == "admin":
        return True
    return submitted_by is not None and submitted_by == getattr(user, "name", None)


_thread_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def _write_lock(reg: Registry) -> Iterator[None]:
    """Queue this process's submission writers on a lock (SQLite's own busy handler sleeps
    and retries, which makes long tails under load); PostgreSQL needs none."""
    if reg.backend is Backend.POSTGIS:
        yield
        return
    key = str(reg.location.display())
    lock = _thread_locks.setdefault(key, threading.Lock())
    with lock:
        yield


def _add_files(conn: Connection, fid: int, files: dict[str, tuple[bytes, str]]) -> list[str]:
    added = []
    held = {str(r[0]): str(r[1]) for r in conn.execute(
        text("SELECT filename, md5 FROM attachment WHERE submission_fid = :f"), {"f": fid})}
    for name, (content, ctype) in files.items():
        md5 = hashlib.md5(content).hexdigest()
        if held.get(name) == md5:
            continue
        if name in held:
            conn.execute(text("DELETE FROM attachment WHERE submission_fid = :f AND "
                              "filename = :n"), {"f": fid, "n": name})
        conn.execute(text(
            "INSERT INTO attachment (submission_fid, filename, content_type, size, md5, "
            "content) VALUES (:f, :n, :c, :s, :m, :b)"),
            {"f": fid, "n": name, "c": ctype or "application/octet-stream", "s": len(content),
             "m": md5, "b": content})
        added.append(name)
    return added


# --- reading -----------------------------------------------------------------------------

_COLS = ("s.fid, s.instance_id, s.form_id, s.form_version, s.org_unit_uuid, s.data, "
         "s.longitude, s.latitude, s.altitude, s.accuracy, s.status, s.encrypted, "
         "s.deprecated_id, s.device_id, s.submitted_by, s.source, s.received_at, "
         "s.updated_at, s.export_status")


def _row(row: Any, attachments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": int(row[0]), "instance_id": row[1], "form_id": row[2], "form_version": row[3],
        "org_unit_uuid": row[4], "data": json_value(row[5]), "longitude": row[6],
        "latitude": row[7], "altitude": row[8], "accuracy": row[9], "status": row[10],
        "encrypted": bool(row[11]), "deprecated_id": row[12], "device_id": row[13],
        "submitted_by": row[14], "source": row[15], "received_at": str(row[16]),
        "updated_at": str(row[17]), "export_status": row[18], "attachments": attachments,
    }


def list_submissions(reg: Registry, *, form: str | None = None, since: str | None = None,
                     page: int = 1, limit: int = 100, user: Any = None,
                     include_superseded: bool = False) -> dict[str, Any]:
    """Submissions, newest first: ``{"count", "page", "limit", "results"}``."""
    cond = ["1=1"]
    params: dict[str, Any] = {}
    if not include_superseded:
        cond.append("s.status <> 'superseded'")
    if form:
        cond.append("s.form_id = :f")
        params["f"] = form
    if since:
        cond.append("s.received_at >= :since")
        params["since"] = _since(since)
    where = " AND ".join(cond)
    page, limit = max(1, int(page)), max(1, min(int(limit), 100_000))
    with reg.read() as conn:
        if form and conn.execute(text("SELECT 1 FROM form WHERE form_id = :f"),
                                 {"f": form}).first() is None:
            raise NotFound(f"No form {form!r} on this server.")
        rows = conn.execute(text(f"SELECT {_COLS} FROM submission s WHERE {where} "
                                 "ORDER BY s.fid DESC"), params).all()
        if user is not None and not user.sees_everything:
            from local_server.users import unit_visible

            def visible(r: Any) -> bool:
                # a submission with no org unit is in nobody's area: only its sender sees it
                if r[4] is None:
                    return bool(r[14] == user.name)
                return unit_visible(conn, user, r[4])

            rows = [r for r in rows if visible(r)]
        count = len(rows)
        rows = rows[(page - 1) * limit: page * limit]
        atts = _attachments(conn, [int(r[0]) for r in rows])
    return {"count": count, "page": page, "limit": limit,
            "results": [_row(r, atts.get(int(r[0]), [])) for r in rows]}


def _since(value: str) -> str:
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise InvalidInput(f"--since {value!r}: expected a date or time such as 2026-11-28 "
                           "or 2026-11-28T10:00:00Z.") from error
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _attachments(conn: Connection, fids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for i in range(0, len(fids), 500):
        chunk = fids[i:i + 500]
        if not chunk:
            continue
        marks = ", ".join(str(int(f)) for f in chunk)
        for sf, name, ctype, size, md5 in conn.execute(text(
                "SELECT submission_fid, filename, content_type, size, md5 FROM attachment "
                f"WHERE submission_fid IN ({marks}) ORDER BY filename")):
            out.setdefault(int(sf), []).append(
                {"filename": name, "content_type": ctype, "size": int(size), "md5": md5})
    return out


def get_submission(reg: Registry, ident: int | str, *, with_xml: bool = False
                   ) -> dict[str, Any]:
    with reg.read() as conn:
        if isinstance(ident, int) or str(ident).isdigit():
            row = conn.execute(text(f"SELECT {_COLS}, s.xml FROM submission s WHERE s.fid = :i"),
                               {"i": int(ident)}).first()
        else:
            row = conn.execute(text(f"SELECT {_COLS}, s.xml FROM submission s "
                                    "WHERE s.instance_id = :i"), {"i": str(ident)}).first()
        if row is None:
            raise NotFound(f"No submission {ident!r}.")
        out = _row(row, _attachments(conn, [int(row[0])]).get(int(row[0]), []))
    if with_xml:
        out["xml"] = bytes(row[19]).decode("utf-8", "replace")
    return out


def attachment_content(reg: Registry, submission_id: int, filename: str) -> tuple[bytes, str]:
    with reg.read() as conn:
        row = conn.execute(text("SELECT content, content_type FROM attachment WHERE "
                                "submission_fid = :s AND filename = :n"),
                           {"s": int(submission_id), "n": filename}).first()
    if row is None:
        raise NotFound(f"Submission {submission_id} has no attachment {filename!r}.")
    return bytes(row[0]), str(row[1])


def count_submissions(reg: Registry) -> int:
    with reg.read() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM submission WHERE status <> 'superseded'")).scalar_one())


# --- export ------------------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON → ``group/question`` columns; repeats as JSON text."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                out.update(flatten(value, name))
            elif isinstance(value, list):
                out[name] = json.dumps(value, ensure_ascii=False)
            else:
                out[name] = value
    return out


EXPORT_FORMATS = ("csv", "xlsx", "geojson", "json")
_FIXED = ("instance_id", "form_id", "form_version", "org_unit_uuid", "latitude", "longitude",
          "status", "submitted_by", "device_id", "received_at", "attachments")


def export_submissions(reg: Registry, out: str | Path, *, fmt: str | None = None,
                       form: str | None = None, since: str | None = None) -> dict[str, Any]:
    """Write submissions to ``out`` (csv, xlsx, geojson or json) and their attachments to
    ``<out stem>_attachments.zip`` (``<instance>/<file>``)."""
    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"Format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}.")
    subs = list_submissions(reg, form=form, since=since, limit=100_000)["results"]
    subs.reverse()
    rows = []
    for s in subs:
        row = {k: s[k] for k in _FIXED if k != "attachments"}
        row["attachments"] = ";".join(a["filename"] for a in s["attachments"])
        row.update(flatten(s["data"]))
        rows.append(row)
    columns: list[str] = list(_FIXED)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "xlsx":
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("submissions")
        ws.append(columns)
        for row in rows:
            ws.append([_cell(row.get(c)) for c in columns])
        wb.save(out)
    elif fmt == "json":
        out.write_text(json.dumps(subs, ensure_ascii=False, indent=1, default=str),
                       encoding="utf-8")
    else:
        features = [{"type": "Feature", "properties": row,
                     "geometry": None if row["longitude"] is None else
                     {"type": "Point", "coordinates": [row["longitude"], row["latitude"]]}}
                    for row in rows]
        out.write_text(json.dumps({"type": "FeatureCollection", "features": features},
                                  ensure_ascii=False, default=str), encoding="utf-8")
    zip_path = None
    n_files = 0
    if any(s["attachments"] for s in subs):
        zip_path = out.with_name(out.stem + "_attachments.zip")
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for s in subs:
                folder = safe_filename(s["instance_id"].replace(":", "_"))
                for a in s["attachments"]:
                    content, _ = attachment_content(reg, s["id"], a["filename"])
                    zf.writestr(f"{folder}/{a['filename']}", content)
                    n_files += 1
    return {"file": str(out), "format": fmt, "submissions": len(subs),
            "attachments_zip": str(zip_path) if zip_path else None, "attachments": n_files}


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float)):
        return value
    return str(value)



