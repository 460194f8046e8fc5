"""Write a :class:`storage.diff.VersionDiff` to a file: JSON, CSV, Iaso's diff CSV, GeoPackage.

* ``json``     — the same data as ``georeg diff --json`` (schema ``georeg.diff/v1``).
* ``csv``      — one row per listed unit: status, identity, changed fields, then
  ``<field> before`` / ``<field> after`` for every compared field and the geometry
  measures (metres, square metres).
* ``iaso-csv`` — the columns of Iaso's ``/api/sourceversions/diff.csv``
  (``iaso/diffing/dumper.py``): ``externalId, diff status, modified fields, type``,
  then ``<f>, <f> before, <f> after`` for each Iaso field in alphabetical order
  (``group:<ref>:<name>`` fields are headed by the group name; geometry adds
  ``distance diff (KM)``), then ``parent i name before/after`` for i = 1..5.
  "before" is the left version (Iaso's version to update), "after" the right one
  (Iaso's reference).  Units Iaso would call ``same`` are left out, as Iaso does.
  One deliberate difference: Iaso writes a distance only for 3-D points and
  multiplies degrees by 100; here 2-D points get the geodesic distance in km.
* ``gpkg``     — layers a QGIS user opens straight away, each with a default style
  stored in the file's ``layer_styles`` table (QGIS applies it on load): points and
  territories per status (new green, modified orange, moved blue, closed grey,
  deleted red), the old outline of changed territories (dashed), and
  ``point_moves``: a line from the old to the new position of every unit whose
  point changed; units with neither point nor territory are rows of the
  ``without_geometry`` table.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import shapely
from shapely.geometry import LineString
from shapely.geometry.base import BaseGeometry

from storage import geometry
from storage.diff import (
    GEOMETRY_TOLERANCE,
    STATUSES,
    UnitDiff,
    VersionDiff,
    geodesic_distance_m,
    parent_labels,
    values_equal,
)
from storage.errors import InvalidInput

FORMATS = ("json", "csv", "iaso-csv", "gpkg")
SUFFIXES = {".json": "json", ".csv": "csv", ".gpkg": "gpkg"}


def format_for(path: str | Path, fmt: str | None) -> str:
    """The format asked for, or the one the file name implies."""
    if fmt:
        if fmt not in FORMATS:
            raise InvalidInput(f"Unknown diff format {fmt!r}: choose among {', '.join(FORMATS)}.")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(
            f"Cannot tell the format from {str(path)!r}: end the name in .json, .csv or .gpkg, "
            f"or pass --format ({', '.join(FORMATS)})."
        )
    return SUFFIXES[suffix]


def export_diff(diff: VersionDiff, path: str | Path, fmt: str | None = None) -> dict[str, Any]:
    """Write ``diff`` to ``path`` in ``fmt`` (default: from the extension)."""
    fmt = format_for(path, fmt)
    writer: Callable[[VersionDiff, Path], dict[str, Any]] = {
        "json": write_json, "csv": write_csv, "iaso-csv": write_iaso_csv, "gpkg": write_gpkg,
    }[fmt]
    out = Path(path)
    if not out.parent.exists():
        raise InvalidInput(f"Folder {out.parent} does not exist: create it first.")
    if not out.parent.is_dir():
        raise InvalidInput(f"Cannot write {out}: {out.parent} is a file, not a folder.")
    if out.is_dir():
        raise InvalidInput(f"Cannot write {out}: it is a folder; name a file.")
    try:
        return {"format": fmt, "file": str(out)} | writer(diff, out)
    except PermissionError as exc:
        raise InvalidInput(f"Cannot write {out}: permission denied. Choose another --out."
                           ) from exc


# --- JSON -------------------------------------------------------------------------------


def write_json(diff: VersionDiff, path: Path) -> dict[str, Any]:
    data = diff.to_dict()
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                    encoding="utf-8")
    return {"units": len(diff.units)}


# --- our CSV ----------------------------------------------------------------------------

MEASURES = ("distance_m", "area_before_m2", "area_after_m2", "area_change_m2", "hausdorff_m")


def csv_header(diff: VersionDiff) -> list[str]:
    head = ["status", "uuid", "source_ref", "name", "type", "depth", "matched_by",
            "changed_fields"]
    for f in diff.fields:
        head += [f"{f} before", f"{f} after"]
    return head + list(MEASURES)


def _csv_value(field_name: str, snap: dict[str, Any] | None) -> str:
    if snap is None:
        return ""
    if field_name == "parent":
        value: Any = snap.get("parent_ref") or snap.get("parent_uuid")
    elif field_name == "groups":
        value = ", ".join(g["ref"] or g["name"] for g in snap["groups"])
    elif field_name == "location":
        loc = snap.get("location")
        value = f"POINT ({loc[0]} {loc[1]})" if loc else None
    elif field_name == "territory":
        ter = snap.get("territory")
        value = f"{ter['area_m2']} m2, {ter['vertices']} vertices" if ter else None
    else:
        value = snap.get(field_name)
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def write_csv(diff: VersionDiff, path: Path) -> dict[str, Any]:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(csv_header(diff))
        for u in diff.units:
            row: list[Any] = [u.status, u.uuid or "", u.source_ref or "", u.name, u.type or "",
                              "" if u.depth is None else u.depth, u.matched_by or "",
                              ", ".join(u.changed_fields)]
            for f in diff.fields:
                row += [_csv_value(f, u.before), _csv_value(f, u.after)]
            for m in MEASURES:
                v = getattr(u, m)
                row.append("" if v is None else f"{v:.3f}")
            w.writerow(row)
    return {"units": len(diff.units)}


# --- Iaso's diff CSV ----------------------------------------------------------------------

IASO_SAME = "same"
IASO_MODIFIED = "modified"
IASO_NEW = "new"
IASO_NOT_IN_ORIGIN = "not in origin - ignored"
IASO_PARENTS = 5
#: Our field names behind each Iaso field (Iaso compares only these).
IASO_FIELDS = {"name": "name", "code": "code", "geometry": "location", "parent": "parent",
               "opening_date": "opening_date", "closed_date": "closed_date", "groups": "groups"}


def iaso_fields(diff: VersionDiff) -> list[str]:
    """Iaso's field list for this diff, in Iaso's (alphabetical) column order."""
    names: list[str] = []
    ours = set(diff.fields)
    for iaso, mine in IASO_FIELDS.items():
        if iaso == "groups" or iaso == "geometry":
            continue
        if mine in ours:
            names.append(iaso)
    if "location" in ours or "territory" in ours:
        names.append("geometry")
    if "groups" in ours:  # every group with a ref and a member on either side, as Iaso
        names += [f"group:{g['ref']}:{g['name']}" for g in diff.groups.values() if g["ref"]]
    return sorted(names)


def _iaso_value(field_name: str, unit: UnitDiff, side: str) -> Any:
    snap = unit.before if side == "before" else unit.after
    if snap is None:
        return None
    if field_name == "geometry":
        loc = unit.location_before if side == "before" else unit.location_after
        ter = unit.territory_before if side == "before" else unit.territory_after
        return loc if loc is not None else ter
    if field_name == "parent":
        return snap.get("parent_ref")
    if field_name.startswith("group:"):
        ref = field_name.split(":")[1]
        return [{"id": g["ref"], "name": g["name"], "iaso_id": g["id"]}
                for g in snap.get("groups", []) if g["ref"] == ref]
    return snap.get(field_name)


def _iaso_same(field_name: str, a: Any, b: Any) -> bool:
    if field_name.startswith("group:"):
        return sorted(g["id"] for g in a or []) == sorted(g["id"] for g in b or [])
    if field_name == "geometry":
        if a is None or b is None:
            return a is None and b is None
        return a.geom_type == b.geom_type and values_equal("territory", a, b)
    if field_name in ("name", "code"):
        return (a or None) == (b or None)
    return bool(a == b)


def iaso_comparisons(unit: UnitDiff, fields: list[str]) -> list[tuple[str, str, Any, Any]]:
    """(field, status, before, after) per Iaso field, with Iaso's status rules."""
    out = []
    for f in fields:
        before, after = _iaso_value(f, unit, "before"), _iaso_value(f, unit, "after")
        if unit.after is None:  # only in the version to update: Iaso's "not in origin"
            out.append((f, IASO_NOT_IN_ORIGIN, before, None))
            continue
        same = _iaso_same(f, before, after)
        status = IASO_SAME if same else IASO_MODIFIED
        if not before and after:
            status = IASO_NEW
        if not same and before is not None and (after is None or after == []):
            status = IASO_NOT_IN_ORIGIN
        out.append((f, status, before, after))
    return out


