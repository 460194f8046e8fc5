"""ODK entities (XForms spec, entities 2022.1–2024.1): the basics.

* A form declaring ``<meta><entity dataset="trees" id="…" create="1">`` (pyxform's
  ``entities`` sheet) records its dataset in ``form.entity_dataset``.  Entity-spec
  versions newer than :data:`SUPPORTED` are refused when the form is added (the spec says
  consumers must reject what they cannot process).
* A new submission of such a form creates the entity (``create``) or updates it
  (``update``: label and the properties given, version + 1).  Properties are the answers of
  questions bound with ``entities:saveto``.  An id that is not a UUID is ignored.
* A form that uses ``<dataset>.csv`` gets the entity list as media: columns ``name`` (the
  uuid), ``label``, ``__version`` and the properties; listed in the manifest with
  ``type="entityList"`` and an ``integrityUrl`` (``GET /forms/<id>/integrity?id=…``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from sqlalchemy import Connection, text

from storage.errors import InvalidInput
from storage.registry import json_value

ENTITIES_NS = "http://www.opendatakit.org/xforms/entities"
XFORMS_NS = "http://www.w3.org/2002/xforms"
SUPPORTED = ("2022.1", "2023.1", "2024.1")
_UUID = re.compile(r"^(uuid:)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def declared(xform: bytes, source: str = "the XForm") -> tuple[str | None, dict[str, str]]:
    """(dataset, {instance path: property}) of a form; (None, {}) without entities."""
    root = SafeET.fromstring(xform)
    model = next((el for el in root.iter(f"{{{XFORMS_NS}}}model")), None)
    if model is None:
        return None, {}
    instance = model.find(f"{{{XFORMS_NS}}}instance")
    if instance is None or len(instance) == 0:
        return None, {}
    primary = instance[0]
    dataset = None
    for meta in primary:
        if _local(meta.tag) == "meta":
            for child in meta:
                if _local(child.tag) == "entity":
                    dataset = child.get("dataset")
    if dataset is None:
        return None, {}
    version = model.get(f"{{{ENTITIES_NS}}}entities-version") or ""
    if version and not any(version.startswith(v) for v in SUPPORTED):
        raise InvalidInput(f"{source}: entities version {version} is newer than this server "
                           f"handles ({', '.join(SUPPORTED)}).")
    saveto = {}
    for bind in model.iter(f"{{{XFORMS_NS}}}bind"):
        prop = bind.get(f"{{{ENTITIES_NS}}}saveto")
        if prop:
            saveto[bind.get("nodeset", "")] = prop
    return dataset, saveto


def _value(root: Element, path: str) -> str | None:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != _local(root.tag):
        return None
    nodes = [root]
    for part in parts[1:]:
        nodes = [c for n in nodes for c in n if _local(c.tag) == part]
    return (nodes[0].text or "").strip() if nodes else None


def apply_submission(conn: Connection, root: Element, xform: bytes, submission_fid: int
                     ) -> dict[str, Any] | None:
    """Create or update the entity a new submission carries; what was done, or None."""
    dataset, saveto = declared(xform)
    if dataset is None:
        return None
    entity = None
    for meta in root:
        if _local(meta.tag) == "meta":
            for child in meta:
                if _local(child.tag) == "entity":
                    entity = child
    if entity is None:
        return None
    ident = (entity.get("id") or "").strip()
    if not _UUID.match(ident):
        return None
    ident = ident.removeprefix("uuid:")
    label = next(((c.text or "").strip() for c in entity if _local(c.tag) == "label"), None)
    props = {p: v for path, p in saveto.items() if (v := _value(root, path)) is not None}
    create = (entity.get("create") or "").lower() in ("1", "true")
    update = (entity.get("update") or "").lower() in ("1", "true")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    row = conn.execute(text("SELECT fid, properties, version FROM entity WHERE dataset = :d "
                            "AND uuid = :u"), {"d": dataset, "u": ident}).first()
    if row is None and create:
        conn.execute(text(
            "INSERT INTO entity (dataset, uuid, label, properties, submission_fid) VALUES "
            "(:d, :u, :l, :p, :s)"),
            {"d": dataset, "u": ident, "l": label or ident, "p": json.dumps(props),
             "s": submission_fid})
        return {"dataset": dataset, "uuid": ident, "action": "created"}
    if row is not None and update:
        merged = (json_value(row[1]) or {}) | props
        conn.execute(text(
            "UPDATE entity SET label = COALESCE(:l, label), properties = :p, version = "
            "version + 1, updated_at = :n, submission_fid = :s WHERE fid = :f"),
            {"l": label or None, "p": json.dumps(merged), "n": now, "s": submission_fid,
             "f": row[0]})
        return {"dataset": dataset, "uuid": ident, "action": "updated"}
    return None


def datasets(conn: Connection) -> set[str]:
    found = {str(r[0]) for r in conn.execute(text(
        "SELECT DISTINCT entity_dataset FROM form WHERE entity_dataset IS NOT NULL"))}
    found |= {str(r[0]) for r in conn.execute(text("SELECT DISTINCT dataset FROM entity"))}
    return found


def entity_csv(conn: Connection, dataset: str) -> bytes:
    rows = conn.execute(text("SELECT uuid, label, version, properties FROM entity WHERE "
                             "dataset = :d AND NOT deleted ORDER BY fid"), {"d": dataset}).all()
    props = [json_value(r[3]) or {} for r in rows]
    keys = sorted({k for p in props for k in p})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "label", "__version", *keys])
    for r, p in zip(rows, props, strict=True):
        writer.writerow([r[0], r[1], r[2], *[p.get(k, "") for k in keys]])
    return out.getvalue().encode("utf-8")


def deleted_states(conn: Connection, ids: list[str]) -> dict[str, bool]:
    """id → deleted, for the integrity endpoint (unknown ids count as deleted)."""
    out = {}
    for ident in ids:
        row = conn.execute(text("SELECT deleted FROM entity WHERE uuid = :u"),
                           {"u": ident}).first()
        out[ident] = True if row is None else bool(row[0])
    return out
