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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.bulk import UnitRecord
from storage.errors import InvalidInput
from sync.exchange import (
    ExportUnit,
    GroupDef,
    ImportPayload,
    ReadOptions,
    TypeDef,
    VersionData,
    gc_paused,
)

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
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_GEOREG = re.compile(r"^georeg:([0-9a-fA-F-]{32,36})$")


def _pyogrio() -> Any:
    import pyogrio

    return pyogrio


# --- reading ----------------------------------------------------------------------------


@dataclass
class _Layer:
    name: str
    type_name: str | None
    depth: int | None
    fields: list[str]
    count: int
    crs: str | None
    has_geometry: bool


@gc_paused()
def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """Read an Iaso GeoPackage; units stream layer by layer."""
    opts = opts or ReadOptions()
    path = Path(path)
    layers = _level_layers(path, opts)
    groups = _read_groups(path)
    warns = _check_rows(path, layers, {g.ref for g in groups})
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
    return ImportPayload(
        units=_records(path, layers, opts),
        types=sorted(types.values(), key=lambda t: (t.depth is None, t.depth or 0, t.name)),
        groups=groups,
        warnings=warns,
        total=sum(layer.count for layer in layers),
        description=f"Imported from Iaso GeoPackage {path.name}",
        # Iaso stores polygons as it gets them; our own exports carry what the registry
        # holds.  Invalid ones are kept with a warning (--fix-geometry repairs them).
        invalid_geometry="keep",
    )


def _open_error(path: Path, error: BaseException) -> InvalidInput:
    return InvalidInput(f"{path.name}: not a readable GeoPackage ({error}); the file may be "
                        "truncated or damaged.")


def _level_layers(path: Path, opts: ReadOptions) -> list[_Layer]:
    pyogrio = _pyogrio()
    if not path.exists():
        raise InvalidInput(f"{path.name}: file not found ({path}).")
    if path.is_dir():
        raise InvalidInput(f"{path.name}: is a folder, not a GeoPackage file.")
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput(f"{path.name}: is an empty file (0 bytes), not a GeoPackage.")
    with path.open("rb") as fh:
        magic = fh.read(16)
    if magic != b"SQLite format 3\x00":
        raise InvalidInput(f"{path.name}: not a GeoPackage (a GeoPackage is an SQLite "
                           "database; this file does not start like one).")
    try:
        with _quiet():
            listed = [(str(n), g) for n, g in pyogrio.list_layers(path)]
    except _ogr_errors() as error:
        raise _open_error(path, error) from None
    names = [n for n, _ in listed]
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
        try:
            with _quiet():
                info = pyogrio.read_info(path, layer=name)
        except _ogr_errors() as error:
            raise _open_error(path, error) from None
        if info.get("driver") not in (None, "GPKG"):
            raise InvalidInput(f"{path.name}: a {info['driver']} file, not a GeoPackage.")
        fields = [str(f) for f in info["fields"]]
        for column in REQUIRED:
            if column not in fields:
                raise InvalidInput(
                    f"{path.name}, layer {name!r}: column {column!r} is missing; every "
                    f"level-N-Type layer needs 'ref' and 'name' (columns here: "
                    f"{', '.join(fields) or 'none'}).")
        has_geometry = bool(info.get("geometry_type"))
        count = int(info.get("features") or 0)
        crs = _defined_crs(info.get("crs"))
        if has_geometry and count and crs is None and not opts.crs:
            raise InvalidInput(f"{path.name}, layer {name!r}: the layer has no coordinate "
                               "reference system; give it with --crs (e.g. EPSG:32628).")
        out.append(_Layer(name, type_name, depth, fields, count, crs, has_geometry))
    if opts.crs:
        _crs(opts.crs, path)
    return out


