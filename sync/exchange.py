"""What every file format reads into and writes from.

A format *reader* turns a file into an :class:`ImportPayload` — types, groups
and a **stream** of :class:`~storage.bulk.UnitRecord` — without touching the
registry; the import job (:mod:`sync.importing`) validates the records, writes
them in one transaction and reports per row.  A format *writer* takes a
:class:`VersionData` read from the registry by :func:`read_version` and writes
a file.  Readers and writers never talk to each other: everything goes through
these plain structures.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import text

from storage import geometry
from storage.backends import Backend
from storage.bulk import UnitRecord
from storage.registry import VERSION_TABLE, Registry, json_value
from storage.versions import VersionRef, resolve_version
from sync.formats.gpkg_sql import open_readonly, plain_points


@dataclass
class TypeDef:
    name: str
    depth: int | None = None
    short_name: str | None = None


@dataclass
class GroupDef:
    ref: str
    name: str
    short_name: str | None = None
    code: str | None = None


@dataclass
class GroupSetDef:
    ref: str
    name: str
    group_refs: list[str]
    short_name: str | None = None
    compulsory: bool = False


@dataclass
class ReadOptions:
    """Options a user gives on the command line; each reader uses those it knows."""

    mapping: dict[str, Any] | None = None  # column mapping for generic vector files
    layer: str | None = None  # one layer of a multi-layer file
    crs: str | None = None  # CRS of a file that has none (e.g. "EPSG:32628")
    fix_geometry: bool = False  # repair invalid polygons instead of rejecting the row
    encoding: str | None = None  # text files: utf-8, utf-8-sig, latin-1 (default: detect)
    delimiter: str | None = None  # CSV: "," or ";" (default: detect)
    iaso_headers: bool = False  # CSV/XLSX: Iaso's French column headers
    parent_by_location: bool = False  # vector files, one per level: parent by territory
    data_dict: str | None = None  # tree-importer CSV: path of the data dictionary JSON


@dataclass
class ImportPayload:
    """What a reader found in a file.  ``units`` may be a generator (streamed)."""

    units: Iterable[UnitRecord]
    types: list[TypeDef] = field(default_factory=list)
    groups: list[GroupDef] = field(default_factory=list)
    group_sets: list[GroupSetDef] = field(default_factory=list)
    #: (group ref, unit ref) pairs, besides each record's own ``groups``
    memberships: Iterable[tuple[str, str]] = ()
    warnings: list[str] = field(default_factory=list)
    #: how many units to expect, for the progress bar (None: unknown)
    total: int | None = None
    description: str = ""
    #: invalid polygons: "reject" the row (files), or "keep" them as the source has them
    #: and warn (mirrors of an upstream such as DHIS2, which must stay faithful to it)
    invalid_geometry: str = "reject"
    #: the same units for a bulk load into a new version, where the reader can hand
    #: whole tables over as ``storage.bulk.FileRows`` (copied in SQL); else ``units``
    load_units: Callable[[], Iterable[Any]] | None = None
    #: into an existing version, an empty or absent parent (or groups) means a root (no
    #: groups), as in sources that give every unit whole — Iaso's GeoPackage, DHIS2;
    #: False (files people edit: CSV, XLSX, GeoJSON …): it keeps the registry's value,
    #: so a ``ref,name`` sheet renaming facilities never flattens the pyramid
    blank_clears: bool = False
    #: into an existing version, the ``extra_fields`` keys the source owns (DHIS2: its
    #: short name, description, url, contact person, phone): those are replaced — a key
    #: the source no longer sends is removed — and every other key of the registry's
    #: unit is kept (a "beds" column imported from a survey must survive the nightly
    #: pull).  None (files): the file's ``extra_fields`` replace the unit's whole.
    owned_extra_keys: tuple[str, ...] | None = None


@dataclass
class ExportUnit:
    """One unit as writers see it: refs instead of internal keys, shapely geometry."""

    uuid: str
    ref: str  # source_ref, or "iaso:<uuid>" style internal ref when the unit has none
    source_ref: str | None
    name: str
    parent_ref: str | None
    type: str | None
    depth: int
    code: str | None
    opening_date: str | None
    closed_date: str | None
    validation_status: str
    aliases: list[str]
    extra_fields: dict[str, Any]
    location: BaseGeometry | None
    territory: BaseGeometry | None
    groups: list[str]  # group refs
    ancestors: list[str]  # names from the root down to the parent


@dataclass
class UnitBatch:
    """Consecutive units of a version (path order), column by column, as the writers
    need them: the same values an :class:`ExportUnit` holds, without one object per
    unit (``ancestors`` excepted: :attr:`keys` and :attr:`paths` give them)."""

    uuids: list[str]
    refs: list[str]
    source_refs: list[str | None]
    names: list[str]
    parent_refs: list[str | None]
    types: list[str | None]
    depths: list[int]
    codes: list[str | None]
    opening_dates: list[str | None]
    closed_dates: list[str | None]
    statuses: list[str]
    aliases: list[list[str]]
    extra_fields: list[dict[str, Any]]
    locations: list[BaseGeometry | None]
    territories: list[BaseGeometry | None]
    groups: list[list[str]]
    keys: list[int] = field(default_factory=list)  # unit keys and paths, from the registry
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uuids)


def unit_batches(data: VersionData, size: int = 5000) -> Iterator[UnitBatch]:
    """The version's units in column batches: ``data.batches()`` when the data came from
    :func:`read_version`, else ``data.units`` gathered ``size`` at a time."""
    if data.batches is not None:
        yield from data.batches()
        return
    chunk: list[ExportUnit] = []
    for u in data.units:
        chunk.append(u)
        if len(chunk) >= size:
            yield _batch_of(chunk)
            chunk = []
    if chunk:
        yield _batch_of(chunk)


def _batch_of(units: list[ExportUnit]) -> UnitBatch:
    return UnitBatch(
        uuids=[u.uuid for u in units], refs=[u.ref for u in units],
        source_refs=[u.source_ref for u in units], names=[u.name for u in units],
        parent_refs=[u.parent_ref for u in units], types=[u.type for u in units],
        depths=[u.depth for u in units], codes=[u.code for u in units],
        opening_dates=[u.opening_date for u in units],
        closed_dates=[u.closed_date for u in units],
        statuses=[u.validation_status for u in units], aliases=[u.aliases for u in units],
        extra_fields=[u.extra_fields for u in units], locations=[u.location for u in units],
        territories=[u.territory for u in units], groups=[u.groups for u in units])


@dataclass
class VersionData:
    version: VersionRef
    types: list[TypeDef]
    groups: list[GroupDef]
    units: Iterator[ExportUnit]
    count: int
    #: the same units in column batches (from :func:`read_version`; None when the units
    #: were made another way).  A writer reads either ``units`` or ``batches()``.
    batches: Callable[[], Iterator[UnitBatch]] | None = None


def is_georeg_registry(path: Path) -> bool:
    """Whether ``path`` is a Georeg registry file: a SQLite file with the schema-version
    table.  Read-only and without ``Registry.open`` (which would migrate the file), so
    an import can say "export it first" and an export can refuse to overwrite one."""
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return False
    except OSError:
        return False
    try:
        conn = open_readonly(Path(path))
        try:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                "name = ?", (VERSION_TABLE,)).fetchone() is not None
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def internal_ref(uuid: str) -> str:
    """The ref written for a unit that has no external id (Iaso writes ``iaso:<pk>``)."""
    return f"georeg:{uuid}"


def read_version(reg: Registry, source: str, number: int | None = None,
                 *, batch: int = 5000) -> VersionData:
    """Everything a writer needs from one version; units stream in path order."""
    b = reg.backend
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        types = [TypeDef(r[0], r[1], r[2]) for r in conn.execute(text(
            "SELECT DISTINCT t.name, t.depth, t.short_name FROM org_unit_type t JOIN org_unit u "
            "ON u.type_id = t.fid WHERE u.version_id = :v ORDER BY t.depth, t.name"),
            {"v": version.id})]
        group_rows = conn.execute(text(
            "SELECT group_key, source_ref, name, short_name, code FROM org_unit_group "
            "WHERE version_id = :v ORDER BY name"), {"v": version.id}).all()
        count = conn.execute(text("SELECT count(*) FROM org_unit WHERE version_id = :v"),
                             {"v": version.id}).scalar_one()
    group_ref = {r[0]: (r[1] or f"group:{r[0]}") for r in group_rows}
    groups = [GroupDef(group_ref[r[0]], r[2], r[3], r[4]) for r in group_rows]

    mark = "?" if b.is_sqlite else "%s"  # the driver's parameter marker
    unit_sql = (
        "SELECT u.uuid, u.source_ref, u.name, u.unit_key, u.parent_key, u.path, "
        "u.depth, t.name, u.code, u.opening_date, u.closed_date, "
        "u.validation_status, u.aliases, u.extra_fields, "
        f"{geometry.select_sql(b, 'u.location')}, "
        f"{geometry.select_sql(b, 'te.territory')} "
        "FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
        "LEFT JOIN org_unit_territory te ON te.unit_fid = u.fid "
        f"WHERE u.version_id = {mark} AND u.path > {mark} ORDER BY u.path LIMIT {mark}")

    def batches() -> Iterator[UnitBatch]:
        ref_of: dict[int, str] = {}  # unit_key -> ref, of the units seen so far
        last_path = ""
        while True:
            with reg.read() as conn:
                # straight to the driver: 100k rows through SQLAlchemy's Result cost ~20%
                cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                cur.execute(unit_sql, (version.id, last_path, batch))
                rows = cur.fetchall()
                keys = [r[3] for r in rows]
                members: dict[int, list[str]] = {}
                if keys:
                    cur.execute(
                        f"SELECT unit_key, group_key FROM group_membership WHERE version_id = {mark} "
                        "AND unit_key IN (" + ", ".join(map(str, map(int, keys))) + ")",
                        (version.id,))
                    for m in cur.fetchall():
                        members.setdefault(m[0], []).append(group_ref[m[1]])
                cur.close()
            if not rows:
                return
            (uuids, source_refs, names, _keys, parent_keys, paths, depths, type_names, codes,
             openings, closings, statuses, aliases, extras, locs, ters) = (
                list(c) for c in zip(*rows, strict=True))
            refs = [r if r is not None else internal_ref(u)
                    for r, u in zip(source_refs, uuids, strict=True)]
            ref_of.update(zip(keys, refs, strict=True))
            yield UnitBatch(
                uuids=uuids, refs=refs, source_refs=source_refs, names=names,
                parent_refs=[None if k is None else ref_of.get(k) for k in parent_keys],
                types=type_names, depths=depths, codes=codes,
                opening_dates=[v if v is None or type(v) is str else _iso(v) for v in openings],
                closed_dates=[v if v is None or type(v) is str else _iso(v) for v in closings],
                statuses=statuses,
                aliases=[[] if v is None else (json_value(v) or []) for v in aliases],
                extra_fields=[{} if v is None else (json_value(v) or {}) for v in extras],
                locations=_decode_many(b, locs), territories=_decode_many(b, ters),
                groups=[sorted(members[k]) if k in members else [] for k in keys] if members
                else [[] for _ in keys],
                keys=keys, paths=paths)
            last_path = paths[-1]

    def units() -> Iterator[ExportUnit]:
        names: dict[str, str] = {}  # unit_key (text) -> name, of the units seen so far
        for chunk in batches():
            for (uuid, ref, source_ref, name, parent_ref, type_name, depth, code, opening,
                 closed, status, aliases, extra, location, territory, groups, key,
                 path) in zip(chunk.uuids, chunk.refs, chunk.source_refs, chunk.names,
                              chunk.parent_refs, chunk.types, chunk.depths, chunk.codes,
                              chunk.opening_dates, chunk.closed_dates, chunk.statuses,
                              chunk.aliases, chunk.extra_fields, chunk.locations,
                              chunk.territories, chunk.groups, chunk.keys, chunk.paths,
                              strict=True):
                names[str(key)] = name
                yield ExportUnit(
                    uuid=uuid, ref=ref, source_ref=source_ref, name=name,
                    parent_ref=parent_ref, type=type_name, depth=depth, code=code,
                    opening_date=opening, closed_date=closed, validation_status=status,
                    aliases=aliases, extra_fields=extra, location=location,
                    territory=territory, groups=groups,
                    # "/k1/k2/k/" → the ancestors' keys, as text
                    ancestors=[names[k] for k in path.split("/")[1:-2] if k in names],
                )

    return VersionData(version, types, groups, units(), int(count), batches)


_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


def _decode_many(backend: Backend, values: list[Any]) -> list[BaseGeometry | None]:
    """A batch of stored geometries → shapely, with one vectorised WKB parse."""
    present = [i for i, v in enumerate(values) if v is not None]
    out: list[BaseGeometry | None] = [None] * len(values)
    if not present:
        return out
    if backend is Backend.GEOPACKAGE:
        points = plain_points([values[i] for i in present])
        if points is not None:
            for i, geom in zip(present, points.tolist(), strict=True):
                out[i] = geom
            return out
        wkbs = []
        for i in present:
            blob = bytes(values[i])
            if len(blob) < 8 or blob[:2] != b"GP" or (blob[3] >> 1) & 0b111 not in \
                    _ENVELOPE_BYTES:
                geometry.gpkg_wkb(blob)  # raises the usual message
            wkbs.append(blob[8 + _ENVELOPE_BYTES[(blob[3] >> 1) & 0b111]:])
    else:
        wkbs = [bytes(values[i]) for i in present]
    for i, geom in zip(present, shapely.from_wkb(np.array(wkbs, dtype=object)).tolist(),
                       strict=True):
        out[i] = geom
    return out


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