def _iaso_text(value: Any) -> str:
    if isinstance(value, BaseGeometry):
        return "SRID=4326;" + shapely.to_wkt(value, rounding_precision=-1, trim=True)
    return str(value)


def _iaso_distance(before: Any, after: Any) -> Any:
    if isinstance(before, BaseGeometry) and isinstance(after, BaseGeometry) \
            and before.geom_type == "Point" and after.geom_type == "Point":
        if shapely.equals_exact(before, after, tolerance=GEOMETRY_TOLERANCE):
            return 0
        return f"{geodesic_distance_m(before, after) / 1000:.3f}"
    if not before and not after:
        return ""
    return "NA"


def iaso_rows(diff: VersionDiff, fields: list[str] | None = None) -> list[list[Any]]:
    """Header and rows of Iaso's diff CSV for ``diff``."""
    fields = iaso_fields(diff) if fields is None else fields
    header = ["externalId", "diff status", "modified fields", "type"]
    for f in fields:
        label = f.split(":")[2] if f.startswith("group:") else f
        header += [label, f"{label} before", f"{label} after"]
        if f == "geometry":
            header.append("distance diff (KM)")
    for i in range(1, IASO_PARENTS + 1):
        header += [f"parent {i} name before", f"parent {i} name after"]
    rows: list[list[Any]] = [header]
    present = [u for u in diff.units if u.after is not None]
    gone = [u for u in diff.units if u.after is None]
    for unit in present + gone:
        comps = iaso_comparisons(unit, fields)
        if unit.before is None:
            status = IASO_NEW
        elif unit.after is None:
            status = IASO_NOT_IN_ORIGIN
        elif all(c[1] == IASO_SAME for c in comps):
            continue  # Iaso leaves "same" units out
        else:
            status = IASO_MODIFIED
        main = unit.after or unit.before or {}
        row: list[Any] = [main.get("source_ref"), status,
                          ", ".join(c[0] for c in comps if c[1] != IASO_SAME), main.get("type") or ""]
        for f, st, before, after in comps:
            row.append(st)
            text_b, text_a = _iaso_text(before), _iaso_text(after)
            if f == "geometry":
                if "MULTIPOLYGON" in text_b or "MULTIPOLYGON" in text_a:
                    text_b, text_a = text_b[:40], text_a[:40]
                row += [text_b, text_a, _iaso_distance(before, after)]
            else:
                row += [text_b, text_a]
        anc_b = (unit.before or {}).get("ancestors", [])
        anc_a = (unit.after or {}).get("ancestors", [])
        for i in range(IASO_PARENTS):
            row.append(anc_b[i] if i < len(anc_b) else None)
            row.append(anc_a[i] if i < len(anc_a) else None)
        rows.append(row)
    return rows


