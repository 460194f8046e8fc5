"""Iaso's GeoPackage: one ``level-{depth}-{type}`` layer per org-unit type, plus ``groups``.

The format is Iaso's (``iaso/gpkg/README.md``): every layer whose name starts with
``level-`` holds the units of one type; the name is split like Iaso splits it,
``name.split("-", 2)``, so type names may contain "-", "/" and spaces.  Other
layers (QGIS ``layer_styles`` …) are ignored.  Columns:

* ``ref`` and ``name`` — required: a layer without one of them, or a row where one
  is null, empty or blank, is refused with the file, layer, row (fid) and field;
* ``parent_ref`` — optional; null, empty or blank makes a root (Iaso's own
  ``minimal.gpkg`` has ``''`` on its root);
* ``group_refs`` — optional, comma-separated; absent: groups untouched, empty: no
  groups (Iaso's semantics, kept for upserts);
* ``opening_date``, ``closed_date``, ``code`` — optional;
* the geometry column, of any name: a point is the unit's location, a (multi)polygon
  its territory.  Layers in another CRS are reprojected to EPSG:4326; a layer without
  a CRS needs ``--crs``.

**Internal refs.**  Iaso writes ``iaso:<pk>`` (legacy ``iaso#<pk>``) for units and
groups without an external id.  We have no Iaso primary keys, so both spellings are
read as the same ordinary ref, normalised to ``iaso:<pk>``: a unit written
``iaso#6688`` and a child whose parent_ref is ``iaso:6688`` link up.  Our own writer
gives units without a source ref the ref ``georeg:<uuid>``
(:func:`sync.exchange.internal_ref`).  Read back, such a unit keeps that string as its
``source_ref`` (the loader links parents by source ref, so the tree needs it) and gets
the uuid as its ``uuid``; a second export writes the same ref again, so a round trip
is stable.

**What Georeg adds on export** (extra columns, which Iaso ignores on import):
``code``, ``validation_status``, ``aliases`` and ``extra_fields`` (JSON), and
``longitude``/``latitude`` for a point the geometry column cannot carry — a unit
that has both a territory and a point (Iaso exports only the polygon; we keep both),
or a point-only unit in a layer whose type also has polygons.  The reader takes a
unit's location from the geometry when it is a point, else from those two columns,
and its uuid from the ``uuid`` column (Iaso's mobile uuid) when it holds a UUID.
Missing depth is written as 999 and a missing type as ``level-999-Unknown``, as Iaso
does; read back, depth 999 means "no depth" and ``level-999-Unknown`` "no type".
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Any, cast

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.bulk import PLAIN_POINT_HEAD, FileRows, UnitRecord
from storage.errors import InvalidInput
from storage.ids import CANONICAL_UUID
from storage.jobs import gc_paused
from storage.units import CONTROL_CHARACTERS
from sync.exchange import (
    GroupDef,
    ImportPayload,
    ReadOptions,
    TypeDef,
    VersionData,
    unit_batches,
)
from sync.formats import gpkg_sql

LAYER_PREFIX = "level-"
NO_DEPTH = 999
NO_TYPE = "Unknown"
REQUIRED = ("ref", "name")
GROUPS_TABLE = "groups"
WGS84 = "EPSG:4326"
#: columns written for every unit, in Iaso's export order, then Georeg's additions
OUT_COLUMNS = ("name", "ref", "parent", "parent_ref", "group_refs", "group_names", "uuid",
               "opening_date", "closed_date", "code", "validation_status", "longitude",
               "latitude", "aliases", "extra_fields")
MAX_LISTED = 10  # problems shown in one message
_INTERNAL = re.compile(r"^iaso[#:](.+)$")
_GEOREG = re.compile(r"^georeg:([0-9a-fA-F-]{32,36})$")


# --- reading ----------------------------------------------------------------------------
#
# Read with plain SQLite (a GeoPackage is an SQLite database; see gpkg_sql): one query
# per layer, rows fetched in chunks, geometries decoded a chunk at a time with one
# vectorised WKB parse.  No GDAL, pandas or geopandas on this path.


@dataclass
class _Layer:
    name: str
    type_name: str | None
    depth: int | None
    fields: list[str]
    count: int
    crs: str | None
    has_geometry: bool
    geometry_column: str | None = None
    fid: str = "rowid"
    #: every ref is a text ``str.strip`` leaves as it is (found by ``_check_rows``): a
    #: copy in SQL need not strip them
    refs_stripped: bool = False


_CHUNK = 5000  # rows fetched and decoded at a time


@gc_paused()
def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """Read an Iaso GeoPackage; units stream layer by layer."""
    opts = opts or ReadOptions()
    path = Path(path)
    _check_file(path)
    with _connect(path) as conn:
        layers = _level_layers(conn, path, opts)
        try:
            groups = _read_groups(path)
            warns = _check_rows(conn, path, layers, {g.ref for g in groups})
        except _NotText as error:  # (refs and names are named with their row there)
            raise InvalidInput(f"{path.name}: a cell holds binary data (a BLOB, x'{error}…') "
                               "that is not UTF-8 text; store it as text.") from None
    types: dict[str, TypeDef] = {}
    for layer in layers:
        if layer.type_name is None:
            continue
        seen = types.get(layer.type_name)
        if seen is None:
            types[layer.type_name] = TypeDef(layer.type_name, layer.depth)
        elif seen.depth != layer.depth:
            warns.append(f"{path.name}: type {layer.type_name!r} has layers at depth "
                         f"{seen.depth} and {layer.depth}; one type, depth {seen.depth}, is kept.")
    # (the same list as the payload's warnings: uuids replaced are told as units stream)
    return ImportPayload(
        units=_records(path, layers, opts, warns),
        load_units=partial(_load_units, path, layers, opts, warns),
        types=sorted(types.values(), key=lambda t: (t.depth is None, t.depth or 0, t.name)),
        groups=groups,
        warnings=warns,
        total=sum(layer.count for layer in layers),
        description=f"Imported from Iaso GeoPackage {path.name}",
        # Iaso stores polygons as it gets them; our own exports carry what the registry
        # holds.  Invalid ones are kept with a warning (--fix-geometry repairs them).
        invalid_geometry="keep",
        # Iaso's meaning, into an existing version too: an empty parent_ref makes a root,
        # an empty group_refs means no groups
        blank_clears=True,
    )


def _open_error(path: Path, error: BaseException) -> InvalidInput:
    return InvalidInput(f"{path.name}: not a readable GeoPackage ({error}); the file may be "
                        "truncated or damaged.")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InvalidInput(f"{path.name}: file not found ({path}).")
    if path.is_dir():
        raise InvalidInput(f"{path.name}: is a folder, not a GeoPackage file.")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{path.name}: is an empty file (0 bytes), not a GeoPackage.")
    with path.open("rb") as fh:
        magic = fh.read(16)
    if magic != b"SQLite format 3\x00":
        raise InvalidInput(f"{path.name}: not a GeoPackage (a GeoPackage is an SQLite "
                           "database; this file does not start like one).")


class _connect:
    """A read-only connection (``with``): SQLite errors become "truncated or damaged"."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn = gpkg_sql.open_readonly(self.path)
        except sqlite3.Error as error:
            raise _open_error(self.path, error) from None
        return self.conn

    def __exit__(self, kind: Any, error: Any, _tb: Any) -> None:
        self.conn.close()
        if isinstance(error, sqlite3.Error):
            raise _open_error(self.path, error) from None


