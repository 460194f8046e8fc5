"""Any vector file GDAL reads or writes (Shapefile, GeoPackage layer, GeoJSON, KML, FlatGeobuf …).

**Reading** (through pyogrio): one layer per file, one unit per row.  Which column
holds what comes from ``--mapping`` (a JSON object), else from usual column names
(case-insensitive)::

    {"name": "NAME_2",              # required (default: name, nom, nombre, nome, label)
     "ref": "GID_2",                # default: ref, source_ref, id, uid, pcode, code; null: none
     "parent_ref": "GID_1",         # default: parent_ref, parent_id, parent_uid, parent
     "type": "TYPE_2",              # a column …
     "type_name": "District",       # … or one type for the whole file
     "level": "LEVEL",              # a column …
     "depth": 3,                    # … or one depth for the whole file
     "code": "HASC_2",
     "opening_date": "OPENED", "closed_date": "CLOSED",
     "aliases": "VARNAME_2",        # ';'-separated
     "groups": "GROUPS",            # ';'-separated group refs
     "uuid": "UUID", "validation_status": "STATUS",
     "extra_fields": ["POP", "AREA_KM2"],   # or "*": every column not mapped
     "files": {"districts.shp": {"name": "NAME_2"}}}   # per file (by name or stem)

A column may be given as a list (the first one present is used), which lets one
mapping serve files of several levels.  A type not given becomes ``Level N`` when
the level is known (single file) or the file's stem (one file per level).

**CRS**: every file is reprojected to EPSG:4326.  A file without a CRS needs
``--crs``; ``--crs`` given for a file that has one overrides it (with a warning).
Points become locations, polygons and multipolygons territories, ``Z`` is dropped.
Values that are wrong for one row — an empty name, a latitude of 200, an invalid
polygon, a bad date — are left to the import job, which checks every row and
reports them together.  So are rows this reader cannot make a unit of — a line (or
several points) instead of a point or polygon, a ``level`` that is not a whole
number: each comes to the job as a record with ``problem`` (see
``storage.bulk.ROW_PROBLEMS``), rejected with the other rows (``--skip-invalid``
imports the rest).  Unreadable files, unknown columns and a missing CRS are
refused here, for the whole file.

**Several files** (``read_files``): one file per level, top first (or ``depth`` per
file in the mapping).  With ``--parent-by-location`` each unit of a level gets as
parent the unit of the level above whose territory contains its point (a point on
a shared border: the first such unit), or — polygons — holds the largest part of
its area, measured in a Lambert azimuthal equal-area projection centred on the
data.  A unit inside no parent is refused, naming its file and row; one whose best
parent holds under half its area is imported with a warning.  Units without a ref
then get ``<file stem>:<row>`` so that their children can name them.

Without ``--parent-by-location``, a ref found in two files with a point in one and
a polygon in the other is one unit with both (so a single-layer export, ``sl.shp``
plus ``sl_locations.shp``, reads back whole).

**Writing** (``write_file``), the driver chosen by the suffix: every unit with a
territory goes to a ``territories`` layer (MultiPolygon), every unit with a point —
and every unit with neither, with an empty geometry — to a ``locations`` layer
(Point): a unit with both is in both, with the same ref and uuid.  Columns: ref,
name, parent_ref, level, type, code, opening_date, closed_date, uuid,
validation_status, aliases, groups (lists ';'-joined); Shapefiles take 10-letter
names (open_date, close_date, val_status).  Formats with layers (GeoPackage,
SpatiaLite, FileGDB, KML) hold both layers in ``out``; single-layer formats
(Shapefile, FlatGeobuf, GML, MapInfo, GeoJSON) write the territories to ``out`` and
the locations beside it as ``<stem>_locations<suffix>`` (only the layer that has
units when the version has only one kind; see :func:`output_paths`).  FlatGeobuf
cannot store a feature without geometry: such units are left out, with a warning.
Every file (with a Shapefile's sidecars) is written into a temporary folder beside
``out`` and moved into place only when all layers are written, so a failed export
leaves the previous files as they were; files of ``output_paths`` a previous export
left and this one does not write (``<stem>_locations``) are then removed.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError

from storage import geometry
from storage.bulk import ROW_PROBLEMS, UnitRecord
from storage.errors import InvalidInput
from sync.exchange import GroupDef, ImportPayload, ReadOptions, TypeDef, VersionData

WGS84 = CRS.from_epsg(4326)

#: our field → usual column names (compared case-insensitively), in order of preference
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "name": ("name", "nom", "nombre", "nome", "label"),
    "ref": ("ref", "source_ref", "id", "uid", "pcode", "code"),
    "parent_ref": ("parent_ref", "parent_id", "parent_uid", "parent"),
    "type": ("type", "type_name", "org_unit_type"),
    "level": ("level", "niveau"),
    "code": ("code",),
    "opening_date": ("opening_date", "open_date", "opening_da"),
    "closed_date": ("closed_date", "close_date", "closed_dat"),
    "aliases": ("aliases", "alias"),
    "groups": ("groups",),
    "uuid": ("uuid",),
    "validation_status": ("validation_status", "val_status"),
}
COLUMN_KEYS = tuple(DEFAULT_COLUMNS)
CONSTANT_KEYS = ("type_name", "depth")
MAPPING_KEYS = (*COLUMN_KEYS, *CONSTANT_KEYS, "extra_fields", "layer")
MAX_LISTED = 10


# --- reading one file ---------------------------------------------------------------------


@dataclass
class _Level:
    """One file (layer) read into columns, ready to become records."""

    path: Path
    label: str  # "districts.shp" or "admin.gpkg, layer districts"
    names: list[Any]
    refs: list[str | None]
    parent_refs: list[str | None]
    types: list[str | None]
    depth: int | None
    locations: np.ndarray
    territories: np.ndarray
    columns: dict[str, list[Any]]  # code, dates, aliases, groups, uuid, status
    extra: list[dict[str, Any] | None]
    row_depths: list[int | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: rows merged into a row of another file (same ref: one has the point, one the polygon)
    merged: set[int] = field(default_factory=set)
    #: rows this reader cannot make a unit of (a line for geometry, a level that is no
    #: number) → the message; the import job rejects them (see ``storage.bulk.ROW_PROBLEMS``)
    problems: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)

    def where(self, row: int) -> str:
        return f"{self.label}, row {row + 1}"


def _file_mapping(path: Path, mapping: dict[str, Any] | None) -> dict[str, Any]:
    mapping = dict(mapping or {})
    per_file = mapping.pop("files", None) or {}
    if not isinstance(per_file, dict):
        raise InvalidInput("--mapping: 'files' must map file names to mappings.")
    own = per_file.get(path.name, per_file.get(path.stem, {}))
    if not isinstance(own, dict):
        raise InvalidInput(f"--mapping: 'files' → {path.name!r} must be a JSON object.")
    mapping.update(own)
    unknown = [k for k in mapping if k not in MAPPING_KEYS]
    if unknown:
        raise InvalidInput(f"--mapping: unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"known: {', '.join(MAPPING_KEYS)}, files.")
    return mapping


def _choose_layer(path: Path, wanted: str | None) -> tuple[str | None, bool]:
    """(layer to read, whether the file has several layers)."""
    try:
        layers = pyogrio.list_layers(path)
    except Exception as error:  # noqa: BLE001 - GDAL says why; we say which file
        raise _unreadable(path, error) from None
    names = [str(n) for n, _ in layers]
    if not names:
        raise InvalidInput(f"{path}: no layer in this file.")
    if wanted is not None:
        if wanted not in names:
            raise InvalidInput(f"{path}: no layer {wanted!r}; layers: {', '.join(names)}.")
        return wanted, len(names) > 1
    if len(names) == 1:
        return names[0], False
    spatial = [str(n) for n, g in layers if g is not None]
    if len(spatial) == 1:
        return spatial[0], True
    raise InvalidInput(f"{path}: {len(names)} layers ({', '.join(names)}); give --layer.")


def _unreadable(path: Path, error: BaseException) -> InvalidInput:
    if not path.exists():
        return InvalidInput(f"{path}: file not found.")
    if path.is_file() and path.stat().st_size == 0:
        return InvalidInput(f"{path}: the file is empty.")
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return InvalidInput(f"{path}: not a vector file GDAL can read ({message}).")


def _column(df: pd.DataFrame, key: str, mapping: dict[str, Any], label: str) -> str | None:
    """The column that holds ``key``: mapped, else a usual name, else None."""
    by_lower = {str(c).lower(): str(c) for c in df.columns if c != "geometry"}
    if key in mapping:
        given = mapping[key]
        if given is None:
            return None
        wanted = [given] if isinstance(given, str) else given
        if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
            raise InvalidInput(f"--mapping: {key!r} must be a column name or a list of them.")
        for w in wanted:
            if w in df.columns:
                return w
            if w.lower() in by_lower:
                return by_lower[w.lower()]
        raise InvalidInput(f"{label}: --mapping gives column {given!r} for {key!r}, but the "
                           f"columns are: {_listing(df)}.")
    for candidate in DEFAULT_COLUMNS[key]:
        if candidate in by_lower:
            return by_lower[candidate]
    return None


def _listing(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns if c != "geometry"]
    return ", ".join(cols) if cols else "(none)"


def _values(df: pd.DataFrame, column: str | None) -> list[Any]:
    """A column as plain Python values, None for blanks (NaN, NaT, '')."""
    if column is None:
        return [None] * len(df)
    series = df[column]
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return [None if pd.isna(v) else v.date().isoformat() for v in series]
    return [_plain(v) for v in series.astype(object).tolist()]


def _plain(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return int(v) if v.is_integer() and abs(v) < 2**53 else v
    if isinstance(v, np.generic):
        return _plain(v.item())
    if isinstance(v, str):
        return v.strip() or None
    if isinstance(v, pd.Timestamp | dt.datetime):
        return None if pd.isna(v) else v.date().isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    return v


def _text(v: Any) -> str | None:
    v = _plain(v)
    return None if v is None else str(v).strip() or None


def _str_list(v: Any) -> list[str]:
    v = _plain(v)
    if v is None:
        return []
    if isinstance(v, str):
        v = v.split(";")
    if not isinstance(v, list | tuple):
        v = [v]
    return [t for t in (_text(x) for x in v) if t]


def _json_safe(v: Any) -> Any:
    v = _plain(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.hex()
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return str(v)
    return v


def _crs(path: Path, label: str, df: Any, opts: ReadOptions, warnings: list[str]) -> Any:
    """The frame in EPSG:4326."""
    has_geometry = bool(df.geometry.notna().any())
    if opts.crs:
        try:
            given = CRS.from_user_input(opts.crs)
        except CRSError:
            raise InvalidInput(f"--crs {opts.crs!r} is not a CRS GDAL/PROJ knows "
                               "(e.g. EPSG:32628).") from None
        if df.crs is not None and not df.crs.equals(given, ignore_axis_order=True):
            warnings.append(f"{label}: the file says {df.crs.to_string()}; --crs {opts.crs} "
                            "was used instead.")
        df = df.set_crs(given, allow_override=True)
    elif df.crs is None:
        if not has_geometry:
            return df
        x0, y0, x1, y1 = df.total_bounds
        hint = ("its coordinates look like degrees: give --crs EPSG:4326"
                if -180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90
                else "give --crs (e.g. EPSG:32628)")
        raise InvalidInput(f"{label} has no CRS: {hint}.")
    if not df.crs.equals(WGS84, ignore_axis_order=True) and has_geometry:
        try:
            df = df.to_crs(WGS84)
        except Exception as error:  # noqa: BLE001 - PROJ's reason, with the file named
            raise InvalidInput(f"{label}: cannot reproject from {df.crs.to_string()} to "
                               f"EPSG:4326 ({error}).") from None
    return df


def _split_geometries(level_label: str, geoms: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Each row's geometry → (location points, territories, problems); None where absent.

    Vectorised by geometry kind (a point, a one-point MultiPoint, a polygon or a
    multipolygon costs no Python work per row); only GeometryCollections are looked at
    one by one.  A row whose geometry no unit can take (a line, several points) is
    not an error for the file: it is listed in ``problems`` (row index → message),
    for the import job to reject that row with the others' problems."""
    n = len(geoms)
    locations = np.full(n, None, dtype=object)
    territories = np.full(n, None, dtype=object)
    problems: dict[int, str] = {}
    if n == 0:
        return locations, territories, problems
    geoms = np.array(geoms, dtype=object)
    present = ~shapely.is_missing(geoms)
    geoms[~present] = None
    if shapely.has_z(geoms[present]).any():
        geoms[present] = shapely.force_2d(geoms[present])
    live = present.copy()
    live[present] = ~shapely.is_empty(geoms[present])
    kinds = shapely.get_type_id(geoms)
    taken = live & (kinds == 0)
    locations[taken] = geoms[taken]
    multipoint = np.flatnonzero(live & (kinds == 4))
    if len(multipoint):
        single = multipoint[shapely.get_num_geometries(geoms[multipoint]) == 1]
        locations[single] = shapely.get_geometry(geoms[single], 0)
        taken[single] = True
    polygons = live & ((kinds == 3) | (kinds == 6))
    territories[polygons] = geoms[polygons]
    taken |= polygons
    for i in np.flatnonzero(live & (kinds == 7)).tolist():
        g = geoms[i]
        if all(p.geom_type in ("Polygon", "MultiPolygon") for p in g.geoms):
            territories[i] = geometry.as_multipolygon(g)
            taken[i] = True
    for i in np.flatnonzero(live & ~taken).tolist():
        g = geoms[i]
        what = (f"a MultiPoint of {len(g.geoms)} points" if g.geom_type == "MultiPoint"
                else f"a {g.geom_type}")
        problems[i] = (f"{level_label}, row {i + 1}: field 'geometry' is {what}; a unit "
                       "takes a Point, a Polygon or a MultiPolygon.")
    return locations, territories, problems


