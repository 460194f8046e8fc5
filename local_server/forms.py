"""Forms served to ODK Collect and the Iaso app: add (XLSForm or XForm), list, versions,
media, and the org-unit list published as a CSV media file.

* An XLSForm (``.xlsx``/``.xls``) is converted with pyxform; its errors name the sheet,
  row and problem.  A ready XForm (``.xml``) is checked (well-formed, safe XML, an
  ``h:html`` with a model and a primary instance carrying an ``id``) and stored byte for
  byte, so forms built with other ODK tools work.
* Re-adding a form makes a new version (its ``version`` from the settings sheet / the
  instance's ``version`` attribute; a form without one gets a time stamp).  Adding the
  same bytes again changes nothing; another XForm under an existing version is refused.
* Media: ``--media DIR`` (every file in it), or the previous version's media carried over.
* **Org-unit list**: a form that references ``orgunits.csv`` (``select_one_from_file
  orgunits.csv``, ``pulldata('orgunits', …)``, ``jr://file-csv/orgunits.csv``) gets that
  file built from the default version of the registry's first source — columns ``name``
  (unit uuid), ``label``, ``ref``, ``code``, ``type``, ``level``, ``parent`` — limited to
  the requesting user's subtrees.  Its md5 (the manifest hash) changes when the list does,
  so Collect downloads the new list.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import mimetypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from sqlalchemy import Connection, text

from local_server.entities import datasets as entity_datasets
from local_server.entities import entity_csv
from storage.errors import ConflictError, InvalidInput, NotFound
from storage.registry import Registry

XFORMS_NS = "http://www.w3.org/2002/xforms"
HTML_NS = "http://www.w3.org/1999/xhtml"
ORG_UNIT_MEDIA = "orgunits.csv"
_MEDIA_REF = re.compile(rb"jr://(?:file|file-csv|images|audio|video)/([^\"'<>\s)]+)")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._ ()+-]{1,200}$")


@dataclass(frozen=True)
class XFormInfo:
    form_id: str
    version: str | None
    title: str
    media: tuple[str, ...]


def parse_xform(xml: bytes, source: str = "the XForm") -> XFormInfo:
    """Check an XForm and read its id, version, title and referenced media files."""
    try:
        root = SafeET.fromstring(xml, forbid_dtd=True)  # (XForms never need a DOCTYPE)
    except DefusedXmlException as error:
        raise InvalidInput(f"{source}: refused unsafe XML: it has a DOCTYPE (a DTD, entities "
                           f"or external references), which XForms never need "
                           f"({type(error).__name__}).") from error
    except SafeET.ParseError as error:
        raise InvalidInput(f"{source}: not well-formed XML ({error}).") from error
    if root.tag != f"{{{HTML_NS}}}html":
        raise InvalidInput(f"{source}: the root element must be h:html (an XForm), not "
                           f"{root.tag!r}.")
    model = root.find(f"{{{HTML_NS}}}head/{{{XFORMS_NS}}}model")
    if model is None:
        raise InvalidInput(f"{source}: no <model> in <h:head>.")
    instance = model.find(f"{{{XFORMS_NS}}}instance")
    if instance is None or len(instance) == 0:
        raise InvalidInput(f"{source}: the model has no primary <instance>.")
    primary: Element = instance[0]
    form_id = primary.get("id")
    if not form_id:
        raise InvalidInput(f"{source}: the primary instance <{primary.tag}> has no id "
                           "attribute (the form id).")
    title_el = root.find(f"{{{HTML_NS}}}head/{{{HTML_NS}}}title")
    title = (title_el.text or "").strip() if title_el is not None else ""
    version = primary.get("version") or primary.get(
        "{http://openrosa.org/xforms}version") or None
    media = sorted({m.decode("utf-8", "replace") for m in _MEDIA_REF.findall(xml)})
    if b"pulldata('orgunits'" in xml or b'pulldata("orgunits"' in xml:
        media = sorted({*media, ORG_UNIT_MEDIA})
    return XFormInfo(form_id, version, title or form_id, tuple(media))


def _xform_parts(xml: bytes) -> tuple[list[str], list[str]]:
    """The questions of an XForm (the last step of each bind's nodeset, ``meta/`` left
    out) and, among them, those whose choices come from the org-unit list
    (``itemset`` on ``instance('orgunits')``): the candidates for ``org_unit_field``."""
    root = SafeET.fromstring(xml, forbid_dtd=True)
    names: list[str] = []
    for bind in root.iter(f"{{{XFORMS_NS}}}bind"):
        steps = [p for p in (bind.get("nodeset") or "").split("/") if p]
        if len(steps) >= 2 and "meta" not in steps[1:-1] and steps[-1] not in names:
            names.append(steps[-1])
    units: list[str] = []
    for control in root.iter():
        ref = control.get("ref") or ""
        itemset = control.find(f"{{{XFORMS_NS}}}itemset")
        if ref and itemset is not None and "'orgunits'" in (itemset.get("nodeset") or "")\
                .replace('"', "'"):
            name = ref.rstrip("/").rsplit("/", 1)[-1]
            if name not in units:
                units.append(name)
    return names, units


def check_org_unit_field(xml: bytes, field: str, source: str) -> None:
    """Refuse an ``org_unit_field`` the form has no question for.

    Submissions find their unit by this question's answer, and the area check of a
    restricted collector depends on it: a misspelt name would silently store every
    submission of the form without a unit — outside every area check and invisible to
    the area's reviewers."""
    names, units = _xform_parts(xml)
    if field in names:
        return
    if units:
        hint = ("its questions on the org-unit list (orgunits.csv) are "
                + ", ".join(repr(u) for u in units))
    elif names:
        shown = names[:20]
        hint = ("it has no question on the org-unit list (select_one_from_file orgunits.csv); "
                "its questions are " + ", ".join(repr(n) for n in shown)
                + (f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""))
    else:
        hint = "it has no questions"
    raise InvalidInput(f"{source}: --org-unit-field {field!r} is not a question of this form; "
                       f"{hint}.", field="org_unit_field")