def write_iaso_csv_to(diff: VersionDiff, fh: IO[str], fields: list[str] | None = None) -> int:
    rows = iaso_rows(diff, fields)
    csv.writer(fh, lineterminator="\n").writerows(rows)
    return len(rows) - 1


def write_iaso_csv(diff: VersionDiff, path: Path) -> dict[str, Any]:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        count = write_iaso_csv_to(diff, fh)
    return {"units": count}


def iaso_csv_text(diff: VersionDiff, fields: list[str] | None = None) -> str:
    buf = io.StringIO()
    write_iaso_csv_to(diff, buf, fields)
    return buf.getvalue()


# --- GeoPackage for QGIS ------------------------------------------------------------------

#: status → (colour, label) used by every layer of that status.
COLOURS = {
    "new": ("#1a9641", "New"),
    "modified": ("#f28e2b", "Modified"),
    "moved": ("#2b83ba", "Moved (new parent)"),
    "closed": ("#7f7f7f", "Closed"),
    "deleted": ("#d7191c", "Deleted"),
}
BEFORE_COLOUR = "#555555"
MOVE_COLOUR = "#7b3294"
STYLE_TABLE_DDL = (
    'CREATE TABLE IF NOT EXISTS "layer_styles" ( "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256), '
    '"f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT, '
    '"useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30), '
    "\"update_time\" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
)


def _parent_of(snap: dict[str, Any] | None) -> dict[str, Any] | None:
    if snap is None or snap.get("parent_name") is None:
        return None
    return {"name": snap["parent_name"], "ref": snap.get("parent_ref"),
            "uuid": snap.get("parent_uuid")}


def _attributes(u: UnitDiff) -> dict[str, Any]:
    parent_b, parent_a = parent_labels(_parent_of(u.before), _parent_of(u.after))
    return {
        "status": u.status,
        "uuid": u.uuid,
        "source_ref": u.source_ref,
        "name": u.name,
        "type": u.type,
        "depth": u.depth,
        "changed_fields": ", ".join(u.changed_fields),
        "parent_before": parent_b,
        "parent_after": parent_a,
        "distance_m": u.distance_m,
        "area_change_m2": u.area_change_m2,
        "hausdorff_m": u.hausdorff_m,
        "changes": json.dumps([c.to_dict() for c in u.changes], ensure_ascii=False,
                              default=str) if u.changes else None,
    }