def _read_level(path: Path, opts: ReadOptions, *, index: int, several: bool) -> _Level:
    mapping = _file_mapping(path, opts.mapping)
    wanted_layer = mapping.get("layer") or opts.layer
    layer, layered = _choose_layer(path, wanted_layer)
    label = f"{path.name}, layer {layer}" if layered or wanted_layer else path.name
    try:
        df = pyogrio.read_dataframe(path, layer=layer)
    except Exception as error:  # noqa: BLE001 - GDAL says why; we say which file
        raise _unreadable(path, error) from None
    if "geometry" not in df.columns:  # a table without geometry (CSV, XLSX sheet)
        import geopandas as gpd

        df = gpd.GeoDataFrame(df, geometry=[None] * len(df), crs=None)
    if len(df) == 0:
        raise InvalidInput(f"{label}: no features in this layer.")
    warnings: list[str] = []
    df = _crs(path, label, df, opts, warnings)

    cols = {key: _column(df, key, mapping, label) for key in COLUMN_KEYS}
    if cols["name"] is None:
        raise InvalidInput(f"{label}: no name column (looked for "
                           f"{', '.join(DEFAULT_COLUMNS['name'])}); the columns are: "
                           f"{_listing(df)}. Give --mapping with {{\"name\": \"COLUMN\"}}.")
    if cols["code"] is not None and cols["code"] == cols["ref"] and "code" not in mapping \
            and "ref" not in mapping:
        warnings.append(f"{label}: no ref column; column {cols['code']!r} is used as ref "
                        "and code.")

    locations, territories, problems = _split_geometries(label,
                                                         np.asarray(df.geometry.values))
    n = len(df)
    names = [_text(v) for v in _values(df, cols["name"])]
    refs = [_text(v) for v in _values(df, cols["ref"])]
    parent_refs = [_text(v) for v in _values(df, cols["parent_ref"])]

    type_const = mapping.get("type_name")
    depth_const = mapping.get("depth")
    if depth_const is not None and (not isinstance(depth_const, int) or depth_const < 1):
        raise InvalidInput(f"--mapping: 'depth' must be a whole number from 1 (got "
                           f"{depth_const!r}).")
    depth = depth_const if depth_const is not None else (index + 1 if several else None)
    levels: list[int | None] = []
    for i, v in enumerate(_values(df, cols["level"])):
        if v is None:
            levels.append(None)
        elif isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit()):
            levels.append(int(v))
        else:  # the row is rejected by the import job, not the file (see _records)
            levels.append(None)
            bad_level = f"field {cols['level']!r} is {v!r}; expected a whole number."
            problems[i] = (f"{problems[i]} Also {bad_level}" if i in problems
                           else f"{label}, row {i + 1}: {bad_level}")
    fallback = _text(type_const) or (path.stem if several else None)
    types = [_text(t) or fallback or (f"Level {lvl}" if lvl is not None else None)
             for t, lvl in zip(_values(df, cols["type"]), levels, strict=True)]
    row_depths = [lvl if lvl is not None else depth for lvl in levels]

    extra_spec = mapping.get("extra_fields")
    if extra_spec == "*":
        used = {c for c in cols.values() if c}
        extra_cols = [str(c) for c in df.columns if c != "geometry" and c not in used]
    elif extra_spec is None:
        extra_cols = []
    elif isinstance(extra_spec, list):
        missing = [c for c in extra_spec if c not in df.columns]
        if missing:
            raise InvalidInput(f"{label}: --mapping 'extra_fields' names missing column(s) "
                               f"{', '.join(map(repr, missing))}; the columns are: "
                               f"{_listing(df)}.")
        extra_cols = [str(c) for c in extra_spec]
    else:
        raise InvalidInput("--mapping: 'extra_fields' must be a list of columns or \"*\".")
    extra: list[dict[str, Any] | None] = [None] * n
    if extra_cols:
        values = {c: _values(df, c) for c in extra_cols}
        for i in range(n):
            row = {c: _json_safe(values[c][i]) for c in extra_cols}
            row = {k: v for k, v in row.items() if v is not None}
            extra[i] = row or None

    columns = {key: _values(df, cols[key]) for key in
               ("code", "opening_date", "closed_date", "aliases", "groups", "uuid",
                "validation_status")}
    return _Level(path=path, label=label, names=names, refs=refs, parent_refs=parent_refs,
                  types=types, depth=depth, locations=locations, territories=territories,
                  columns=columns, extra=extra, row_depths=row_depths,
                  warnings=warnings, problems=problems)