def _defined_crs(crs: str | None) -> str | None:
    """The layer's CRS; GeoPackage's "Undefined geographic/Cartesian SRS" (srs_id 0/-1) is none."""
    if crs is None:
        return None
    from pyproj import CRS

    return None if CRS.from_user_input(crs).name.startswith("Undefined ") else crs


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
    uri = path.resolve().as_uri()
    last: sqlite3.Error | None = None
    # read-only first (sees a pending -wal); a read-only folder needs immutable
    for mode in ("?mode=ro", "?immutable=1"):
        try:
            conn = sqlite3.connect(uri + mode, uri=True)
        except sqlite3.Error as error:
            last = error
            continue
        try:
            return conn.execute(query).fetchall()
        except sqlite3.OperationalError as error:
            if missing_ok and "no such table" in str(error):
                return []
            last = error
        except sqlite3.DatabaseError as error:
            last = error
        finally:
            conn.close()
    raise _open_error(path, last or RuntimeError("unknown error"))


def _check_rows(path: Path, layers: list[_Layer], group_refs: set[str]) -> list[str]:
    """Refuse what Iaso refuses, for the whole file at once, before anything streams.

    Reads only the attribute columns it checks (no geometry).
    """
    problems: list[str] = []
    warns: list[str] = []
    refs: dict[str, tuple[str, Any]] = {}  # ref -> (layer, fid) of its first row
    unknown_groups: dict[str, str] = {}
    for layer in layers:
        columns: list[str] = [c for c in ("ref", "name", "group_refs") if c in layer.fields]
        df = _read(path, layer, columns=columns, with_geometry=False)
        fids = df.index.tolist()
        for column in REQUIRED:
            for fid, raw in zip(fids, df[column].tolist(), strict=True):
                if _text(raw) is None:
                    problems.append(f"{_where(path, layer.name, fid)}: field {column!r} "
                                    f"{_emptiness(raw)}.")
        for fid, raw in zip(fids, df["ref"].tolist(), strict=True):
            ref = _text(raw)
            if ref is None:
                continue
            ref = _norm_ref(ref)
            first = refs.setdefault(ref, (layer.name, fid))
            if first != (layer.name, fid):
                problems.append(f"{_where(path, layer.name, fid)}: field 'ref' {ref!r} is also "
                                f"the ref of layer {first[0]!r}, row {first[1]}; each unit needs "
                                "its own ref.")
        if "group_refs" in df.columns:
            for fid, raw in zip(fids, df["group_refs"].tolist(), strict=True):
                for g in _split_groups(raw):
                    if g not in group_refs and g not in unknown_groups:
                        unknown_groups[g] = _where(path, layer.name, fid)
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


def _read(path: Path, layer: _Layer, *, columns: list[str] | None = None,
          with_geometry: bool = True) -> pd.DataFrame:
    pyogrio = _pyogrio()
    try:
        with _quiet():
            return pyogrio.read_dataframe(path, layer=layer.name, columns=columns,
                                          read_geometry=with_geometry and layer.has_geometry,
                                          fid_as_index=True)
    except _ogr_errors() as error:
        raise InvalidInput(f"{path.name}, layer {layer.name!r}: cannot be read ({error}); "
                           "the file may be truncated or damaged.") from None


def _records(path: Path, layers: list[_Layer], opts: ReadOptions) -> Iterator[UnitRecord]:
    seen_uuids: dict[str, str] = {}
    for layer in layers:
        df = _read(path, layer)
        geoms = _layer_geometries(path, layer, df, opts)
        cols = {c: df[c].tolist() for c in OUT_COLUMNS if c in df.columns}
        n = len(df)

        none: list[Any] = [None] * n
        prefix = f"{path.name}, layer {layer.name!r}, row "
        arr = np.empty(n, dtype=object)
        arr[:] = geoms
        kinds = shapely.get_type_id(arr).tolist()  # -1: no geometry, 0: point
        has_groups = "group_refs" in cols
        for (fid, ref_raw, name_raw, geom, kind, lon, lat, uuid_raw, status_raw, parent_raw,
             code, opening, closed, aliases, extra, group_refs) in zip(
                df.index.tolist(), cols["ref"], cols["name"], geoms, kinds,
                *(cols.get(c) or none for c in (
                    "longitude", "latitude", "uuid", "validation_status", "parent_ref", "code",
                    "opening_date", "closed_date", "aliases", "extra_fields", "group_refs")),
                strict=True):
            where = f"{prefix}{fid}"
            ref = _norm_ref(_text(ref_raw) or "")
            name = _text(name_raw)
            if not ref or not name:  # checked before streaming; the file changed since
                raise InvalidInput(f"{where}: field {'ref' if not ref else 'name'!r} is empty.")
            if kind == 0:
                location, territory = geom, None
            else:
                location, territory = _split(geom, where)
            if location is None:
                location = _point_columns(lon, lat, where)
            unit_uuid = _uuid(uuid_raw) or _georeg_uuid(ref)
            if unit_uuid is not None:
                if unit_uuid in seen_uuids:
                    unit_uuid = None  # Iaso does not check its uuids; a new one is made
                else:
                    seen_uuids[unit_uuid] = where
            status = _text(status_raw)
            yield UnitRecord(
                name=name,
                source_ref=ref,
                parent_ref=_norm_ref(_text(parent_raw) or "") or None,
                type_name=layer.type_name,
                code=_text(code),
                opening_date=_date_text(opening),
                closed_date=_date_text(closed),
                aliases=_json_column(aliases, list, "aliases", where),
                extra_fields=_json_column(extra, dict, "extra_fields", where),
                location=location,
                territory=territory,
                validation_status=status.lower() if status else "valid",
                uuid=unit_uuid,
                groups=_split_groups(group_refs) if has_groups else None,
                where=where,
            )
        del df, geoms, cols