def _level_layers(conn: sqlite3.Connection, path: Path, opts: ReadOptions) -> list[_Layer]:
    has_contents = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                "name = 'gpkg_contents'").fetchone()
    if not has_contents:
        raise InvalidInput(f"{path.name}: not a GeoPackage (an SQLite database without the "
                           "gpkg_contents table every GeoPackage has).")
    # GDAL's order: feature tables, then attribute tables, each as registered
    listed = conn.execute("SELECT table_name, data_type FROM gpkg_contents WHERE data_type IN "
                          "('features', 'attributes') ORDER BY data_type = 'attributes', "
                          "rowid").fetchall()
    names = [str(n) for n, _ in listed]
    kinds = dict(listed)
    level = [n for n in names if n.startswith(LAYER_PREFIX)]
    if opts.layer is not None:
        if opts.layer not in level:
            raise InvalidInput(f"{path.name}: no layer {opts.layer!r}; its level-N-Type layers "
                               f"are {', '.join(map(repr, level)) or 'none'}.")
        level = [opts.layer]
    if not level:
        raise InvalidInput(
            f"{path.name}: no layer named level-<depth>-<type>, so this is not an Iaso "
            f"GeoPackage (its layers: {', '.join(map(repr, names)) or 'none'}).")
    out = []
    for name in level:
        parts = name.split("-", 2)
        if len(parts) < 3 or not parts[2].strip():
            raise InvalidInput(f"{path.name}, layer {name!r}: the name must be "
                               "level-<depth>-<type>, e.g. 'level-2-District'.")
        try:
            depth: int | None = int(parts[1])
        except ValueError:
            raise InvalidInput(f"{path.name}, layer {name!r}: the depth {parts[1]!r} in the "
                               "name is not a whole number (level-<depth>-<type>).") from None
        type_name: str | None = parts[2].strip()
        if depth == NO_DEPTH:
            depth = None
            if type_name == NO_TYPE:
                type_name = None
        info = gpkg_sql.table_info(conn, name, str(kinds[name]))
        fields = [c for c, _ in info.columns]
        for column in REQUIRED:
            if column not in fields:
                raise InvalidInput(
                    f"{path.name}, layer {name!r}: column {column!r} is missing; every "
                    f"level-N-Type layer needs 'ref' and 'name' (columns here: "
                    f"{', '.join(fields) or 'none'}).")
        has_geometry = info.geometry_column is not None
        count = int(conn.execute(f"SELECT count(*) FROM {gpkg_sql.quote(name)}").fetchone()[0])
        try:
            crs = _defined_crs(gpkg_sql.srs(conn, info.srs_id)) if has_geometry else None
        except InvalidInput as error:
            raise InvalidInput(f"{path.name}, layer {name!r}: {error.message}.") from None
        if has_geometry and count and crs is None and not opts.crs:
            raise InvalidInput(f"{path.name}, layer {name!r}: the layer has no coordinate "
                               "reference system; give it with --crs (e.g. EPSG:32628).")
        out.append(_Layer(name, type_name, depth, fields, count, crs, has_geometry,
                          info.geometry_column, info.fid))
    if opts.crs:
        _crs(opts.crs, path)
    return out


def _defined_crs(crs: str | None) -> str | None:
    """The layer's CRS; GeoPackage's "Undefined geographic/Cartesian SRS" (srs_id 0/-1) is none."""
    if crs is None or crs.startswith("EPSG:"):
        return crs
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return None if CRS.from_user_input(crs).name.startswith("Undefined ") else crs
    except CRSError:
        return None  # a definition PROJ cannot read: the layer needs --crs


def _crs(value: str, path: Path) -> Any:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise InvalidInput(f"{path.name}: --crs {value!r} is not a coordinate reference "
                           "system (try e.g. EPSG:32628).") from None