def _records(level: _Level) -> Iterator[UnitRecord]:
    c = level.columns
    problems = level.problems
    for i in range(len(level)):
        if i in level.merged:
            continue
        if problems and i in problems:  # for the job to reject (see ROW_PROBLEMS)
            yield UnitRecord(name=level.names[i] or "", source_ref=level.refs[i],
                             parent_ref=level.parent_refs[i], where=level.where(i),
                             problem=problems[i])
            continue
        aliases = _str_list(c["aliases"][i])
        groups = _str_list(c["groups"][i])
        yield UnitRecord(
            name=level.names[i] or "",
            source_ref=level.refs[i],
            parent_ref=level.parent_refs[i],
            type_name=level.types[i],
            code=_text(c["code"][i]),
            opening_date=_text(c["opening_date"][i]),
            closed_date=_text(c["closed_date"][i]),
            aliases=aliases or None,
            extra_fields=level.extra[i],
            location=level.locations[i],
            territory=level.territories[i],
            validation_status=_text(c["validation_status"][i]) or "valid",
            uuid=_text(c["uuid"][i]),
            groups=groups or None,
            where=level.where(i),
        )


def _payload(levels: list[_Level], warnings: list[str]) -> ImportPayload:
    types: dict[str, TypeDef] = {}
    group_refs: dict[str, None] = {}
    for lv in levels:
        warnings.extend(lv.warnings)
        problems = lv.problems
        for i, (name, depth) in enumerate(zip(lv.types, lv.row_depths, strict=True)):
            if name is None or i in lv.merged or (problems and i in problems):
                continue  # (a rejected row's type is not made)
            if name not in types:
                types[name] = TypeDef(name, depth)
            elif types[name].depth != depth:
                types[name].depth = None  # used at several depths: no single depth
        for v in lv.columns["groups"]:
            group_refs.update(dict.fromkeys(_str_list(v)))

    def units() -> Iterator[UnitRecord]:
        if not ROW_PROBLEMS.get():
            _refuse_problems(levels)
        for lv in levels:
            yield from _records(lv)

    return ImportPayload(
        units=units(),
        types=sorted(types.values(), key=lambda t: (t.depth is None, t.depth or 0, t.name)),
        groups=[GroupDef(ref, ref) for ref in group_refs],
        warnings=warnings,
        total=sum(len(lv) - len(lv.merged) for lv in levels),
        description="Imported from " + ", ".join(lv.path.name for lv in levels),
    )