def convert_xlsform(path: Path) -> bytes:
    from pyxform.errors import PyXFormError
    from pyxform.xls2xform import convert

    try:
        result = convert(str(path), validate=False, pretty_print=True)
    except PyXFormError as error:
        raise InvalidInput(f"{path.name}: {error}", file=str(path)) from error
    except Exception as error:  # pyxform raises many kinds on bad workbooks
        raise InvalidInput(f"{path.name}: cannot be read as an XLSForm ({error}).",
                           file=str(path)) from error
    return result.xform.encode("utf-8")


def _media_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    if not _SAFE_NAME.match(base) or base in (".", ".."):
        raise InvalidInput(f"Media file name {name!r}: use letters, digits, '.', '_', '-'.")
    return base


def _content_type(name: str) -> str:
    if name.endswith(".csv"):
        return "text/csv"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def add_form(reg: Registry, path: str | Path, *, media: str | Path | None = None,
             project: str | None = None, org_unit_field: str | None = None,
             author: str | None = None) -> dict[str, Any]:
    """Add a form, or a new version of it; returns the stored version."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"No form file at {path}.")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls"):
        source: bytes | None = path.read_bytes()
        xform = convert_xlsform(path)
    elif suffix == ".xml":
        source = None
        xform = path.read_bytes()
    else:
        raise InvalidInput(f"{path.name}: expected an XLSForm (.xlsx, .xls) or an XForm "
                           "(.xml).")
    info = parse_xform(xform, path.name)
    if org_unit_field is not None:
        check_org_unit_field(xform, org_unit_field, path.name)
    from local_server.entities import declared

    dataset, _saveto = declared(xform, path.name)
    files: dict[str, bytes] = {}
    if media is not None:
        mdir = Path(media)
        if not mdir.is_dir():
            raise NotFound(f"No media directory at {mdir}.")
        for item in sorted(mdir.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                files[_media_name(item.name)] = item.read_bytes()
    md5 = hashlib.md5(xform).hexdigest()
    with reg.write(origin="server", author=author, operation="forms add") as conn:
        project_fid = None
        if project:
            project_fid = conn.execute(text("SELECT fid FROM project WHERE app_id = :a"),
                                       {"a": project}).scalar()
            if project_fid is None:
                raise NotFound(f"No project with app id {project!r}. Add it with 'georeg "
                               f"projects add REG NAME --app-id {project}'.")
        row = conn.execute(text("SELECT fid, org_unit_field, project_id FROM form "
                                "WHERE form_id = :f"), {"f": info.form_id}).first()
        now = _now()
        before = None if row is None else row[1]
        project_before = None if row is None or row[2] is None else conn.execute(
            text("SELECT app_id FROM project WHERE fid = :p"), {"p": row[2]}).scalar()
        if row is not None and org_unit_field is None and before:
            # a new version must still have the question the stored setting names
            check_org_unit_field(xform, str(before), path.name)
        if row is None:
            form_fid = conn.execute(
                text("INSERT INTO form (form_id, title, project_id, org_unit_field, "
                     "entity_dataset) VALUES (:f, :t, :p, :o, :e) RETURNING fid"),
                {"f": info.form_id, "t": info.title, "p": project_fid,
                 "o": org_unit_field, "e": dataset}).scalar_one()
            previous = None
        else:
            form_fid = int(row[0])
            previous = conn.execute(
                text("SELECT fid, version, md5 FROM form_version WHERE form_fid = :f "
                     "ORDER BY fid DESC LIMIT 1"), {"f": form_fid}).first()
            sets = ["title = :t", "updated_at = :now", "entity_dataset = :e"]
            params: dict[str, Any] = {"t": info.title, "now": now, "fid": form_fid,
                                      "e": dataset}
            if project_fid is not None:
                sets.append("project_id = :p")
                params["p"] = project_fid
            if org_unit_field is not None:
                sets.append("org_unit_field = :o")
                params["o"] = org_unit_field
            conn.execute(text(f"UPDATE form SET {', '.join(sets)} WHERE fid = :fid"), params)
        if info.version is None and previous is not None and previous[2] == md5:
            version = str(previous[1])  # the same unversioned form again: no new version
        else:
            version = info.version or dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
        same = conn.execute(
            text("SELECT fid, md5 FROM form_version WHERE form_fid = :f AND version = :v"),
            {"f": form_fid, "v": version}).first()
        if same is not None and same[1] != md5:
            raise ConflictError(
                f"{path.name}: form {info.form_id!r} already has a version {version!r} with "
                "other content. Change the version (settings sheet, 'version' column) to "
                "publish a new one.")
        if same is not None:
            version_fid = int(same[0])
            created = False
        else:
            version_fid = int(conn.execute(
                text("INSERT INTO form_version (form_fid, version, source_name, xlsform, "
                     "xform, md5, created_by) VALUES (:f, :v, :n, :x, :xf, :m, :by) "
                     "RETURNING fid"),
                {"f": form_fid, "v": version, "n": path.name, "x": source, "xf": xform,
                 "m": md5, "by": author}).scalar_one())
            created = True
            if not files and previous is not None:
                conn.execute(text(
                    "INSERT INTO form_media (form_version_fid, filename, content_type, "
                    "content, md5) SELECT :new, filename, content_type, content, md5 "
                    "FROM form_media WHERE form_version_fid = :old"),
                    {"new": version_fid, "old": previous[0]})
        media_changed: list[str] = []  # files this call added or replaced in the version
        for name, content in files.items():
            held_md5 = conn.execute(text(
                "SELECT md5 FROM form_media WHERE form_version_fid = :v AND filename = :n"),
                {"v": version_fid, "n": name}).scalar()
            if held_md5 == hashlib.md5(content).hexdigest():
                continue  # the same bytes again: nothing to do, nothing to report
            media_changed.append(name)
            conn.execute(text("DELETE FROM form_media WHERE form_version_fid = :v AND "
                              "filename = :n"), {"v": version_fid, "n": name})
            conn.execute(text("INSERT INTO form_media (form_version_fid, filename, "
                              "content_type, content, md5) VALUES (:v, :n, :c, :b, :m)"),
                         {"v": version_fid, "n": name, "c": _content_type(name), "b": content,
                          "m": hashlib.md5(content).hexdigest()})
        held = {str(n) for (n,) in conn.execute(text(
            "SELECT filename FROM form_media WHERE form_version_fid = :v"), {"v": version_fid})}
        generated = set(entity_datasets(conn))
    # media the stored version already holds (an earlier --media, or carried over) and
    # the generated lists (org units, entity datasets) are not missing
    missing = [m for m in info.media if m not in held and m != ORG_UNIT_MEDIA
               and not (m.endswith(".csv") and m[:-4] in generated)]
    field = org_unit_field if org_unit_field is not None else before
    # a re-add that only attaches the form to a project changes what the Iaso app is
    # served: the caller must not be told "Unchanged"
    project_changed = (row is not None and project_fid is not None
                       and row[2] != project_fid)
    return {"form_id": info.form_id, "title": info.title, "version": version, "md5": md5,
            "created": created, "media": sorted(files), "missing_media": missing,
            "media_changed": [] if created else media_changed,
            "project": project, "project_changed": project_changed,
            "project_before": project_before if project_changed else None,
            "org_unit_field": field,
            "org_unit_candidates": _xform_parts(xform)[1],
            "org_unit_field_before": before,
            "org_unit_field_changed": row is not None and field != before}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FormVersion:
    form_fid: int
    form_id: str
    title: str
    version: str
    version_fid: int
    md5: str
    org_unit_field: str | None
    project_app_id: str | None


def current_version(conn: Connection, form_id: str) -> FormVersion:
    row = conn.execute(text(
        "SELECT f.fid, f.form_id, f.title, v.version, v.fid, v.md5, f.org_unit_field, "
        "p.app_id FROM form f JOIN form_version v ON v.form_fid = f.fid "
        "LEFT JOIN project p ON p.fid = f.project_id WHERE f.form_id = :f AND f.active "
        "ORDER BY v.fid DESC LIMIT 1"), {"f": form_id}).first()
    if row is None:
        raise NotFound(f"No form {form_id!r} on this server.")
    return FormVersion(int(row[0]), row[1], row[2], row[3], int(row[4]), row[5], row[6], row[7])


def list_forms(reg: Registry, *, form_id: str | None = None,
               project: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT f.form_id, f.title, v.version, v.md5, v.created_at, p.app_id, f.org_unit_field, "
        "(SELECT count(*) FROM form_version x WHERE x.form_fid = f.fid), "
        "(SELECT count(*) FROM submission s WHERE s.form_fid = f.fid AND s.status <> "
        "'superseded'), v.fid, f.fid "
        "FROM form f JOIN form_version v ON v.fid = (SELECT max(fid) FROM form_version "
        "WHERE form_fid = f.fid) LEFT JOIN project p ON p.fid = f.project_id WHERE f.active")
    params: dict[str, Any] = {}
    if form_id is not None:
        sql += " AND f.form_id = :f"
        params["f"] = form_id
    if project is not None:
        sql += " AND p.app_id = :p"
        params["p"] = project
    with reg.read() as conn:
        rows = conn.execute(text(sql + " ORDER BY f.form_id"), params).all()
        media = _media_names(conn, [int(r[9]) for r in rows])
    return [{"form_id": r[0], "title": r[1], "version": r[2], "md5": r[3],
             "created_at": str(r[4]), "project": r[5], "org_unit_field": r[6],
             "versions": int(r[7]), "submissions": int(r[8]), "id": int(r[10]),
             "media": media.get(int(r[9]), [])} for r in rows]


def _media_names(conn: Connection, version_fids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if not version_fids:
        return out
    for vf, name in conn.execute(text(
            "SELECT form_version_fid, filename FROM form_media ORDER BY filename")):
        if int(vf) in version_fids:
            out.setdefault(int(vf), []).append(str(name))
    return out


def form_xml(reg: Registry, form_id: str) -> tuple[bytes, FormVersion]:
    with reg.read() as conn:
        fv = current_version(conn, form_id)
        xml = conn.execute(text("SELECT xform FROM form_version WHERE fid = :v"),
                           {"v": fv.version_fid}).scalar_one()
    return bytes(xml), fv


def form_versions(reg: Registry, form_id: str) -> list[dict[str, Any]]:
    with reg.read() as conn:
        rows = conn.execute(text(
            "SELECT v.fid, v.version, v.md5, v.source_name, v.created_at FROM form_version v "
            "JOIN form f ON f.fid = v.form_fid WHERE f.form_id = :f ORDER BY v.fid"),
            {"f": form_id}).all()
    if not rows:
        raise NotFound(f"No form {form_id!r} on this server.")
    return [{"id": int(r[0]), "version": r[1], "md5": r[2], "source": r[3],
             "created_at": str(r[4])} for r in rows]


@dataclass(frozen=True)
class MediaFile:
    filename: str
    md5: str
    content_type: str
    kind: str = "file"


def media_list(reg: Registry, form_id: str, user: Any = None) -> list[MediaFile]:
    """The media of the form's current version, with the org-unit list when referenced."""
    xml, fv = form_xml(reg, form_id)
    with reg.read() as conn:
        rows = conn.execute(text(
            "SELECT filename, md5, content_type FROM form_media WHERE form_version_fid = :v "
            "ORDER BY filename"), {"v": fv.version_fid}).all()
        files = [MediaFile(r[0], r[1], r[2]) for r in rows]
        held = {f.filename for f in files}
        refs = parse_xform(xml).media
        sets = entity_datasets(conn)
        for name in refs:
            if name.endswith(".csv") and name[:-4] in sets and name not in held:
                content = entity_csv(conn, name[:-4])
                files.append(MediaFile(name, hashlib.md5(content).hexdigest(), "text/csv",
                                       "entityList"))
                held.add(name)
    if ORG_UNIT_MEDIA in refs and ORG_UNIT_MEDIA not in held:
        content = org_unit_csv(reg, user)
        files.append(MediaFile(ORG_UNIT_MEDIA, hashlib.md5(content).hexdigest(), "text/csv",
                               "orgunits"))
    return sorted(files, key=lambda f: f.filename)