def _read_groups(path: Path) -> list[GroupDef]:
    """The ``groups`` table, read with SQL as Iaso does (registered or not)."""
    rows = _sql(path, f'SELECT rowid, ref, name FROM "{GROUPS_TABLE}"', missing_ok=True)
    groups: list[GroupDef] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for fid, ref_value, name_value in rows:
        where = f"{path.name}, table {GROUPS_TABLE!r}, row {fid}"
        ref, name = _text(ref_value), _text(name_value)
        for field_name, raw, value in (("ref", ref_value, ref), ("name", name_value, name)):
            if value is None:
                problems.append(f"{where}: field {field_name!r} {_emptiness(raw)}.")
        if ref is None or name is None:
            continue
        if "," in ref:
            problems.append(f"{where}: field 'ref' {ref!r} contains a comma, which Iaso "
                            "forbids (group_refs are comma-separated).")
            continue
        ref = _norm_ref(ref)
        if ref in seen:
            problems.append(f"{where}: field 'ref' {ref!r} is also used by row {seen[ref]}.")
            continue
        seen[ref] = fid
        groups.append(GroupDef(ref, name))
    _raise_problems(path, problems)
    return groups


def _sql(path: Path, query: str, *, missing_ok: bool = False) -> list[tuple[Any, ...]]:
    with _connect(path) as conn:
        try:
            return conn.execute(query).fetchall()
        except sqlite3.OperationalError as error:
            if missing_ok and "no such table" in str(error):
                return []
            raise


def _texts(values: list[Any]) -> list[str | None]:
    """A column as stripped text (null, empty and blank: None), converted in one pass."""
    return [(v.strip() or None) if type(v) is str else None if v is None else _text(v)
            for v in values]


def _ref_column(conn: sqlite3.Connection, table: str, fid: str, count: int, *, texts: bool
                ) -> list[Any]:
    """The ``ref`` cells in row order.  When they are all texts, as one string SQLite
    joins and Python splits (a tenth of the cost of 100k one-cell rows), unless a ref
    holds the separator."""
    if texts:
        (joined,) = conn.execute(f"SELECT group_concat(ref, char(30)) FROM (SELECT ref FROM "
                                 f"{table} ORDER BY {fid})").fetchone()
        cells = [] if joined is None else joined.split("\x1e")
        if len(cells) == count:
            return cells
    return [r for (r,) in conn.execute(f"SELECT ref FROM {table} ORDER BY {fid}")]


def _not_blank(column: str) -> str:
    """SQL: the cell is a text that starts with a character ``str.strip`` keeps."""
    c = gpkg_sql.quote(column)
    return f"(typeof({c}) = 'text' AND {_starts_kept(c)})"


def _starts_kept(c: str) -> str:
    """SQL: the first character of text ``c`` is one ``str.strip`` keeps (printable ASCII
    first: the common case costs one comparison)."""
    return f"(unicode({c}) BETWEEN 33 AND 126 OR unicode({c}) NOT IN ({_WIDE_SPACES}))"


def _stripped_sql(c: str) -> str:
    """SQL: text ``c`` stripped as ``str.strip`` strips it, blank → NULL."""
    return f"NULLIF(trim({c}, {_SPACES_SQL}), '')"


def _text_or_none(value: Any) -> str | None:
    """:func:`_text`, None for a BLOB that is not UTF-8 (reported on its own)."""
    try:
        return _text(value)
    except _NotText:
        return None


def _cells(column: str, values: list[Any], fids: list[Any], prefix: str,
           convert: Any = None) -> list[str | None]:
    """A chunk's column as texts (``convert``: :func:`_texts` unless given); a BLOB that
    is not UTF-8 text is refused naming its row and field."""
    convert = convert or _texts
    try:
        return cast(list[str | None], convert(values))
    except _NotText:
        for fid, value in zip(fids, values, strict=True):
            try:
                convert([value])
            except _NotText as error:
                raise InvalidInput(f"{prefix}{fid}: field {column!r} holds binary data (a "
                                   f"BLOB, x'{error}…') that is not UTF-8 text; store it as "
                                   "text.") from None
        raise


def _stripped_texts(values: list[Any]) -> list[str | None]:
    """:func:`_texts`, with the common column of texts that are none of them blank
    stripped in one C-level pass."""
    try:
        out: list[Any] = list(map(str.strip, values))
    except TypeError:  # a null, or a number: one by one
        return _texts(values)
    return out if all(out) else _texts(values)


def _dates(values: list[Any]) -> list[str | None]:
    """A date column: text as it is (stripped; the import job parses it), else
    :func:`_date_text`."""
    return [(v.strip() or None) if type(v) is str else None if v is None else _date_text(v)
            for v in values]