#: the table (no geometry) of listed units with neither point nor territory
NO_GEOMETRY_LAYER = "without_geometry"


def gpkg_layers(diff: VersionDiff) -> dict[str, tuple[str, list[dict[str, Any]],
                                                       list[BaseGeometry | None], str, str]]:
    """layer name → (geometry type, attribute rows, geometries, colour, style kind); the
    :data:`NO_GEOMETRY_LAYER` table has no geometry type, geometries or style."""
    layers: dict[str, tuple[str, list[dict[str, Any]], list[BaseGeometry | None], str,
                            str]] = {}

    def add(name: str, gtype: str, row: dict[str, Any], geom: BaseGeometry | None,
            colour: str, kind: str) -> None:
        layers.setdefault(name, (gtype, [], [], colour, kind))
        layers[name][1].append(row)
        layers[name][2].append(geom)

    for status in STATUSES:
        if status == "unchanged":
            continue
        colour = COLOURS[status][0]
        for u in diff.by_status(status):
            row = _attributes(u)
            loc = u.location_before if status == "deleted" else u.location_after
            ter = u.territory_before if status == "deleted" else u.territory_after
            if loc is not None and not loc.is_empty:
                add(f"{status}_points", "Point", row, loc, colour, "point")
            if ter is not None and not ter.is_empty:
                add(f"{status}_territories", "MultiPolygon", row,
                    geometry.as_multipolygon(ter), colour, "fill")
            if (loc is None or loc.is_empty) and (ter is None or ter.is_empty):
                # no point and no territory to draw: listed in a table of their own, or
                # a QGIS reviewer would never see them
                add(NO_GEOMETRY_LAYER, "", row, None, "", "")
            if status != "deleted" and u.change("territory") and u.territory_before is not None:
                add("territories_before", "MultiPolygon", row,
                    geometry.as_multipolygon(u.territory_before), BEFORE_COLOUR, "outline")
            if u.change("location") and u.location_before is not None \
                    and u.location_after is not None:
                add("point_moves", "LineString", row,
                    LineString([u.location_before.coords[0], u.location_after.coords[0]]),
                    MOVE_COLOUR, "line")
    return layers