def _refuse_problems(levels: list[_Level]) -> None:
    """Read outside the import job (whose caller may not look at ``problem``): rows this
    reader could not make a unit of stop the reading, all listed (the first
    ``MAX_LISTED``) — before the first unit, so nothing half-read is used."""
    found = [m for lv in levels for i, m in sorted(lv.problems.items()) if i not in lv.merged]
    if found:
        more = len(found) - MAX_LISTED
        raise InvalidInput("\n".join(found[:MAX_LISTED])
                           + (f"\n… and {more} more." if more > 0 else ""))


def read_file(path: Path, opts: ReadOptions | None = None) -> ImportPayload:
    """One layer of one vector file (see the module docstring for the mapping)."""
    return read_files([Path(path)], opts)


def read_files(paths: Sequence[Path], opts: ReadOptions | None = None) -> ImportPayload:
    """Several files as one import: one file per level, top first (or ``depth`` per file)."""
    opts = opts or ReadOptions()
    paths = [Path(p) for p in paths]
    if not paths:
        raise InvalidInput("No file given.")
    several = len(paths) > 1
    levels = [_read_level(p, opts, index=i, several=several) for i, p in enumerate(paths)]
    warnings: list[str] = []
    if opts.parent_by_location:
        levels = sorted(levels, key=lambda lv: lv.depth or 0)  # stable: file order otherwise
        _synthetic_refs(levels)
        _check_unique_refs(levels)
        warnings.extend(_parents_by_location(levels))
    elif several:
        warnings.extend(_merge_point_and_polygon_rows(levels))
    return _payload(levels, warnings)