def _check_rows(conn: sqlite3.Connection, path: Path, layers: list[_Layer],
                group_refs: set[str]) -> list[str]:
    """Refuse what Iaso refuses, for the whole file at once, before anything streams.

    Reads only the attribute columns it checks (no geometry).
    """
    problems: list[str] = []
    warns: list[str] = []
    unknown_groups: dict[str, str] = {}
    q = gpkg_sql.quote
    layer_refs: list[tuple[_Layer, list[str | None]]] = []  # refs in row order
    for layer in layers:
        table, fid = q(layer.name), q(layer.fid)
        # Only rows whose ref or name might be blank come to Python: a text whose first
        # character is neither a control nor a space is not blank.
        odd = conn.execute(f"SELECT {fid}, ref, name FROM {table} WHERE NOT ("
                           f"{_not_blank('ref')} AND {_not_blank('name')}) ORDER BY {fid}"
                           ).fetchall()
        for i, column in enumerate(REQUIRED, start=1):
            for row in odd:
                try:
                    empty = _text(row[i]) is None
                except _NotText as error:
                    problems.append(f"{_where(path, layer.name, row[0])}: field {column!r} "
                                    f"holds binary data (a BLOB, x'{error}…') that is not "
                                    "UTF-8 text; store it as text.")
                    continue
                if empty:
                    problems.append(f"{_where(path, layer.name, row[0])}: field {column!r} "
                                    f"{_emptiness(row[i])}.")
        raw_refs = _ref_column(conn, table, fid, layer.count, texts=not odd)
        try:
            refs = _stripped_texts(raw_refs)
        except _NotText:  # (listed above)
            refs = [_text_or_none(r) for r in raw_refs]
        layer.refs_stripped = refs == raw_refs
        if (any(map(str.startswith, cast(list[str], refs), repeat("iaso")))  # (C-level)
                if None not in refs
                else any(r is not None and r.startswith("iaso") for r in refs)):
            refs = [_norm_ref(r) if r is not None and r.startswith("iaso") else r
                    for r in refs]
        layer_refs.append((layer, refs))
        if "group_refs" in layer.fields:
            for row_fid, raw in conn.execute(
                    f"SELECT {fid}, group_refs FROM {table} WHERE group_refs IS NOT NULL AND "
                    f"group_refs <> '' ORDER BY {fid}"):
                for g in _split_groups(raw):
                    if g not in group_refs and g not in unknown_groups:
                        unknown_groups[g] = _where(path, layer.name, row_fid)
    every = [r for _, refs in layer_refs for r in refs if r is not None]
    if len(set(every)) < len(every):  # a ref used twice: name each row after the first
        first_of: dict[str, tuple[str, Any]] = {}  # ref -> (layer, fid) of its first row
        for layer, _refs in layer_refs:  # read again, each with its row id
            name = layer.name
            for fid, raw in conn.execute(f"SELECT {q(layer.fid)}, ref FROM {q(name)} "
                                         f"ORDER BY {q(layer.fid)}"):
                try:
                    ref = _text(raw)
                except _NotText:  # (listed above)
                    continue
                if ref is None:
                    continue
                if ref.startswith("iaso"):
                    ref = _norm_ref(ref)
                first = first_of.setdefault(ref, (name, fid))
                if first[1] != fid or first[0] != name:
                    problems.append(f"{_where(path, name, fid)}: field 'ref' {ref!r} is also "
                                    f"the ref of layer {first[0]!r}, row {first[1]}; each unit "
                                    "needs its own ref.")
    _raise_problems(path, problems)
    if unknown_groups:
        listed = "; ".join(f"{g!r} ({w})" for g, w in list(unknown_groups.items())[:MAX_LISTED])
        warns.append(f"{path.name}: group_refs name groups that are not in its groups table: "
                     f"{listed}. Iaso accepts them only if the target version has them; "
                     "otherwise the memberships are left out.")
    return warns


