"""Submissions: store (durably, idempotently), read, list and export.

One row per ``instanceID`` (UNIQUE in the table), written in one transaction with its
attachments, so a submission the server acknowledged is on disk and retries never make a
second row:

* same instanceID, identical XML (byte for byte) → no new row; attachments not yet held
  are added (the ``*isIncomplete*`` continuation of ODK Collect) → ``duplicate``; a held
  file is never replaced: other bytes under its name are kept as ``name (2).ext``
  (:func:`_add_files`);
* same instanceID, other XML → :class:`~storage.errors.ConflictError` (409);
* a ``deprecatedID`` (an edit made on the phone) → a new row; the edited submission is
  marked ``superseded`` and its attachments not sent again are carried over; when the
  edit came first, the original is stored ``superseded`` on arrival
  (:func:`_edited_before_arrival`);
* a resend or an edit of a submission is only taken from its sender or an admin
  (anyone else → 403, nothing changes): otherwise an identical XML would let another
  collector replace its photos and signatures.

Restricted users (a subtree) list the submissions whose unit is in their area — a unit
made on a phone and waiting for review lies where its creation request puts it — and
among those with no unit, or a unit the registry does not hold, only their own.

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
    #: a file sent under the name of one already held with other bytes → the name it was
    #: kept under (nothing received is ever replaced; the phone is told)
    attachments_renamed: dict[str, str] = field(default_factory=dict)
    #: the submission arrived after an edit of it (deprecatedID): stored as superseded
    superseded_on_arrival: bool = False


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
            added, renamed = _add_files(conn, int(existing[0]), files)
            outcome = "updated" if added else "duplicate"
            if existing[2] == "incomplete" and not incomplete:
                conn.execute(text("UPDATE submission SET status = 'complete', updated_at = :n "
                                  "WHERE fid = :f"), {"n": _now(), "f": existing[0]})
                outcome = "updated"
            elif added:
                conn.execute(text("UPDATE submission SET updated_at = :n WHERE fid = :f"),
                             {"n": _now(), "f": existing[0]})
            return Stored(outcome, int(existing[0]), instance_id, str(existing[3]), added,
                          renamed)
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
        late = _edited_before_arrival(conn, instance_id, author)
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
             "st": "superseded" if late is not None else
             "incomplete" if incomplete else "complete", "enc": encrypted,
             "dep": deprecated_id, "dev": device_id, "by": author, "src": source,
             }).scalar_one())
        added, renamed = _add_files(conn, fid, files)
        outcome = "created"
        if late is not None:
            # the edit is the newer word: it gets the files it lacks (as an edit made in
            # order would have carried them over), the entity is not set back to the
            # original's values
            _carry_attachments(conn, fid, late)
        elif entity_xform is not None:
            from local_server.entities import apply_submission

            apply_submission(conn, root, entity_xform, fid)
        if old is not None:
            _carry_attachments(conn, int(old[0]), fid)
            conn.execute(text("UPDATE submission SET status = 'superseded', updated_at = :n "
                              "WHERE fid = :f"), {"n": _now(), "f": old[0]})
            outcome = "edited"
    return Stored(outcome, fid, instance_id, form_id, added, renamed, late is not None)


def _carry_attachments(conn: Connection, old: int, new: int) -> None:
    """Copy the files of submission ``old`` that ``new`` (its edit) does not hold."""
    conn.execute(text(
        "INSERT INTO attachment (submission_fid, filename, content_type, size, md5, "
        "content) SELECT :new, filename, content_type, size, md5, content FROM "
        "attachment a WHERE a.submission_fid = :old AND NOT EXISTS (SELECT 1 FROM "
        "attachment b WHERE b.submission_fid = :new AND b.filename = a.filename)"),
        {"new": new, "old": old})


def _edited_before_arrival(conn: Connection, instance_id: str,
                           author: str | None) -> int | None:
    """The stored edit of a submission arriving only now (its ``deprecatedID`` names it),
    or None.  Phones queue and retry, the Iaso app uploads in its own order, two workers
    race: an edit can come first.  The original is then stored as ``superseded`` so
    lists and exports count the submission once.  Only an edit its sender could have
    made counts (the same sender, or an admin's edit): anyone else naming a foreign
    instanceID must not be able to hide the original when it arrives.

    ``deprecated_id`` is indexed (migration 0010): without the index this lookup read
    every stored XML on each submission (it comes after them in the row), a third of
    the submissions benchmark's throughput."""
    for fid, by in conn.execute(text(
            "SELECT fid, submitted_by FROM submission WHERE deprecated_id = :i "
            "AND status <> 'deleted' ORDER BY fid"), {"i": instance_id}):
        if by is None or by == author or author is None or conn.execute(text(
                "SELECT 1 FROM app_user WHERE name = :n AND role = 'admin'"),
                {"n": by}).first() is not None:
            return int(fid)
    return None


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


def _add_files(conn: Connection, fid: int, files: dict[str, tuple[bytes, str]]
               ) -> tuple[list[str], dict[str, str]]:
    """Add the files not yet held; the names added and ``{sent name: kept name}``.

    A file already held is never replaced (as ODK Central keeps the first): the phone
    was told it was received, and a retry with other bytes under the same name is more
    often a truncated or re-encoded copy than a correction (a correction is an edit,
    with a new instanceID).  Such a file is kept beside it as ``name (2).ext``
    (``(3)``…), so nothing is lost either way, and sending it again adds nothing."""
    added: list[str] = []
    renamed: dict[str, str] = {}
    held = {str(r[0]): str(r[1]) for r in conn.execute(
        text("SELECT filename, md5 FROM attachment WHERE submission_fid = :f"), {"f": fid})}
    for sent, (content, ctype) in files.items():
        md5 = hashlib.md5(content).hexdigest()
        name = sent
        if sent in held:
            copy = None if held[sent] == md5 else _copy_name(sent, md5, held)
            if copy is None:
                continue
            name = renamed[sent] = copy
        conn.execute(text(
            "INSERT INTO attachment (submission_fid, filename, content_type, size, md5, "
            "content) VALUES (:f, :n, :c, :s, :m, :b)"),
            {"f": fid, "n": name, "c": ctype or "application/octet-stream", "s": len(content),
             "m": md5, "b": content})
        held[name] = md5
        added.append(name)
    return added, renamed


def _copy_name(name: str, md5: str, held: dict[str, str]) -> str | None:
    """The first free ``stem (k).ext`` for another file named ``name``; None when one of
    them already holds these bytes (a resend of the same other file)."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    for k in range(2, 10_000):
        candidate = f"{stem} ({k}){dot}{ext}"
        if candidate not in held:
            return candidate
        if held[candidate] == md5:
            return None
    raise ConflictError(f"Too many different files named {name!r} for one submission.")


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


def _where(form: str | None, since: str | None, include_superseded: bool = False
           ) -> tuple[str, dict[str, Any]]:
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
    return " AND ".join(cond), params


def list_submissions(reg: Registry, *, form: str | None = None, since: str | None = None,
                     page: int = 1, limit: int = 100, user: Any = None,
                     include_superseded: bool = False) -> dict[str, Any]:
    """Submissions, newest first: ``{"count", "page", "limit", "results"}``."""
    where, params = _where(form, since, include_superseded)
    page, limit = max(1, int(page)), max(1, min(int(limit), 100_000))
    with reg.read() as conn:
        if form and conn.execute(text("SELECT 1 FROM form WHERE form_id = :f"),
                                 {"f": form}).first() is None:
            raise NotFound(f"No form {form!r} on this server.")
        rows = conn.execute(text(f"SELECT {_COLS} FROM submission s WHERE {where} "
                                 "ORDER BY s.fid DESC"), params).all()
        if user is not None and not user.sees_everything:
            from local_server.users import unit_known, unit_visible

            def visible(r: Any) -> bool:
                # a submission with no org unit, or with a unit this registry does not
                # hold (a phone-made unit whose creation was rejected), is in nobody's
                # area: only its sender sees it
                if r[4] is None:
                    return bool(r[14] == user.name)
                if unit_visible(conn, user, r[4]):
                    return True
                return bool(r[14] == user.name) and not unit_known(conn, r[4])

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
#: what a form answer named like a fixed column (or like an answer already renamed) gets
#: in front of its name: ``status`` → ``data/status`` — the answer's path under the
#: instance root, as ODK's own exports name columns by group path
ANSWER_PREFIX = "data/"
#: submissions read per query by the export (memory stays bounded at any count)
EXPORT_PAGE = 1000
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")


def export_row(sub: dict[str, Any]) -> dict[str, Any]:
    """One exported row: the fixed columns, then the form's answers (``group/question``).

    An answer never overwrites a fixed column: ``status``, ``latitude``, ``form_version``…
    are ordinary XLSForm question names, so a colliding answer is kept beside the column
    as ``data/<name>`` (again prefixed while that name is taken too)."""
    row = {k: sub[k] for k in _FIXED if k != "attachments"}
    row["attachments"] = ";".join(a["filename"] for a in sub["attachments"])
    for key, value in flatten(sub["data"]).items():
        name = key
        while name in row:
            name = ANSWER_PREFIX + name
        row[name] = value
    return row


def _export_pages(reg: Registry, where: str, params: dict[str, Any], upto: int,
                  columns: str = _COLS) -> Iterator[list[Any]]:
    """The matching rows up to fid ``upto``, oldest first, :data:`EXPORT_PAGE` at a time
    (keyset paging: each page is one short read, nothing is held between pages)."""
    last = 0
    while True:
        with reg.read() as conn:
            rows: list[Any] = list(conn.execute(text(
                f"SELECT {columns} FROM submission s WHERE {where} AND s.fid > :last_fid "
                f"AND s.fid <= :upto ORDER BY s.fid LIMIT {int(EXPORT_PAGE)}"),
                params | {"last_fid": last, "upto": upto}).all())
            if not rows:
                return
            last = int(rows[-1][0])
            if columns == _COLS:
                atts = _attachments(conn, [int(r[0]) for r in rows])
                rows = [_row(r, atts.get(int(r[0]), [])) for r in rows]
        yield rows


def attachments_zip_path(out: str | Path) -> Path:
    """Where an export's attachments go: ``<OUT>_attachments.zip``, after the *whole* output
    name (``visits.csv`` → ``visits.csv_attachments.zip``), so ``visits.csv`` and
    ``visits.xlsx`` beside each other never share — and overwrite — one zip."""
    out = Path(out)
    return out.with_name(out.name + "_attachments.zip")


def attachment_folder(instance_id: str) -> str:
    """The zip folder of one submission's files: its instanceID with ``:`` (and any other
    character unsafe in a file name on Windows or macOS) as ``_`` — ``uuid:1f0c…`` →
    ``uuid_1f0c…``."""
    return safe_filename(instance_id.replace(":", "_"))


def export_submissions(reg: Registry, out: str | Path, *, fmt: str | None = None,
                       form: str | None = None, since: str | None = None,
                       force: bool = False) -> dict[str, Any]:
    """Write submissions to ``out`` (csv, xlsx, geojson or json) and their attachments to
    ``<out>_attachments.zip`` (:func:`attachments_zip_path`; one folder per submission,
    :func:`attachment_folder`).

    An existing ``out`` or zip is replaced only with ``force`` (:class:`ConflictError`
    otherwise, as ``georeg export`` refuses): an earlier export — perhaps the only copy of
    last month's visits — is never overwritten by a repeated command.  With ``force``, a
    zip left by an earlier export is removed when this one has no attachments, so the
    files beside ``out`` always belong to it.  ``out`` may never be the registry itself.

    Every matching submission is written, oldest first, whatever their number: they are
    read in pages twice (the columns — the union of every submission's answers — must be
    known before the first row), both times up to the newest one present when the export
    began, so a submission arriving meanwhile is in neither pass rather than in half.

    Text cells are written as text, never as formulas: in CSV a cell starting with
    ``= + - @``, a tab or a CR gets a leading ``'`` (the guard of the org-unit export,
    ``sync.formats.tabular``; a plain negative number such as ``-3.5`` is left as it
    is), in XLSX a text starting with ``=`` is stored as a string cell."""
    from sync.formats.tabular import _GUARDED_FIRST, _csv_value, _write_xlsx

    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "csv").lower()
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"Format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}.")
    zip_path = attachments_zip_path(out)
    _refuse_registry_files(reg, [out, zip_path])
    existing = [p for p in (out, zip_path) if p.exists()]
    if existing and not force:
        raise ConflictError(
            f"{' and '.join(str(p) for p in existing)} already exist(s) (an earlier export?); "
            "choose another --out, or pass --force to replace "
            + ("them." if len(existing) > 1 else "it."))
    where, params = _where(form, since)
    with reg.read() as conn:
        if form and conn.execute(text("SELECT 1 FROM form WHERE form_id = :f"),
                                 {"f": form}).first() is None:
            raise NotFound(f"No form {form!r} on this server.")
        upto = int(conn.execute(text("SELECT coalesce(max(fid), 0) FROM submission")
                                ).scalar_one())
    columns: list[str] = list(_FIXED)
    if fmt in ("csv", "xlsx"):
        seen = set(columns)
        empty: dict[str, Any] = {k: None for k in _FIXED} | {"attachments": []}
        for page in _export_pages(reg, where, params, upto, "s.fid, s.data"):
            for r in page:
                for key in export_row(empty | {"data": json_value(r[1])}):
                    if key not in seen:
                        seen.add(key)
                        columns.append(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    counts = {"submissions": 0, "attachments": 0}
    zf: zipfile.ZipFile | None = None
    folders: set[str] = set()  # two instanceIDs that read alike once made safe stay apart

    def subs() -> Iterator[dict[str, Any]]:
        nonlocal zf
        for page in _export_pages(reg, where, params, upto):
            for s in page:
                counts["submissions"] += 1
                if s["attachments"]:
                    if zf is None:
                        zf = zipfile.ZipFile(zip_part, "w", zipfile.ZIP_DEFLATED)
                    folder = base = attachment_folder(s["instance_id"])
                    n = 1
                    while folder in folders:
                        n += 1
                        folder = f"{base} ({n})"
                    folders.add(folder)
                    for a in s["attachments"]:
                        content, _ = attachment_content(reg, s["id"], a["filename"])
                        zf.writestr(f"{folder}/{a['filename']}", content)
                        counts["attachments"] += 1
                yield s

    part = out.with_name(out.name + ".part")
    zip_part = zip_path.with_name(zip_path.name + ".part")
    try:
        if fmt == "csv":
            with part.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow([_csv_value(c) for c in columns])
                for s in subs():
                    row = export_row(s)
                    writer.writerow([_csv_text(row.get(c), _csv_value, _GUARDED_FIRST)
                                     for c in columns])
        elif fmt == "xlsx":
            _write_xlsx(part, columns, ([_cell(export_row(s).get(c)) for c in columns]
                                        for s in subs()), "submissions", warnings)
        else:
            with part.open("w", encoding="utf-8") as fh:
                fh.write("[\n" if fmt == "json" else
                         '{"type": "FeatureCollection", "features": [\n')
                for i, s in enumerate(subs()):
                    if fmt == "json":
                        item: Any = s
                    else:
                        # the submission's own point, never an answer named latitude
                        point = (None if s["longitude"] is None or s["latitude"] is None
                                 else {"type": "Point",
                                       "coordinates": [s["longitude"], s["latitude"]]})
                        item = {"type": "Feature", "properties": export_row(s),
                                "geometry": point}
                    fh.write((",\n" if i else "") + json.dumps(
                        item, ensure_ascii=False, default=str,
                        indent=1 if fmt == "json" else None))
                fh.write("\n]" if fmt == "json" else "\n]}")
        if zf is not None:
            zf.close()
            zip_part.replace(zip_path)
        else:  # (only with force: else the zip's existence refused the export above)
            zip_path.unlink(missing_ok=True)
        part.replace(out)
    finally:
        if zf is not None:
            zf.close()
        part.unlink(missing_ok=True)
        zip_part.unlink(missing_ok=True)
    return {"file": str(out), "format": fmt, "submissions": counts["submissions"],
            "attachments_zip": str(zip_path) if zf is not None else None,
            "attachments": counts["attachments"], "warnings": warnings}


def _refuse_registry_files(reg: Registry, targets: list[Path]) -> None:
    """An export never writes over the registry or its SQLite companions (``--force``
    would otherwise replace the registry with a CSV)."""
    if reg.location.path is None:
        return
    base = Path(reg.location.path).resolve()
    own = {base} | {base.with_name(base.name + s) for s in ("-wal", "-shm", "-journal")}
    for target in targets:
        if target.resolve() in own:
            raise InvalidInput(f"{target} is the registry (or one of its files): choose "
                               "another --out.")


def _csv_text(value: Any, guard: Any, first: str) -> Any:
    """A CSV cell: plain negative numbers as they are, anything else through ``guard``
    (the org-unit export's; ``first``: the characters it may guard)."""
    if value is None:
        return ""
    if type(value) is str and (not value or value[0] not in first or _NUMBER.match(value)):
        return value  # (most cells: decided without calling the guard)
    return guard(value)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (int, float)):
        return value
    return str(value)