def _layer_geometries(path: Path, layer: _Layer, df: pd.DataFrame,
                      opts: ReadOptions) -> list[BaseGeometry | None]:
    if not layer.has_geometry or "geometry" not in df.columns:
        return [None] * len(df)
    import geopandas as gpd

    gdf = df if isinstance(df, gpd.GeoDataFrame) else gpd.GeoDataFrame(df, geometry="geometry")
    if layer.crs is None:
        if not len(gdf):
            return []
        # checked in read_file: a layer with features and no CRS has --crs
        gdf = gdf.set_crs(_crs(opts.crs or WGS84, path), allow_override=True)
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        try:
            gdf = gdf.to_crs(WGS84)
        except Exception as error:  # noqa: BLE001 - PROJ raises several kinds
            raise InvalidInput(f"{path.name}, layer {layer.name!r}: cannot reproject from "
                               f"{gdf.crs} to EPSG:4326 ({error}).") from None
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    missing = shapely.is_missing(geoms)
    missing[~missing] = shapely.is_empty(geoms[~missing])
    deep = ~missing
    deep[deep] = shapely.get_coordinate_dimension(geoms[deep]) > 2
    if deep.any():
        geoms[deep] = shapely.force_2d(geoms[deep])
    geoms[missing] = None
    return geoms.tolist()


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
    if kind is float:
        return value != value  # NaN
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _text(value: Any) -> str | None:
    """A cell as stripped text; null, empty and blank are None."""
    if type(value) is str:
        return value.strip() or None
    if _is_null(value):
        return None
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
    if _CANONICAL_UUID.fullmatch(text):
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


def _ogr_errors() -> tuple[type[BaseException], ...]:
    from pyogrio import errors

    return (errors.DataSourceError, errors.DataLayerError, errors.FieldError,
            errors.FeatureError, errors.GeometryError, errors.CRSError, OSError)


class _quiet(warnings.catch_warnings):
    """GDAL's notes while opening (e.g. a WAL file in a read-only folder) are not ours."""

    def __enter__(self) -> Any:
        result = super().__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return result


# --- writing --------------------------------------------------------------------------------


@dataclass
class _LayerRows:
    rows: list[list[Any]]
    locations: list[BaseGeometry | None]
    territories: list[BaseGeometry | None]