def media_content(reg: Registry, form_id: str, filename: str,
                  user: Any = None) -> tuple[bytes, str]:
    with reg.read() as conn:
        fv = current_version(conn, form_id)
        row = conn.execute(text(
            "SELECT content, content_type FROM form_media WHERE form_version_fid = :v AND "
            "filename = :n"), {"v": fv.version_fid, "n": filename}).first()
        if row is None and filename.endswith(".csv") and filename[:-4] in entity_datasets(conn):
            return entity_csv(conn, filename[:-4]), "text/csv"
    if row is not None:
        return bytes(row[0]), str(row[1])
    if filename == ORG_UNIT_MEDIA:
        return org_unit_csv(reg, user), "text/csv"
    raise NotFound(f"Form {form_id!r} has no media file {filename!r}.")


def has_media(reg: Registry, form_id: str) -> bool:
    xml, fv = form_xml(reg, form_id)
    if parse_xform(xml).media:
        return True
    with reg.read() as conn:
        return conn.execute(text("SELECT 1 FROM form_media WHERE form_version_fid = :v"),
                            {"v": fv.version_fid}).first() is not None


# --- the org-unit list ---------------------------------------------------------------------

_csv_cache: dict[tuple[Any, ...], bytes] = {}
_csv_lock = threading.Lock()