def write_gpkg(diff: VersionDiff, path: Path) -> dict[str, Any]:
    """Layers per status, a style for each stored as the layer's default (see module doc)."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    layers = gpkg_layers(diff)
    gpd_layers = layers
    tmp = path.with_name(f"{path.stem}.part.gpkg")
    tmp.unlink(missing_ok=True)
    try:
        if not layers:  # nothing changed: still a valid GeoPackage, with an empty layer
            gpd_layers = {"new_points": ("Point", [], [], COLOURS["new"][0], "point")}
        for name, (gtype, rows, geoms, _colour, _kind) in gpd_layers.items():
            frame = pd.DataFrame(rows, columns=list(_attributes_columns()))
            for col in ("distance_m", "area_change_m2", "hausdorff_m"):
                frame[col] = frame[col].astype("float64")
            frame["depth"] = frame["depth"].astype("Int64")
            if not gtype:  # an attribute table (GeoPackage data_type 'attributes')
                pyogrio.write_dataframe(frame, tmp, layer=name, driver="GPKG")
                continue
            gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms, crs="EPSG:4326"),
                                   crs="EPSG:4326")
            pyogrio.write_dataframe(gdf, tmp, layer=name, driver="GPKG", geometry_type=gtype)
        _write_styles(tmp, {n: (v[3], v[4], v[0]) for n, v in gpd_layers.items() if v[0]})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
    return {"layers": {n: len(v[1]) for n, v in layers.items()}}


def _attributes_columns() -> tuple[str, ...]:
    return ("status", "uuid", "source_ref", "name", "type", "depth", "changed_fields",
            "parent_before", "parent_after", "distance_m", "area_change_m2", "hausdorff_m",
            "changes")


def _write_styles(path: Path, styles: dict[str, tuple[str, str, str]]) -> None:
    conn = sqlite3.connect(path)
    try:
        geom_cols = dict(conn.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))
        conn.execute(STYLE_TABLE_DDL)
        conn.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, "
            "last_change, srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', '', "
            "strftime('%Y-%m-%dT%H:%M:%fZ','now'), 0)"
        )
        for layer, (colour, kind, _gtype) in styles.items():
            conn.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL)",
                (layer, geom_cols.get(layer, "geom"), layer, qml(kind, colour),
                 sld(layer, kind, colour), f"Georeg diff: {layer.replace('_', ' ')}"),
            )
        conn.commit()
    finally:
        conn.close()


def _rgba(colour: str, alpha: int = 255) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"{r},{g},{b},{alpha}"


def _props(props: dict[str, str]) -> str:
    opts = "".join(f'<Option type="QString" name="{k}" value="{v}"/>' for k, v in props.items())
    legacy = "".join(f'<prop k="{k}" v="{v}"/>' for k, v in props.items())
    return f'<Option type="Map">{opts}</Option>{legacy}'


def qml(kind: str, colour: str) -> str:
    """A QGIS 3 style (single symbol) for a point, fill, outline-only or line layer."""
    if kind == "point":
        stype, cls, geom_type = "marker", "SimpleMarker", 0
        props = {"name": "circle", "color": _rgba(colour), "outline_color": "35,35,35,255",
                 "outline_width": "0.2", "size": "3", "size_unit": "MM"}
    elif kind == "line":
        stype, cls, geom_type = "line", "SimpleLine", 1
        props = {"line_color": _rgba(colour), "line_width": "0.6", "line_width_unit": "MM",
                 "line_style": "solid", "capstyle": "round"}
    else:
        stype, cls, geom_type = "fill", "SimpleFill", 2
        outline_only = kind == "outline"
        props = {"color": _rgba(colour, 0 if outline_only else 70),
                 "style": "no" if outline_only else "solid",
                 "outline_color": _rgba(colour), "outline_width": "0.5",
                 "outline_width_unit": "MM", "outline_style": "dash" if outline_only else "solid"}
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.22.0" styleCategories="AllStyleCategories">\n'
        ' <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">\n'
        "  <symbols>\n"
        f'   <symbol type="{stype}" name="0" alpha="1" clip_to_extent="1" force_rhr="0">\n'
        f'    <layer class="{cls}" enabled="1" locked="0" pass="0">{_props(props)}</layer>\n'
        "   </symbol>\n"
        "  </symbols>\n"
        "  <rotation/>\n  <sizescale/>\n"
        " </renderer-v2>\n"
        " <blendMode>0</blendMode>\n <featureBlendMode>0</featureBlendMode>\n"
        " <layerOpacity>1</layerOpacity>\n"
        f" <layerGeometryType>{geom_type}</layerGeometryType>\n"
        "</qgis>\n"
    )


def sld(layer: str, kind: str, colour: str) -> str:
    """The same style as SLD 1.1 (for GeoServer, or QGIS's 'load SLD')."""
    if kind == "point":
        sym = ("<se:PointSymbolizer><se:Graphic><se:Mark><se:WellKnownName>circle"
               f"</se:WellKnownName><se:Fill><se:SvgParameter name=\"fill\">{colour}"
               "</se:SvgParameter></se:Fill><se:Stroke><se:SvgParameter name=\"stroke\">#232323"
               "</se:SvgParameter></se:Stroke></se:Mark><se:Size>11</se:Size></se:Graphic>"
               "</se:PointSymbolizer>")
    elif kind == "line":
        sym = (f"<se:LineSymbolizer><se:Stroke><se:SvgParameter name=\"stroke\">{colour}"
               "</se:SvgParameter><se:SvgParameter name=\"stroke-width\">2</se:SvgParameter>"
               "</se:Stroke></se:LineSymbolizer>")
    else:
        fill = "" if kind == "outline" else (
            f"<se:Fill><se:SvgParameter name=\"fill\">{colour}</se:SvgParameter>"
            "<se:SvgParameter name=\"fill-opacity\">0.27</se:SvgParameter></se:Fill>")
        dash = "<se:SvgParameter name=\"stroke-dasharray\">5 2</se:SvgParameter>" \
            if kind == "outline" else ""
        sym = (f"<se:PolygonSymbolizer>{fill}<se:Stroke><se:SvgParameter name=\"stroke\">"
               f"{colour}</se:SvgParameter><se:SvgParameter name=\"stroke-width\">2"
               f"</se:SvgParameter>{dash}</se:Stroke></se:PolygonSymbolizer>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" version="1.1.0" '
        'xmlns:ogc="http://www.opengis.net/ogc" xmlns:se="http://www.opengis.net/se" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.opengis.net/sld '
        'http://schemas.opengis.net/sld/1.1.0/StyledLayerDescriptor.xsd">\n'
        f" <NamedLayer><se:Name>{layer}</se:Name><UserStyle><se:Name>{layer}</se:Name>"
        f"<se:FeatureTypeStyle><se:Rule><se:Name>{layer}</se:Name>{sym}</se:Rule>"
        "</se:FeatureTypeStyle></UserStyle></NamedLayer>\n"
        "</StyledLayerDescriptor>\n"
    )