def _raise_problems(path: Path, problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise InvalidInput(f"{problems[0]} Iaso requires 'ref' and 'name' on every row; fix "
                           "the file and import it again.")
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = f"\n  … and {len(problems) - MAX_LISTED} more." if len(problems) > MAX_LISTED else ""
    raise InvalidInput(f"{path.name}: {len(problems)} problems; nothing was imported:\n"
                       f"{shown}{more}")


#: the columns a record is made of, besides ref and name (absent ones read as null)
_OPTIONAL = ("longitude", "latitude", "uuid", "validation_status", "parent_ref", "code",
             "opening_date", "closed_date", "aliases", "extra_fields", "group_refs")


def _records(path: Path, layers: list[_Layer], opts: ReadOptions, warns: list[str]
             ) -> Iterator[UnitRecord]:
    seen_uuids: dict[str, str] = {}
    with _connect(path) as conn:
        for layer in layers:
            yield from _layer_records(conn, path, layer, opts, seen_uuids, warns)


def _load_units(path: Path, layers: list[_Layer], opts: ReadOptions, warns: list[str]
                ) -> Iterator[UnitRecord | FileRows]:
    """:func:`_records` for a bulk load: a layer whose every row is plain (see
    :func:`_copyable`, :func:`_copy_columns`) comes as one :class:`FileRows` the loader
    copies in SQL."""
    seen_uuids: dict[str, str] = {}
    with _connect(path) as conn:
        for i, layer in enumerate(layers):
            if not _copyable(conn, path, layer, opts):
                yield from _layer_records(conn, path, layer, opts, seen_uuids, warns)
                continue
            read: list[bool] = []  # the loader took the records way
            yield _file_rows(path, layer, opts, seen_uuids, read, warns)
            if i + 1 < len(layers) and not read:
                # copied: later layers' records must know its uuids (a uuid met twice
                # is given a new one, as on the records way)
                q = gpkg_sql.quote
                for fid, value in conn.execute(f"SELECT {q(layer.fid)}, NULLIF(uuid, '') FROM "
                                               f"{q(layer.name)} WHERE uuid IS NOT NULL"
                                               if "uuid" in layer.fields
                                               else "SELECT NULL, NULL WHERE 0"):
                    if value is not None:
                        seen_uuids.setdefault(value, _where(path, layer.name, fid))


def _layer_records(conn: sqlite3.Connection, path: Path, layer: _Layer, opts: ReadOptions,
                   seen_uuids: dict[str, str], warns: list[str]) -> Iterator[UnitRecord]:
    q = gpkg_sql.quote
    present = [c for c in _OPTIONAL if c in layer.fields]
    geom_sql = q(layer.geometry_column) if layer.geometry_column else "NULL"
    cur = conn.execute(
        f"SELECT {q(layer.fid)}, {geom_sql}, {', '.join(map(q, ('ref', 'name', *present)))}"
        f" FROM {q(layer.name)} ORDER BY {q(layer.fid)}")
    transform = _transformer(path, layer, opts)
    prefix = f"{path.name}, layer {layer.name!r}, row "
    has_groups = "group_refs" in layer.fields
    while True:
        rows = cur.fetchmany(_CHUNK)
        if not rows:
            break
        yield from _chunk_records(path, layer, rows, present, transform, prefix,
                                  has_groups, seen_uuids, warns)
    cur.close()


# --- layers copied by the loader in SQL ---------------------------------------------------

#: what ``str.strip()`` removes, as a literal for SQLite's ``trim``
_SPACES_SQL = "'" + "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + "'"
#: those beyond the ASCII controls and space
_WIDE_SPACES = ", ".join(str(c) for c in range(33, 0x3001) if chr(c).isspace())
_UUID_GLOB = "-".join("[0-9a-f]" * n for n in (8, 4, 4, 4, 12))
#: the first 13 bytes of a plain point blob as the registry stores it, as SQL
_POINT_HEAD = f"x'{PLAIN_POINT_HEAD.hex()}'"


def _copyable(conn: sqlite3.Connection, path: Path, layer: _Layer, opts: ReadOptions) -> bool:
    """Worth handing over as :class:`FileRows`: rows in EPSG:4326 whose geometries are
    plain points or none (a polygon layer goes the records way at once)."""
    if not layer.count or _transformer(path, layer, opts) is not None:
        return False
    if _has_controls(conn, layer):
        return False
    if layer.geometry_column is None:
        return True
    # (the first rows tell: a polygon layer starts with polygons; a later row that is not
    # a plain point still ends the copy — see _copy_columns)
    g = gpkg_sql.quote(layer.geometry_column)
    return conn.execute(f"SELECT 1 FROM (SELECT {g} FROM {gpkg_sql.quote(layer.name)} LIMIT "
                        f"1000) WHERE {g} IS NOT NULL AND substr({g}, 1, 13) <> {_POINT_HEAD} "
                        "LIMIT 1").fetchone() is None


#: :data:`storage.units.CONTROL_CHARACTERS` in UTF-8 bytes (no byte of a multi-byte
#: character is below 0x80, so a byte search finds exactly those characters)
_CONTROL_BYTES = re.compile(CONTROL_CHARACTERS.pattern.encode())


def _has_controls(conn: sqlite3.Connection, layer: _Layer) -> bool:
    """Whether a ref, name or code of the layer holds a control character the import
    refuses (NUL, escape, bell …): such a layer goes the records way, where the
    import job rejects those rows naming them, instead of the copy storing them.  One
    scan: SQLite joins the cells (as bytes: a BLOB need not be UTF-8) and one regular
    expression searches them (a GLOB on each cell costs about four times as much).
    A parent ref needs no look: one holding a control character matches no ref, which
    ends the copy."""
    q = gpkg_sql.quote
    # (ref and name are never null here: _check_rows refused such a file)
    cells = "ref || name" + (" || ifnull(code, '')" if "code" in layer.fields else "")
    (joined,) = conn.execute(f"SELECT CAST(group_concat({cells}, '') AS BLOB) FROM "
                             f"{q(layer.name)}").fetchone()
    return joined is not None and _CONTROL_BYTES.search(joined) is not None


def _copy_columns(layer: _Layer) -> dict[str, str]:
    """SQL, per :data:`storage.bulk.FILE_ROW_COLUMNS` column: the cell as the row's record
    would have it — or, for a row that is not plain, a call to ``georeg_not_plain()``,
    which ends the copy (the layer then goes the records way, which says what is wrong).

    Plain: texts (no numbers to convert; stripped as ``str.strip`` strips them, blank →
    NULL), refs that are neither Iaso nor Georeg internal refs, a status in lower case,
    dates that exist as ``YYYY-MM-DD``, canonical lower-case uuids, no aliases or extra
    fields, a plain longitude/latitude point blob or no geometry (and then no longitude
    or latitude).  Each cell is read and checked once, in its own expression.
    """
    f = set(layer.fields)
    q = gpkg_sql.quote
    no = "georeg_not_plain()"

    def text(column: str, *, strip: bool = True, extra: str = "") -> str:
        if column not in f:
            return "NULL"
        c = q(column)
        value = _stripped_sql(c) if strip else f"NULLIF({c}, '')"
        return (f"CASE WHEN {c} IS NULL OR {c} = '' THEN NULL WHEN typeof({c}) = 'text'"
                f"{f' AND {extra}' if extra else ''} THEN {value} ELSE {no} END")

    # YYYY-MM-DD and a day that exists: SQLite's date() takes nothing else, and a
    # modifier makes it normalise (2001-02-29 becomes 2001-03-01); Python has no year 0
    def date(column: str, not_before: str | None = None) -> str:
        # (a closing date before the opening date is refused the records way)
        after = (f" AND ({q(not_before)} IS NULL OR {q(not_before)} = '' OR {q(column)} >= "
                 f"{q(not_before)})" if not_before in f else "")
        return text(column, strip=False,
                    extra=f"date({q(column)}, '+0 days') = {q(column)} AND {q(column)} NOT "
                          f"GLOB '0000*'{after}")

    # (a first character that is no space: the GLOBs see the ref as it will be)
    ref = (f"CASE WHEN typeof(ref) = 'text' AND ref NOT GLOB 'iaso*' AND ref NOT GLOB "
           f"'georeg:*' AND {_starts_kept('ref')} THEN "
           f"{'ref' if layer.refs_stripped else _stripped_sql('ref')} ELSE {no} END")
    name = f"CASE WHEN typeof(name) = 'text' THEN {_stripped_sql('name')} ELSE {no} END"
    status = ("'valid'" if "validation_status" not in f else
              "CASE WHEN validation_status IS NULL OR validation_status = '' THEN 'valid' "
              "WHEN validation_status IN ('new', 'valid', 'rejected') THEN validation_status "
              f"ELSE {no} END")
    lonlat = [f"{c} IS NULL" for c in ("longitude", "latitude") if c in f]
    rest = [f"{c} IS NULL" for c in ("aliases", "extra_fields") if c in f]
    if layer.geometry_column:
        lonlat_sql = " AND ".join(lonlat) or "1"
        g = q(layer.geometry_column)
        location = (f"CASE WHEN ({g} IS NULL AND {lonlat_sql}) OR (length({g}) = 29 AND "
                    f"substr({g}, 1, 13) = {_POINT_HEAD}) THEN {g} ELSE {no} END")
    else:  # no geometry column: longitude and latitude must be empty too
        location = "NULL"
        rest += lonlat
    if rest:
        location = f"CASE WHEN {' AND '.join(rest)} THEN {location} ELSE {no} END"
    return {
        "location": location,
        "uuid": text("uuid", strip=False, extra=f"uuid GLOB '{_UUID_GLOB}'"),
        "ref": ref,
        "name": name,
        "code": text("code"),
        # (not stripped: a parent ref with a space at its end matches no unit, and the
        # copy ends there — the records way strips it)
        "parent_ref": text("parent_ref", strip=False,
                           extra=f"parent_ref NOT GLOB 'iaso*' AND "
                                 f"{_starts_kept('parent_ref')}"),
        "status": status,
        "opening_date": date("opening_date"),
        "closed_date": date("closed_date", not_before="opening_date"),
    }


def _file_rows(path: Path, layer: _Layer, opts: ReadOptions, seen_uuids: dict[str, str],
               read: list[bool], warns: list[str]) -> FileRows:
    """The layer as :class:`FileRows`: its query, and its records for the other way."""
    q = gpkg_sql.quote
    f = set(layer.fields)

    columns = _copy_columns(layer)
    select = (
        f"SELECT {q(layer.fid)} AS ord, "
        f"{', '.join(f'{sql} AS {name}' for name, sql in columns.items())} "
        f"FROM {{src}}.{q(layer.name)}")

    def records() -> Iterator[UnitRecord]:
        read.append(True)
        with _connect(path) as conn:
            yield from _layer_records(conn, path, layer, opts, seen_uuids, warns)

    def memberships() -> list[tuple[str, str]]:
        if "group_refs" not in f:
            return []
        with _connect(path) as conn:
            return [(g, ref) for ref, raw in conn.execute(
                f"SELECT ref, group_refs FROM {q(layer.name)} "
                f"WHERE group_refs IS NOT NULL AND group_refs <> '' ORDER BY {q(layer.fid)}")
                for g in _split_groups(raw)]

    with _connect(path) as conn:  # (the ends of the rowid b-tree: no scan)
        low, high = conn.execute(f"SELECT min({q(layer.fid)}), max({q(layer.fid)}) FROM "
                                 f"{q(layer.name)}").fetchone()
    contiguous = type(low) is int and type(high) is int and high - low + 1 == layer.count
    # attached read-only, as the reader opens it: a file in WAL mode gets no -wal/-shm
    uri = gpkg_sql.readonly_uris(path)[0]
    return FileRows(path=uri, select=select, count=layer.count, type_name=layer.type_name,
                    records=records, memberships=memberships,
                    first_ord=low if contiguous else None)


def _chunk_records(path: Path, layer: _Layer, rows: list[tuple[Any, ...]], present: list[str],
                   transform: Any, prefix: str, has_groups: bool,
                   seen_uuids: dict[str, str], warns: list[str]) -> Iterator[UnitRecord]:
    n = len(rows)
    fids, blobs, refs, names, *values = (list(c) for c in zip(*rows, strict=True))
    cols = dict(zip(present, values, strict=True))
    none: list[Any] = [None] * n
    xy = gpkg_sql.plain_xy(blobs) if transform is None else None
    if xy is not None:  # a layer of plain points: handed over as (x, y), no geometry object
        geoms: Any = list(map(tuple, xy.tolist()))
        kinds = [0] * n
    else:
        arr = _geometries(path, layer, fids, blobs, transform)
        kinds = shapely.get_type_id(arr).tolist()  # -1: no geometry, 0: point
        geoms = arr.tolist()
    refs, names = _cells("ref", refs, fids, prefix), _cells("name", names, fids, prefix)
    text_cols = {c: _cells(c, cols[c], fids, prefix) if c in cols else none
                 for c in ("uuid", "validation_status", "parent_ref", "code")}
    date_cols = {c: _cells(c, cols[c], fids, prefix, _dates) if c in cols else none
                 for c in ("opening_date", "closed_date")}
    for (fid, ref, name, geom, kind, lon, lat, uuid_text, status, parent, code, opening, closed,
         aliases, extra, group_refs) in zip(
            fids, refs, names, geoms, kinds,
            cols.get("longitude", none), cols.get("latitude", none),
            text_cols["uuid"], text_cols["validation_status"], text_cols["parent_ref"],
            text_cols["code"], date_cols["opening_date"], date_cols["closed_date"],
            *(cols.get(c, none) for c in ("aliases", "extra_fields", "group_refs")),
            strict=True):
        where = f"{prefix}{fid}"
        if ref is not None and ref.startswith("iaso"):
            ref = _norm_ref(ref)
        if not ref or not name:  # checked before streaming; the file changed since
            raise InvalidInput(f"{where}: field {'ref' if not ref else 'name'!r} is empty.")
        if kind == 0:
            location, territory = geom, None
        elif kind == -1:
            location = territory = None
        else:
            location, territory = _split(geom, where)
        if location is None and (lon is not None or lat is not None):
            location = _point_columns(lon, lat, where)
        unit_uuid = None if uuid_text is None else uuid_text \
            if CANONICAL_UUID.fullmatch(uuid_text) else _uuid(uuid_text)
        if unit_uuid is None and ref.startswith("georeg:"):
            unit_uuid = _georeg_uuid(ref)
        if unit_uuid is None and uuid_text is not None:
            warns.append(f"{where}: field 'uuid' {uuid_text!r} is not a UUID; the unit gets a "
                         "new one.")
        elif unit_uuid is not None:
            if unit_uuid in seen_uuids:
                # Iaso does not check its uuids; a new one is made (and said)
                warns.append(f"{where}: uuid {unit_uuid} is also the uuid of "
                             f"{seen_uuids[unit_uuid].removeprefix(f'{path.name}, ')}; the "
                             "unit gets a new one.")
                unit_uuid = None
            else:
                seen_uuids[unit_uuid] = where
        if parent is not None and parent.startswith("iaso"):
            parent = _norm_ref(parent)
        yield UnitRecord(
            name=name,
            source_ref=ref,
            parent_ref=parent,
            type_name=layer.type_name,
            code=code,
            opening_date=opening,
            closed_date=closed,
            aliases=None if aliases is None else _json_column(aliases, list, "aliases", where),
            extra_fields=None if extra is None
            else _json_column(extra, dict, "extra_fields", where),
            location=location,
            territory=territory,
            validation_status=status.lower() if status else "valid",
            uuid=unit_uuid,
            groups=(_split_groups(group_refs) if group_refs is not None and group_refs != ""
                    else []) if has_groups else None,
            where=where,
        )


def _transformer(path: Path, layer: _Layer, opts: ReadOptions) -> Any:
    """A function reprojecting coordinates to EPSG:4326, or None when already there."""
    if not layer.has_geometry:
        return None
    crs_text = layer.crs if layer.crs is not None else (opts.crs or WGS84)
    if crs_text.upper() == WGS84:
        return None
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError

    try:
        crs = _crs(crs_text, path) if layer.crs is None else CRS.from_user_input(crs_text)
        if crs.to_epsg() == 4326:
            return None
        tr = Transformer.from_crs(crs, WGS84, always_xy=True)
    except (CRSError, ProjError) as error:
        raise InvalidInput(f"{path.name}, layer {layer.name!r}: cannot reproject from "
                           f"{crs_text} to EPSG:4326 ({error}).") from None

    def transform(coords: np.ndarray) -> np.ndarray:
        x, y = tr.transform(coords[:, 0], coords[:, 1], errcheck=True)
        return np.column_stack([x, y])

    def run(geoms: np.ndarray) -> np.ndarray:
        try:
            return shapely.transform(geoms, transform)
        except ProjError as error:
            raise InvalidInput(f"{path.name}, layer {layer.name!r}: cannot reproject from "
                               f"{crs_text} to EPSG:4326 ({error}).") from None

    return run


def _geometries(path: Path, layer: _Layer, fids: list[Any], blobs: list[Any],
                transform: Any) -> np.ndarray:
    """A chunk's geometry blobs → shapely (2D, EPSG:4326; missing and empty: None)."""
    try:
        geoms = gpkg_sql.decode_blobs(blobs)
    except gpkg_sql.BadBlob as bad:
        raise InvalidInput(f"{_where(path, layer.name, fids[bad.index])}: field 'geometry' "
                           f"{bad.why}; the file may be damaged.") from None
    missing = shapely.is_missing(geoms)
    if missing.all():
        return geoms
    missing[~missing] = shapely.is_empty(geoms[~missing])
    deep = ~missing
    deep[deep] = shapely.get_coordinate_dimension(geoms[deep]) > 2
    if deep.any():
        geoms[deep] = shapely.force_2d(geoms[deep])
    geoms[missing] = None
    if transform is not None and not missing.all():
        geoms[~missing] = transform(geoms[~missing])
    return geoms


def _split(geom: BaseGeometry | None,
           where: str) -> tuple[BaseGeometry | None, BaseGeometry | None]:
    if geom is None:
        return None, None
    kind = geom.geom_type
    if kind == "Point" or (kind == "MultiPoint" and len(geom.geoms) == 1):
        return geometry.split_location_territory(geom)
    if kind in ("Polygon", "MultiPolygon"):
        return None, geometry.as_multipolygon(geom)
    if kind == "GeometryCollection":
        try:
            return None, geometry.as_multipolygon(geom)
        except InvalidInput:
            pass
    raise InvalidInput(f"{where}: field 'geometry' is a {kind}; Iaso takes a point (location) "
                       "or a polygon/multipolygon (territory).")


def _point_columns(lon: Any, lat: Any, where: str) -> BaseGeometry | None:
    if _is_null(lon) and _is_null(lat):
        return None
    try:
        x, y = float(lon), float(lat)
    except (TypeError, ValueError):
        raise InvalidInput(f"{where}: fields 'longitude' and 'latitude' must both be numbers "
                           f"(got {lon!r}, {lat!r}).") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InvalidInput(f"{where}: fields 'longitude' and 'latitude' must both be set "
                           f"(got {lon!r}, {lat!r}).")
    return shapely.Point(x, y)


def _json_column(value: Any, kind: type, field_name: str, where: str) -> Any:
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidInput(f"{where}: field {field_name!r} is not JSON ({text[:60]!r}).") from None
    if not isinstance(parsed, kind):
        raise InvalidInput(f"{where}: field {field_name!r} must be a JSON "
                           f"{'list' if kind is list else 'object'}.")
    return parsed or None


# --- small value helpers ------------------------------------------------------------------


def _where(path: Path, layer: str, fid: Any) -> str:
    return f"{path.name}, layer {layer!r}, row {fid}"


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    kind = type(value)
    if kind is str:
        return False
    return kind is float and value != value  # NaN


class _NotText(ValueError):
    """A BLOB cell that is not UTF-8 text (:func:`_cells` names its row)."""


def _text(value: Any) -> str | None:
    """A cell as stripped text; null, empty and blank are None.  A BLOB (a ref some tool
    wrote as bytes) is read as the UTF-8 text it holds, not as Python's ``b'…'``."""
    if type(value) is str:
        return value.strip() or None
    if _is_null(value):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise _NotText(bytes(value)[:16].hex()) from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _emptiness(raw: Any) -> str:
    if _is_null(raw):
        return "is empty (null)"
    return "is empty" if str(raw) == "" else "is blank (only spaces)"


def _norm_ref(ref: str) -> str:
    """``iaso#123`` and ``iaso:123`` are one unit: both read as ``iaso:123``."""
    if not ref.startswith("iaso"):
        return ref
    m = _INTERNAL.match(ref)
    return f"iaso:{m.group(1)}" if m else ref


def _split_groups(value: Any) -> list[str]:
    text = _text(value)
    if text is None:
        return []
    return list(dict.fromkeys(_norm_ref(g.strip()) for g in text.split(",") if g.strip()))


def _uuid(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if CANONICAL_UUID.fullmatch(text):
        return text
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        return None


def _georeg_uuid(ref: str) -> str | None:
    m = _GEOREG.match(ref)
    return _uuid(m.group(1)) if m else None


def _date_text(value: Any) -> str | None:
    if _is_null(value):
        return None
    if hasattr(value, "strftime"):
        return str(value.strftime("%Y-%m-%d"))
    return _text(value)


# --- writing --------------------------------------------------------------------------------


@dataclass
class _LayerRows:
    rows: list[list[Any]]
    locations: list[BaseGeometry | None]
    territories: list[BaseGeometry | None]


@gc_paused()
def write_file(data: VersionData, out: Path, opts: ReadOptions | None = None) -> dict[str, Any]:
    """Write a version as a GeoPackage Iaso imports: one layer per type, then ``groups``.

    Written with plain SQLite (:mod:`sync.formats.gpkg_sql`) to ``<name>.part.gpkg``
    and renamed when complete."""
    out = Path(out)
    depth_of = {t.name: t.depth for t in data.types}
    group_names = {g.ref: g.name for g in data.groups}
    for g in data.groups:
        if "," in g.ref:
            raise InvalidInput(f"Group {g.name!r}: its ref {g.ref!r} contains a comma, which "
                               "Iaso's comma-separated group_refs cannot hold.")
    layers: dict[str, _LayerRows] = {}
    seen: dict[str, tuple[str, str | None]] = {}  # ref -> (name, type), for "parent"
    layer_of = {t.name: layer_name(t.name, t.depth) for t in data.types}
    units = 0
    for batch in unit_batches(data):
        units += len(batch)
        for (name, ref, parent_ref, type_name, groups, uuid, opening, closed, code, status,
             aliases, extra, location, territory) in zip(
                batch.names, batch.refs, batch.parent_refs, batch.types, batch.groups,
                batch.uuids, batch.opening_dates, batch.closed_dates, batch.codes,
                batch.statuses, batch.aliases, batch.extra_fields, batch.locations,
                batch.territories, strict=True):
            seen[ref] = (name, type_name)
            layer = layer_of.get(type_name) if type_name else None
            if layer is None:
                layer = layer_name(type_name, depth_of.get(type_name) if type_name else None)
            rows = layers.get(layer)
            if rows is None:
                rows = layers[layer] = _LayerRows([], [], [])
            parent = None
            if parent_ref is not None and parent_ref in seen:
                parent_name, parent_type = seen[parent_ref]
                parent = f"{parent_name} ({parent_type})" if parent_type else parent_name
            if groups:
                for g in groups:
                    if "," in g:
                        raise InvalidInput(
                            f"Unit {name!r} ({ref}): group ref {g!r} contains a comma, which "
                            "Iaso's comma-separated group_refs cannot hold.")
                group_refs = ", ".join(groups)
                group_list = ", ".join(group_names.get(g, g) for g in groups)
            else:
                group_refs = group_list = ""
            rows.rows.append([
                name, ref, parent, parent_ref, group_refs, group_list, uuid, opening, closed,
                code, status, None, None,
                json.dumps(aliases, ensure_ascii=False) if aliases else None,
                json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else None,
            ])
            rows.locations.append(location)
            rows.territories.append(territory)
    tmp = out.with_name(f"{out.stem}.part.gpkg")
    tmp.unlink(missing_ok=True)
    try:
        try:
            with gpkg_sql.Writer(tmp) as w:
                for name, rows in layers.items():
                    _write_layer(w, name, rows)
                w.attributes(GROUPS_TABLE, [("ref", "TEXT"), ("name", "TEXT")],
                             [(g.ref, g.name) for g in data.groups])
        except OSError as error:
            raise InvalidInput(f"{out}: cannot be written ({error.strerror or error}).") from None
        except sqlite3.Error as error:
            raise InvalidInput(f"{out}: cannot be written ({error}).") from None
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"layers": len(layers), "units": units, "file": str(out)}


_SQL_TYPES = [("longitude", "REAL"), ("latitude", "REAL")]


def _write_layer(w: gpkg_sql.Writer, name: str, rows: _LayerRows) -> None:
    """One layer: a layer whose type has polygons holds them (points then go
    to longitude/latitude); otherwise it holds the points."""
    n = len(rows.rows)
    polygons = any(t is not None for t in rows.territories)
    # (``np.fromiter``: filling an object array from a list of geometries makes numpy
    # probe each one as a possible sequence, ~30x slower)
    geoms = np.fromiter(rows.territories if polygons else rows.locations, dtype=object, count=n)
    if polygons:
        has = np.flatnonzero(~shapely.is_missing(geoms))
        kinds = shapely.get_type_id(geoms[has])
        single = has[kinds != 6]  # Polygon … -> MultiPolygon, as the layer type says
        if len(single):
            geoms[single] = [geometry.as_multipolygon(g) for g in geoms[single]]
        for row, loc in zip(rows.rows, rows.locations, strict=True):
            if loc is not None:  # the geometry column holds the polygon: keep the point
                row[_LON], row[_LAT] = loc.x, loc.y
    types = dict(_SQL_TYPES)
    w.features(name, [(c, types.get(c, "TEXT")) for c in OUT_COLUMNS], rows.rows, geoms,
               "MultiPolygon" if polygons else "Point")


def layer_name(type_name: str | None, depth: int | None) -> str:
    """Iaso's layer name for a type: ``level-{depth}-{type}`` (999 / Unknown when missing)."""
    return f"{LAYER_PREFIX}{NO_DEPTH if depth is None else depth}-{type_name or NO_TYPE}"


_LON, _LAT = OUT_COLUMNS.index("longitude"), OUT_COLUMNS.index("latitude")