def default_version_id(conn: Connection) -> int | None:
    row = conn.execute(text(
        "SELECT s.default_version_id, (SELECT max(fid) FROM source_version v WHERE "
        "v.source_id = s.fid) FROM data_source s ORDER BY s.fid LIMIT 1")).first()
    if row is None:
        return None
    return int(row[0]) if row[0] is not None else (int(row[1]) if row[1] is not None else None)


def org_unit_csv(reg: Registry, user: Any = None) -> bytes:
    """The default version's org units as CSV (``name`` = uuid, ``label``, …)."""
    from local_server.users import root_paths

    with reg.read() as conn:
        vid = default_version_id(conn)
        marker = conn.execute(text("SELECT max(fid) FROM change_log")).scalar()
        roots: tuple[str, ...] = ()
        if user is not None and not user.sees_everything:
            roots = tuple(user.root_uuids)
        key = (str(reg.location.display()), vid, marker, roots)
        with _csv_lock:
            cached = _csv_cache.get(key)
        if cached is not None:
            return cached
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["name", "label", "ref", "code", "type", "level", "parent"])
        if vid is not None:
            paths = root_paths(conn, roots) if roots else ()
            rows = conn.execute(text(
                "SELECT u.uuid, u.name, u.source_ref, u.code, t.name, u.depth, p.uuid, u.path "
                "FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
                "LEFT JOIN org_unit p ON p.version_id = u.version_id AND "
                "p.unit_key = u.parent_key WHERE u.version_id = :v ORDER BY u.path"),
                {"v": vid})
            for uuid, name, ref, code, tname, depth, parent, path in rows:
                if paths and not any(str(path).startswith(p) for p in paths):
                    continue
                writer.writerow([uuid, name, ref or "", code or "", tname or "", depth,
                                 parent or ""])
        content = out.getvalue().encode("utf-8")
    with _csv_lock:
        if len(_csv_cache) > 64:
            _csv_cache.clear()
        _csv_cache[key] = content
    return content