def _merge_point_and_polygon_rows(levels: list[_Level]) -> list[str]:
    """A ref in two files, a point in one and a polygon in the other: one unit with both.

    This is how a single-layer export comes back (``sl.shp`` + ``sl_locations.shp``), and
    how facilities and their catchment areas often travel.  Other repeated refs are left
    for the import job to report.
    """
    first: dict[str, tuple[int, int]] = {}
    merged = 0
    for k, lv in enumerate(levels):
        for i, ref in enumerate(lv.refs):
            if ref is None:
                continue
            if ref not in first:
                first[ref] = (k, i)
                continue
            j, r = first[ref]
            keep = levels[j]
            if j == k or i in lv.problems or r in keep.problems:
                continue  # (a rejected row's geometry is not taken: the job reports both)
            if keep.locations[r] is None and keep.territories[r] is not None \
                    and lv.locations[i] is not None and lv.territories[i] is None:
                keep.locations[r] = lv.locations[i]
            elif keep.territories[r] is None and keep.locations[r] is not None \
                    and lv.territories[i] is not None and lv.locations[i] is None:
                keep.territories[r] = lv.territories[i]
            else:
                continue
            lv.merged.add(i)
            merged += 1
    if not merged:
        return []
    return [f"{merged} unit(s) are in two files, with a point in one and a polygon in the "
            "other: each was read as one unit with both."]