@gc_paused()
def write_file(data: VersionData, out: Path, opts: ReadOptions | None = None) -> dict[str, Any]:
    """Write a version as a GeoPackage Iaso imports: one layer per type, then ``groups``."""
    pyogrio = _pyogrio()
    out = Path(out)
    depth_of = {t.name: t.depth for t in data.types}
    group_names = {g.ref: g.name for g in data.groups}
    for g in data.groups:
        if "," in g.ref:
            raise InvalidInput(f"Group {g.name!r}: its ref {g.ref!r} contains a comma, which "
                               "Iaso's comma-separated group_refs cannot hold.")
    layers: dict[str, _LayerRows] = {}
    type_of: dict[str, str | None] = {}  # ref -> type name, for the "parent" column
    units = 0
    for u in data.units:
        units += 1
        type_of[u.ref] = u.type
        name = layer_name(u.type, depth_of.get(u.type) if u.type else None)
        rows = layers.setdefault(name, _LayerRows([], [], []))
        rows.rows.append(_row(u, group_names, type_of))
        rows.locations.append(u.location)
        rows.territories.append(u.territory)
    tmp = out.with_name(f"{out.stem}.part.gpkg")  # GDAL wants the .gpkg extension
    tmp.unlink(missing_ok=True)
    try:
        for name, rows in layers.items():
            polygons = any(t is not None for t in rows.territories)
            geoms: list[BaseGeometry | None] = []
            for row, loc, ter in zip(rows.rows, rows.locations, rows.territories, strict=True):
                if polygons:
                    geoms.append(geometry.as_multipolygon(ter) if ter is not None else None)
                    if loc is not None:  # the geometry column holds the polygon: keep the point
                        row[_LON], row[_LAT] = loc.x, loc.y
                else:
                    geoms.append(loc)
            _write_layer(tmp, name, rows.rows, geoms, "MultiPolygon" if polygons else "Point")
        groups = pd.DataFrame({"ref": pd.Series([g.ref for g in data.groups], dtype=object),
                               "name": pd.Series([g.name for g in data.groups], dtype=object)})
        pyogrio.write_dataframe(groups, tmp, layer=GROUPS_TABLE, driver="GPKG")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"layers": len(layers), "units": units, "file": str(out)}


def _write_layer(path: Path, name: str, rows: list[list[Any]],
                 geoms: list[BaseGeometry | None], geometry_type: str) -> None:
    """One layer, written straight from columns (what ``write_dataframe`` does, without
    building a GeoDataFrame): text columns as object arrays, longitude and latitude as
    float64 (NaN is written as null), the geometries as WKB in EPSG:4326."""
    from pyogrio.raw import write

    columns = list(zip(*rows, strict=True)) if rows else [()] * len(OUT_COLUMNS)
    field_data = []
    for i, values in enumerate(columns):
        if i in (_LON, _LAT):
            field_data.append(np.array([np.nan if v is None else v for v in values],
                                       dtype="float64"))
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = values
            field_data.append(column)
    wkb_geoms = np.empty(len(geoms), dtype=object)
    wkb_geoms[:] = geoms
    with _quiet():
        write(path, shapely.to_wkb(wkb_geoms), field_data, list(OUT_COLUMNS), layer=name,
              driver="GPKG", geometry_type=geometry_type, crs="EPSG:4326")


def layer_name(type_name: str | None, depth: int | None) -> str:
    """Iaso's layer name for a type: ``level-{depth}-{type}`` (999 / Unknown when missing)."""
    return f"{LAYER_PREFIX}{NO_DEPTH if depth is None else depth}-{type_name or NO_TYPE}"


_LON, _LAT = OUT_COLUMNS.index("longitude"), OUT_COLUMNS.index("latitude")


def _row(u: ExportUnit, group_names: dict[str, str],
         type_of: dict[str, str | None]) -> list[Any]:
    """One unit's values, in the order of OUT_COLUMNS."""
    parent = None
    if u.parent_ref is not None and u.ancestors:
        parent_type = type_of.get(u.parent_ref)
        parent = f"{u.ancestors[-1]} ({parent_type})" if parent_type else u.ancestors[-1]
    for g in u.groups:
        if "," in g:
            raise InvalidInput(f"Unit {u.name!r} ({u.ref}): group ref {g!r} contains a comma, "
                               "which Iaso's comma-separated group_refs cannot hold.")
    groups = u.groups
    return [
        u.name,
        u.ref,
        parent,
        u.parent_ref,
        ", ".join(groups) if groups else "",
        ", ".join(group_names.get(g, g) for g in groups) if groups else "",
        u.uuid,
        u.opening_date,
        u.closed_date,
        u.code,
        u.validation_status,
        None,
        None,
        json.dumps(u.aliases, ensure_ascii=False) if u.aliases else None,
        json.dumps(u.extra_fields, ensure_ascii=False, sort_keys=True)
        if u.extra_fields else None,
    ]