# --- parents by location --------------------------------------------------------------


def _synthetic_refs(levels: list[_Level]) -> None:
    for lv in levels:
        for i, ref in enumerate(lv.refs):
            if ref is None:
                lv.refs[i] = f"{lv.path.stem}:{i + 1}"


def _check_unique_refs(levels: list[_Level]) -> None:
    seen: dict[str, str] = {}
    for lv in levels:
        for i, ref in enumerate(lv.refs):
            if ref is None:
                continue
            if ref in seen:
                raise InvalidInput(
                    f"{lv.where(i)}: ref {ref!r} is also the ref of {seen[ref]}; refs must be "
                    "unique across the files. Map another column with --mapping, or "
                    "{\"ref\": null} to number the units by file and row.")
            seen[ref] = lv.where(i)


def _equal_area(levels: list[_Level]) -> CRS:
    """A Lambert azimuthal equal-area projection centred on the data."""
    boxes = [shapely.bounds(g) for lv in levels for g in (lv.territories, lv.locations)
             if len(g)]
    allb = np.vstack([b for b in boxes if len(b)])
    allb = allb[~np.isnan(allb).any(axis=1)]
    if len(allb) == 0:
        lon, lat = 0.0, 0.0
    else:
        lon = float((allb[:, 0].min() + allb[:, 2].max()) / 2)
        lat = float((allb[:, 1].min() + allb[:, 3].max()) / 2)
    lat = max(-89.0, min(89.0, lat))
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +datum=WGS84 "
                          "+units=m +no_defs")


def _project(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    import geopandas as gpd

    return np.asarray(gpd.GeoSeries(geoms, crs=WGS84).to_crs(crs).values, dtype=object)


def _valid(geoms: np.ndarray) -> np.ndarray:
    """Copies fit for overlay maths (the records keep the originals for the job to judge)."""
    out = geoms.copy()
    present = ~shapely.is_missing(out)
    bad = present.copy()
    bad[present] = ~shapely.is_valid(out[present])
    if bad.any():
        out[bad] = shapely.make_valid(out[bad])
    return out


def _overlap_areas(children: np.ndarray, parents: np.ndarray) -> np.ndarray:
    try:
        return shapely.area(shapely.intersection(children, parents))
    except shapely.errors.GEOSException:
        areas = np.zeros(len(children))
        for k, (a, b) in enumerate(zip(children, parents, strict=True)):
            try:
                areas[k] = shapely.area(shapely.intersection(a, b))
            except shapely.errors.GEOSException:
                areas[k] = 0.0
        return areas


def _parents_by_location(levels: list[_Level]) -> list[str]:
    """Set ``parent_refs`` of every level but the top from the level above."""
    warnings: list[str] = []
    if len(levels) < 2:
        warnings.append("--parent-by-location needs one file per level; with one file it "
                        "does nothing.")
        return warnings
    ea = _equal_area(levels)
    depths = [lv.depth or 0 for lv in levels]
    projected: dict[int, np.ndarray] = {}

    def eq(k: int) -> np.ndarray:
        if k not in projected:
            projected[k] = _valid(_project(levels[k].territories, ea))
        return projected[k]

    top = min(depths)
    unplaced: list[str] = []
    weak: list[str] = []
    for k, child in enumerate(levels):
        if depths[k] == top:
            continue
        above = max(d for d in depths if d < depths[k])
        parent_ix = [j for j in range(len(levels)) if depths[j] == above]
        p_refs = [r for j in parent_ix for r in levels[j].refs]
        p_ter = np.concatenate([levels[j].territories for j in parent_ix])
        p_names = " / ".join(levels[j].label for j in parent_ix)
        has = ~shapely.is_missing(p_ter)
        if not has.any():
            raise InvalidInput(f"--parent-by-location: {p_names} has no territories (polygons), "
                               f"so the units of {child.label} cannot be placed in it.")
        p_idx = np.flatnonzero(has)
        tree = shapely.STRtree(_valid(p_ter[p_idx]))
        parent_of = np.full(len(child), -1)

        # points: the first parent territory that holds them
        pts = np.array([loc is not None and ter is None
                        for loc, ter in zip(child.locations, child.territories, strict=True)])
        if pts.any():
            rows = np.flatnonzero(pts)
            pairs = tree.query(child.locations[rows], predicate="intersects")
            first = np.full(len(rows), len(p_idx))
            np.minimum.at(first, pairs[0], pairs[1])  # on a shared border: the first parent
            hit = first < len(p_idx)
            parent_of[rows[hit]] = p_idx[first[hit]]

        # polygons: the parent holding the largest part of the area, in equal-area metres
        polys = ~shapely.is_missing(child.territories)
        if polys.any():
            rows = np.flatnonzero(polys)
            c_eq = eq(k)[rows]
            p_eq = np.concatenate([eq(j) for j in parent_ix])[p_idx]
            pairs = tree.query(_valid(child.territories[rows]), predicate="intersects")
            if pairs.shape[1]:
                areas = _overlap_areas(c_eq[pairs[0]], p_eq[pairs[1]])
                order = np.lexsort((-areas, pairs[0]))
                first = np.ones(len(order), dtype=bool)
                first[1:] = pairs[0][order][1:] != pairs[0][order][:-1]
                for o in order[first]:
                    if areas[o] <= 0:
                        continue
                    row = rows[pairs[0][o]]
                    parent_of[row] = p_idx[pairs[1][o]]
                    whole = float(shapely.area(c_eq[pairs[0][o]]))
                    if whole > 0 and areas[o] / whole < 0.5 and len(weak) < MAX_LISTED:
                        weak.append(f"{child.where(row)}: only {100 * areas[o] / whole:.0f}% of "
                                    f"its area lies in its parent {p_refs[parent_of[row]]!r}.")

        for i in range(len(child)):
            if parent_of[i] >= 0:
                child.parent_refs[i] = p_refs[parent_of[i]]
            elif i in child.problems:
                continue  # a row the import job rejects anyway (no usable geometry)
            elif child.parent_refs[i] is not None and child.locations[i] is None \
                    and child.territories[i] is None:
                continue  # no geometry: the file's own parent ref stands
            elif len(unplaced) < MAX_LISTED:
                what = ("it has no geometry" if child.locations[i] is None
                        and child.territories[i] is None
                        else "its point lies in no territory" if child.territories[i] is None
                        else "its territory overlaps none")
                unplaced.append(f"{child.where(i)} ({child.names[i]!r}): {what} of {p_names}.")
            else:
                unplaced.append("…")
                break
    if unplaced:
        raise InvalidInput("--parent-by-location: unit(s) without a parent:\n  - "
                           + "\n  - ".join(unplaced), unplaced=unplaced)
    if weak:
        warnings.extend(weak)
    return warnings


# --- writing ----------------------------------------------------------------------------

DRIVERS = {
    ".shp": "ESRI Shapefile", ".fgb": "FlatGeobuf", ".kml": "KML", ".gpkg": "GPKG",
    ".gml": "GML", ".sqlite": "SQLite", ".tab": "MapInfo File", ".mif": "MapInfo File",
    ".gdb": "OpenFileGDB", ".geojson": "GeoJSON", ".json": "GeoJSON",
    ".geojsonl": "GeoJSONSeq", ".geojsons": "GeoJSONSeq",
}
MULTI_LAYER = {"GPKG", "SQLite", "OpenFileGDB", "KML"}
NO_NULL_GEOMETRY = {"FlatGeobuf"}  # GDAL drops such features: say so instead
COLUMNS = ("ref", "name", "parent_ref", "level", "type", "code", "opening_date", "closed_date",
           "uuid", "validation_status", "aliases", "groups")
SHAPEFILE_NAMES = {"opening_date": "open_date", "closed_date": "close_date",
                   "validation_status": "val_status"}


def _driver(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix not in DRIVERS:
        raise InvalidInput(f"{out.name}: no vector format for {suffix or 'no suffix'!r}; use "
                           f"one of {', '.join(sorted(DRIVERS))}.")
    return DRIVERS[suffix]


def output_paths(out: Path) -> list[Path]:
    """Every file ``write_file`` may create for ``out`` (to check before overwriting)."""
    out = Path(out)
    if _driver(out) in MULTI_LAYER:
        return [out]
    return [out, out.with_name(f"{out.stem}_locations{out.suffix}")]


def _row(u: Any) -> dict[str, Any]:
    return {"ref": u.ref, "name": u.name, "parent_ref": u.parent_ref, "level": u.depth,
            "type": u.type, "code": u.code, "opening_date": u.opening_date,
            "closed_date": u.closed_date, "uuid": u.uuid,
            "validation_status": u.validation_status,
            "aliases": ";".join(u.aliases) or None, "groups": ";".join(u.groups) or None}


def write_file(data: VersionData, out: Path, opts: ReadOptions | None = None) -> dict[str, Any]:
    """Write the version through GDAL (driver from ``out``'s suffix); see the module docstring.

    Returns ``{"file", "files", "layers": {name: count}}`` and ``warnings`` if any.
    """
    out = Path(out)
    driver = _driver(out)
    located: tuple[list[dict[str, Any]], list[Any]] = ([], [])
    territorial: tuple[list[dict[str, Any]], list[Any]] = ([], [])
    nulls_kept = driver not in NO_NULL_GEOMETRY
    left_out = 0
    for u in data.units:
        row = _row(u)
        if u.territory is not None:
            territorial[0].append(row)
            territorial[1].append(geometry.as_multipolygon(u.territory))
        if u.location is not None or (u.territory is None and nulls_kept):
            located[0].append(row)
            located[1].append(u.location)
        elif u.territory is None:
            left_out += 1
    multi = driver in MULTI_LAYER
    layers: list[tuple[str, Path, tuple[list[dict[str, Any]], list[Any]], str]] = []
    if multi:
        layers = [(name, out, rows, gtype) for name, rows, gtype in (
            ("territories", territorial, "MultiPolygon"), ("locations", located, "Point"))
            if rows[0]]
    elif territorial[0]:
        layers.append(("territories", out, territorial, "MultiPolygon"))
        if located[0]:
            layers.append(("locations", output_paths(out)[1], located, "Point"))
    else:
        layers.append(("locations", out, located, "Point"))
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    except OSError as error:
        raise InvalidInput(f"{out}: cannot be written ({error.strerror or error}).") from None
    try:
        result = _write_layers(layers, out, folder, driver, multi)
        _move_into_place(folder, out)
    except OSError as error:
        raise InvalidInput(f"{out}: cannot be written ({error.strerror or error}).") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if left_out:
        result["warnings"] = [f"{driver} cannot store a feature without geometry: {left_out} "
                              "unit(s) without point or territory were left out."]
    return result


#: the files one dataset of these suffixes is made of
_SIDECARS = {".shp": {".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx"},
             ".tab": {".tab", ".dat", ".map", ".id", ".ind"}, ".mif": {".mif", ".mid"}}


def _move_into_place(folder: Path, out: Path) -> None:
    """Move what was written in ``folder`` next to ``out``; then remove the files of a
    previous export this one did not replace (old sidecars, a stale ``_locations``)."""
    entries = sorted(folder.iterdir())
    for entry in entries:  # before moving anything: all files go in, or none
        dest = out.parent / entry.name
        if dest.is_dir() and not entry.is_dir():
            raise InvalidInput(f"{dest} is a folder; it was not replaced.")
    kept = {entry.name for entry in entries}
    for entry in entries:
        dest = out.parent / entry.name
        if dest.is_dir():  # a FileGDB: a folder, which os.replace cannot put over another
            old = folder / f".old.{entry.name}"
            os.replace(dest, old)
            os.replace(entry, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, dest)
    for path in output_paths(out):
        parts = _SIDECARS.get(path.suffix.lower())
        if parts is None:
            stale = [path] if path.name not in kept and path.exists() else []
        else:
            stale = [p for p in path.parent.glob(f"{glob.escape(path.stem)}.*")
                     if p.suffix.lower() in parts and p.name not in kept]
        for p in stale:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def _write_layers(layers: list[tuple[str, Path, tuple[list[dict[str, Any]], list[Any]], str]],
                  out: Path, folder: Path, driver: str, multi: bool) -> dict[str, Any]:
    """Write every layer into ``folder`` (same file names as beside ``out``); the
    summary names the final paths."""
    import geopandas as gpd

    written: dict[str, int] = {}
    files: list[str] = []
    for name, final, (rows, geoms), gtype in layers:
        path = folder / final.name
        frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
        if driver == "ESRI Shapefile":
            frame = frame.rename(columns=SHAPEFILE_NAMES)
        frame["level"] = frame["level"].astype("int32")
        gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms, crs=WGS84), crs=WGS84)
        options: dict[str, Any] = {}
        if driver == "ESRI Shapefile":
            options["encoding"] = "UTF-8"
        try:
            pyogrio.write_dataframe(gdf, path, layer=name if multi else None, driver=driver,
                                    geometry_type=gtype, promote_to_multi=gtype != "Point",
                                    **options)
        except Exception as error:  # noqa: BLE001 - GDAL's reason, with the file named
            raise InvalidInput(f"{final}: GDAL could not write {driver} ({error}).") from None
        written[name] = len(rows)
        if str(final) not in files:
            files.append(str(final))
    if not layers:  # an empty version: still a valid, empty file
        gdf = gpd.GeoDataFrame(pd.DataFrame(columns=list(COLUMNS)), geometry=[], crs=WGS84)
        try:
            pyogrio.write_dataframe(gdf, folder / out.name, layer="locations" if multi else None,
                                    driver=driver, geometry_type="Point")
        except Exception as error:  # noqa: BLE001 - GDAL's reason, with the file named
            raise InvalidInput(f"{out}: GDAL could not write {driver} ({error}).") from None
        files.append(str(out))
        written["locations"] = 0
    return {"file": str(out), "files": files, "layers": written}
